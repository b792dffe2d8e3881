//! Watching a process (QEMU, or a VM's supervisor) and signalling it,
//! whether we spawned it or found it again after a restart.
//!
//! Exit is observed through a pidfd (readable once the process has exited),
//! which works for any process, child or not, and is immune to pid reuse;
//! where pidfds are unavailable it falls back to polling `/proc/PID`. A
//! child we spawned is additionally waited for, so it never lingers as a
//! zombie. Signals go through the pidfd too, so a recycled pid is never
//! hit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A process and a flag that turns true once it has exited.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pidfd: Option<Arc<OwnedFd>>,
    exited: watch::Receiver<bool>,
    monitor: JoinHandle<()>,
}

impl Drop for Process {
    fn drop(&mut self) {
        // Stops watching; the process itself keeps running.
        self.monitor.abort();
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether `/proc/PID` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of process `pid`, split into arguments.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Reads a pidfile; `None` if absent or not a pid.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
}

async fn wait_pidfd(fd: Arc<OwnedFd>) -> bool {
    // SAFETY: `PidFd` keeps the fd open (it owns an `Arc<OwnedFd>`) for as
    // long as the `AsyncFd` lives, and nothing closes or replaces it.
    let registered =
        unsafe { AsyncFd::register_with_interest(PidFd(fd), tokio::io::Interest::READABLE) };
    match registered {
        Ok(afd) => afd.readable().await.is_ok(),
        Err(_) => false,
    }
}

async fn poll_proc(pid: u32) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while pid_alive(pid) {
        tick.tick().await;
    }
}

struct PidFd(Arc<OwnedFd>);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl Process {
    /// Watches a child we spawned.
    pub fn from_child(mut child: tokio::process::Child, pid: u32) -> Process {
        let pidfd = pidfd_open(pid).map(Arc::new);
        let (tx, exited) = watch::channel(false);
        let monitor = tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => tracing::info!(pid, %status, "process exited"),
                Err(e) => tracing::warn!(pid, error = %e, "waiting for a child failed"),
            }
            tx.send_replace(true);
        });
        Process {
            pid,
            pidfd,
            exited,
            monitor,
        }
    }

    /// Watches a process that is not our child (found after a restart).
    pub fn from_pid(pid: u32) -> Process {
        let pidfd = pidfd_open(pid).map(Arc::new);
        let (tx, exited) = watch::channel(!pid_alive(pid));
        let fd = pidfd.clone();
        let monitor = tokio::spawn(async move {
            let watched = match fd {
                Some(fd) => wait_pidfd(fd).await,
                None => false,
            };
            if !watched {
                poll_proc(pid).await;
            }
            tracing::info!(pid, "process exited");
            tx.send_replace(true);
        });
        Process {
            pid,
            pidfd,
            exited,
            monitor,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    /// Resolves once the process is gone.
    pub async fn wait(&self) {
        let mut rx = self.exited.clone();
        // An error means the monitor is gone, which only happens on drop.
        let _ = rx.wait_for(|e| *e).await;
    }

    /// Waits at most `limit` for the exit; true if it happened.
    pub async fn wait_for(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }

    /// Sends `signal` unless the process already exited.
    pub fn signal(&self, signal: i32) {
        if self.has_exited() {
            return;
        }
        let rc = match &self.pidfd {
            // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: kill(2) with a pid and a signal number.
            None => unsafe { libc::kill(self.pid as libc::pid_t, signal) as libc::c_long },
        };
        if rc != 0 {
            tracing::debug!(pid = self.pid, signal, error = %std::io::Error::last_os_error(), "signal not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_a_child_exit_and_kills() {
        let child = tokio::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id().expect("pid");
        let p = Process::from_child(child, pid);
        assert!(!p.has_exited());
        assert!(pid_alive(pid));
        // Right after fork the child may not have exec'd `sleep` yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !cmdline(pid).is_some_and(|c| c.contains(&"30".to_string())) {
            assert!(
                std::time::Instant::now() < deadline,
                "cmdline of sleep never seen"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        p.signal(libc::SIGKILL);
        assert!(p.wait_for(Duration::from_secs(5)).await, "exit seen");
    }

    #[tokio::test]
    async fn sees_a_foreign_process_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let p = Process::from_pid(pid);
        assert!(!p.has_exited());
        p.signal(libc::SIGTERM);
        // Reap it ourselves, as its real parent would.
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        assert!(p.wait_for(Duration::from_secs(5)).await, "exit seen");
        assert!(!pid_alive(pid));
    }

    #[test]
    fn pidfile_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("qemu.pid");
        assert_eq!(read_pidfile(&f), None);
        std::fs::write(&f, "1234\n").expect("write");
        assert_eq!(read_pidfile(&f), Some(1234));
        std::fs::write(&f, "x").expect("write");
        assert_eq!(read_pidfile(&f), None);
    }
}
