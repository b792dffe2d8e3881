//! The VM lifecycle: which action is allowed in which state, and what it
//! leads to. Pure: a function of the VM's power state, owner and operation
//! in flight, tested in milliseconds; the handlers in `vms.rs` (create)
//! and `vms/` (power actions, delete) carry out what it decides, and
//! `vms/records.rs` claims each operation with it.
//!
//! ```text
//!  power state    action                   operation in flight     then
//!  ───────────    ──────                   ───────────────────     ────
//!  stopped   ─┐   start                    starting                running
//!  crashed   ─┤
//!  suspended ─┘   start / resume           starting (resume)       running
//!  running        shutdown                 shutting_down           stopped
//!  running,paused suspend                  suspending              suspended
//!  running        pause                    pausing                 paused
//!  paused         resume                   resuming                running
//!  running,paused reset                    resetting               running
//!  running,paused,starting,
//!  shutting_down,suspending  stop          stopping                stopped
//!  stopped,suspended,crashed  delete       deleting                (gone)
//!  running,paused migrate TARGET           migrating{source,target} same state, owner = target
//!  stopped,suspended migrate TARGET        migrating{source,target} same state, owner = target
//!  unknown        failover                 failing_over{from}      running elsewhere
//!  stopped,running,paused  snapshot        snapshotting            same state
//!  stopped,running,paused  backup          backing_up              same state
//!  stopped,crashed restore                 restoring               stopped
//!  stopped        clone                    cloning                 same state
//!  stopped        convert_to_template      converting_to_template  (gone: a template)
//!  stopped,running reconfigure (NIC add/remove) reconfiguring       same state
//!  (new record)   create                   creating                stopped (or running)
//! ```
//!
//! Rules above the table:
//! - one operation at a time: while one is in flight every action is
//!   refused ([`Refusal::Busy`]);
//! - a VM whose host stopped reporting (`unknown`) allows only failover
//!   ([`Refusal::HostLost`]);
//! - a move needs an owner and a target other than the owner.

use vdc_types::{ApiError, ErrorCode, VmAction, VmOperation, VmPowerState};

use VmPowerState as S;

/// What the lifecycle looks at: the parts of a VM record that decide.
#[derive(Debug, Clone, Copy)]
pub struct Now<'a> {
    /// Recorded power state.
    pub state: VmPowerState,
    /// Owner host.
    pub owner: Option<&'a str>,
    /// Operation in flight.
    pub operation: Option<&'a VmOperation>,
}

/// Where an accepted action leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The operation recorded while the action runs.
    pub operation: VmOperation,
    /// Power state recorded as the operation begins (`None`: unchanged).
    pub begin: Option<VmPowerState>,
    /// What the VM becomes when the operation succeeds.
    pub done: Done,
    /// Power state to record when the operation fails before the host
    /// changed anything.
    pub undo: VmPowerState,
}

/// The end of a successful operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// The VM is in this power state.
    State(VmPowerState),
    /// The VM's record is gone (deleted).
    Gone,
}

/// Why an action is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another operation is in flight.
    #[error("it is busy {0}")]
    Busy(VmOperation),
    /// The VM's host stopped reporting.
    #[error("its host {} stopped reporting", .0.as_deref().unwrap_or("?"))]
    HostLost(Option<String>),
    /// The action does not apply in this power state.
    #[error("cannot {action} a VM that is {state}")]
    State {
        /// The action asked for.
        action: VmAction,
        /// The VM's power state.
        state: VmPowerState,
    },
    /// A move was asked without a target other than the owner.
    #[error("a move needs a target host other than the VM's owner")]
    NoTarget,
    /// A move was asked for a VM no host owns.
    #[error("no host owns it")]
    NoOwner,
}

impl Refusal {
    /// The API error for VM `name`: what was wrong and what to do. `task`
    /// is the task of the operation in flight, if known.
    pub fn to_api_error(&self, name: &str, task: Option<&str>) -> ApiError {
        let what = format!("VM '{name}': {self}");
        match self {
            Refusal::Busy(_) => ApiError::invalid_state(match task {
                Some(t) => format!("{what}; wait for task {t} to end ('vdc task wait {t}')"),
                None => format!("{what}; wait for that operation to end ('vdc task list')"),
            }),
            Refusal::HostLost(_) => ApiError::new(
                ErrorCode::HostUnavailable,
                format!("VM '{name}' is unknown: {self}; wait for the host to come back"),
            ),
            Refusal::State { action, .. } => {
                let hint = match action {
                    VmAction::Delete => format!("stop it first ('vdc vm stop {name}')"),
                    VmAction::Clone | VmAction::ConvertToTemplate => format!(
                        "power it off first ('vdc vm shutdown {name}'); a running VM's disks change under a copy"
                    ),
                    _ => format!("it must be {}", state_list(&allowed_states(*action))),
                };
                ApiError::invalid_state(format!("{what}; {hint}"))
            }
            Refusal::NoTarget => ApiError::invalid(format!("{what}; name another host")),
            Refusal::NoOwner => {
                ApiError::invalid_state(format!("{what}; start it first ('vdc vm start {name}')"))
            }
        }
    }
}

fn state_list(states: &[VmPowerState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "nothing".to_string(),
    }
}

/// The power states in which `action` is allowed (no operation in flight).
pub fn allowed_states(action: VmAction) -> Vec<VmPowerState> {
    match action {
        VmAction::Start => vec![S::Stopped, S::Suspended, S::Crashed],
        VmAction::Stop => vec![
            S::Running,
            S::Paused,
            S::Starting,
            S::ShuttingDown,
            S::Suspending,
        ],
        VmAction::Shutdown | VmAction::Pause => vec![S::Running],
        VmAction::Reset | VmAction::Suspend => vec![S::Running, S::Paused],
        // Running or paused: live; stopped: cold; suspended: the saved
        // state moves (`vdc_control::migration` picks the kind).
        VmAction::Migrate => vec![S::Stopped, S::Running, S::Paused, S::Suspended],
        VmAction::Resume => vec![S::Paused, S::Suspended],
        VmAction::Delete => vec![S::Stopped, S::Suspended, S::Crashed],
        VmAction::Failover => vec![S::Unknown],
        VmAction::Snapshot | VmAction::Backup => vec![S::Stopped, S::Running, S::Paused],
        VmAction::Restore => vec![S::Stopped, S::Crashed],
        // A running VM's disks change under a copy: cloning one needs a
        // snapshot first.
        VmAction::Clone => vec![S::Stopped],
        VmAction::ConvertToTemplate => vec![S::Stopped],
        VmAction::Reconfigure => vec![S::Stopped, S::Running],
    }
}

/// Decides whether `action` may run now and where it leads. `target` is
/// the host a migration moves to (ignored by the other actions).
pub fn decide(now: &Now<'_>, action: VmAction, target: Option<&str>) -> Result<Step, Refusal> {
    if let Some(op) = now.operation {
        return Err(Refusal::Busy(op.clone()));
    }
    let state = now.state;
    if state == S::Unknown && action != VmAction::Failover {
        return Err(Refusal::HostLost(now.owner.map(str::to_string)));
    }
    if !allowed_states(action).contains(&state) {
        return Err(Refusal::State { action, state });
    }
    let step = |operation, begin, done| Step {
        operation,
        begin,
        done,
        undo: state,
    };
    let same = Done::State(state);
    Ok(match action {
        VmAction::Start => step(
            VmOperation::Starting,
            Some(S::Starting),
            Done::State(S::Running),
        ),
        VmAction::Resume if state == S::Suspended => step(
            VmOperation::Starting,
            Some(S::Starting),
            Done::State(S::Running),
        ),
        VmAction::Resume => step(VmOperation::Resuming, None, Done::State(S::Running)),
        VmAction::Stop => step(VmOperation::Stopping, None, Done::State(S::Stopped)),
        VmAction::Shutdown => step(
            VmOperation::ShuttingDown,
            Some(S::ShuttingDown),
            Done::State(S::Stopped),
        ),
        VmAction::Reset => step(VmOperation::Resetting, None, Done::State(S::Running)),
        VmAction::Pause => step(VmOperation::Pausing, None, Done::State(S::Paused)),
        VmAction::Suspend => step(
            VmOperation::Suspending,
            Some(S::Suspending),
            Done::State(S::Suspended),
        ),
        VmAction::Delete => step(VmOperation::Deleting, None, Done::Gone),
        VmAction::Migrate => {
            let source = now.owner.ok_or(Refusal::NoOwner)?;
            let target = target.filter(|t| *t != source).ok_or(Refusal::NoTarget)?;
            step(
                VmOperation::Migrating {
                    source: source.to_string(),
                    target: target.to_string(),
                },
                None,
                same,
            )
        }
        VmAction::Failover => {
            let from = now.owner.ok_or(Refusal::NoOwner)?;
            step(
                VmOperation::FailingOver {
                    from: from.to_string(),
                },
                None,
                Done::State(S::Running),
            )
        }
        VmAction::Snapshot => step(VmOperation::Snapshotting, None, same),
        VmAction::Backup => step(VmOperation::BackingUp, None, same),
        VmAction::Restore => step(VmOperation::Restoring, None, Done::State(S::Stopped)),
        VmAction::Clone => step(VmOperation::Cloning, None, same),
        VmAction::ConvertToTemplate => step(VmOperation::ConvertingToTemplate, None, Done::Gone),
        VmAction::Reconfigure => step(VmOperation::Reconfiguring, None, same),
    })
}

/// The actions the API offers that [`decide`] allows now (a migration is
/// counted as allowed when some other host could be its target).
pub fn allowed_actions(now: &Now<'_>) -> Vec<VmAction> {
    VmAction::ALL
        .into_iter()
        .filter(|a| a.is_offered())
        .filter(|a| decide(now, *a, Some("another host")).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STATES: [VmPowerState; 9] = [
        S::Stopped,
        S::Starting,
        S::Running,
        S::Paused,
        S::ShuttingDown,
        S::Suspending,
        S::Suspended,
        S::Crashed,
        S::Unknown,
    ];

    fn now(state: VmPowerState) -> Now<'static> {
        Now {
            state,
            owner: Some("a"),
            operation: None,
        }
    }

    fn operation() -> impl Strategy<Value = VmOperation> {
        prop_oneof![
            Just(VmOperation::Creating),
            Just(VmOperation::Starting),
            Just(VmOperation::Stopping),
            Just(VmOperation::ShuttingDown),
            Just(VmOperation::Resetting),
            Just(VmOperation::Pausing),
            Just(VmOperation::Resuming),
            Just(VmOperation::Suspending),
            Just(VmOperation::Deleting),
            Just(VmOperation::Snapshotting),
            Just(VmOperation::BackingUp),
            Just(VmOperation::Cloning),
            Just(VmOperation::ConvertingToTemplate),
            Just(VmOperation::Reconfiguring),
            Just(VmOperation::Migrating {
                source: "a".into(),
                target: "b".into()
            }),
            Just(VmOperation::FailingOver { from: "a".into() }),
        ]
    }

    fn state() -> impl Strategy<Value = VmPowerState> {
        proptest::sample::select(STATES.to_vec())
    }

    fn action() -> impl Strategy<Value = VmAction> {
        proptest::sample::select(VmAction::ALL.to_vec())
    }

    #[test]
    fn the_power_actions_of_a_running_vm() {
        let n = now(S::Running);
        let d = |a| decide(&n, a, None);
        assert_eq!(
            d(VmAction::Shutdown).map(|s| (s.operation, s.begin, s.done)),
            Ok((
                VmOperation::ShuttingDown,
                Some(S::ShuttingDown),
                Done::State(S::Stopped)
            ))
        );
        assert_eq!(
            d(VmAction::Suspend).map(|s| s.done),
            Ok(Done::State(S::Suspended))
        );
        assert_eq!(
            d(VmAction::Pause).map(|s| s.done),
            Ok(Done::State(S::Paused))
        );
        assert_eq!(
            d(VmAction::Start),
            Err(Refusal::State {
                action: VmAction::Start,
                state: S::Running
            })
        );
        assert!(matches!(d(VmAction::Delete), Err(Refusal::State { .. })));
        assert_eq!(
            allowed_actions(&n),
            [
                VmAction::Stop,
                VmAction::Shutdown,
                VmAction::Reset,
                VmAction::Pause,
                VmAction::Suspend,
                VmAction::Migrate,
                VmAction::Reconfigure
            ]
        );
    }

    #[test]
    fn resume_of_a_suspended_vm_is_a_start() {
        let s = decide(&now(S::Suspended), VmAction::Resume, None).expect("allowed");
        assert_eq!(s.operation, VmOperation::Starting);
        assert_eq!(s.begin, Some(S::Starting));
        assert_eq!(s.undo, S::Suspended);
        let s = decide(&now(S::Paused), VmAction::Resume, None).expect("allowed");
        assert_eq!((s.operation, s.begin), (VmOperation::Resuming, None));
    }

    #[test]
    fn a_lost_host_allows_only_failover() {
        let n = now(S::Unknown);
        for a in VmAction::ALL {
            let r = decide(&n, a, Some("b"));
            if a == VmAction::Failover {
                assert_eq!(
                    r.map(|s| s.operation),
                    Ok(VmOperation::FailingOver { from: "a".into() })
                );
            } else {
                assert_eq!(r, Err(Refusal::HostLost(Some("a".into()))), "{a}");
                assert_eq!(
                    Refusal::HostLost(None).to_api_error("vm", None).code,
                    ErrorCode::HostUnavailable
                );
            }
        }
        assert!(
            allowed_actions(&n).is_empty(),
            "failover is not offered yet"
        );
    }

    #[test]
    fn a_migration_names_source_and_target() {
        let n = now(S::Running);
        assert_eq!(
            decide(&n, VmAction::Migrate, Some("b")).map(|s| (s.operation, s.done)),
            Ok((
                VmOperation::Migrating {
                    source: "a".into(),
                    target: "b".into()
                },
                Done::State(S::Running)
            ))
        );
        assert_eq!(
            decide(&n, VmAction::Migrate, Some("a")),
            Err(Refusal::NoTarget)
        );
        assert_eq!(decide(&n, VmAction::Migrate, None), Err(Refusal::NoTarget));
        let orphan = Now { owner: None, ..n };
        assert_eq!(
            decide(&orphan, VmAction::Migrate, Some("b")),
            Err(Refusal::NoOwner)
        );
    }

    #[test]
    fn delete_only_without_a_process_and_refusals_say_what_to_do() {
        for s in STATES {
            let r = decide(&now(s), VmAction::Delete, None);
            assert_eq!(r.is_ok(), !s.has_process() && s != S::Unknown, "{s}");
        }
        let e = decide(&now(S::Running), VmAction::Delete, None)
            .unwrap_err()
            .to_api_error("web", None);
        assert_eq!(e.code, ErrorCode::InvalidState);
        assert!(e.message.contains("vdc vm stop web"), "{}", e.message);
        let e = decide(&now(S::Stopped), VmAction::Pause, None)
            .unwrap_err()
            .to_api_error("web", None);
        assert!(e.message.contains("it must be running"), "{}", e.message);
        let e = decide(&now(S::Stopped), VmAction::Start, None).map(|s| s.undo);
        assert_eq!(e, Ok(S::Stopped));
    }

    proptest! {
        /// One operation at a time: whatever is in flight, every action is
        /// refused as busy, naming the operation.
        #[test]
        fn nothing_runs_beside_an_operation(s in state(), op in operation(), a in action()) {
            let n = Now { state: s, owner: Some("a"), operation: Some(&op) };
            prop_assert_eq!(decide(&n, a, Some("b")), Err(Refusal::Busy(op.clone())));
        }

        /// An accepted action follows the table: allowed state, its undo is
        /// the state it came from, and the state it begins in is one that
        /// says a task is working (a process is being made or ended).
        #[test]
        fn accepted_actions_follow_the_table(s in state(), a in action()) {
            match decide(&now(s), a, Some("b")) {
                Ok(step) => {
                    prop_assert!(allowed_states(a).contains(&s));
                    prop_assert_eq!(step.undo, s);
                    if let Some(b) = step.begin {
                        prop_assert!(b.has_process());
                    }
                    if let Done::State(d) = step.done {
                        prop_assert!(d != S::Unknown && d != S::Crashed);
                    }
                }
                Err(Refusal::State { action, state }) => {
                    prop_assert_eq!((action, state), (a, s));
                    prop_assert!(!allowed_states(a).contains(&s));
                }
                Err(Refusal::HostLost(_)) => prop_assert_eq!(s, S::Unknown),
                Err(e) => prop_assert!(false, "unexpected refusal {e}"),
            }
        }

        /// The actions shown to users are exactly those `decide` accepts.
        #[test]
        fn shown_actions_are_accepted(s in state()) {
            let n = now(s);
            for a in VmAction::ALL.into_iter().filter(|a| a.is_offered()) {
                prop_assert_eq!(
                    allowed_actions(&n).contains(&a),
                    decide(&n, a, Some("b")).is_ok(),
                    "{} in {}", a, s
                );
            }
        }
    }
}
