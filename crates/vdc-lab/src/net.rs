//! The lab's "physical" network: one bridge in the root namespace, one
//! network namespace per host joined to it by a veth pair.
//!
//! ```text
//!  root namespace                      namespace vdc-<id>-h<i>
//!  <id>br0 10.77.N.1/24 ── <id>h<i> ══ uplink0 ── vmbr0 10.77.N.(10+i)/24
//!     (server listens here)   veth pair                └── VM taps
//! ```
//!
//! Steps of [`create`]:
//! 1. under a machine-wide lock, check that no route overlaps the lab's
//!    subnet and create the lab bridge with `10.77.N.1/24`;
//! 2. per host: create the namespace, bring `lo` up, create the veth pair
//!    with its peer directly inside the namespace as `uplink0`, enslave the
//!    root side to the lab bridge, create `vmbr0` in the namespace with
//!    `uplink0` in it and the host's address on it.
//!
//! Every bridge gets a fixed MAC address ([`plan::bridge_mac`]): VM taps
//! come and go on `vmbr0`, and a bridge left to pick its own MAC would
//! change it with them, cutting the host off its neighbours until their
//! ARP entries go stale.
//!
//! [`destroy`] removes the namespaces (which takes the veth pairs with
//! them), then any leftover lab interface, matched by name so it also
//! cleans up after a crash.

use std::fs::File;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{LabError, Result};
use crate::ip::{ip, ip_delete, ip_in, link_names, netns_list};
use crate::plan::{self, LabPlan, HOST_BRIDGE, HOST_UPLINK};

/// Lock file serialising subnet checks and bridge creation across labs
/// started in parallel (tests).
const NET_LOCK: &str = "/run/lock/vdc-lab-net.lock";

fn net_lock() -> Result<Flock<File>> {
    let path = std::path::Path::new(NET_LOCK);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
            what: "create",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LabError::Io {
            what: "open",
            path: path.to_path_buf(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| LabError::Io {
        what: "lock",
        path: path.to_path_buf(),
        source: errno.into(),
    })
}

/// Checks that the lab's subnet is free: no route overlaps it.
pub fn check_subnet_free(subnet_index: u8) -> Result<()> {
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    match plan::find_overlapping_route(&routes, subnet_index) {
        Some(route) => Err(LabError::SubnetInUse {
            subnet: plan::subnet_cidr(subnet_index),
            route,
        }),
        None => Ok(()),
    }
}

/// Whether a subnet index is free right now (no overlapping route).
pub fn subnet_is_free(subnet_index: u8) -> bool {
    check_subnet_free(subnet_index).is_ok()
}

/// Creates the lab network described by `plan` (see the module docs).
/// On error, what was created stays: the caller tears the lab down.
pub fn create(plan: &LabPlan) -> Result<()> {
    {
        let _lock = net_lock()?;
        check_subnet_free(plan.subnet_index)?;
        if crate::ip::link_exists(&plan.bridge)? {
            return Err(LabError::AlreadyUp(plan.lab_id.clone()));
        }
        let mac = plan::bridge_mac(plan.gateway);
        ip(&[
            "link",
            "add",
            &plan.bridge,
            "address",
            &mac,
            "type",
            "bridge",
        ])?;
        let gw = format!("{}/24", plan.gateway);
        ip(&["addr", "add", &gw, "dev", &plan.bridge])?;
    }
    ip(&["link", "set", &plan.bridge, "up"])?;
    for host in &plan.hosts {
        let ns = host.netns.as_str();
        ip(&["netns", "add", ns])?;
        ip_in(ns, &["link", "set", "lo", "up"])?;
        ip(&[
            "link",
            "add",
            &host.veth,
            "type",
            "veth",
            "peer",
            "name",
            HOST_UPLINK,
            "netns",
            ns,
        ])?;
        ip(&["link", "set", &host.veth, "master", &plan.bridge])?;
        ip(&["link", "set", &host.veth, "up"])?;
        let mac = plan::bridge_mac(host.address);
        ip_in(
            ns,
            &[
                "link",
                "add",
                HOST_BRIDGE,
                "address",
                &mac,
                "type",
                "bridge",
            ],
        )?;
        ip_in(ns, &["link", "set", HOST_UPLINK, "master", HOST_BRIDGE])?;
        ip_in(ns, &["link", "set", HOST_UPLINK, "up"])?;
        let addr = format!("{}/24", host.address);
        ip_in(ns, &["addr", "add", &addr, "dev", HOST_BRIDGE])?;
        ip_in(ns, &["link", "set", HOST_BRIDGE, "up"])?;
    }
    Ok(())
}

/// Removes every network object of lab `lab_id`: the namespaces in
/// `known_netns` and any other `vdc-<id>-h<N>`, then the lab bridge and any
/// `<id>h<N>` veth left behind. Idempotent; returns one line per failure.
pub fn destroy(lab_id: &str, known_netns: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut namespaces: Vec<String> = known_netns.to_vec();
    match netns_list() {
        Ok(all) => namespaces.extend(all.into_iter().filter(|n| plan::is_lab_netns(lab_id, n))),
        Err(e) => failures.push(e.to_string()),
    }
    namespaces.sort();
    namespaces.dedup();
    for ns in &namespaces {
        if let Err(e) = ip_delete(&["netns", "delete", ns]) {
            failures.push(e.to_string());
        }
    }
    // Deleting a namespace destroys its veth ends asynchronously; give the
    // kernel a moment before deleting what is left by name.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let leftovers: Vec<String> = match link_names() {
            Ok(names) => names
                .into_iter()
                .filter(|n| plan::is_lab_interface(lab_id, n) && *n != plan::bridge_name(lab_id))
                .collect(),
            Err(e) => {
                failures.push(e.to_string());
                break;
            }
        };
        if leftovers.is_empty() || std::time::Instant::now() >= deadline {
            for link in leftovers {
                if let Err(e) = ip_delete(&["link", "delete", &link]) {
                    failures.push(e.to_string());
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(e) = ip_delete(&["link", "delete", &plan::bridge_name(lab_id)]) {
        failures.push(e.to_string());
    }
    if let Err(e) = crate::migration_net::destroy(lab_id) {
        failures.push(e.to_string());
    }
    failures
}
