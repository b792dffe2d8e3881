//! Who speaks for a VM: folding host reports into the VM record by rule.
//! Pure functions of data; `hosts.rs` drives them with compare-and-swap
//! writes.
//!
//! Rules:
//! 1. The owner speaks. Its report sets the power state (unless a report
//!    about an older state arrives late: `since_ms` older than the record's
//!    is stale) and the guest information; a VM it no longer lists, that
//!    the record says has a process, has stopped.
//! 2. While an operation is in flight its task writes the power state;
//!    the owner's reports bring only guest information.
//! 3. During a move (`migrating {source, target}`) the other party is
//!    expected to report the VM too: the target before the move commits,
//!    the source after. Neither flips the record; the move's task commits
//!    it with [`commit_move`], which makes the target the owner.
//! 4. Any other host is stale (it remembers the VM stopped or suspended
//!    from before) or in conflict (it reports a QEMU process for a VM it
//!    does not own): either way it is ignored, and a conflict is returned
//!    so that it is logged and published.

use vdc_types::agent::VmRuntime;
use vdc_types::{VmOperation, VmPowerState};

use crate::record::VmRecord;

/// Who a reporting host is to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The VM's owner.
    Owner,
    /// The other party of a move in flight (target before the commit,
    /// source after).
    MoveParty,
    /// Any other host.
    Stranger,
}

/// What `host` is to the VM of `rec`.
pub fn reporter(rec: &VmRecord, host: &str) -> Reporter {
    if rec.owner.as_deref() == Some(host) {
        return Reporter::Owner;
    }
    match rec.operation.as_ref().map(|o| &o.operation) {
        Some(VmOperation::Migrating { source, target }) if source == host || target == host => {
            Reporter::MoveParty
        }
        _ => Reporter::Stranger,
    }
}

/// A host reporting a QEMU process for a VM it does not own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The host.
    pub host: String,
    /// The state it reports.
    pub state: VmPowerState,
    /// The VM's owner.
    pub owner: Option<String>,
}

/// The VM record after one host's report, and the conflict the report
/// shows, if any. `rt` is the report's entry for this VM (`None`: the host
/// does not list it).
pub fn fold_report(
    rec: &VmRecord,
    rt: Option<&VmRuntime>,
    host: &str,
) -> (VmRecord, Option<Conflict>) {
    let mut new = rec.clone();
    let busy = rec.operation.is_some();
    match (reporter(rec, host), rt) {
        (Reporter::Owner, Some(rt)) => {
            if !busy && rt.since_ms >= rec.since_ms {
                new.since_ms = rt.since_ms;
                new.state = rt.state;
            }
            let mut g = rt.guest.clone();
            g.last_heartbeat_ms = None;
            new.guest = g;
            if !new.state.has_process() {
                // No process, no guest: whatever the host still remembers.
                new.guest = Default::default();
            }
        }
        (Reporter::Owner, None) => {
            if !busy && (rec.state.has_process() || rec.state == VmPowerState::Unknown) {
                new.state = VmPowerState::Stopped;
                new.guest = Default::default();
            }
        }
        (Reporter::Stranger, Some(rt)) if rt.state.has_process() => {
            return (
                new,
                Some(Conflict {
                    host: host.to_string(),
                    state: rt.state,
                    owner: rec.owner.clone(),
                }),
            )
        }
        (Reporter::MoveParty | Reporter::Stranger, _) => {}
    }
    (new, None)
}

/// The record of a VM whose host `host` stopped reporting: `unknown` if
/// that host owns it and it had a process; `None` if nothing changes.
pub fn host_lost(rec: &VmRecord, host: &str) -> Option<VmRecord> {
    if rec.owner.as_deref() != Some(host) || !rec.state.has_process() {
        return None;
    }
    let mut new = rec.clone();
    new.state = VmPowerState::Unknown;
    Some(new)
}

/// Why a move cannot commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// No move is in flight.
    #[error("no move is in flight")]
    NoMove,
    /// The move in flight goes elsewhere, or its source no longer owns the VM.
    #[error("the move in flight does not hand the VM from its owner to {0}")]
    WrongParty(String),
}

/// Commits the move in flight: `to` becomes the owner. A migration
/// commits only to its target and only from its source; a failover to any
/// host but the lost one. The operation stays recorded until its task ends.
pub fn commit_move(rec: &VmRecord, to: &str) -> Result<VmRecord, CommitError> {
    let owner = rec.owner.as_deref();
    let ok = match rec.operation.as_ref().map(|o| &o.operation) {
        Some(VmOperation::Migrating { source, target }) => {
            owner == Some(source.as_str()) && target == to
        }
        Some(VmOperation::FailingOver { from }) => owner == Some(from.as_str()) && from != to,
        _ => return Err(CommitError::NoMove),
    };
    if !ok {
        return Err(CommitError::WrongParty(to.to_string()));
    }
    let mut new = rec.clone();
    new.set_owner(to);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vdc_types::vm::VM_CONFIG_VERSION;
    use vdc_types::{GuestInfo, InFlight, VmConfig, VmPowerState as S};

    fn rec(state: S, owner: Option<&str>, since: u64) -> VmRecord {
        let config = VmConfig {
            version: VM_CONFIG_VERSION,
            id: "id".into(),
            name: "vm".into(),
            cpus: 1,
            memory_mib: 128,
            datastore: "shared".into(),
            dir: "vm".into(),
            disks: vec![],
            nics: vec![],
            hostname: "vm".into(),
            template: None,
            linked_clone: false,
            created_ms: 0,
            machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
            cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
            ha: Default::default(),
            guest_agent: false,
            hotplug_ports: 0,
        };
        let mut r = VmRecord::new(config, state, owner.map(str::to_string));
        r.since_ms = since;
        r
    }

    fn with_op(mut r: VmRecord, op: VmOperation) -> VmRecord {
        r.operation = Some(InFlight {
            operation: op,
            task: Some("t".into()),
            since_ms: 1,
        });
        r
    }

    fn migrating() -> VmOperation {
        VmOperation::Migrating {
            source: "a".into(),
            target: "b".into(),
        }
    }

    fn rt(state: S, since: u64) -> VmRuntime {
        VmRuntime {
            id: "id".into(),
            name: "vm".into(),
            state,
            pid: state.has_process().then_some(7),
            guest: Default::default(),
            stats: None,
            since_ms: since,
            fenced: None,
            monitor_resets: 0,
            monitor_reason: None,
        }
    }

    fn fold(r: &VmRecord, report: Option<&VmRuntime>, host: &str) -> VmRecord {
        fold_report(r, report, host).0
    }

    #[test]
    fn the_owners_fresh_reports_apply_and_stale_ones_do_not() {
        let r = fold(
            &rec(S::Running, Some("a"), 10),
            Some(&rt(S::Paused, 20)),
            "a",
        );
        assert_eq!((r.state, r.since_ms), (S::Paused, 20));
        let r = fold(
            &rec(S::Stopped, Some("a"), 30),
            Some(&rt(S::Running, 20)),
            "a",
        );
        assert_eq!(r.state, S::Stopped);
    }

    #[test]
    fn a_host_remembering_a_stopped_vm_does_not_speak_for_the_owner() {
        let before = rec(S::Running, Some("b"), 10);
        let (r, conflict) = fold_report(&before, Some(&rt(S::Stopped, 50)), "a");
        assert_eq!(r, before);
        assert_eq!(conflict, None);
    }

    #[test]
    fn a_process_on_a_host_that_does_not_own_the_vm_is_a_conflict_not_obeyed() {
        let before = rec(S::Stopped, Some("b"), 1000);
        let (r, conflict) = fold_report(&before, Some(&rt(S::Running, 5_000)), "a");
        assert_eq!(r, before, "the record did not move");
        assert_eq!(
            conflict,
            Some(Conflict {
                host: "a".into(),
                state: S::Running,
                owner: Some("b".into())
            })
        );
        let orphan = rec(S::Stopped, None, 0);
        assert!(fold_report(&orphan, Some(&rt(S::Running, 5)), "a")
            .1
            .is_some());
    }

    #[test]
    fn a_vm_without_a_process_has_no_guest() {
        let mut report = rt(S::Suspended, 20);
        report.guest.ready = true;
        report.guest.address = Some("10.0.0.5".into());
        let r = fold(&rec(S::Running, Some("a"), 10), Some(&report), "a");
        assert_eq!(r.state, S::Suspended);
        assert!(!r.guest.ready && r.guest.address.is_none());
    }

    #[test]
    fn an_operation_in_flight_keeps_the_state_and_a_missing_vm_stops() {
        let busy = with_op(rec(S::Starting, Some("a"), 1), VmOperation::Starting);
        let mut report = rt(S::Running, 5);
        report.guest.ready = true;
        let r = fold(&busy, Some(&report), "a");
        assert_eq!(r.state, S::Starting);
        assert!(r.guest.ready, "guest information still comes through");
        assert_eq!(
            fold(&rec(S::Running, Some("a"), 1), None, "a").state,
            S::Stopped
        );
        assert_eq!(
            fold(&rec(S::Unknown, Some("a"), 1), None, "a").state,
            S::Stopped
        );
        assert_eq!(
            fold(&rec(S::Suspended, Some("a"), 1), None, "a").state,
            S::Suspended
        );
        assert_eq!(
            fold(&rec(S::Running, Some("b"), 1), None, "a").state,
            S::Running
        );
    }

    #[test]
    fn during_a_migration_the_target_wins_only_once_the_move_commits() {
        let moving = with_op(rec(S::Running, Some("a"), 10), migrating());
        assert_eq!(reporter(&moving, "b"), Reporter::MoveParty);
        let (r, conflict) = fold_report(&moving, Some(&rt(S::Paused, 99)), "b");
        assert_eq!(
            (r, conflict),
            (moving.clone(), None),
            "target before commit"
        );

        assert_eq!(
            commit_move(&moving, "c"),
            Err(CommitError::WrongParty("c".into()))
        );
        let committed = commit_move(&moving, "b").expect("commits");
        assert_eq!(committed.owner.as_deref(), Some("b"));
        assert_eq!(committed.target(), Some("b"));
        assert_eq!(reporter(&committed, "b"), Reporter::Owner);
        assert_eq!(reporter(&committed, "a"), Reporter::MoveParty);
        // The source's last words (its QEMU stopped after the hand-over)
        // change nothing and are no conflict.
        let (r, conflict) = fold_report(&committed, Some(&rt(S::Paused, 500)), "a");
        assert_eq!((r, conflict), (committed.clone(), None));
        // Once the task ends, the source is a stranger like any other.
        let mut done = committed.clone();
        done.operation = None;
        assert!(fold_report(&done, Some(&rt(S::Paused, 500)), "a")
            .1
            .is_some());
        assert_eq!(
            commit_move(&rec(S::Running, Some("a"), 0), "b"),
            Err(CommitError::NoMove)
        );
    }

    #[test]
    fn a_failover_commits_to_any_host_but_the_lost_one() {
        let r = with_op(
            rec(S::Unknown, Some("a"), 10),
            VmOperation::FailingOver { from: "a".into() },
        );
        assert!(commit_move(&r, "a").is_err());
        let c = commit_move(&r, "c").expect("commits");
        assert_eq!((c.owner.as_deref(), c.since_ms), (Some("c"), 0));
        // The lost host coming back with a process after the commit is the
        // split brain fencing must prevent: a conflict.
        assert!(fold_report(&c, Some(&rt(S::Running, 1)), "a").1.is_some());
    }

    #[test]
    fn a_lost_host_makes_only_its_running_vms_unknown() {
        let r = host_lost(&rec(S::Running, Some("a"), 1), "a").expect("changes");
        assert_eq!(r.state, S::Unknown);
        assert!(host_lost(&rec(S::Running, Some("b"), 1), "a").is_none());
        assert!(host_lost(&rec(S::Suspended, Some("a"), 1), "a").is_none());
    }

    // ---- properties ----

    const HOSTS: [&str; 4] = ["a", "b", "c", "d"];

    fn state() -> impl Strategy<Value = S> {
        proptest::sample::select(vec![
            S::Stopped,
            S::Starting,
            S::Running,
            S::Paused,
            S::ShuttingDown,
            S::Suspending,
            S::Suspended,
            S::Crashed,
            S::Unknown,
        ])
    }

    fn guest() -> impl Strategy<Value = GuestInfo> {
        (any::<bool>(), proptest::option::of("[a-z]{1,4}")).prop_map(|(ready, hostname)| {
            GuestInfo {
                ready,
                hostname,
                ..Default::default()
            }
        })
    }

    /// A record owned by `a` (or by nobody), perhaps with an operation in
    /// flight, perhaps a migration a→b before or after its commit.
    fn record() -> impl Strategy<Value = VmRecord> {
        let op = prop_oneof![
            Just(None),
            Just(Some(VmOperation::Starting)),
            Just(Some(VmOperation::Snapshotting)),
            Just(Some(migrating())),
            Just(Some(VmOperation::FailingOver { from: "a".into() })),
        ];
        (
            state(),
            prop_oneof![Just(Some("a")), Just(None)],
            0u64..1000,
            op,
            any::<bool>(),
            guest(),
        )
            .prop_map(|(s, owner, since, op, committed, g)| {
                let mut r = rec(s, owner, since);
                r.guest = g;
                if let Some(op) = op {
                    r = with_op(r, op);
                    if committed && owner.is_some() {
                        if let Ok(c) = commit_move(&r, "b") {
                            r = c;
                        }
                    }
                }
                r
            })
    }

    /// A report entry: absent, or any state, time and guest.
    fn entry() -> impl Strategy<Value = Option<VmRuntime>> {
        proptest::option::of((state(), 0u64..2000, guest()).prop_map(|(s, since, g)| {
            let mut r = rt(s, since);
            r.guest = g;
            r
        }))
    }

    proptest! {
        /// No sequence of reports from hosts that do not own the VM flips
        /// its record: not its state, owner, freshness mark nor guest.
        #[test]
        fn no_sequence_of_reports_from_stale_hosts_flips_a_vm(
            start in record(),
            reports in proptest::collection::vec(
                (proptest::sample::select(HOSTS.to_vec()), entry()), 0..30),
        ) {
            let mut r = start.clone();
            for (host, e) in &reports {
                if start.owner.as_deref() == Some(*host) {
                    continue;
                }
                let (next, conflict) = fold_report(&r, e.as_ref(), host);
                // Only a stranger with a process is a conflict.
                let stranger = reporter(&r, host) == Reporter::Stranger;
                prop_assert_eq!(
                    conflict.is_some(),
                    stranger && e.as_ref().is_some_and(|e| e.state.has_process())
                );
                r = next;
            }
            prop_assert_eq!(r, start);
        }

        /// Late reports from the owner (about a state older than the one
        /// recorded) never change the power state either.
        #[test]
        fn late_reports_from_the_owner_do_not_flip_the_state(
            start in record(),
            late in proptest::collection::vec((state(), guest()), 0..10),
        ) {
            prop_assume!(start.owner.is_some() && start.since_ms > 0);
            let mut r = start.clone();
            for (s, g) in late {
                let mut e = rt(s, start.since_ms - 1);
                e.guest = g;
                r = fold(&r, Some(&e), "a");
                prop_assert_eq!((r.state, r.since_ms, &r.owner), (start.state, start.since_ms, &start.owner));
            }
        }

        /// The owner's fresh report, with nothing in flight, is the truth.
        #[test]
        fn the_owner_speaks(s in state(), since in 0u64..1000, e in entry(), g in guest()) {
            let mut start = rec(s, Some("a"), since);
            start.guest = g;
            let Some(mut e) = e else { return Ok(()) };
            e.since_ms = since + 1;
            let (r, conflict) = fold_report(&start, Some(&e), "a");
            prop_assert_eq!(r.state, e.state);
            prop_assert_eq!(r.since_ms, e.since_ms);
            prop_assert!(conflict.is_none());
        }

        /// Folding the same report twice changes nothing more than once.
        #[test]
        fn folding_is_idempotent(
            start in record(),
            host in proptest::sample::select(HOSTS.to_vec()),
            e in entry(),
        ) {
            let once = fold(&start, e.as_ref(), host);
            prop_assert_eq!(fold(&once, e.as_ref(), host), once);
        }
    }
}
