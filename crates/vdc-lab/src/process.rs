//! Starting, watching and stopping the lab's processes.
//!
//! The server and the agents run detached (their own session, output to a
//! log file) so they outlive `vdc lab up`. A pid alone is a weak handle (pids
//! are reused), so the lab also records the process start time from
//! `/proc/<pid>/stat` and treats a pid whose start time changed as gone.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// A process the lab started: pid plus start time (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessHandle {
    /// Process id.
    pub pid: u32,
    /// Start time from `/proc/<pid>/stat`, to detect pid reuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}

impl ProcessHandle {
    /// A handle on a running pid, with its start time read now.
    pub fn of(pid: u32) -> Self {
        Self {
            pid,
            start_time: read_stat(pid).map(|s| s.start_time),
        }
    }

    /// Whether the process still runs (not exited, not a zombie, not a new
    /// process that reused the pid). Reaps it if it is our exited child.
    pub fn is_alive(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        // Reap our own exited children so they don't linger as zombies.
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        match read_stat(self.pid) {
            None => false,
            Some(stat) => {
                !matches!(stat.state, 'Z' | 'X' | 'x')
                    && self.start_time.is_none_or(|t| t == stat.start_time)
            }
        }
    }

    /// Sends `signal` (errors ignored: the process may be gone already).
    pub fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            if self.is_alive() {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// Waits until the process is gone; returns whether it is.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns whether the
    /// process is gone.
    pub fn terminate(&self, grace: Duration) -> bool {
        if !self.is_alive() {
            return true;
        }
        self.signal(Signal::SIGTERM);
        if self.wait_gone(grace) {
            return true;
        }
        self.kill()
    }

    /// SIGKILL and wait (up to 5 s) until it is gone.
    pub fn kill(&self) -> bool {
        self.signal(Signal::SIGKILL);
        self.wait_gone(Duration::from_secs(5))
    }
}

/// The fields of `/proc/<pid>/stat` the lab uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter (`R`, `S`, `Z`…).
    pub state: char,
    /// Start time, clock ticks after boot (field 22).
    pub start_time: u64,
}

/// Parses the content of `/proc/<pid>/stat`. The command name is in
/// parentheses and may itself contain spaces and parentheses, so the fields
/// are counted from the last `)`.
pub fn parse_stat(content: &str) -> Option<ProcStat> {
    let rest = &content[content.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 is fields[19].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The command line of a process, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The arguments of a process (`/proc/<pid>/cmdline`), program first.
pub fn cmdline_args(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Starts `program ARGS` detached: a new session, standard input from
/// /dev/null, standard output and error appended to `log`. With `netns`, it
/// runs inside that namespace (`ip netns exec`, which execs the program, so
/// the pid returned is the program's own).
pub fn spawn_detached(
    program: &Path,
    args: &[String],
    log: &Path,
    netns: Option<&str>,
) -> Result<ProcessHandle> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args);
    let command = format!(
        "{}{} {}",
        netns
            .map(|n| format!("ip netns exec {n} "))
            .unwrap_or_default(),
        program.display(),
        args.join(" ")
    );
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| LabError::Io {
                what: "open log file",
                path: log.to_path_buf(),
                source,
            })
    };
    cmd.stdin(Stdio::null())
        .stdout(open_log()?)
        .stderr(open_log()?);
    // SAFETY: setsid is async-signal-safe and touches no memory of the
    // parent; it only detaches the child from our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|source| LabError::Spawn { command, source })?;
    Ok(ProcessHandle::of(child.id()))
}

/// The last `lines` lines of a text file (empty if it can't be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_parsed_past_odd_command_names() {
        let line = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn detached_process_is_tracked_and_terminated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let p = spawn_detached(
            Path::new("/bin/sh"),
            &["-c".into(), "echo started; exec sleep 60".into()],
            &log,
            None,
        )
        .expect("spawn");
        assert!(p.is_alive());
        assert!(p.start_time.is_some());
        let deadline = Instant::now() + Duration::from_secs(10);
        while tail(&log, 5) != "started" {
            assert!(Instant::now() < deadline, "the child never wrote its log");
            std::thread::sleep(Duration::from_millis(20));
        }
        let reused = ProcessHandle {
            pid: p.pid,
            start_time: p.start_time.map(|t| t + 1),
        };
        assert!(
            !reused.is_alive(),
            "a different start time means another process"
        );
        assert!(p.terminate(Duration::from_secs(5)));
        assert!(!p.is_alive());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&f, 2), "b\nc");
        assert_eq!(tail(&dir.path().join("missing"), 2), "");
    }
}
