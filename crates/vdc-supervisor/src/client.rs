//! The agent's side of a VM supervisor: start one and read its answer, hand
//! it QEMU's pid or abandon the start, find it again after an agent
//! restart, and ask it things over its control socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use vdc_disk::LeaseTiming;
use vdc_qemu::process::{cmdline, pid_alive, read_pidfile, Process};

use crate::{
    ControlReply, ControlRequest, FenceRecord, Hello, SupervisorError, LOG_FILE, MAX_LINE,
    PID_FILE, SOCKET_FILE, SUBCOMMAND,
};

/// How long an abandoned supervisor may take to release the lease and exit.
const ABORT_WAIT: Duration = Duration::from_secs(15);

/// What a supervisor is started for.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `vdc` binary.
    pub program: PathBuf,
    /// This host's name.
    pub host: String,
    /// VM id.
    pub vm_id: String,
    /// VM directory on its datastore.
    pub vm_dir: PathBuf,
    /// VM runtime directory on this host.
    pub run_dir: PathBuf,
    /// Lease timing.
    pub timing: LeaseTiming,
    /// Re-attach to this running QEMU instead of waiting for a launch.
    pub qemu_pid: Option<u32>,
    /// The lease as this host already watched it (a failover's lease
    /// watch): the supervisor's watch continues it.
    pub lease_seen: Option<vdc_disk::lock::Seen>,
}

impl Launch {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            SUBCOMMAND.to_string(),
            "--host".into(),
            self.host.clone(),
            "--vm-id".into(),
            self.vm_id.clone(),
            "--vm-dir".into(),
            self.vm_dir.display().to_string(),
            "--run-dir".into(),
            self.run_dir.display().to_string(),
            "--lease-ttl-ms".into(),
            self.timing.ttl.as_millis().to_string(),
            "--lease-renew-ms".into(),
            self.timing.renew_every.as_millis().to_string(),
            "--lease-margin-ms".into(),
            self.timing.margin.as_millis().to_string(),
        ];
        if let Some(pid) = self.qemu_pid {
            a.push("--qemu-pid".into());
            a.push(pid.to_string());
        }
        if let Some(seen) = self
            .lease_seen
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok())
        {
            a.push("--lease-seen".into());
            a.push(seen);
        }
        a
    }
}

/// A supervisor this agent started.
#[derive(Debug)]
pub struct Started {
    /// The supervisor process.
    pub process: Arc<Process>,
    /// Its answer: whether it holds the lease.
    pub hello: Hello,
    stdin: Option<ChildStdin>,
}

/// Starts a supervisor in its own session (so signals to the agent never
/// reach it) and waits for its answer; the wait is bounded by a few TTLs,
/// the longest a contender may watch a stale lease.
pub async fn start(launch: &Launch) -> Result<Started, SupervisorError> {
    spawn(launch)?.hello().await
}

/// A supervisor started, its answer (whether it holds the lease) not read
/// yet: the agent may prepare QEMU meanwhile (vCPUs stopped).
#[derive(Debug)]
pub struct Spawned {
    process: Arc<Process>,
    stdin: Option<ChildStdin>,
    stdout: tokio::process::ChildStdout,
    log_path: PathBuf,
    wait: Duration,
}

/// Starts a supervisor in its own session without waiting for its answer
/// (see [`Spawned::hello`]).
pub fn spawn(launch: &Launch) -> Result<Spawned, SupervisorError> {
    std::fs::create_dir_all(&launch.run_dir).map_err(SupervisorError::io(&launch.run_dir))?;
    if launch.qemu_pid.is_none() {
        FenceRecord::clear(&launch.run_dir).map_err(SupervisorError::io(&launch.run_dir))?;
    }
    let log_path = launch.run_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(SupervisorError::io(&log_path))?;
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(launch.args())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    // SAFETY: setsid() is async-signal-safe and touches no memory of the
    // parent; it puts the supervisor in its own session, like QEMU.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawn_error = |source| SupervisorError::Spawn {
        program: launch.program.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let pid = child
        .id()
        .ok_or_else(|| SupervisorError::Protocol("the supervisor exited at once".into()))?;
    let process = Arc::new(Process::from_child(child, pid));
    let Some(stdout) = stdout else {
        process.signal(libc::SIGKILL);
        return Err(SupervisorError::Protocol("no stdout pipe".into()));
    };
    Ok(Spawned {
        process,
        stdin,
        stdout,
        log_path,
        wait: launch.timing.ttl * 3 + Duration::from_secs(30),
    })
}

impl Spawned {
    /// Waits for the supervisor's answer (bounded by a few TTLs); a
    /// supervisor that gives none is killed.
    pub async fn hello(self) -> Result<Started, SupervisorError> {
        let Spawned {
            process,
            stdin,
            stdout,
            log_path,
            wait,
        } = self;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout.take(MAX_LINE as u64));
        let read = tokio::time::timeout(wait, reader.read_line(&mut line)).await;
        let hello = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<Hello>(line.trim()).map_err(|e| {
                SupervisorError::Protocol(format!("unreadable answer {:?}: {e}", line.trim()))
            }),
            Ok(Ok(_)) => Err(SupervisorError::Protocol(format!(
                "it exited without an answer; its log: {}",
                vdc_qemu::tail_file(&log_path, 1024)
                    .unwrap_or_default()
                    .trim()
            ))),
            Ok(Err(e)) => Err(SupervisorError::Protocol(format!(
                "cannot read its answer: {e}"
            ))),
            Err(_) => Err(SupervisorError::Protocol(format!(
                "no answer within {wait:?}"
            ))),
        };
        match hello {
            Ok(hello) => Ok(Started {
                process,
                hello,
                stdin,
            }),
            Err(e) => {
                process.signal(libc::SIGKILL);
                Err(e)
            }
        }
    }
}

impl Started {
    /// Tells the supervisor QEMU's pid: from now on it guards that QEMU.
    pub async fn attach(&mut self, qemu_pid: u32) -> Result<(), SupervisorError> {
        let Some(mut stdin) = self.stdin.take() else {
            return Err(SupervisorError::Protocol(
                "QEMU's pid was already given".into(),
            ));
        };
        let line = format!("qemu {qemu_pid}\n");
        stdin
            .write_all(line.as_bytes())
            .await
            .and(stdin.flush().await)
            .map_err(|e| SupervisorError::Protocol(format!("cannot give QEMU's pid: {e}")))
    }

    /// Abandons the start (QEMU did not run): the supervisor releases the
    /// lease and exits. Waits for that, bounded.
    pub async fn abort(mut self) {
        drop(self.stdin.take());
        if !self.process.wait_for(ABORT_WAIT).await {
            tracing::warn!(
                pid = self.process.pid(),
                "an abandoned VM supervisor did not exit; killing it (its lease will expire)"
            );
            self.process.signal(libc::SIGKILL);
        }
    }
}

/// The pid of the supervisor of the runtime directory `run_dir`, if one
/// runs (its pidfile names a live `vdc vm-supervisor` of that directory).
pub fn find(run_dir: &Path) -> Option<u32> {
    let pid = read_pidfile(&run_dir.join(PID_FILE))?;
    if !pid_alive(pid) {
        return None;
    }
    let dir = run_dir.display().to_string();
    let args = cmdline(pid)?;
    (args.iter().any(|a| a == SUBCOMMAND)
        && args.windows(2).any(|w| w[0] == "--run-dir" && w[1] == dir))
    .then_some(pid)
}

/// Sends one request to the supervisor of `run_dir` and reads its answer,
/// within `timeout`.
pub async fn request(
    run_dir: &Path,
    req: &ControlRequest,
    timeout: Duration,
) -> Result<ControlReply, SupervisorError> {
    let socket = run_dir.join(SOCKET_FILE);
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(SupervisorError::io(&socket))?;
        let (read, mut write) = stream.into_split();
        let mut line =
            serde_json::to_string(req).map_err(|e| SupervisorError::Protocol(e.to_string()))?;
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .map_err(SupervisorError::io(&socket))?;
        let mut answer = String::new();
        BufReader::new(read.take(MAX_LINE as u64))
            .read_line(&mut answer)
            .await
            .map_err(SupervisorError::io(&socket))?;
        serde_json::from_str::<ControlReply>(answer.trim())
            .map_err(|e| SupervisorError::Protocol(format!("unreadable answer: {e}")))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SupervisorError::Protocol(format!("no answer within {timeout:?}")))?
}

/// Hands the VM of `run_dir` over to host `successor`: its supervisor names
/// the successor in the lease and stops renewing, so that host may take the
/// lease at once (and nobody else may). Only for a VM whose vCPUs are
/// stopped (a migration's switchover): the old QEMU is killed when its
/// supervisor sees the successor's lease, within one renewal interval.
/// Returns once the lease names the successor.
pub async fn hand_over(
    run_dir: &Path,
    successor: &str,
    timeout: Duration,
) -> Result<crate::SupervisorStatus, SupervisorError> {
    status_of(
        request(
            run_dir,
            &ControlRequest::HandOver {
                successor: successor.to_string(),
            },
            timeout,
        )
        .await?,
    )
}

/// Withdraws a hand-over while the lease is still this host's (e.g. the
/// migration failed): renewals resume.
pub async fn cancel_hand_over(
    run_dir: &Path,
    timeout: Duration,
) -> Result<crate::SupervisorStatus, SupervisorError> {
    status_of(request(run_dir, &ControlRequest::CancelHandOver, timeout).await?)
}

fn status_of(reply: ControlReply) -> Result<crate::SupervisorStatus, SupervisorError> {
    match reply {
        ControlReply::Status(s) => Ok(s),
        ControlReply::Error { message } => Err(SupervisorError::Refused(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        #[command(name = "vm-supervisor")]
        VmSupervisor(crate::SupervisorArgs),
    }

    #[test]
    fn the_agent_starts_the_supervisor_with_flags_it_parses() {
        let launch = Launch {
            program: "vdc".into(),
            host: "host-1".into(),
            vm_id: "id-1".into(),
            vm_dir: "/ds/vm-1".into(),
            run_dir: "/run/vms/id-1".into(),
            timing: LeaseTiming {
                ttl: Duration::from_secs(12),
                renew_every: Duration::from_millis(1500),
                margin: Duration::from_secs(4),
            },
            qemu_pid: Some(42),
            lease_seen: Some(vdc_disk::lock::Seen {
                key: vdc_disk::lock::LeaseKey {
                    host: "host-2".into(),
                    holder: "9-abc".into(),
                    generation: 7,
                },
                since: Duration::from_millis(123_456),
            }),
        };
        let args = std::iter::once("vdc".to_string()).chain(launch.args());
        let Sub::VmSupervisor(parsed) = Cli::try_parse_from(args).unwrap().command;
        assert_eq!(parsed.host, "host-1");
        assert_eq!(parsed.vm_id, "id-1");
        assert_eq!(parsed.vm_dir, PathBuf::from("/ds/vm-1"));
        assert_eq!(parsed.run_dir, PathBuf::from("/run/vms/id-1"));
        assert_eq!(parsed.timing(), launch.timing);
        assert_eq!(parsed.qemu_pid, Some(42));
        assert_eq!(parsed.lease_seen().unwrap(), launch.lease_seen);
    }

    #[test]
    fn a_pidfile_of_something_else_is_no_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path()), None);
        // This test process is alive but is not `vdc vm-supervisor`.
        std::fs::write(dir.path().join(PID_FILE), std::process::id().to_string()).unwrap();
        assert_eq!(find(dir.path()), None);
    }
}
