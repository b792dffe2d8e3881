//! HA fault injection and the "never twice" invariant checker.
//!
//! [`TestLab::fail_host`] injects the lab's host faults (`vdc lab fail`).
//! [`InvariantChecker`] watches every QEMU process of the lab's hosts from
//! a thread of its own (every 20 ms) and records, the instant it sees it,
//! any VM whose QEMU runs on two hosts at once with its vCPUs running (a
//! process neither stopped nor a zombie, with vCPU threads); tests call
//! [`InvariantChecker::check`] at each step and on drop it panics if a
//! violation was ever seen.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use vdc_lab::fail::Fault;

use crate::TestLab;

impl TestLab {
    /// Injects `fault` into `host` (as `vdc lab fail HOST --kill|--isolate|--heal`).
    ///
    /// # Panics
    /// If the fault cannot be injected.
    pub fn fail_host(&self, host: &str, fault: Fault) -> String {
        vdc_lab::fail::fail_host(&self.info.lab_id, &self.spec.state_root, host, fault)
            .unwrap_or_else(|e| panic!("{fault:?} of {host}: {}", crate::error_chain(&e)))
    }

    /// `(netns inode, host name)` of every host of the lab.
    fn host_namespaces(&self) -> Vec<(u64, String)> {
        self.info
            .hosts
            .iter()
            .filter_map(|h| {
                let ino = std::fs::metadata(Path::new("/run/netns").join(&h.netns))
                    .ok()?
                    .ino();
                Some((ino, h.name.clone()))
            })
            .collect()
    }

    /// Hosts on which each VM's QEMU runs with vCPUs running, by VM name.
    pub fn running_qemus(&self) -> BTreeMap<String, Vec<String>> {
        running_qemus(&self.host_namespaces())
    }

    /// The command line of every live QEMU of VM `vm` on the lab's hosts,
    /// with its host.
    pub fn qemu_command_lines(&self, vm: &str) -> Vec<(String, Vec<String>)> {
        let namespaces = self.host_namespaces();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_string_lossy().into_owned();
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                if !comm.starts_with("qemu-system") {
                    return None;
                }
                let ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
                let host = namespaces.iter().find(|(i, _)| *i == ino)?.1.clone();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                (vm_name(&cmdline).as_deref() == Some(vm)).then(|| {
                    let args = cmdline
                        .split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    (host, args)
                })
            })
            .collect()
    }

    /// Starts watching the lab for a VM running on two hosts at once.
    pub fn invariant_checker(&self) -> InvariantChecker {
        InvariantChecker::start(self.host_namespaces())
    }
}

fn stat_state(pid: &str) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(") ")?.1;
    after.chars().next()
}

/// Whether process `pid` has a vCPU thread not stopped.
fn vcpus_running(pid: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let tid = t.file_name().to_string_lossy().into_owned();
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        comm.starts_with("CPU ")
            && std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").and_then(|(_, a)| a.chars().next()))
                .is_some_and(|c| !matches!(c, 'T' | 't' | 'Z' | 'X'))
    })
}

/// The VM name of a QEMU command line (`-name guest=NAME,...`).
fn vm_name(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let i = args.iter().position(|a| *a == b"-name")?;
    let v = String::from_utf8_lossy(args.get(i + 1)?).into_owned();
    let name = v.strip_prefix("guest=")?.split(',').next()?.to_string();
    Some(name)
}

fn running_qemus(namespaces: &[(u64, String)]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if !comm.starts_with("qemu-system") {
            continue;
        }
        let Some(ino) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|m| m.ino())
        else {
            continue;
        };
        let Some((_, host)) = namespaces.iter().find(|(i, _)| *i == ino) else {
            continue;
        };
        if stat_state(&pid).is_none_or(|c| matches!(c, 'T' | 't' | 'Z' | 'X')) {
            continue;
        }
        let Some(name) = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|c| vm_name(&c))
        else {
            continue;
        };
        if vcpus_running(&pid) {
            out.entry(name).or_default().push(host.clone());
        }
    }
    out
}

/// Watches a lab for a VM whose QEMU runs on two hosts at once.
pub struct InvariantChecker {
    stop: Arc<AtomicBool>,
    violation: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InvariantChecker {
    fn start(namespaces: Vec<(u64, String)>) -> InvariantChecker {
        let stop = Arc::new(AtomicBool::new(false));
        let violation = Arc::new(Mutex::new(None));
        let (s, v) = (stop.clone(), violation.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (vm, hosts) in running_qemus(&namespaces) {
                    let mut distinct = hosts.clone();
                    distinct.sort();
                    distinct.dedup();
                    if distinct.len() > 1 {
                        let msg = format!(
                            "VM {vm} runs with vCPUs running on {} hosts at once: {distinct:?}",
                            distinct.len()
                        );
                        eprintln!("INVARIANT VIOLATED: {msg}");
                        if let Ok(mut g) = v.lock() {
                            g.get_or_insert(msg);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        InvariantChecker {
            stop,
            violation,
            thread: Some(thread),
        }
    }

    /// The first violation seen, if any.
    pub fn violation(&self) -> Option<String> {
        self.violation.lock().ok().and_then(|g| g.clone())
    }

    /// Panics if a VM was ever seen running on two hosts at once.
    pub fn check(&self) {
        if let Some(v) = self.violation() {
            panic!("{v}");
        }
    }
}

impl Drop for InvariantChecker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("the invariant checker's thread panicked");
            }
        }
        if !std::thread::panicking() {
            self.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_name_comes_from_the_qemu_name_option() {
        let c = b"qemu-system-x86_64\0-name\0guest=web-1,debug-threads=on\0-m\x00128\0";
        assert_eq!(vm_name(c).as_deref(), Some("web-1"));
        assert_eq!(vm_name(b"qemu\0-m\x00128\0"), None);
    }
}
