//! A DR run (`/dr-runs/<id>`, version [`RUN_VERSION`]): one operation of a
//! plan, its steps with start and end times and outcome, each VM's
//! recovered point and RPO, the measured RTO, and errors.
//!
//! The run's states:
//!
//! ```text
//!            a prompt step            vdc plan continue RUN
//!  running ───────────────► waiting ───────────────────────► running
//!     │ every step ok                     │ a step failed
//!     ▼                                   ▼
//!  succeeded                            failed
//! ```
//!
//! The plan's own state says which operation may come next
//! ([`PlanState`], [`next_state`]):
//!
//! ```text
//!            test                 cleanup
//!  ready ─────────────► tested ───────────► ready
//!    │ migrate, failover, failback
//!    ▼
//!  recovered ──reprotect──► ready   (direction swapped: the plan now
//!                                    protects the site it recovered to)
//! ```
//!
//! A run that fails leaves the state its partial work implies: a failed
//! test is `tested` (cleanup removes what it made), a failed recovery is
//! `recovering` (run failover again: VMs already recovered are kept), a
//! failed reprotect stays `recovered`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vdc_types::UnixMillis;

/// Format version of a run record; a newer one is refused.
pub const RUN_VERSION: u32 = 1;

/// A DR operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Recover test clones into an isolated bubble.
    Test,
    /// Remove a test's clones and bubble.
    Cleanup,
    /// Planned migration: final sync, clean shutdown, recover (no loss).
    Migrate,
    /// Disaster failover: latest points, protected site may be gone.
    Failover,
    /// Replicate the recovered VMs back and swap the plan's direction.
    Reprotect,
    /// Planned migration back to the original site.
    Failback,
}

impl Operation {
    /// The word used in the CLI, events and task kinds.
    pub fn word(self) -> &'static str {
        match self {
            Operation::Test => "test",
            Operation::Cleanup => "cleanup",
            Operation::Migrate => "migrate",
            Operation::Failover => "failover",
            Operation::Reprotect => "reprotect",
            Operation::Failback => "failback",
        }
    }

    /// Whether it recovers production VMs from a point taken after a clean
    /// shutdown (RPO 0 by construction).
    pub fn planned(self) -> bool {
        matches!(self, Operation::Migrate | Operation::Failback)
    }
}

/// Where a plan stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Protecting: any operation but cleanup and reprotect.
    #[default]
    Ready,
    /// Test clones exist: cleanup first.
    Tested,
    /// A failover or migration did not finish: run failover again.
    Recovering,
    /// Production runs at the recovery site: reprotect next.
    Recovered,
}

/// Why an operation may not run now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Another run of the plan is active.
    #[error("run {0} of this plan is still active; wait for it or continue it")]
    Busy(String),
    /// The plan's state refuses the operation.
    #[error("plan is {state}; {hint}")]
    Refused {
        /// The plan's state.
        state: &'static str,
        /// What to do.
        hint: &'static str,
    },
}

/// Checks that `op` may start on a plan in `state` whose direction was
/// swapped `reprotects` times.
pub fn may_start(state: PlanState, op: Operation, reprotects: u32) -> Result<(), StateError> {
    use Operation as O;
    use PlanState as S;
    let refuse = |state, hint| Err(StateError::Refused { state, hint });
    match (state, op) {
        (S::Ready, O::Test) => Ok(()),
        (S::Ready, O::Migrate | O::Failover) if reprotects.is_multiple_of(2) => Ok(()),
        (S::Ready, O::Failback) if !reprotects.is_multiple_of(2) => Ok(()),
        (S::Ready, O::Failback) => refuse(
            "protecting its original site",
            "failback follows a failover or migration and a reprotect",
        ),
        (S::Ready, O::Migrate | O::Failover) => refuse(
            "protecting the site it recovered to",
            "use failback to bring the VMs home",
        ),
        (S::Ready, O::Cleanup) => refuse("ready", "there is no test to clean up"),
        (S::Ready, O::Reprotect) => refuse("ready", "reprotect follows a failover or migration"),
        (S::Tested, O::Cleanup) => Ok(()),
        (S::Tested, _) => refuse("tested", "run cleanup first"),
        (S::Recovering, O::Failover) => Ok(()),
        (S::Recovering, _) => refuse(
            "half recovered",
            "run failover again: VMs already recovered are kept",
        ),
        (S::Recovered, O::Reprotect) => Ok(()),
        (S::Recovered, _) => refuse("recovered", "reprotect next"),
    }
}

/// The plan's state after `op` ended (`ok`: every step succeeded;
/// `recovered_any`: a VM was recovered). A planned migration that failed
/// before recovering anything is rolled back (the protected VMs it shut
/// down start again): the plan is ready as before.
pub fn next_state(op: Operation, ok: bool, recovered_any: bool) -> PlanState {
    use Operation as O;
    match (op, ok) {
        (O::Migrate | O::Failback, false) if !recovered_any => PlanState::Ready,
        (O::Test, _) => PlanState::Tested,
        (O::Cleanup, true) => PlanState::Ready,
        (O::Cleanup, false) => PlanState::Tested,
        (O::Migrate | O::Failover | O::Failback, true) => PlanState::Recovered,
        (O::Migrate | O::Failover | O::Failback, false) => PlanState::Recovering,
        (O::Reprotect, true) => PlanState::Ready,
        (O::Reprotect, false) => PlanState::Recovered,
    }
}

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Steps are running.
    Running,
    /// Paused at a prompt until `vdc plan continue RUN`.
    Waiting,
    /// Every step succeeded.
    Succeeded,
    /// A step failed (see `errors`).
    Failed,
}

/// A step's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Not started.
    Pending,
    /// Running.
    Running,
    /// Done.
    Ok,
    /// Failed (see `detail`).
    Failed,
    /// Not needed (e.g. nothing to remove, site unreachable for a fence).
    Skipped,
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepRecord {
    /// What the step does, in words.
    pub name: String,
    /// Its priority group (1-based), if it belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// Its VM, if it concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Outcome.
    pub outcome: StepOutcome,
    /// Start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<UnixMillis>,
    /// End time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<UnixMillis>,
    /// What happened (an error, a skipped reason, a command's output tail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a run did with one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmOutcome {
    /// The VM's name at the protected site.
    pub vm: String,
    /// The recovered VM's name at the recovery site.
    pub recovered_as: String,
    /// Its priority group (1-based).
    pub group: usize,
    /// The recovered point's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// The recovered point's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_ms: Option<UnixMillis>,
    /// Run start minus the point's time (0 for a planned migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_ms: Option<u64>,
    /// When it was ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<UnixMillis>,
}

/// A DR run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    /// Format version ([`RUN_VERSION`]).
    #[schema(minimum = 0, maximum = 1)]
    pub version: u32,
    /// Id (also its task's id).
    pub id: String,
    /// The plan.
    pub plan: String,
    /// The task that performs it.
    #[serde(default)]
    pub task: String,
    /// The operation.
    pub operation: Operation,
    /// State.
    pub state: RunState,
    /// The site protected during the run.
    pub protected_site: String,
    /// The site recovering during the run.
    pub recovery_site: String,
    /// Start time.
    pub started_ms: UnixMillis,
    /// End time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<UnixMillis>,
    /// Steps in order.
    pub steps: Vec<StepRecord>,
    /// Each VM's recovery.
    #[serde(default)]
    pub vms: Vec<VmOutcome>,
    /// Measured RTO: run start to the last VM ready (recovering runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_ms: Option<u64>,
    /// The message of the prompt the run waits at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Errors, in order.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// The RPO of a VM recovered from a point of `point_ms` in a run started
/// at `started_ms` (0 for a planned migration: its point follows a clean
/// shutdown, so nothing written is lost).
pub fn rpo_ms(op: Operation, started_ms: UnixMillis, point_ms: UnixMillis) -> u64 {
    if op.planned() {
        0
    } else {
        started_ms.saturating_sub(point_ms)
    }
}

/// The measured RTO: from the run's start to the last VM ready; `None`
/// while a VM is not ready or none was recovered.
pub fn rto_ms(started_ms: UnixMillis, vms: &[VmOutcome]) -> Option<u64> {
    if vms.is_empty() {
        return None;
    }
    let mut last = started_ms;
    for v in vms {
        last = last.max(v.ready_ms?);
    }
    Some(last - started_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(ready: Option<u64>) -> VmOutcome {
        VmOutcome {
            vm: "a".into(),
            recovered_as: "a".into(),
            group: 1,
            point: None,
            point_ms: Some(100),
            rpo_ms: None,
            ready_ms: ready,
        }
    }

    #[test]
    fn rto_is_the_last_ready_vm() {
        assert_eq!(rto_ms(1000, &[]), None);
        assert_eq!(
            rto_ms(1000, &[out(Some(1500)), out(Some(4000))]),
            Some(3000)
        );
        assert_eq!(rto_ms(1000, &[out(Some(1500)), out(None)]), None);
    }

    #[test]
    fn rpo_is_zero_for_planned_migrations() {
        assert_eq!(rpo_ms(Operation::Failover, 10_000, 7_000), 3_000);
        assert_eq!(rpo_ms(Operation::Test, 10_000, 7_000), 3_000);
        assert_eq!(rpo_ms(Operation::Migrate, 10_000, 7_000), 0);
        assert_eq!(rpo_ms(Operation::Failback, 10_000, 7_000), 0);
    }

    #[test]
    fn the_plan_cycle_test_cleanup_failover_reprotect_failback_reprotect() {
        let mut s = PlanState::Ready;
        let mut rp = 0;
        for op in [
            Operation::Test,
            Operation::Cleanup,
            Operation::Failover,
            Operation::Reprotect,
            Operation::Failback,
            Operation::Reprotect,
            Operation::Migrate,
        ] {
            may_start(s, op, rp).unwrap_or_else(|e| panic!("{op:?} from {s:?}: {e}"));
            s = next_state(op, true, true);
            if op == Operation::Reprotect {
                rp += 1;
            }
        }
        assert_eq!(s, PlanState::Recovered);
    }

    #[test]
    fn refusals_say_what_to_do() {
        assert!(may_start(PlanState::Ready, Operation::Cleanup, 0).is_err());
        assert!(may_start(PlanState::Ready, Operation::Failback, 0).is_err());
        assert!(may_start(PlanState::Ready, Operation::Failover, 1).is_err());
        assert!(may_start(PlanState::Tested, Operation::Failover, 0).is_err());
        assert!(may_start(PlanState::Recovered, Operation::Test, 0).is_err());
        let e = may_start(PlanState::Tested, Operation::Test, 0).unwrap_err();
        assert!(e.to_string().contains("cleanup"), "{e}");
        assert_eq!(
            next_state(Operation::Failover, false, true),
            PlanState::Recovering
        );
        assert_eq!(
            next_state(Operation::Migrate, false, false),
            PlanState::Ready
        );
        assert_eq!(
            next_state(Operation::Failback, false, true),
            PlanState::Recovering
        );
    }

    proptest::proptest! {
        /// Whatever sequence of operations is tried, only allowed ones change
        /// the state, and a test is always followed by a cleanup before any
        /// recovery.
        #[test]
        fn no_recovery_while_test_clones_exist(ops in proptest::collection::vec(0usize..6, 0..30), oks in proptest::collection::vec(proptest::bool::ANY, 30)) {
            let all = [Operation::Test, Operation::Cleanup, Operation::Migrate, Operation::Failover, Operation::Reprotect, Operation::Failback];
            let mut s = PlanState::Ready;
            let mut rp = 0u32;
            for (i, o) in ops.into_iter().enumerate() {
                let op = all[o];
                if may_start(s, op, rp).is_err() { continue; }
                if s == PlanState::Tested {
                    proptest::prop_assert_eq!(op, Operation::Cleanup);
                }
                let ok = oks[i];
                s = next_state(op, ok, ok);
                if op == Operation::Reprotect && ok { rp += 1; }
            }
        }
    }
}
