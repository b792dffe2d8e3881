//! One running QEMU process: launch, re-attach, power operations and
//! suspend to a file.
//!
//! ```text
//!   launch ──► QEMU spawned in its own session (setsid) ──► QMP socket up
//!     │          stdout/stderr → qemu.log, pidfile written by QEMU
//!     ├─ fresh boot:        running at once (no -S)
//!     ├─ Incoming::StateFile: migrate-incoming file:… → MIGRATION completed
//!     │                       → cont → running; the state file is removed
//!     └─ Incoming::Defer:     waits in `inmigrate` for the caller
//!
//!   running ─pause─► paused ─resume─► running
//!   running ─shutdown─► POWERDOWN … guest powers off → process exits
//!                       (or quit/SIGKILL after the timeout: Forced)
//!   running ─suspend_to_file─► stop → migrate file:suspend.state
//!                       → MIGRATION completed → quit → process exits
//! ```
//!
//! QEMU runs in its own session, so killing or restarting the agent never
//! takes the VM down; [`Vm::attach`] finds it again from the pidfile. Power
//! state changes are announced as QMP events ([`Vm::events`]); callers build
//! their state machine on those rather than on polling.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
use vdc_qmp::{Qmp, QmpError, QmpEvent};

use crate::error::QemuError;
use crate::host::qemu_binary;
use crate::log::tail_file;
use crate::process::{cmdline, pid_alive, read_pidfile, Process};
use crate::spec::{command_line, Incoming, MachineSpec, VmPaths};

/// How long QEMU may take to open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `quit` may take before SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// Longest a migration to or from a file may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes of qemu.log quoted in start errors.
const LOG_TAIL: u64 = 2048;

/// QEMU's run state (`query-status`), as far as vdc distinguishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// vCPUs run.
    Running,
    /// Stopped by `stop` (or waiting after an incoming migration).
    Paused,
    /// The guest suspended itself to RAM (ACPI S3).
    Suspended,
    /// Waiting for or receiving an incoming migration.
    InMigrate,
    /// Stopped after an outgoing migration completed.
    PostMigrate,
    /// Finishing an outgoing migration (vCPUs stopped).
    FinishMigrate,
    /// Created with `-S`, never started.
    Prelaunch,
    /// The guest shut down (only seen with `-no-shutdown`).
    Shutdown,
    /// The guest panicked.
    GuestPanicked,
    /// An I/O error stopped the VM.
    IoError,
    /// QEMU hit an internal error (e.g. KVM emulation failure).
    InternalError,
    /// A watchdog fired and paused the VM.
    Watchdog,
    /// Saving or restoring a snapshot (`savevm`/`loadvm`).
    SaveRestore,
    /// Any other state, by QEMU's name.
    Other(String),
}

impl RunState {
    /// Maps QEMU's run state name.
    pub fn from_qmp(status: &str) -> RunState {
        match status {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "suspended" => RunState::Suspended,
            "inmigrate" => RunState::InMigrate,
            "postmigrate" => RunState::PostMigrate,
            "finish-migrate" => RunState::FinishMigrate,
            "prelaunch" => RunState::Prelaunch,
            "shutdown" => RunState::Shutdown,
            "guest-panicked" => RunState::GuestPanicked,
            "io-error" => RunState::IoError,
            "internal-error" => RunState::InternalError,
            "watchdog" => RunState::Watchdog,
            "save-vm" | "restore-vm" => RunState::SaveRestore,
            other => RunState::Other(other.to_string()),
        }
    }
}

/// How [`Vm::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The guest powered off after the ACPI power button.
    Graceful,
    /// The guest did not react in time; QEMU was made to quit.
    Forced,
}

/// A handle on one running QEMU process. Dropping it leaves QEMU running.
#[derive(Debug)]
pub struct Vm {
    id: String,
    paths: VmPaths,
    process: Process,
    qmp: Qmp,
}

impl Vm {
    /// Starts QEMU for `spec` and returns once it runs (or, for
    /// [`Incoming::Defer`], waits for an incoming migration).
    pub async fn launch(spec: &MachineSpec, paths: &VmPaths) -> Result<Vm, QemuError> {
        paths.check_socket_paths()?;
        for dir in [&paths.run_dir, &paths.vm_dir] {
            std::fs::create_dir_all(dir).map_err(QemuError::io("create directory", dir))?;
        }
        if let Some(pid) = running_pid(paths) {
            return Err(QemuError::AlreadyRunning { pid });
        }
        if let Some(Incoming::StateFile(state)) = &spec.incoming {
            if !state.is_file() {
                return Err(QemuError::MissingStateFile(state.clone()));
            }
        }
        for stale in [
            paths.qmp_socket(),
            paths.guest_socket(),
            paths.console_socket(),
            paths.pidfile(),
        ] {
            match std::fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(QemuError::io("remove", stale)(e)),
            }
        }

        let binary = qemu_binary();
        let args = command_line(spec, paths);
        let log_path = paths.qemu_log();
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .await
            .map_err(QemuError::io("open", &log_path))?;
        let header = format!(
            "=== vdc: starting QEMU at {} ms: {} {}\n",
            vdc_types::now_ms(),
            binary.display(),
            args.join(" ")
        );
        log.write_all(header.as_bytes())
            .await
            .map_err(QemuError::io("write", &log_path))?;
        let log = log.into_std().await;
        let stdout = log.try_clone().map_err(QemuError::io("open", &log_path))?;

        let mut cmd = tokio::process::Command::new(&binary);
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(log);
        // SAFETY: setsid() is async-signal-safe and touches no memory of the
        // parent; it puts QEMU in its own session so that signals aimed at the
        // agent's session or process group never reach the VM.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| QemuError::Spawn {
            binary: binary.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            return Err(QemuError::StartFailed {
                log_tail: tail_file(&log_path, LOG_TAIL).unwrap_or_default(),
            });
        };
        let process = Process::from_child(child, pid);
        tracing::info!(vm = %spec.id, pid, "QEMU started");

        let result = async {
            let qmp = connect_qmp(&process, paths).await?;
            let vm = Vm {
                id: spec.id.clone(),
                paths: paths.clone(),
                process,
                qmp,
            };
            if let Some(Incoming::StateFile(state)) = &spec.incoming {
                vm.restore_from_file(state).await?;
            }
            Ok::<Vm, QemuError>(vm)
        }
        .await;
        match result {
            Ok(vm) => Ok(vm),
            Err(e) => {
                // Never leave a half-started QEMU behind.
                kill_pid_if_ours(pid, paths);
                Err(e)
            }
        }
    }

    /// Finds the QEMU of the VM at `paths` after an agent restart: reads the
    /// pidfile, checks that the process is alive and is the QEMU using this
    /// QMP socket, and connects to QMP. `Ok(None)` if there is no such
    /// process.
    pub async fn attach(paths: &VmPaths) -> Result<Option<Vm>, QemuError> {
        let Some(pid) = running_pid(paths) else {
            return Ok(None);
        };
        let id = cmdline(pid)
            .and_then(|args| {
                args.windows(2)
                    .find(|w| w[0] == "-uuid")
                    .map(|w| w[1].clone())
            })
            .unwrap_or_default();
        let process = Process::from_pid(pid);
        let qmp = Qmp::connect(&paths.qmp_socket())
            .await
            .map_err(QemuError::qmp("qmp_capabilities"))?;
        tracing::info!(vm = %id, pid, "re-attached to QEMU");
        Ok(Some(Vm {
            id,
            paths: paths.clone(),
            process,
            qmp,
        }))
    }

    /// The VM id (QEMU's `-uuid`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The VM's files.
    pub fn paths(&self) -> &VmPaths {
        &self.paths
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The QMP connection, for commands this driver does not wrap.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// QMP events from now on (`STOP`, `RESUME`, `SHUTDOWN`, `POWERDOWN`,
    /// `RESET`, `MIGRATION`, …).
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.qmp.subscribe()
    }

    /// Whether the QEMU process has exited.
    pub fn has_exited(&self) -> bool {
        self.process.has_exited()
    }

    /// Waits until QEMU has exited, at most `limit`; whether it did.
    pub async fn wait_exit_for(&self, limit: Duration) -> bool {
        self.process.wait_for(limit).await
    }

    /// Kills QEMU at once (SIGKILL): an abandoned incoming migration.
    pub fn kill(&self) {
        self.process.signal(libc::SIGKILL);
    }

    /// Resolves once the QEMU process is gone.
    pub async fn wait_exit(&self) {
        self.process.wait().await
    }

    /// QEMU's run state.
    pub async fn run_state(&self) -> Result<RunState, QemuError> {
        let st = self
            .qmp
            .query_status()
            .await
            .map_err(QemuError::qmp("query-status"))?;
        Ok(RunState::from_qmp(&st.status))
    }

    /// Stops the vCPUs (`STOP` event).
    pub async fn pause(&self) -> Result<(), QemuError> {
        self.qmp.stop().await.map_err(QemuError::qmp("stop"))
    }

    /// Resumes the vCPUs (`RESUME` event).
    pub async fn resume(&self) -> Result<(), QemuError> {
        self.qmp.cont().await.map_err(QemuError::qmp("cont"))
    }

    /// Hard reset (`RESET` event); the process keeps running.
    pub async fn reset(&self) -> Result<(), QemuError> {
        self.qmp
            .system_reset()
            .await
            .map_err(QemuError::qmp("system_reset"))
    }

    /// Presses the ACPI power button (`POWERDOWN` event) and returns; the
    /// guest decides what to do.
    pub async fn powerdown(&self) -> Result<(), QemuError> {
        self.qmp
            .system_powerdown()
            .await
            .map_err(QemuError::qmp("system_powerdown"))
    }

    /// Presses the ACPI power button and waits up to `timeout` for the guest
    /// to power off (QEMU then exits); after that makes QEMU quit.
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownOutcome, QemuError> {
        if self.process.has_exited() {
            return Ok(ShutdownOutcome::Graceful);
        }
        match self.qmp.system_powerdown().await {
            Ok(()) => {}
            Err(e) if e.is_disconnected() => {}
            Err(e) => return Err(QemuError::qmp("system_powerdown")(e)),
        }
        if self.process.wait_for(timeout).await {
            return Ok(ShutdownOutcome::Graceful);
        }
        tracing::warn!(vm = %self.id, ?timeout, "guest ignored the power button; forcing power off");
        self.power_off().await?;
        Ok(ShutdownOutcome::Forced)
    }

    /// Turns the VM off at once: `quit`, then SIGKILL if QEMU is still there
    /// after a few seconds. Returns once the process is gone.
    pub async fn power_off(&self) -> Result<(), QemuError> {
        if self.process.has_exited() {
            return Ok(());
        }
        if let Err(e) = self.qmp.quit().await {
            tracing::warn!(vm = %self.id, error = %e, "quit failed; killing QEMU");
        }
        if self.process.wait_for(QUIT_GRACE).await {
            return Ok(());
        }
        self.process.signal(libc::SIGKILL);
        if self.process.wait_for(QUIT_GRACE).await {
            return Ok(());
        }
        Err(QemuError::Unkillable { pid: self.pid() })
    }

    /// Saves the VM's memory to `suspend.state` in its directory and ends
    /// QEMU. `progress` is called with the percentage done. On failure the
    /// partial file is removed and the VM resumes if it was running.
    pub async fn suspend_to_file(&self, progress: impl Fn(u8) + Sync) -> Result<(), QemuError> {
        let state = self.paths.suspend_state();
        let was_running = self
            .qmp
            .query_status()
            .await
            .map_err(QemuError::qmp("query-status"))?
            .running;
        let mut events = self.qmp.subscribe();
        if was_running {
            self.pause().await?;
        }
        let saved = async {
            match std::fs::remove_file(&state) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(QemuError::io("remove", &state)(e)),
            }
            self.qmp
                .migrate_set_capabilities(&[("events", true)])
                .await
                .map_err(QemuError::qmp("migrate-set-capabilities"))?;
            self.qmp
                .migrate(&file_uri(&state))
                .await
                .map_err(QemuError::qmp("migrate"))?;
            progress(0);
            self.wait_migration(&mut events, "to file", &progress)
                .await?;
            // QEMU wrote the file; make it durable before the process goes.
            // On a blocking thread: flushing the whole guest memory can take
            // seconds on a busy disk, and must not hold a runtime worker.
            let path = state.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&path)
                    .map_err(QemuError::io("open", &path))?
                    .sync_all()
                    .map_err(QemuError::io("sync", &path))
            })
            .await
            .map_err(|e| QemuError::io("sync", &state)(std::io::Error::other(e)))??;
            Ok(())
        }
        .await;
        if let Err(e) = saved {
            let _ = std::fs::remove_file(&state);
            if was_running && !self.process.has_exited() {
                if let Err(re) = self.resume().await {
                    tracing::warn!(vm = %self.id, error = %re, "could not resume after a failed suspend");
                }
            }
            return Err(e);
        }
        progress(100);
        self.power_off().await
    }

    /// Loads the memory state from `state` into this `-incoming defer`
    /// QEMU, starts the vCPUs and removes the file.
    async fn restore_from_file(&self, state: &Path) -> Result<(), QemuError> {
        let mut events = self.qmp.subscribe();
        self.qmp
            .migrate_set_capabilities(&[("events", true)])
            .await
            .map_err(QemuError::qmp("migrate-set-capabilities"))?;
        self.qmp
            .migrate_incoming(&file_uri(state))
            .await
            .map_err(QemuError::qmp("migrate-incoming"))?;
        self.wait_migration(&mut events, "from file", &|_| {})
            .await?;
        let st = self
            .qmp
            .query_status()
            .await
            .map_err(QemuError::qmp("query-status"))?;
        if !st.running {
            self.resume().await?;
        }
        if let Err(e) = std::fs::remove_file(state) {
            tracing::warn!(path = %state.display(), error = %e, "could not remove the used state file");
        }
        Ok(())
    }

    /// Waits for the current migration to complete, following MIGRATION
    /// events; `query-migrate` is only read for progress and the error text.
    async fn wait_migration(
        &self,
        events: &mut broadcast::Receiver<QmpEvent>,
        direction: &'static str,
        progress: &(dyn Fn(u8) + Sync),
    ) -> Result<(), QemuError> {
        let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let status: Option<String> = tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if ev.name == "MIGRATION" => {
                        ev.data.get("status").and_then(|s| s.as_str()).map(str::to_string)
                    }
                    Ok(_) => None,
                    // Missed events: ask QEMU directly.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.migration_status().await?,
                    Err(broadcast::error::RecvError::Closed) => return Err(QemuError::Exited),
                },
                _ = tick.tick() => {
                    if let Ok(info) = self.qmp.query_migrate().await {
                        progress(info.percent());
                    }
                    None
                }
                _ = self.process.wait() => return Err(QemuError::Exited),
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = self.qmp.migrate_cancel().await;
                    return Err(QemuError::Timeout { what: "migration", after: MIGRATION_TIMEOUT });
                }
            };
            match status.as_deref() {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let desc = self
                        .qmp
                        .query_migrate()
                        .await
                        .ok()
                        .and_then(|i| i.error_desc)
                        .unwrap_or_default();
                    return Err(QemuError::Migration {
                        direction,
                        status: s.to_string(),
                        desc,
                    });
                }
                _ => {}
            }
        }
    }

    async fn migration_status(&self) -> Result<Option<String>, QemuError> {
        Ok(self
            .qmp
            .query_migrate()
            .await
            .map_err(QemuError::qmp("query-migrate"))?
            .status)
    }
}

fn file_uri(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// The pid from the pidfile if that process is alive and is the QEMU of
/// these paths (its command line names our QMP socket).
pub fn running_pid(paths: &VmPaths) -> Option<u32> {
    let pid = read_pidfile(&paths.pidfile())?;
    if !pid_alive(pid) {
        return None;
    }
    let qmp = paths.qmp_socket().to_string_lossy().replace(',', ",,");
    let args = cmdline(pid)?;
    args.iter()
        .any(|a| a.starts_with("unix:") && a.contains(qmp.as_str()))
        .then_some(pid)
}

fn kill_pid_if_ours(pid: u32, paths: &VmPaths) {
    let ours = cmdline(pid).is_some_and(|args| {
        let pidfile = paths.pidfile().to_string_lossy().into_owned();
        args.contains(&pidfile)
    });
    if ours {
        // SAFETY: kill(2) on a pid we just checked is our QEMU.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Connects to QMP, retrying until QEMU has opened its socket, it exits or
/// the start timeout passes.
async fn connect_qmp(process: &Process, paths: &VmPaths) -> Result<Qmp, QemuError> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let socket = paths.qmp_socket();
    loop {
        if process.has_exited() {
            return Err(QemuError::StartFailed {
                log_tail: tail_file(&paths.qemu_log(), LOG_TAIL).unwrap_or_default(),
            });
        }
        match Qmp::connect(&socket).await {
            Ok(qmp) => return Ok(qmp),
            Err(QmpError::Connect { .. }) | Err(QmpError::Disconnected) | Err(QmpError::Io(_)) => {}
            Err(e) => return Err(QemuError::qmp("qmp_capabilities")(e)),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(QemuError::StartTimeout {
                after: START_TIMEOUT,
                log_tail: tail_file(&paths.qemu_log(), LOG_TAIL).unwrap_or_default(),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = process.wait() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_states_map() {
        assert_eq!(RunState::from_qmp("running"), RunState::Running);
        assert_eq!(RunState::from_qmp("paused"), RunState::Paused);
        assert_eq!(RunState::from_qmp("inmigrate"), RunState::InMigrate);
        assert_eq!(RunState::from_qmp("postmigrate"), RunState::PostMigrate);
        assert_eq!(
            RunState::from_qmp("guest-panicked"),
            RunState::GuestPanicked
        );
        assert_eq!(
            RunState::from_qmp("colo"),
            RunState::Other("colo".to_string())
        );
    }

    #[test]
    fn file_uris() {
        assert_eq!(
            file_uri(Path::new("/ds/vm/suspend.state")),
            "file:/ds/vm/suspend.state"
        );
    }
}
