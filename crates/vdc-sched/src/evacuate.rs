//! Evacuation of a host entering maintenance (pure): which VM goes where
//! within the other hosts' capacity, how, and why one cannot move.
//!
//! Rules, VM by VM (largest memory first, so that big VMs find room while
//! there is most of it):
//! - a running VM migrates live to an available host (not the one
//!   leaving) that reaches every datastore of the VM and has room for its
//!   memory (plus QEMU's overhead) after the VMs planned there before it;
//!   the host with the most memory left wins;
//! - a running VM whose datastores no other host reaches (a host's local
//!   datastore) migrates live *with its storage* to the host with the most
//!   memory left among those with room for its memory and a datastore with
//!   room for its disks (after the disks planned there before): a shared
//!   one first, else the host's own local one;
//! - a stopped or suspended VM whose datastores another available host
//!   reaches moves by ownership only (no memory needed: it does not run);
//! - a stopped or suspended VM on storage no other host reaches (a host's
//!   local datastore) is moved cold: its files are copied to the available
//!   host with the most memory free;
//! - otherwise it stays, with the reason.

use crate::{footprint_mib, HostCapacity};

/// One VM on the host that is leaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvacuatedVm {
    /// VM name.
    pub name: String,
    /// Whether it runs (has vCPUs to keep running: live migration).
    pub running: bool,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Datastores it uses (home and disks).
    pub datastores: Vec<String>,
    /// Its disks' virtual sizes, bytes (what a storage move needs free).
    pub disk_bytes: u64,
    /// Its CPU model (`None`: not checked).
    pub cpu_model: Option<String>,
}

/// A datastore's room, for moves that copy disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRoom {
    /// Datastore name.
    pub name: String,
    /// Shared (preferred as a destination) or local to one host.
    pub shared: bool,
    /// Free bytes.
    pub free_bytes: u64,
}

/// How one VM leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evacuation {
    /// Live migration to `to`.
    Live {
        /// Destination host.
        to: String,
    },
    /// Live migration to `to` with its disks moving to `datastore` there.
    LiveWithStorage {
        /// Destination host.
        to: String,
        /// Datastore of `to` the disks move to.
        datastore: String,
    },
    /// Only the owner changes (the files are reached from `to`).
    Ownership {
        /// Destination host.
        to: String,
    },
    /// Its files are copied to a datastore of `to`.
    Cold {
        /// Destination host.
        to: String,
    },
    /// It cannot move.
    Stays {
        /// Why.
        reason: String,
    },
}

/// Plans the evacuation of `leaving`: one decision per VM, in the order
/// the moves should run. `stores`: the datastores' room, for running VMs
/// whose disks must move with them.
pub fn plan_evacuation(
    leaving: &str,
    vms: &[EvacuatedVm],
    hosts: &[HostCapacity],
    stores: &[StoreRoom],
) -> Vec<(String, Evacuation)> {
    let mut room: Vec<StoreRoom> = stores.to_vec();
    let mut others: Vec<HostCapacity> = hosts
        .iter()
        .filter(|h| h.available && h.name != leaving)
        .cloned()
        .collect();
    let mut order: Vec<&EvacuatedVm> = vms.iter().collect();
    order.sort_by(|a, b| {
        b.running
            .cmp(&a.running)
            .then(b.memory_mib.cmp(&a.memory_mib))
            .then(a.name.cmp(&b.name))
    });
    let free = |h: &HostCapacity| h.memory_free_mib.saturating_sub(h.memory_pending_mib);
    let mut plan = Vec::new();
    for vm in order {
        let reaching: Vec<usize> = (0..others.len())
            .filter(|&i| {
                vm.datastores
                    .iter()
                    .all(|d| others[i].datastores.contains(d))
                    && crate::cpu_refusal(
                        &crate::Demand {
                            cpu_model: vm.cpu_model.clone(),
                            ..Default::default()
                        },
                        &others[i],
                    )
                    .is_none()
            })
            .collect();
        let decision = if others.is_empty() {
            Evacuation::Stays {
                reason: "no other host accepts VMs (connected and not in maintenance)".into(),
            }
        } else if vm.running {
            let need = footprint_mib(vm.memory_mib);
            let best = reaching
                .iter()
                .copied()
                .filter(|&i| free(&others[i]) >= need && vm.cpus <= others[i].cpus)
                .max_by(|&a, &b| {
                    free(&others[a])
                        .cmp(&free(&others[b]))
                        .then(others[b].name.cmp(&others[a].name))
                });
            match best {
                Some(i) => {
                    others[i].memory_pending_mib += need;
                    Evacuation::Live {
                        to: others[i].name.clone(),
                    }
                }
                None if reaching.is_empty() => {
                    match with_storage(vm, need, &mut others, &mut room) {
                        Some(d) => d,
                        None => Evacuation::Stays {
                            reason: format!(
                                "no other host reaches its datastore(s) {}, and none has {need} MiB of memory and a datastore with {} bytes free for its disks",
                                vm.datastores.join(", "),
                                vm.disk_bytes
                            ),
                        },
                    }
                }
                None => {
                    let most = reaching
                        .iter()
                        .map(|&i| free(&others[i]))
                        .max()
                        .unwrap_or(0);
                    Evacuation::Stays {
                        reason: format!(
                            "no host reaching its datastores has {need} MiB of memory free (most: {most} MiB)"
                        ),
                    }
                }
            }
        } else if let Some(&i) = reaching.iter().max_by(|&&a, &&b| {
            free(&others[a])
                .cmp(&free(&others[b]))
                .then(others[b].name.cmp(&others[a].name))
        }) {
            Evacuation::Ownership {
                to: others[i].name.clone(),
            }
        } else {
            let best = (0..others.len()).max_by(|&a, &b| {
                free(&others[a])
                    .cmp(&free(&others[b]))
                    .then(others[b].name.cmp(&others[a].name))
            });
            match best {
                Some(i) => Evacuation::Cold {
                    to: others[i].name.clone(),
                },
                None => Evacuation::Stays {
                    reason: "no other host accepts VMs".into(),
                },
            }
        };
        plan.push((vm.name.clone(), decision));
    }
    plan
}

/// A live migration with storage for running `vm` (see the module doc),
/// booked in `others` and `room`.
fn with_storage(
    vm: &EvacuatedVm,
    need: u64,
    others: &mut [HostCapacity],
    room: &mut [StoreRoom],
) -> Option<Evacuation> {
    let free = |h: &HostCapacity| h.memory_free_mib.saturating_sub(h.memory_pending_mib);
    let store_for = |h: &HostCapacity, room: &[StoreRoom]| -> Option<usize> {
        let mut fit: Vec<usize> = (0..room.len())
            .filter(|&j| {
                h.datastores.contains(&room[j].name)
                    && !vm.datastores.contains(&room[j].name)
                    && room[j].free_bytes >= vm.disk_bytes
            })
            .collect();
        fit.sort_by(|&a, &b| {
            room[b]
                .shared
                .cmp(&room[a].shared)
                .then(room[a].name.cmp(&room[b].name))
        });
        fit.first().copied()
    };
    let cpu_fits = |h: &HostCapacity| {
        let demand = crate::Demand {
            cpu_model: vm.cpu_model.clone(),
            ..Default::default()
        };
        crate::cpu_refusal(&demand, h).is_none()
    };
    let best = (0..others.len())
        .filter(|&i| free(&others[i]) >= need && vm.cpus <= others[i].cpus)
        .filter(|&i| cpu_fits(&others[i]) && store_for(&others[i], room).is_some())
        .max_by(|&a, &b| {
            free(&others[a])
                .cmp(&free(&others[b]))
                .then(others[b].name.cmp(&others[a].name))
        })?;
    let j = store_for(&others[best], room)?;
    others[best].memory_pending_mib += need;
    room[j].free_bytes -= vm.disk_bytes;
    Some(Evacuation::LiveWithStorage {
        to: others[best].name.clone(),
        datastore: room[j].name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, free: u64, ds: &[&str]) -> HostCapacity {
        HostCapacity {
            switches: None,
            name: name.into(),
            available: true,
            cpus: 2,
            memory_mib: 4096,
            memory_free_mib: free,
            memory_pending_mib: 0,
            vcpus_committed: 0,
            datastores: ds.iter().map(|s| s.to_string()).collect(),
            cpu: None,
        }
    }

    fn vm(name: &str, running: bool, mib: u64, ds: &[&str]) -> EvacuatedVm {
        EvacuatedVm {
            name: name.into(),
            running,
            memory_mib: mib,
            cpus: 1,
            datastores: ds.iter().map(|s| s.to_string()).collect(),
            disk_bytes: 1 << 30,
            cpu_model: None,
        }
    }

    fn store(name: &str, shared: bool, free: u64) -> StoreRoom {
        StoreRoom {
            name: name.into(),
            shared,
            free_bytes: free,
        }
    }

    fn decision<'a>(plan: &'a [(String, Evacuation)], name: &str) -> &'a Evacuation {
        &plan.iter().find(|(n, _)| n == name).expect("planned").1
    }

    #[test]
    fn running_vms_spread_within_capacity_and_the_rest_stay_with_a_reason() {
        let hosts = [
            host("h1", 4000, &["shared", "local-h1"]),
            host("h2", 700, &["shared", "local-h2"]),
            host("h3", 500, &["shared", "local-h3"]),
        ];
        let vms = [
            vm("a", true, 256, &["shared"]),
            vm("b", true, 256, &["shared"]),
            vm("c", true, 256, &["shared"]),
            vm("d", true, 512, &["shared"]),
        ];
        let plan = plan_evacuation("h1", &vms, &hosts, &[]);
        // d (largest) first onto h2 (700 - 640 left), then a onto h3 (500 -
        // 384), then b and c find no host with 384 MiB free.
        assert_eq!(decision(&plan, "d"), &Evacuation::Live { to: "h2".into() });
        assert_eq!(decision(&plan, "a"), &Evacuation::Live { to: "h3".into() });
        for n in ["b", "c"] {
            match decision(&plan, n) {
                Evacuation::Stays { reason } => assert!(reason.contains("384 MiB"), "{reason}"),
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    #[test]
    fn stopped_vms_move_by_ownership_or_cold_by_their_storage() {
        let hosts = [
            host("h1", 4000, &["shared", "local-h1"]),
            host("h2", 1000, &["shared", "local-h2"]),
            host("h3", 2000, &["shared", "local-h3"]),
        ];
        let vms = [
            vm("shared-stopped", false, 4096, &["shared"]),
            vm("local-stopped", false, 128, &["local-h1"]),
            vm("local-running", true, 128, &["local-h1"]),
        ];
        let plan = plan_evacuation("h1", &vms, &hosts, &[]);
        assert_eq!(
            decision(&plan, "shared-stopped"),
            &Evacuation::Ownership { to: "h3".into() }
        );
        assert_eq!(
            decision(&plan, "local-stopped"),
            &Evacuation::Cold { to: "h3".into() }
        );
        assert!(matches!(
            decision(&plan, "local-running"),
            Evacuation::Stays { reason } if reason.contains("local-h1")
        ));
    }

    #[test]
    fn running_vms_on_local_storage_leave_with_their_disks_where_there_is_room() {
        let hosts = [
            host("h1", 4000, &["local-h1"]),
            host("h2", 1000, &["local-h2"]),
            host("h3", 2000, &["local-h3"]),
        ];
        let gib = 1u64 << 30;
        let vms = [
            vm("a", true, 256, &["local-h1"]),
            vm("b", true, 256, &["local-h1"]),
            vm("c", true, 256, &["local-h1"]),
        ];
        // h3 has the most memory but room for one disk only; h2 takes the
        // rest; nothing is left for the third once both are full.
        let stores = [
            store("local-h1", false, 100 * gib),
            store("local-h2", false, gib),
            store("local-h3", false, gib),
        ];
        let plan = plan_evacuation("h1", &vms, &hosts, &stores);
        let to = |n: &str| match decision(&plan, n) {
            Evacuation::LiveWithStorage { to, datastore } => Some((to.clone(), datastore.clone())),
            _ => None,
        };
        assert_eq!(to("a"), Some(("h3".into(), "local-h3".into())));
        assert_eq!(to("b"), Some(("h2".into(), "local-h2".into())));
        match decision(&plan, "c") {
            Evacuation::Stays { reason } => assert!(reason.contains("bytes free"), "{reason}"),
            other => panic!("c: {other:?}"),
        }
        // A shared datastore the destination reaches is preferred.
        let hosts = [
            host("h1", 4000, &["local-h1", "shared"]),
            host("h2", 1000, &["local-h2", "shared"]),
        ];
        let vms = [vm("d", true, 128, &["local-h1"])];
        let stores = [
            store("local-h2", false, 9 * gib),
            store("shared", true, 9 * gib),
        ];
        let plan = plan_evacuation("h1", &vms, &hosts, &stores);
        assert_eq!(
            decision(&plan, "d"),
            &Evacuation::LiveWithStorage {
                to: "h2".into(),
                datastore: "shared".into()
            }
        );
    }

    #[test]
    fn hosts_in_maintenance_or_disconnected_take_nothing() {
        let mut h2 = host("h2", 4000, &["shared"]);
        h2.available = false;
        let plan = plan_evacuation(
            "h1",
            &[vm("a", true, 64, &["shared"])],
            &[host("h1", 4000, &["shared"]), h2],
            &[],
        );
        assert!(matches!(decision(&plan, "a"), Evacuation::Stays { .. }));
    }
}
