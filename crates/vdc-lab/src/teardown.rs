//! Tearing a lab down.
//!
//! `down` steps (each one best effort, so `down` works on any half-made lab
//! and can be repeated): stop the agents, kill every QEMU of the lab (from
//! the agents' pidfiles, then anything still inside a host namespace), stop
//! the server, delete the namespaces, veths and bridge, remove the state
//! and data directories.

use std::path::Path;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::lifecycle::require_root;
use crate::plan;
use crate::process::{self, ProcessHandle};
use crate::state::LabState;

/// Tears lab `lab_id` down (see the module docs); idempotent.
pub async fn down(lab_id: &str, state_root: &Path) -> Result<()> {
    let lab_id = lab_id.to_string();
    let state_root = state_root.to_path_buf();
    tokio::task::spawn_blocking(move || down_blocking(&lab_id, &state_root))
        .await
        .map_err(LabError::Join)?
}

/// [`down`] for callers without an async runtime (e.g. `Drop`).
pub fn down_blocking(lab_id: &str, state_root: &Path) -> Result<()> {
    plan::validate_lab_id(lab_id)?;
    require_root()?;
    let mut failures = Vec::new();
    let state = match LabState::load(lab_id, state_root) {
        Ok(s) => s,
        Err(e) => {
            failures.push(e.to_string());
            None
        }
    };
    let state_dir = state_root.join(lab_id);
    let grace = Duration::from_secs(5);

    if let Some(s) = &state {
        for h in &s.hosts {
            if let Some(agent) = h.agent {
                if !agent.terminate(grace) {
                    failures.push(format!(
                        "agent of {} (pid {}) survived SIGKILL",
                        h.name, agent.pid
                    ));
                }
            }
        }
    }
    for qemu in qemu_processes(&state_dir) {
        if !qemu.kill() {
            failures.push(format!("QEMU pid {} survived SIGKILL", qemu.pid));
        }
    }
    let mut namespaces: Vec<String> = state
        .as_ref()
        .map(|s| s.hosts.iter().map(|h| h.netns.clone()).collect())
        .unwrap_or_default();
    if let Ok(all) = crate::ip::netns_list() {
        namespaces.extend(all.into_iter().filter(|n| plan::is_lab_netns(lab_id, n)));
    }
    namespaces.sort();
    namespaces.dedup();
    for ns in &namespaces {
        // Only namespaces that still exist have processes to kill.
        let Ok(pids) = crate::ip::netns_pids(ns) else {
            continue;
        };
        for pid in pids.into_iter().filter_map(|p| u32::try_from(p).ok()) {
            let p = ProcessHandle::of(pid);
            if !p.kill() {
                failures.push(format!("pid {pid} in {ns} survived SIGKILL"));
            }
        }
    }
    for m in state.iter().flat_map(|s| s.members.iter()) {
        if let Some(p) = m.process {
            if !p.terminate(grace) {
                failures.push(format!("{} (pid {}) survived SIGKILL", m.name, p.pid));
            }
        }
    }
    if let Some(server) = state.as_ref().and_then(|s| s.server) {
        if !server.terminate(grace) {
            failures.push(format!("server (pid {}) survived SIGKILL", server.pid));
        }
    }
    failures.extend(crate::net::destroy(lab_id, &namespaces));

    if let Some(s) = &state {
        // Only ever the lab's own directory, never the data root itself.
        if s.data_dir.file_name().is_some_and(|n| n == lab_id) {
            remove_dir(&s.data_dir, &mut failures);
        } else {
            failures.push(format!(
                "data directory {} does not belong to lab '{lab_id}'; left in place",
                s.data_dir.display()
            ));
        }
    }
    remove_dir(&state_dir, &mut failures);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown {
            lab_id: lab_id.to_string(),
            failures,
        })
    }
}

fn remove_dir(dir: &Path, failures: &mut Vec<String>) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => failures.push(format!("cannot remove {}: {e}", dir.display())),
    }
}

/// QEMU processes of the lab, from the agents' pidfiles
/// (`<state-dir>/host-*/vms/*/qemu.pid`); pids that no longer run QEMU are
/// skipped.
fn qemu_processes(state_dir: &Path) -> Vec<ProcessHandle> {
    let mut found = Vec::new();
    let Ok(hosts) = std::fs::read_dir(state_dir) else {
        return found;
    };
    for host in hosts.flatten() {
        if !host.file_name().to_string_lossy().starts_with("host-") {
            continue;
        }
        let Ok(vms) = std::fs::read_dir(host.path().join("vms")) else {
            continue;
        };
        for vm in vms.flatten() {
            let Ok(text) = std::fs::read_to_string(vm.path().join("qemu.pid")) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                continue;
            };
            if process::cmdline(pid).is_some_and(|c| c.contains("qemu")) {
                found.push(ProcessHandle::of(pid));
            }
        }
    }
    found
}
