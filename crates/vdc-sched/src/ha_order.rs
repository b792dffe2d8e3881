//! HA order groups: which of the VMs awaiting their restart after a host
//! failure may be restarted now.
//!
//! A group names the groups it starts *after*. A VM of a group is
//! restarted only once every VM of those groups that is being restarted
//! too has its guest ready again, or once it has waited longer than that
//! group's readiness timeout (then it starts anyway, and the caller says
//! so). A dependency with no VM awaiting its restart holds nothing. Within
//! a group (VMs in no group form one group of their own), the restart
//! priority orders as before: a VM waits while one of a higher priority of
//! its group is not yet restarted (unless that one's last attempt failed:
//! it is retried on its own and holds nobody back).
//!
//! ```text
//!   awaiting VM (lost)
//!     ├─ a dependency group has a VM not ready, waited < its timeout ─► hold (dependencies)
//!     ├─ a higher priority VM of its group lost or restarting ──────────► hold (priority)
//!     └─ otherwise ────────────────────────────────────────────────────► start
//!                                   (naming the dependencies it did not wait for any longer)
//! ```
//!
//! The groups form a directed graph that must stay acyclic
//! ([`check_groups`] names a cycle); then some VM can always start once
//! nothing is in flight (no deadlock; property-tested below).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::ha::RestartPriority;

/// An order group as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRule {
    /// Group name.
    pub name: String,
    /// The groups it starts after.
    pub after: Vec<String>,
    /// How long the groups after it wait for its VMs to be ready.
    pub ready_timeout: Duration,
}

/// What is wrong with a set of groups.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// A group starts after a group that does not exist.
    #[error("group '{group}' starts after '{missing}', which is not a group; create it first")]
    UnknownGroup {
        /// The group naming it.
        group: String,
        /// The missing group.
        missing: String,
    },
    /// The groups start after each other in a circle.
    #[error("the groups would start after each other in a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
}

/// Checks that every group a group starts after exists and that no cycle
/// exists (the cycle is named, its first group repeated at its end).
pub fn check_groups(groups: &[GroupRule]) -> Result<(), GroupError> {
    let by_name: BTreeMap<&str, &GroupRule> = groups.iter().map(|g| (g.name.as_str(), g)).collect();
    for g in groups {
        if let Some(m) = g.after.iter().find(|a| !by_name.contains_key(a.as_str())) {
            return Err(GroupError::UnknownGroup {
                group: g.name.clone(),
                missing: m.clone(),
            });
        }
    }
    // Depth-first search; a group met again on the current path closes a
    // cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    fn visit<'a>(
        g: &'a str,
        by_name: &BTreeMap<&str, &'a GroupRule>,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), GroupError> {
        match marks.get(g) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::OnPath) => {
                let from = path.iter().position(|p| *p == g).unwrap_or(0);
                let mut cycle: Vec<String> = path[from..].iter().map(|s| s.to_string()).collect();
                cycle.push(g.to_string());
                return Err(GroupError::Cycle(cycle));
            }
            None => {}
        }
        marks.insert(g, Mark::OnPath);
        path.push(g);
        if let Some(rule) = by_name.get(g) {
            for a in &rule.after {
                visit(a, by_name, marks, path)?;
            }
        }
        path.pop();
        marks.insert(g, Mark::Done);
        Ok(())
    }
    let mut marks = HashMap::new();
    for g in groups {
        visit(&g.name, &by_name, &mut marks, &mut Vec::new())?;
    }
    Ok(())
}

/// Each group's rank in the restart order: 0 when it starts after no
/// group, else one more than the highest rank among those it starts after.
/// Groups in a cycle or after unknown groups are left out.
pub fn ranks(groups: &[GroupRule]) -> BTreeMap<String, u32> {
    let by_name: BTreeMap<&str, &GroupRule> = groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut rank: BTreeMap<String, u32> = BTreeMap::new();
    // At most one round per group: a rank is settled once all of its
    // dependencies are.
    for _ in 0..=groups.len() {
        let mut progressed = false;
        for g in groups {
            if rank.contains_key(&g.name) {
                continue;
            }
            let deps: Option<Vec<u32>> = g
                .after
                .iter()
                .map(|a| by_name.get(a.as_str()).and(rank.get(a).copied()))
                .collect();
            if let Some(d) = deps {
                rank.insert(g.name.clone(), d.into_iter().max().map_or(0, |m| m + 1));
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    rank
}

/// Where a VM awaiting its restart stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Lost by its host, not yet restarted: may be started now.
    Lost,
    /// Its last restart attempt failed (no room, lease still held); it is
    /// retried. It holds its dependents back but not its group's lower
    /// priorities.
    Deferred,
    /// Its failover runs.
    Restarting,
    /// Its QEMU runs again; its guest has not reported ready yet.
    Started,
}

/// A VM awaiting its restart (or its guest's readiness after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    /// VM name.
    pub name: String,
    /// Its order group, if any.
    pub group: Option<String>,
    /// Its restart priority.
    pub priority: RestartPriority,
    /// How long it has been awaiting its restart.
    pub waited: Duration,
    /// Where it stands.
    pub phase: Phase,
}

/// Why a VM is not restarted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// These groups have VMs being restarted that are not ready yet, and
    /// their readiness timeouts have not passed: (group, time left).
    Dependencies(Vec<(String, Duration)>),
    /// A VM of its group with a higher priority is not restarted yet.
    HigherPriority(String),
}

/// The decision for one lost VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Restart it now. `late`: the dependency groups whose VMs are not
    /// ready but whose readiness timeout passed.
    Start {
        /// VM name.
        vm: String,
        /// Dependency groups not ready, not waited for any longer.
        late: Vec<String>,
    },
    /// Not yet.
    Hold {
        /// VM name.
        vm: String,
        /// Why.
        why: Hold,
    },
}

/// Decides, for every [`Phase::Lost`] VM of `awaiting`, whether it may be
/// restarted now (in restart order: priority, then name). Groups unknown to
/// `groups` count as no group.
pub fn restart_order(awaiting: &[Awaiting], groups: &[GroupRule]) -> Vec<Step> {
    let rules: HashMap<&str, &GroupRule> = groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let group_of = |a: &Awaiting| -> Option<String> {
        a.group
            .as_deref()
            .filter(|g| rules.contains_key(g))
            .map(str::to_string)
    };
    // Groups with a VM not ready yet.
    let unready: HashSet<String> = awaiting.iter().filter_map(group_of).collect();
    let mut lost: Vec<&Awaiting> = awaiting.iter().filter(|a| a.phase == Phase::Lost).collect();
    lost.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
    lost.into_iter()
        .map(|vm| {
            let group = group_of(vm);
            let mut blocking = Vec::new();
            let mut late = Vec::new();
            if let Some(rule) = group.as_deref().and_then(|g| rules.get(g)) {
                for dep in &rule.after {
                    let Some(d) = rules.get(dep.as_str()) else {
                        continue;
                    };
                    if !unready.contains(dep) {
                        continue;
                    }
                    if vm.waited >= d.ready_timeout {
                        late.push(dep.clone());
                    } else {
                        blocking.push((dep.clone(), d.ready_timeout - vm.waited));
                    }
                }
            }
            if !blocking.is_empty() {
                return Step::Hold {
                    vm: vm.name.clone(),
                    why: Hold::Dependencies(blocking),
                };
            }
            let ahead = awaiting.iter().find(|o| {
                o.name != vm.name
                    && group_of(o) == group
                    && o.priority < vm.priority
                    && matches!(o.phase, Phase::Lost | Phase::Restarting)
            });
            if let Some(o) = ahead {
                return Step::Hold {
                    vm: vm.name.clone(),
                    why: Hold::HigherPriority(o.name.clone()),
                };
            }
            Step::Start {
                vm: vm.name.clone(),
                late,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RestartPriority::*;

    fn rule(name: &str, after: &[&str], timeout_s: u64) -> GroupRule {
        GroupRule {
            name: name.into(),
            after: after.iter().map(|s| s.to_string()).collect(),
            ready_timeout: Duration::from_secs(timeout_s),
        }
    }

    fn vm(
        name: &str,
        group: Option<&str>,
        p: RestartPriority,
        waited_s: u64,
        phase: Phase,
    ) -> Awaiting {
        Awaiting {
            name: name.into(),
            group: group.map(str::to_string),
            priority: p,
            waited: Duration::from_secs(waited_s),
            phase,
        }
    }

    fn started(steps: &[Step]) -> Vec<&str> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Start { vm, .. } => Some(vm.as_str()),
                Step::Hold { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_cycle_is_refused_and_named() {
        let groups = [
            rule("a", &["c"], 1),
            rule("b", &["a"], 1),
            rule("c", &["b"], 1),
        ];
        let e = check_groups(&groups).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the groups would start after each other in a cycle: a → c → b → a"
        );
        let e = check_groups(&[rule("a", &["a"], 1)]).unwrap_err();
        assert_eq!(e, GroupError::Cycle(vec!["a".into(), "a".into()]));
        let e = check_groups(&[rule("a", &["nope"], 1)]).unwrap_err();
        assert!(
            e.to_string().contains("'nope', which is not a group"),
            "{e}"
        );
        check_groups(&[
            rule("db", &[], 1),
            rule("app", &["db"], 1),
            rule("web", &["app", "db"], 1),
        ])
        .unwrap();
    }

    #[test]
    fn ranks_follow_the_dependencies() {
        let r = ranks(&[
            rule("web", &["app", "db"], 1),
            rule("app", &["db"], 1),
            rule("db", &[], 1),
        ]);
        assert_eq!(r["db"], 0);
        assert_eq!(r["app"], 1);
        assert_eq!(r["web"], 2);
        assert!(ranks(&[rule("a", &["a"], 1)]).is_empty());
    }

    #[test]
    fn the_app_tier_waits_for_the_database_tier_to_be_ready() {
        let groups = [rule("db", &[], 120), rule("app", &["db"], 60)];
        let lost = [
            vm("db-1", Some("db"), Low, 0, Phase::Lost),
            vm("app-1", Some("app"), High, 0, Phase::Lost),
        ];
        let steps = restart_order(&lost, &groups);
        assert_eq!(
            started(&steps),
            ["db-1"],
            "priority does not jump the order"
        );
        assert!(steps.contains(&Step::Hold {
            vm: "app-1".into(),
            why: Hold::Dependencies(vec![("db".into(), Duration::from_secs(120))]),
        }));
        // db-1 restarted, its guest not ready yet: app still waits.
        let booting = [
            vm("db-1", Some("db"), Low, 5, Phase::Started),
            vm("app-1", Some("app"), High, 5, Phase::Lost),
        ];
        assert!(started(&restart_order(&booting, &groups)).is_empty());
        // db-1 ready (no longer awaiting): app starts.
        let ready = [vm("app-1", Some("app"), High, 9, Phase::Lost)];
        assert_eq!(
            restart_order(&ready, &groups),
            [Step::Start {
                vm: "app-1".into(),
                late: vec![]
            }]
        );
        // Never ready: the db group's timeout passes, app starts, late.
        let late = [
            vm("db-1", Some("db"), Low, 120, Phase::Started),
            vm("app-1", Some("app"), High, 120, Phase::Lost),
        ];
        assert_eq!(
            restart_order(&late, &groups),
            [Step::Start {
                vm: "app-1".into(),
                late: vec!["db".into()]
            }]
        );
    }

    #[test]
    fn within_a_group_higher_priorities_go_first_unless_deferred() {
        let vms = [
            vm("a", None, Low, 0, Phase::Lost),
            vm("b", None, High, 0, Phase::Restarting),
        ];
        let steps = restart_order(&vms, &[]);
        assert_eq!(
            steps,
            [Step::Hold {
                vm: "a".into(),
                why: Hold::HigherPriority("b".into())
            }]
        );
        let vms = [
            vm("a", None, Low, 0, Phase::Lost),
            vm("b", None, High, 0, Phase::Deferred),
        ];
        assert_eq!(started(&restart_order(&vms, &[])), ["a"]);
        // Another group's priorities do not hold it.
        let vms = [
            vm("a", Some("x"), Low, 0, Phase::Lost),
            vm("b", None, High, 0, Phase::Lost),
        ];
        assert_eq!(
            started(&restart_order(&vms, &[rule("x", &[], 1)])),
            ["b", "a"]
        );
    }

    /// Groups g0..gn, each after some lower-numbered ones (a DAG), and VMs
    /// in them (or in none) at any phase.
    fn world() -> impl Strategy<Value = (Vec<GroupRule>, Vec<Awaiting>)> {
        (1usize..6)
            .prop_flat_map(|n| {
                let groups = proptest::collection::vec(
                    (proptest::collection::vec(any::<bool>(), n), 1u64..200),
                    n,
                );
                let vms = proptest::collection::vec(
                    (proptest::option::of(0..n), 0usize..3, 0u64..300, 0usize..4),
                    0..10,
                );
                (groups, vms)
            })
            .prop_map(|(groups, vms)| {
                let rules: Vec<GroupRule> = groups
                    .iter()
                    .enumerate()
                    .map(|(i, (deps, t))| GroupRule {
                        name: format!("g{i}"),
                        after: (0..i)
                            .filter(|j| deps[*j])
                            .map(|j| format!("g{j}"))
                            .collect(),
                        ready_timeout: Duration::from_secs(*t),
                    })
                    .collect();
                let awaiting = vms
                    .into_iter()
                    .enumerate()
                    .map(|(i, (g, p, w, ph))| Awaiting {
                        name: format!("vm{i}"),
                        group: g.map(|g| format!("g{g}")),
                        priority: [High, Medium, Low][p],
                        waited: Duration::from_secs(w),
                        phase: [
                            Phase::Lost,
                            Phase::Deferred,
                            Phase::Restarting,
                            Phase::Started,
                        ][ph],
                    })
                    .collect();
                (rules, awaiting)
            })
    }

    proptest! {
        /// A VM never starts while a group it starts after has a VM not
        /// ready and that group's timeout has not passed; and when it starts
        /// late, the groups named are exactly those not ready.
        #[test]
        fn a_group_never_starts_before_its_dependencies_are_ready_or_timed_out((groups, vms) in world()) {
            prop_assert!(check_groups(&groups).is_ok());
            for step in restart_order(&vms, &groups) {
                let Step::Start { vm, late } = step else { continue };
                let me = vms.iter().find(|v| v.name == vm).unwrap();
                let rule = groups.iter().find(|g| Some(&g.name) == me.group.as_ref());
                for dep in rule.map(|r| r.after.clone()).unwrap_or_default() {
                    let d = groups.iter().find(|g| g.name == dep).unwrap();
                    let unready = vms.iter().any(|o| o.group.as_deref() == Some(dep.as_str()));
                    if unready {
                        prop_assert!(me.waited >= d.ready_timeout, "{vm} started before {dep} was ready");
                        prop_assert!(late.contains(&dep));
                    } else {
                        prop_assert!(!late.contains(&dep));
                    }
                }
            }
        }

        /// No deadlock: with nothing in flight (every awaiting VM lost), some
        /// VM starts; and a dependency with no VM awaiting holds nothing.
        #[test]
        fn something_always_starts_when_nothing_is_in_flight((groups, vms) in world()) {
            let lost: Vec<Awaiting> = vms.into_iter().map(|mut v| { v.phase = Phase::Lost; v }).collect();
            let steps = restart_order(&lost, &groups);
            prop_assert_eq!(steps.len(), lost.len());
            if !lost.is_empty() {
                prop_assert!(!started(&steps).is_empty(), "{:?}", steps);
            }
            for s in &steps {
                if let Step::Hold { why: Hold::Dependencies(deps), .. } = s {
                    for (d, _) in deps {
                        prop_assert!(lost.iter().any(|v| v.group.as_deref() == Some(d.as_str())));
                    }
                }
            }
        }

        /// Once every VM waited past every timeout, only priorities within a
        /// group hold anything.
        #[test]
        fn timeouts_end_every_wait_for_dependencies((groups, vms) in world()) {
            let long: Vec<Awaiting> = vms.into_iter().map(|mut v| { v.waited = Duration::from_secs(1000); v }).collect();
            for s in restart_order(&long, &groups) {
                let held = matches!(s, Step::Hold { why: Hold::Dependencies(_), .. });
                prop_assert!(!held, "{:?}", s);
            }
        }
    }
}
