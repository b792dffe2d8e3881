//! `vdc lab fail HOST --kill|--isolate|--heal`: rehearsing host failures.
//!
//! - **kill**: every process of the host's network namespace (its agent,
//!   every VM's QEMU and supervisor) is stopped with SIGSTOP, then all are
//!   killed with SIGKILL: they die together, as with a power loss. The
//!   agent's command line is kept for `--heal`.
//! - **isolate**: the root side of the host's veth goes down: the host can
//!   reach neither the server, nor the other hosts, nor its isolation
//!   address (the lab bridge), while its datastores (directories of this
//!   machine) stay reachable.
//! - **heal**: the veth comes back up and a killed agent is started again
//!   with its command line (it re-attaches to whatever still runs).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{LabError, Result};
use crate::ip::ip;
use crate::process::{self, ProcessHandle};
use crate::state::{HostRecord, LabState};

/// A fault to inject into a lab host, or its healing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every process of the host dies at once.
    Kill,
    /// The host's links are cut; its datastores stay reachable.
    Isolate,
    /// Links back up, a killed agent started again.
    Heal,
}

/// Where the agent's command line is kept between a kill and a heal.
pub fn saved_agent_cmdline(host: &HostRecord) -> PathBuf {
    host.log.with_extension("cmdline")
}

fn ns_inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Pids of the processes in network namespace `netns`.
pub fn processes_in_netns(netns: &str) -> Vec<u32> {
    let Some(ino) = ns_inode(&Path::new("/run/netns").join(netns)) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ns_inode(&PathBuf::from(format!("/proc/{pid}/ns/net"))) == Some(ino))
        .collect()
}

/// Injects `fault` into host `host` of lab `lab_id`; a line saying what
/// was done.
pub fn fail_host(lab_id: &str, state_root: &Path, host: &str, fault: Fault) -> Result<String> {
    let mut state = LabState::load(lab_id, state_root)?.ok_or(LabError::NotUp(lab_id.into()))?;
    let h = state
        .hosts
        .iter()
        .find(|h| h.name == host)
        .cloned()
        .ok_or_else(|| LabError::NoSuchHost {
            lab_id: lab_id.into(),
            host: host.into(),
        })?;
    match fault {
        Fault::Kill => kill(&h),
        Fault::Isolate => {
            ip(&["link", "set", &h.veth, "down"])?;
            Ok(format!(
                "host {host} isolated: link {} is down; its datastores stay reachable",
                h.veth
            ))
        }
        Fault::Heal => {
            ip(&["link", "set", &h.veth, "up"])?;
            let mut msg = format!("host {host}: link {} is up", h.veth);
            if !h.agent.is_some_and(|p| p.is_alive()) {
                let saved = std::fs::read_to_string(saved_agent_cmdline(&h)).map_err(|_| {
                    LabError::Fault(format!(
                        "the agent of {host} does not run and no command line was kept for it; restart the lab"
                    ))
                })?;
                let args: Vec<String> = saved.split('\0').map(str::to_string).collect();
                let (program, rest) = args.split_first().ok_or_else(|| {
                    LabError::Fault("the kept agent command line is empty".into())
                })?;
                let agent =
                    process::spawn_detached(Path::new(program), rest, &h.log, Some(&h.netns))?;
                if let Some(r) = state.hosts.iter_mut().find(|r| r.name == host) {
                    r.agent = Some(agent);
                }
                state.save()?;
                msg.push_str(&format!("; agent started again (pid {})", agent.pid));
            }
            Ok(msg)
        }
    }
}

fn kill(h: &HostRecord) -> Result<String> {
    let pids = processes_in_netns(&h.netns);
    if pids.is_empty() {
        return Err(LabError::Fault(format!(
            "no process runs in host {}'s namespace {}",
            h.name, h.netns
        )));
    }
    if let Some(agent) = h.agent.filter(|p| p.is_alive()) {
        if let Some(cmd) = process::cmdline_args(agent.pid) {
            let path = saved_agent_cmdline(h);
            std::fs::write(&path, cmd.join("\0")).map_err(|source| LabError::Io {
                what: "write",
                path,
                source,
            })?;
        }
    }
    let handles: Vec<ProcessHandle> = pids.iter().map(|p| ProcessHandle::of(*p)).collect();
    // Frozen first, so none of them sees the others die.
    for p in &handles {
        p.signal(Signal::SIGSTOP);
    }
    for p in &handles {
        p.signal(Signal::SIGKILL);
    }
    let survivors: Vec<u32> = handles
        .iter()
        .filter(|p| !p.wait_gone(Duration::from_secs(10)))
        .map(|p| p.pid)
        .collect();
    if !survivors.is_empty() {
        return Err(LabError::Fault(format!(
            "processes {survivors:?} of host {} survived SIGKILL",
            h.name
        )));
    }
    Ok(format!(
        "host {}: {} processes killed at once (agent, QEMU, supervisors)",
        h.name,
        handles.len()
    ))
}
