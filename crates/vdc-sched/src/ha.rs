//! High availability decisions: how healthy a host is from its two
//! heartbeats, and which VMs of a failed host to restart, in what order.
//!
//! Two signals, each an age measured on the server's own monotonic clock
//! (never a host's wall clock):
//!
//! - the **network heartbeat**: the time since the host's last report
//!   (agents report about every second);
//! - the **datastore heartbeat**: the time since the server last saw the
//!   host's heartbeat file on a shared datastore *change* (agents rewrite
//!   it about every second with a growing sequence number).
//!
//! ```text
//!   network fresh                                  → connected
//!   network silent, datastore heartbeat fresh      → isolated_or_partitioned
//!   network silent, datastore heartbeat silent too → failed
//! ```
//!
//! Only a *failed* host's VMs are restarted elsewhere, and each restart
//! still waits for the VM's datastore lease to expire or be released (the
//! lease, not this verdict, is what keeps a VM from running twice).

use std::time::Duration;

/// What the HA manager makes of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostVerdict {
    /// Reports arrive.
    Connected,
    /// Reports stopped but the host still writes its datastore heartbeat:
    /// cut from the network (or the server is), alive. Its VMs are not
    /// restarted while they hold their leases.
    IsolatedOrPartitioned,
    /// Both heartbeats stopped: the host is dead (or frozen).
    Failed,
}

/// How long each heartbeat may be silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatTimeouts {
    /// Longest silence of the network heartbeat (reports).
    pub network: Duration,
    /// Longest silence of the datastore heartbeat.
    pub datastore: Duration,
}

impl Default for HeartbeatTimeouts {
    fn default() -> Self {
        HeartbeatTimeouts {
            network: DEFAULT_NETWORK_TIMEOUT,
            datastore: DEFAULT_DATASTORE_TIMEOUT,
        }
    }
}

/// Default longest silence of the network heartbeat: two missed reports
/// and a half.
pub const DEFAULT_NETWORK_TIMEOUT: Duration = Duration::from_millis(2500);

/// Default longest silence of the datastore heartbeat.
pub const DEFAULT_DATASTORE_TIMEOUT: Duration = Duration::from_millis(2500);

/// Judges a host from the ages of its heartbeats. `None` means the signal
/// was never seen (a host without a shared datastore has no datastore
/// heartbeat: its network silence alone makes it failed).
pub fn judge_host(
    network_age: Option<Duration>,
    datastore_age: Option<Duration>,
    timeouts: &HeartbeatTimeouts,
) -> HostVerdict {
    let fresh = |age: Option<Duration>, limit: Duration| age.is_some_and(|a| a <= limit);
    if fresh(network_age, timeouts.network) {
        HostVerdict::Connected
    } else if fresh(datastore_age, timeouts.datastore) {
        HostVerdict::IsolatedOrPartitioned
    } else {
        HostVerdict::Failed
    }
}

/// Restart priority of a VM; `Disabled` VMs are never restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RestartPriority {
    /// Restarted first.
    High,
    /// The default.
    Medium,
    /// Restarted last.
    Low,
    /// Not protected.
    Disabled,
}

/// A VM as the restart plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// VM name.
    pub name: String,
    /// Its restart priority.
    pub priority: RestartPriority,
    /// Its owner host.
    pub owner: String,
    /// Whether its owner lost it (state `unknown`) and no operation holds it.
    pub lost_and_free: bool,
    /// Its isolation response stops it (shut down, power off): an isolated
    /// owner releases its lease, so it may restart elsewhere.
    pub leaves_when_isolated: bool,
}

/// The VMs to fail over now, in restart order (priority, then name):
/// those lost by a `failed` host, or by an isolated one whose isolation
/// response stops them, free of other operations, protected.
pub fn restart_plan(
    vms: &[Protected],
    verdict_of: impl Fn(&str) -> HostVerdict,
) -> Vec<&Protected> {
    let mut v: Vec<&Protected> = vms
        .iter()
        .filter(|vm| vm.lost_and_free && vm.priority != RestartPriority::Disabled)
        .filter(|vm| match verdict_of(&vm.owner) {
            HostVerdict::Failed => true,
            HostVerdict::IsolatedOrPartitioned => vm.leaves_when_isolated,
            HostVerdict::Connected => false,
        })
        .collect();
    v.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: HeartbeatTimeouts = HeartbeatTimeouts {
        network: Duration::from_secs(2),
        datastore: Duration::from_secs(3),
    };
    fn s(x: u64) -> Option<Duration> {
        Some(Duration::from_millis(x))
    }

    #[test]
    fn a_host_is_failed_only_when_both_heartbeats_stop() {
        assert_eq!(judge_host(s(500), s(500), &T), HostVerdict::Connected);
        assert_eq!(judge_host(s(500), None, &T), HostVerdict::Connected);
        assert_eq!(judge_host(s(500), s(60_000), &T), HostVerdict::Connected);
        assert_eq!(
            judge_host(s(2500), s(900), &T),
            HostVerdict::IsolatedOrPartitioned
        );
        assert_eq!(judge_host(s(2500), s(3500), &T), HostVerdict::Failed);
        assert_eq!(judge_host(None, None, &T), HostVerdict::Failed);
        assert_eq!(judge_host(s(2500), None, &T), HostVerdict::Failed);
    }

    #[test]
    fn limits_are_inclusive() {
        assert_eq!(judge_host(s(2000), None, &T), HostVerdict::Connected);
        assert_eq!(
            judge_host(s(2001), s(3000), &T),
            HostVerdict::IsolatedOrPartitioned
        );
    }

    fn vm(name: &str, p: RestartPriority, owner: &str, lost: bool) -> Protected {
        Protected {
            name: name.into(),
            priority: p,
            owner: owner.into(),
            lost_and_free: lost,
            leaves_when_isolated: false,
        }
    }

    #[test]
    fn the_plan_restarts_lost_protected_vms_of_failed_hosts_high_first() {
        use RestartPriority::*;
        let vms = vec![
            vm("c", Low, "a", true),
            vm("b", Medium, "a", true),
            vm("a", High, "a", true),
            vm("d", Disabled, "a", true),
            vm("e", High, "a", false),
            vm("f", High, "iso", true),
            vm("g", Medium, "up", true),
        ];
        let verdict = |h: &str| match h {
            "a" => HostVerdict::Failed,
            "iso" => HostVerdict::IsolatedOrPartitioned,
            _ => HostVerdict::Connected,
        };
        let names: Vec<&str> = restart_plan(&vms, verdict)
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let mut leaving = vms.clone();
        leaving[5].leaves_when_isolated = true;
        let names: Vec<&str> = restart_plan(&leaving, verdict)
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["a", "f", "b", "c"],
            "an isolated host's VM that powers off"
        );
    }

    proptest! {
        /// A fresh network heartbeat always means connected; a host with a
        /// fresh datastore heartbeat is never failed; and getting older
        /// never makes a host healthier.
        #[test]
        fn verdicts_are_monotonic_in_age(
            n in proptest::option::of(0u64..10_000),
            d in proptest::option::of(0u64..10_000),
            dn in 0u64..5_000,
            dd in 0u64..5_000,
        ) {
            let n0 = n.map(Duration::from_millis);
            let d0 = d.map(Duration::from_millis);
            let v0 = judge_host(n0, d0, &T);
            if n0.is_some_and(|a| a <= T.network) {
                prop_assert_eq!(v0, HostVerdict::Connected);
            }
            if d0.is_some_and(|a| a <= T.datastore) {
                prop_assert_ne!(v0, HostVerdict::Failed);
            }
            let older = judge_host(
                n0.map(|a| a + Duration::from_millis(dn)),
                d0.map(|a| a + Duration::from_millis(dd)),
                &T,
            );
            prop_assert!(older >= v0);
        }
    }
}

/// Admission control: would the protected VMs (with a new one) still fit
/// on the hosts left after the `tolerate` largest hosts fail?
///
/// `hosts_mib`: the memory of each connected host; `protected_mib`: the
/// footprint of the protected VMs that run (with the one being admitted).
/// Returns the memory missing, MiB (0: admitted).
pub fn admission_shortfall(hosts_mib: &[u64], protected_mib: u64, tolerate: u32) -> u64 {
    let mut sorted = hosts_mib.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let surviving: u64 = sorted.iter().skip(tolerate as usize).sum();
    protected_mib.saturating_sub(surviving)
}

/// How many host failures (the largest hosts first) the cluster tolerates
/// now with `protected_mib` of protected VMs running.
pub fn tolerated_failures(hosts_mib: &[u64], protected_mib: u64) -> u32 {
    (0..hosts_mib.len() as u32)
        .take_while(|k| admission_shortfall(hosts_mib, protected_mib, k + 1) == 0)
        .count() as u32
}

#[cfg(test)]
mod admission_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_largest_hosts_are_assumed_to_fail() {
        // Hosts of 8, 4, 4 GiB; 6 GiB protected.
        let hosts = [4096, 8192, 4096];
        assert_eq!(admission_shortfall(&hosts, 6144, 0), 0);
        assert_eq!(admission_shortfall(&hosts, 6144, 1), 0); // 8 GiB fails: 8 left
        assert_eq!(admission_shortfall(&hosts, 6144, 2), 2048); // only 4 GiB left
        assert_eq!(admission_shortfall(&hosts, 6144, 3), 6144);
        assert_eq!(tolerated_failures(&hosts, 6144), 1);
        assert_eq!(tolerated_failures(&hosts, 0), 3);
    }

    proptest! {
        /// Tolerating more failures never admits more; the shortfall never
        /// exceeds the demand.
        #[test]
        fn more_tolerance_is_never_looser(
            hosts in proptest::collection::vec(0u64..100_000, 0..8),
            demand in 0u64..400_000,
            k in 0u32..8,
        ) {
            let a = admission_shortfall(&hosts, demand, k);
            let b = admission_shortfall(&hosts, demand, k + 1);
            prop_assert!(b >= a);
            prop_assert!(a <= demand);
            let t = tolerated_failures(&hosts, demand);
            if t > 0 {
                prop_assert_eq!(admission_shortfall(&hosts, demand, t), 0);
            }
        }
    }
}
