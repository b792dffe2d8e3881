//! Lease watches before a failover: which surviving hosts start watching
//! which VMs' leases while a host is only *suspect*.
//!
//! A VM of a dead host may start elsewhere only once its lease was seen
//! unchanged for a TTL on the new host's own clock. Detection (both
//! heartbeats silent) takes a few seconds; if the watch began only then,
//! a restart would cost detection plus a TTL. So as soon as a host's
//! reports are late ([`is_suspect`]: half the network timeout), the hosts a
//! failover would place its VMs on begin watching those leases
//! ([`watch_plan`]); the failover's start there waits only what is left of
//! the TTL. A watch writes nothing: a suspect that recovers costs a few
//! file reads, and the plan (hence the watches) empties when it reports
//! again.
//!
//! ```text
//!  connected ──report late > network/2──► suspect: watches begin
//!     ▲                                       │ report arrives
//!     └───────────────────────────────────────┘ watches dropped
//!  suspect ──both heartbeats silent──► failed: failover; its start
//!     continues the watch (a TTL counted from the watch's first read)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::ha::HeartbeatTimeouts;
use crate::{place, Demand, HostCapacity};

/// Hosts watching each VM's lease, at most (the best placements).
pub const WATCHERS_PER_VM: usize = 2;

/// Whether a host whose last report is `network_age` old is suspect: its
/// reports are late by half the network timeout (agents report every
/// second). Suspicion only starts watches; it restarts nothing.
pub fn is_suspect(network_age: Option<Duration>, timeouts: &HeartbeatTimeouts) -> bool {
    network_age.is_some_and(|a| a > timeouts.network / 2)
}

/// A VM whose lease may need watching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolderVm {
    /// VM name.
    pub name: String,
    /// The host that holds (or held) its lease: its owner, or the host a
    /// failover in progress moves it from.
    pub holder: String,
    /// The host a failover in progress starts it on, if any.
    pub failover_to: Option<String>,
    /// What it asks of a host.
    pub demand: Demand,
    /// Whether HA restarts it (priority not disabled).
    pub protected: bool,
}

/// Which hosts watch which VMs' leases: the protected VMs whose holder is
/// suspect, each watched by the host a failover in progress starts it on,
/// else by the [`WATCHERS_PER_VM`] hosts placement would pick in turn
/// (never a suspect host nor the holder). Host → VM names.
pub fn watch_plan(
    vms: &[LeaseHolderVm],
    suspect: impl Fn(&str) -> bool,
    hosts: &[HostCapacity],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut plan: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for vm in vms.iter().filter(|v| v.protected && suspect(&v.holder)) {
        let watchers: Vec<String> = match &vm.failover_to {
            Some(to) if *to != vm.holder => vec![to.clone()],
            _ => {
                let mut left: Vec<HostCapacity> = hosts
                    .iter()
                    .filter(|h| h.available && h.name != vm.holder && !suspect(&h.name))
                    .cloned()
                    .collect();
                let mut chosen = Vec::new();
                while chosen.len() < WATCHERS_PER_VM {
                    let Ok(best) = place(&vm.demand, &left) else {
                        break;
                    };
                    left.retain(|h| h.name != best);
                    chosen.push(best);
                }
                chosen
            }
        };
        for w in watchers {
            plan.entry(w).or_default().insert(vm.name.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, free: u64) -> HostCapacity {
        HostCapacity {
            switches: None,
            name: name.into(),
            available: true,
            cpus: 2,
            memory_mib: 24_000,
            memory_free_mib: free,
            memory_pending_mib: 0,
            vcpus_committed: 0,
            datastores: vec!["shared".into()],
            cpu: None,
        }
    }

    fn vm(name: &str, holder: &str) -> LeaseHolderVm {
        LeaseHolderVm {
            name: name.into(),
            holder: holder.into(),
            failover_to: None,
            demand: Demand {
                switches: vec![],
                cpus: 1,
                memory_mib: 128,
                datastores: vec!["shared".into()],
                cpu_model: None,
            },
            protected: true,
        }
    }

    const T: HeartbeatTimeouts = HeartbeatTimeouts {
        network: Duration::from_millis(2500),
        datastore: Duration::from_millis(2500),
    };

    #[test]
    fn suspect_after_half_the_network_timeout() {
        assert!(!is_suspect(None, &T));
        assert!(!is_suspect(Some(Duration::from_millis(1000)), &T));
        assert!(!is_suspect(Some(Duration::from_millis(1250)), &T));
        assert!(is_suspect(Some(Duration::from_millis(1251)), &T));
    }

    #[test]
    fn the_best_placements_of_a_suspect_s_vms_watch_them() {
        let hosts = [
            host("h1", 8000),
            host("h2", 4000),
            host("h3", 2000),
            host("h4", 100),
        ];
        let mut off = vm("off", "h1");
        off.protected = false;
        let mut moving = vm("moving", "h1");
        moving.failover_to = Some("h3".into());
        let mut far = vm("far", "h1");
        far.demand.datastores = vec!["elsewhere".into()];
        let vms = [vm("a", "h1"), vm("b", "h2"), off, moving, far];
        let plan = watch_plan(&vms, |h| h == "h1", &hosts);
        // "a": the two best placements apart from h1 (h4 has no room);
        // "b" is on a healthy host; "off" is not protected; "moving" is
        // watched where its failover starts it; nobody reaches "far".
        let names = |h: &str| plan.get(h).map(|s| s.iter().cloned().collect::<Vec<_>>());
        assert_eq!(names("h2"), Some(vec!["a".to_string()]));
        assert_eq!(
            names("h3"),
            Some(vec!["a".to_string(), "moving".to_string()])
        );
        assert_eq!(names("h1"), None);
        assert_eq!(names("h4"), None);
        // Nothing suspect: nothing watched.
        assert!(watch_plan(&vms, |_| false, &hosts).is_empty());
        // Another suspect host does not watch.
        let plan = watch_plan(&vms, |h| h == "h1" || h == "h2", &hosts);
        assert_eq!(plan.keys().cloned().collect::<Vec<_>>(), ["h3"]);
    }
}
