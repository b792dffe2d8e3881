//! The steps of each operation, in order, as a function of the plan
//! ([`steps`]). The control plane performs them one after another and
//! records each in the run; a group's VMs are recovered in parallel inside
//! one step, and the next group starts only once the group's readiness
//! step succeeded.
//!
//! | operation | steps |
//! |---|---|
//! | test | build the bubble; plan pre; per group: pre, recover test clones, await ready, post; plan post |
//! | cleanup | per VM (last group first): remove its test clone; remove the bubble |
//! | migrate, failback | check the protected site answers; per VM: sync, shut down, final sync; then as failover |
//! | failover | fence the protected VMs (when the site answers); plan pre; per group: pre, recover, await ready, post; plan post |
//! | reprotect | per VM: retire the stale copy at the old protected site, replicate back; swap the direction |

use crate::plan::{Plan, PlanStep};
use crate::run::{Operation, StepOutcome, StepRecord};

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Refuse unless the protected site answers (planned migration).
    CheckProtected,
    /// Create the isolated switch and its test port groups.
    BuildBubble,
    /// A plan's or group's own step.
    Custom {
        /// Its group (1-based), `None` for the plan's.
        group: Option<usize>,
        /// `pre` or `post`.
        when: &'static str,
        /// The step.
        step: PlanStep,
    },
    /// Take a point now and wait until it is applied at the recovery site.
    Sync {
        /// The VM.
        vm: String,
        /// `true` for the sync after the clean shutdown.
        last: bool,
    },
    /// Shut the protected VM down cleanly and wait until it is off.
    Shutdown {
        /// The VM.
        vm: String,
    },
    /// Power the protected VMs off when their site still answers, so the
    /// recovered copies never run beside them.
    Fence,
    /// Recover every VM of a group, in parallel.
    Recover {
        /// The group (1-based).
        group: usize,
    },
    /// Wait until every VM of a group is ready.
    AwaitReady {
        /// The group (1-based).
        group: usize,
    },
    /// Delete a test clone.
    RemoveClone {
        /// The plan's VM (the clone is its test name).
        vm: String,
    },
    /// Delete the bubble's port groups and switch.
    RemoveBubble,
    /// Stop the old replication and delete the stale VM and replica at
    /// the old protected site.
    Retire {
        /// The VM.
        vm: String,
    },
    /// Replicate the recovered VM back to the old protected site.
    Replicate {
        /// The VM.
        vm: String,
    },
    /// Swap the plan's protected and recovery sites.
    SwapDirection,
}

impl Step {
    /// The step's record before it runs.
    pub fn record(&self) -> StepRecord {
        let (name, group, vm) = match self {
            Step::CheckProtected => ("check the protected site answers".to_string(), None, None),
            Step::BuildBubble => ("build the isolated test network".into(), None, None),
            Step::Custom { group, when, step } => (
                format!(
                    "{} {when} step: {}",
                    match group {
                        Some(g) => format!("group {g}"),
                        None => "plan".into(),
                    },
                    describe(step)
                ),
                *group,
                None,
            ),
            Step::Sync { vm, last } => (
                if *last {
                    format!("final sync of {vm} after shutdown")
                } else {
                    format!("sync {vm}")
                },
                None,
                Some(vm.clone()),
            ),
            Step::Shutdown { vm } => (format!("shut down {vm}"), None, Some(vm.clone())),
            Step::Fence => (
                "power off the protected VMs if reachable".into(),
                None,
                None,
            ),
            Step::Recover { group } => (format!("recover group {group}"), Some(*group), None),
            Step::AwaitReady { group } => (
                format!("wait until group {group} is ready"),
                Some(*group),
                None,
            ),
            Step::RemoveClone { vm } => (
                format!("remove the test clone of {vm}"),
                None,
                Some(vm.clone()),
            ),
            Step::RemoveBubble => ("remove the isolated test network".into(), None, None),
            Step::Retire { vm } => (
                format!("retire the stale copy of {vm} at the old protected site"),
                None,
                Some(vm.clone()),
            ),
            Step::Replicate { vm } => (format!("replicate {vm} back"), None, Some(vm.clone())),
            Step::SwapDirection => ("swap the plan's direction".into(), None, None),
        };
        StepRecord {
            name,
            group,
            vm,
            outcome: StepOutcome::Pending,
            started_ms: None,
            finished_ms: None,
            detail: None,
        }
    }
}

fn describe(s: &PlanStep) -> String {
    match s {
        PlanStep::Command { command, .. } => format!("run `{command}`"),
        PlanStep::Wait { seconds } => format!("wait {seconds} s"),
        PlanStep::Prompt { message } => format!("prompt \"{message}\""),
    }
}

/// The name a VM gets at the recovery site.
pub fn recovered_name(op: Operation, vm: &str) -> String {
    match op {
        Operation::Test | Operation::Cleanup => format!("{vm}-test"),
        _ => vm.to_string(),
    }
}

/// The steps of `op` on `plan`, in order.
pub fn steps(plan: &Plan, op: Operation) -> Vec<Step> {
    let vms: Vec<&str> = crate::plan::vms(plan).map(|v| v.name.as_str()).collect();
    let mut out = Vec::new();
    let recover = |out: &mut Vec<Step>| {
        out.extend(plan.pre_steps.iter().map(|s| Step::Custom {
            group: None,
            when: "pre",
            step: s.clone(),
        }));
        for (i, g) in plan.groups.iter().enumerate() {
            let gi = i + 1;
            out.extend(g.pre_steps.iter().map(|s| Step::Custom {
                group: Some(gi),
                when: "pre",
                step: s.clone(),
            }));
            out.push(Step::Recover { group: gi });
            out.push(Step::AwaitReady { group: gi });
            out.extend(g.post_steps.iter().map(|s| Step::Custom {
                group: Some(gi),
                when: "post",
                step: s.clone(),
            }));
        }
        out.extend(plan.post_steps.iter().map(|s| Step::Custom {
            group: None,
            when: "post",
            step: s.clone(),
        }));
    };
    match op {
        Operation::Test => {
            out.push(Step::BuildBubble);
            recover(&mut out);
        }
        Operation::Cleanup => {
            out.extend(
                vms.iter()
                    .rev()
                    .map(|v| Step::RemoveClone { vm: v.to_string() }),
            );
            out.push(Step::RemoveBubble);
        }
        Operation::Migrate | Operation::Failback => {
            out.push(Step::CheckProtected);
            for v in &vms {
                out.push(Step::Sync {
                    vm: v.to_string(),
                    last: false,
                });
                out.push(Step::Shutdown { vm: v.to_string() });
                out.push(Step::Sync {
                    vm: v.to_string(),
                    last: true,
                });
            }
            recover(&mut out);
        }
        Operation::Failover => {
            out.push(Step::Fence);
            recover(&mut out);
        }
        Operation::Reprotect => {
            for v in &vms {
                out.push(Step::Retire { vm: v.to_string() });
                out.push(Step::Replicate { vm: v.to_string() });
            }
            out.push(Step::SwapDirection);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NetworkMapping, PlanGroup, PlanVm, ReadyWait, PLAN_VERSION};

    fn plan() -> Plan {
        let g = |names: &[&str], pre: Vec<PlanStep>| PlanGroup {
            vms: names
                .iter()
                .map(|n| PlanVm {
                    name: n.to_string(),
                    wait: ReadyWait::Running,
                    ip: None,
                    hostname: None,
                })
                .collect(),
            pre_steps: pre,
            post_steps: vec![],
        };
        Plan {
            version: PLAN_VERSION,
            name: "p".into(),
            protected_site: "a".into(),
            recovery_site: "b".into(),
            groups: vec![
                g(&["db"], vec![]),
                g(
                    &["web", "app"],
                    vec![PlanStep::Prompt {
                        message: "db ok?".into(),
                    }],
                ),
            ],
            networks: vec![NetworkMapping {
                protected: "n".into(),
                recovery: "m".into(),
                test: None,
            }],
            pre_steps: vec![],
            post_steps: vec![PlanStep::Wait { seconds: 1 }],
            created_ms: 0,
            reprotects: 0,
            state: Default::default(),
            active_run: None,
            last_run: None,
        }
    }

    #[test]
    fn groups_come_in_order_each_ready_before_the_next() {
        let s = steps(&plan(), Operation::Failover);
        let pos = |x: &Step| s.iter().position(|y| y == x).unwrap();
        assert_eq!(s[0], Step::Fence);
        assert!(pos(&Step::AwaitReady { group: 1 }) < pos(&Step::Recover { group: 2 }));
        let prompt = s
            .iter()
            .position(|x| {
                matches!(
                    x,
                    Step::Custom {
                        group: Some(2),
                        when: "pre",
                        ..
                    }
                )
            })
            .unwrap();
        assert!(pos(&Step::AwaitReady { group: 1 }) < prompt);
        assert!(prompt < pos(&Step::Recover { group: 2 }));
        assert!(matches!(
            s.last(),
            Some(Step::Custom {
                group: None,
                when: "post",
                ..
            })
        ));
    }

    #[test]
    fn a_planned_migration_syncs_after_the_shutdown() {
        let s = steps(&plan(), Operation::Migrate);
        assert_eq!(s[0], Step::CheckProtected);
        let pos = |x: &Step| s.iter().position(|y| y == x).unwrap();
        for vm in ["db", "web", "app"] {
            let vm = vm.to_string();
            let shut = pos(&Step::Shutdown { vm: vm.clone() });
            assert!(
                pos(&Step::Sync {
                    vm: vm.clone(),
                    last: false
                }) < shut
            );
            assert!(shut < pos(&Step::Sync { vm, last: true }));
        }
        let last_sync = pos(&Step::Sync {
            vm: "app".into(),
            last: true,
        });
        assert!(last_sync < pos(&Step::Recover { group: 1 }));
    }

    #[test]
    fn cleanup_removes_in_reverse_then_the_bubble() {
        let s = steps(&plan(), Operation::Cleanup);
        assert_eq!(
            s,
            vec![
                Step::RemoveClone { vm: "app".into() },
                Step::RemoveClone { vm: "web".into() },
                Step::RemoveClone { vm: "db".into() },
                Step::RemoveBubble
            ]
        );
        assert_eq!(steps(&plan(), Operation::Test)[0], Step::BuildBubble);
        assert_eq!(recovered_name(Operation::Test, "db"), "db-test");
        assert_eq!(recovered_name(Operation::Failover, "db"), "db");
    }

    #[test]
    fn reprotect_ends_with_the_swap() {
        let s = steps(&plan(), Operation::Reprotect);
        assert_eq!(s.len(), 7);
        assert_eq!(s.last(), Some(&Step::SwapDirection));
        assert!(s.iter().all(|x| !x.record().name.is_empty()));
    }
}
