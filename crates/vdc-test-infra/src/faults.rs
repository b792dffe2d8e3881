//! Fault injection on a [`TestLab`]: killing and restarting a host's agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::TestLab;

/// The raw arguments of a process (`/proc/PID/cmdline`).
fn args_of(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `args` are those of `vdc agent` with this state directory.
fn is_agent_of(args: &[String], state_dir: &Path) -> bool {
    let dir = state_dir.to_string_lossy();
    args.iter().any(|a| a == "agent")
        && args
            .windows(2)
            .any(|w| w[0] == "--state-dir" && w[1] == dir.as_ref())
}

impl TestLab {
    fn host_status(&self, host: &str) -> &vdc_lab::HostStatus {
        match self.info.hosts.iter().find(|h| h.name == host) {
            Some(h) => h,
            None => panic!("the test lab has no host '{host}'"),
        }
    }

    fn saved_args(&self, host: &str) -> PathBuf {
        let h = self.host_status(host);
        h.log.with_extension("cmdline")
    }

    /// The pid of the agent now running for `host`, if any.
    pub fn agent_pid(&self, host: &str) -> Option<u32> {
        let state_dir = &self.host_status(host).state_dir;
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| args_of(*pid).is_some_and(|a| is_agent_of(&a, state_dir)))
    }

    /// Kills the agent of `host` with SIGKILL (as a crash would) and waits
    /// until it is gone. Its command line is kept for [`Self::restart_agent`].
    ///
    /// # Panics
    /// If the host has no running agent or it does not die.
    pub fn kill_agent(&self, host: &str) {
        let pid = self
            .agent_pid(host)
            .unwrap_or_else(|| panic!("no agent runs for {host}"));
        let args = args_of(pid).unwrap_or_else(|| panic!("agent {pid} vanished"));
        std::fs::write(self.saved_args(host), args.join("\0")).expect("save agent command line");
        let p = vdc_lab::process::ProcessHandle::of(pid);
        p.kill();
        assert!(
            p.wait_gone(Duration::from_secs(10)),
            "agent {pid} of {host} survived SIGKILL"
        );
    }

    /// Starts the agent of `host` again with the command line it had when
    /// [`Self::kill_agent`] killed it.
    ///
    /// # Panics
    /// If the agent was not killed first or cannot be started.
    pub fn restart_agent(&self, host: &str) {
        let saved = std::fs::read_to_string(self.saved_args(host))
            .unwrap_or_else(|_| panic!("restart_agent({host}) needs kill_agent({host}) first"));
        let args: Vec<String> = saved.split('\0').map(str::to_string).collect();
        let (program, rest) = args.split_first().expect("a saved command line");
        let h = self.host_status(host);
        let agent =
            vdc_lab::process::spawn_detached(Path::new(program), rest, &h.log, Some(&h.netns))
                .unwrap_or_else(|e| panic!("restarting the agent of {host}: {e}"));
        self.record_process(|state| {
            if let Some(record) = state.hosts.iter_mut().find(|r| r.name == host) {
                record.agent = Some(agent);
            }
        });
    }

    /// Records a process started by a test in the lab's state file, so the
    /// teardown stops it like the ones `up` started (a restarted server runs
    /// outside every host namespace: without this it would outlive the lab).
    fn record_process(&self, update: impl FnOnce(&mut vdc_lab::state::LabState)) {
        let mut state =
            match vdc_lab::state::LabState::load(&self.info.lab_id, &self.spec.state_root) {
                Ok(Some(state)) => state,
                Ok(None) => panic!("the state file of lab '{}' is gone", self.info.lab_id),
                Err(e) => panic!("reading the lab state: {}", crate::error_chain(&e)),
            };
        update(&mut state);
        if let Err(e) = state.save() {
            panic!("saving the lab state: {}", crate::error_chain(&e));
        }
    }
}

impl TestLab {
    /// The pid of the lab's `vdc server`, if it runs.
    pub fn server_pid(&self) -> Option<u32> {
        let token = self.info.token_file.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                args_of(*pid).is_some_and(|a| {
                    a.iter().any(|x| x == "server")
                        && a.windows(2)
                            .any(|w| w[0] == "--token-file" && w[1] == token)
                })
            })
    }

    /// Kills the lab's server with SIGKILL and waits until it is gone; its
    /// command line is kept for [`Self::restart_server`].
    ///
    /// # Panics
    /// If no server runs or it does not die.
    pub fn kill_server(&self) {
        let pid = self.server_pid().expect("the lab's server runs");
        let args = args_of(pid).expect("server command line");
        std::fs::write(
            self.info.server.log.with_extension("cmdline"),
            args.join("\0"),
        )
        .expect("save server command line");
        let p = vdc_lab::process::ProcessHandle::of(pid);
        p.kill();
        assert!(
            p.wait_gone(Duration::from_secs(10)),
            "server {pid} survived SIGKILL"
        );
    }

    /// Starts the server again as it was before [`Self::kill_server`].
    ///
    /// # Panics
    /// If the server was not killed first or cannot be started.
    pub fn restart_server(&self) {
        let saved = std::fs::read_to_string(self.info.server.log.with_extension("cmdline"))
            .expect("restart_server needs kill_server first");
        let args: Vec<String> = saved.split('\0').map(str::to_string).collect();
        let (program, rest) = args.split_first().expect("a saved command line");
        let server =
            vdc_lab::process::spawn_detached(Path::new(program), rest, &self.info.server.log, None)
                .unwrap_or_else(|e| panic!("restarting the server: {e}"));
        self.record_process(|state| state.server = Some(server));
    }
}
