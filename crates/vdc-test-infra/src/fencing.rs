//! Faults for fencing tests: a frozen agent (SIGSTOP), a datastore that
//! stops accepting writes (a loop-mounted ext4 image under `fsfreeze`), and
//! reading what the lease and the processes of a VM look like from outside.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::TestLab;

/// A VM lease as read from `vm.lock` (only the fields tests look at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// Holding host.
    pub host: String,
    /// Generation (bumped by every renewal).
    pub generation: u64,
}

/// Reads `<vm_dir>/vm.lock`; `None` if absent or unreadable.
pub fn read_lease(vm_dir: &Path) -> Option<LeaseView> {
    let bytes = std::fs::read(vm_dir.join("vm.lock")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(LeaseView {
        host: v.get("host")?.as_str()?.to_string(),
        generation: v.get("generation")?.as_u64()?,
    })
}

/// Reads a pidfile (`None` if absent or not a pid).
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn pid_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .is_some_and(|st| st == "Z" || st == "X")
        })
        .unwrap_or(false)
}

/// Whether `pid` is gone, a zombie, or has SIGKILL pending (a process
/// blocked in the kernel on a frozen file system dies only when the call
/// returns, but it is already killed: its vCPUs no longer run).
pub fn pid_killed(pid: u32) -> bool {
    if !pid_running(pid) {
        return true;
    }
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status.lines().any(|l| {
        let Some((key, value)) = l.split_once(':') else {
            return false;
        };
        matches!(key, "SigPnd" | "ShdPnd")
            && u64::from_str_radix(value.trim(), 16).is_ok_and(|m| m & SIGKILL_BIT != 0)
    })
}

/// Sends `signal` to `pid`.
///
/// # Panics
/// If the signal cannot be sent.
pub fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal)
        .unwrap_or_else(|e| panic!("cannot send {signal} to {pid}: {e}"));
}

/// An agent stopped with SIGSTOP; SIGCONT on drop (also when a test
/// fails half-way), unless [`FrozenAgent::thaw`] ran first.
pub struct FrozenAgent {
    pid: Option<u32>,
}

impl FrozenAgent {
    /// Thaws the agent now.
    pub fn thaw(mut self) {
        if let Some(pid) = self.pid.take() {
            signal(pid, Signal::SIGCONT);
        }
    }
}

impl Drop for FrozenAgent {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            if let Err(e) = kill(Pid::from_raw(pid as i32), Signal::SIGCONT) {
                eprintln!("cannot thaw agent {pid}: {e}");
            }
        }
    }
}

impl TestLab {
    /// Freezes the agent of `host` with SIGSTOP (as a hung or swapped-out
    /// process would be).
    ///
    /// # Panics
    /// If the host has no running agent.
    pub fn freeze_agent(&self, host: &str) -> FrozenAgent {
        let pid = self
            .agent_pid(host)
            .unwrap_or_else(|| panic!("no agent runs for {host}"));
        signal(pid, Signal::SIGSTOP);
        FrozenAgent { pid: Some(pid) }
    }

    /// The state directory of `host`'s agent.
    ///
    /// # Panics
    /// If the lab has no such host.
    pub fn agent_state_dir(&self, host: &str) -> PathBuf {
        match self.info.hosts.iter().find(|h| h.name == host) {
            Some(h) => h.state_dir.clone(),
            None => panic!("the test lab has no host '{host}'"),
        }
    }

    /// The directory of datastore `name`.
    ///
    /// # Panics
    /// If the lab has no such datastore.
    pub fn datastore_path(&self, name: &str) -> PathBuf {
        match self.info.datastores.iter().find(|d| d.name == name) {
            Some(d) => d.path.clone(),
            None => panic!("the test lab has no datastore '{name}'"),
        }
    }
}

/// An ext4 file system in an image file, loop-mounted over a directory
/// (e.g. a host's local datastore), that can be frozen (`fsfreeze`): writes
/// then hang in the kernel as on a stalled shared datastore. On drop it is
/// thawed and unmounted (lazily, so a process still using it does not
/// stop the teardown).
///
/// A lab's agent runs in a mount namespace of its own (`ip netns exec`
/// makes one), so the mount is made there, and read back by tests through
/// `/proc/PID/root` ([`LoopDatastore::seen`]).
pub struct LoopDatastore {
    mount: PathBuf,
    ns_pid: u32,
    _image_dir: tempfile::TempDir,
    frozen: bool,
}

/// `nsenter -t PID -m` (the mount namespace of `pid`) then `program`.
fn in_ns(pid: u32, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["-t", &pid.to_string(), "-m", program]);
    c
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopDatastore {
    /// Makes a `size_mib` ext4 image and mounts it over `mount` (which must
    /// be an empty directory) in the mount namespace of process `ns_pid`.
    ///
    /// # Panics
    /// If any step fails.
    pub fn mount_over(mount: &Path, size_mib: u64, ns_pid: u32) -> LoopDatastore {
        let dir = tempfile::Builder::new()
            .prefix("vdc-test-ds-")
            .tempdir()
            .expect("temporary directory");
        let image = dir.path().join("ds.ext4");
        let f = std::fs::File::create(&image).expect("image file");
        f.set_len(size_mib << 20).expect("image size");
        drop(f);
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)).expect("mkfs.ext4");
        run(in_ns(ns_pid, "mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(mount))
        .expect("loop mount");
        LoopDatastore {
            mount: mount.to_path_buf(),
            ns_pid,
            _image_dir: dir,
            frozen: false,
        }
    }

    /// `path` (inside the mount) as the namespace's processes see it.
    pub fn seen(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.ns_pid)).join(rel)
    }

    /// Freezes the file system: every write blocks until [`Self::thaw`].
    ///
    /// # Panics
    /// If `fsfreeze` fails.
    pub fn freeze(&mut self) {
        run(in_ns(self.ns_pid, "fsfreeze")
            .arg("--freeze")
            .arg(&self.mount))
        .expect("fsfreeze");
        self.frozen = true;
    }

    /// Lets writes through again.
    ///
    /// # Panics
    /// If `fsfreeze` fails.
    pub fn thaw(&mut self) {
        run(in_ns(self.ns_pid, "fsfreeze")
            .arg("--unfreeze")
            .arg(&self.mount))
        .expect("fsfreeze");
        self.frozen = false;
    }
}

impl Drop for LoopDatastore {
    fn drop(&mut self) {
        if self.frozen {
            if let Err(e) = run(in_ns(self.ns_pid, "fsfreeze")
                .arg("--unfreeze")
                .arg(&self.mount))
            {
                eprintln!("cannot thaw {}: {e}", self.mount.display());
            }
        }
        if let Err(e) = run(in_ns(self.ns_pid, "umount").arg("-l").arg(&self.mount)) {
            eprintln!("cannot unmount {}: {e}", self.mount.display());
        }
    }
}
