//! Two sites on one machine: `vdc lab up --sites 2`.
//!
//! Each site is a whole lab of its own (server, hosts, datastores, API
//! port, subnet): site `a` is lab `<id>`, site `b` is lab `<id>b`. Their
//! servers are started with `--site-name a|b`, and then:
//! 1. **link**: every host of one site gets a route to the other site's
//!    lab-bridge address through its own lab bridge. The root namespace
//!    owns both bridge addresses, so the packets are delivered there
//!    without IP forwarding: a host of site `a` reaches site `b`'s server
//!    (and the replication relays it opens on that address), never site
//!    `b`'s hosts directly.
//!
//!    ```text
//!    host of a ──<a>br0── root ns: 10.77.A.1, 10.77.B.1 ──<b>br0── host of b
//!                           (servers of a and b, relays)
//!    ```
//! 2. **pair**: site `a`'s server is asked to pair with site `b` (its
//!    loopback URL and token).
//!
//! `vdc lab fail site-a|site-b --kill` kills a whole site at once: its
//! server, agents, QEMUs and supervisors (a disaster).

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use vdc_types::site::PairSiteRequest;

use crate::error::{LabError, Result};
use crate::ip::ip_in;
use crate::process::ProcessHandle;
use crate::state::{LabInfo, LabState};

/// Site names of a two-site lab, in order.
pub const SITE_NAMES: [&str; 2] = ["a", "b"];

/// The lab id of site `b` of lab `lab_id`.
pub fn second_site_lab_id(lab_id: &str) -> String {
    format!("{lab_id}b")
}

/// Lab id of site `site` (`a` or `b`, or `site-a`/`site-b`) of lab
/// `lab_id`, if that names a site.
pub fn site_lab_id(lab_id: &str, site: &str) -> Option<String> {
    match site.strip_prefix("site-").unwrap_or(site) {
        "a" => Some(lab_id.to_string()),
        "b" => Some(second_site_lab_id(lab_id)),
        _ => None,
    }
}

/// Step 1 (module docs): routes from each site's hosts to the other
/// site's lab-bridge address.
pub fn link(a: &LabInfo, b: &LabInfo) -> Result<()> {
    for (from, to) in [(a, b), (b, a)] {
        for h in &from.hosts {
            ip_in(
                &h.netns,
                &[
                    "route",
                    "replace",
                    &format!("{}/32", to.gateway),
                    "via",
                    &from.gateway,
                ],
            )?;
        }
    }
    Ok(())
}

/// Step 2 (module docs): pairs site `a` with site `b`.
pub async fn pair(a: &LabInfo, b: &LabInfo) -> Result<()> {
    let client = crate::lifecycle::client(a)?;
    let token = crate::lifecycle::read_token(&b.token_file)?;
    client
        .pair_site(&PairSiteRequest {
            url: b.api_url.clone(),
            token,
            name: Some(SITE_NAMES[1].to_string()),
            local_url: Some(a.api_url.clone()),
        })
        .await
        .map_err(|source| LabError::Api {
            what: "pairing site a with site b".into(),
            source,
        })?;
    Ok(())
}

/// Kills every process of lab `lab_id` at once: its server, and everything
/// in its hosts' namespaces (agents, QEMUs, supervisors).
pub fn kill_site(lab_id: &str, state_root: &Path) -> Result<String> {
    let state = LabState::load(lab_id, state_root)?.ok_or(LabError::NotUp(lab_id.into()))?;
    let mut handles: Vec<ProcessHandle> = state
        .hosts
        .iter()
        .flat_map(|h| crate::fail::processes_in_netns(&h.netns))
        .map(ProcessHandle::of)
        .collect();
    if let Some(server) = state.server.filter(|p| p.is_alive()) {
        handles.push(server);
    }
    for h in &state.hosts {
        if let Some(agent) = h.agent.filter(|p| p.is_alive()) {
            if let Some(cmd) = crate::process::cmdline_args(agent.pid) {
                let path = crate::fail::saved_agent_cmdline(h);
                std::fs::write(&path, cmd.join("\0")).map_err(|source| LabError::Io {
                    what: "write",
                    path,
                    source,
                })?;
            }
        }
    }
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
            "processes {survivors:?} of lab {lab_id} survived SIGKILL"
        )));
    }
    Ok(format!(
        "site of lab {lab_id}: {} processes killed at once (server, agents, QEMU, supervisors)",
        handles.len()
    ))
}
