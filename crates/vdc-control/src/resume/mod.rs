//! What a restarted server does with each task the previous server left
//! unfinished: resume it, roll it back, or reconcile it with what the
//! agents report. The rules are a pure function ([`decide`]) of the task's
//! journal and of the world as observed after the restart; `driver` does
//! the observing and carries the decision out.
//!
//! # Rules
//!
//! | task | observed | decision |
//! |---|---|---|
//! | any | no journal, or a newer journal version | fail: "the server stopped while this task ran" |
//! | `vm.create` | record gone, rollback under way, or cancel asked | roll back: destroy the files on the host a provision was sent to, release the journaled addresses, delete the record |
//! | `vm.create` | the pending provision's host does not answer | roll back (files on that host may remain; logged) |
//! | `vm.create` | the pending start's host does not answer | fail; record `unknown`, the VM is kept (it may run there): the user starts or deletes it once the host is back |
//! | `vm.create` | otherwise | continue: rerun the body; it skips the journaled steps and resubmits its pending job under the same operation id (the agent attaches to it, or runs it again if it restarted) |
//! | power (`vm.start`, `stop`, `shutdown`, `suspend`, `reset`, `pause`, `resume`) | VM record gone | fail |
//! | power | the pending job is running or ended on the agent | continue: attach to the job and finish as the live task would |
//! | power | the VM's host does not answer | fail; record `unknown` |
//! | power | the VM is reported in the state the operation aims at (e.g. `suspended` for a suspend) | succeed; record that state |
//! | power | cancel was asked | cancelled; record the reported state |
//! | power | otherwise | fail with the reported state (e.g. a suspend that did not happen: "the VM still runs"); record it |
//! | `vm.delete` | record gone | succeed |
//! | `vm.delete` | otherwise | continue (destroying files that are already gone counts as done) |
//! | `vm.failover` | record gone | fail |
//! | `vm.failover` | otherwise | continue: attach to the journaled start job on its host (the same operation id: the agent attaches or starts it once), or place and start if none was submitted; a failed attempt records the VM `unknown` on its lost host again and the HA manager retries |
//! | `template.import` | the job is running or ended on the agent | continue (attach; a cancel is forwarded to the job) |
//! | `template.import` | otherwise | roll back: delete the template record |
//! | `vm.migrate` (live) | VM record gone | fail |
//! | `vm.migrate` (live) | otherwise | settle (`migration::live_restart`): cancel both jobs; if the source's job had completed and the destination runs the VM, commit the move and succeed; else the VM stays on the source (failed, or cancelled) and nothing is left on the destination |
//! | other kinds | | fail: "the server stopped while this task ran" |

pub(crate) mod driver;

use vdc_types::job::{JobKind, JobState};
use vdc_types::task::JOURNAL_VERSION;
use vdc_types::{TaskJournal, TaskParams, VmPowerState};

use crate::journal;

/// The kinds of task the rules know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// `vm.create`.
    VmCreate,
    /// `vm.start`.
    VmStart,
    /// `vm.stop` (power off).
    VmStop,
    /// `vm.shutdown`.
    VmShutdown,
    /// `vm.suspend`.
    VmSuspend,
    /// `vm.reset`.
    VmReset,
    /// `vm.pause`.
    VmPause,
    /// `vm.resume` (of a paused VM).
    VmResume,
    /// `vm.delete`.
    VmDelete,
    /// `vm.failover` (HA restart elsewhere).
    VmFailover,
    /// `template.import`.
    TemplateImport,
    /// `vm.migrate`.
    VmMigrate,
    /// `snapshot.create`, `snapshot.delete`.
    Snapshot,
    /// Anything else.
    Other,
}

impl TaskKind {
    /// The kind of a task from its recorded name.
    pub fn parse(kind: &str) -> TaskKind {
        match kind {
            "vm.create" => TaskKind::VmCreate,
            "vm.start" => TaskKind::VmStart,
            "vm.stop" => TaskKind::VmStop,
            "vm.shutdown" => TaskKind::VmShutdown,
            "vm.suspend" => TaskKind::VmSuspend,
            "vm.reset" => TaskKind::VmReset,
            "vm.pause" => TaskKind::VmPause,
            "vm.resume" => TaskKind::VmResume,
            "vm.delete" => TaskKind::VmDelete,
            "vm.failover" => TaskKind::VmFailover,
            "template.import" => TaskKind::TemplateImport,
            "vm.migrate" => TaskKind::VmMigrate,
            "snapshot.create" | "snapshot.delete" => TaskKind::Snapshot,
            _ => TaskKind::Other,
        }
    }

    /// States that show a power operation took effect.
    fn goal(self) -> &'static [VmPowerState] {
        use VmPowerState as S;
        match self {
            TaskKind::VmStart | TaskKind::VmReset | TaskKind::VmResume => &[S::Running],
            TaskKind::VmStop | TaskKind::VmShutdown => &[S::Stopped],
            TaskKind::VmSuspend => &[S::Suspended],
            TaskKind::VmPause => &[S::Paused],
            _ => &[],
        }
    }
}

/// A submitted agent job as its host answers after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSeen {
    /// The agent knows it; it runs or has ended.
    Known(JobState),
    /// The agent does not know it (never arrived, or the agent restarted).
    Unknown,
    /// The host did not answer.
    Unreachable,
}

/// The task's VM as its host reports it after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmSeen {
    /// The host reports it in this state.
    Reported(VmPowerState),
    /// The host is connected and does not report it.
    NotReported,
    /// The host is not connected (or the VM has no host).
    Unreachable,
}

/// What the restarted server observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// The VM's (or template's) record, if it exists, with the VM state
    /// recorded (`None` inside for a template).
    pub record: Option<Option<VmPowerState>>,
    /// The task's pending job (last submitted and not seen ending), if any.
    pub job: Option<JobSeen>,
    /// The VM on its host.
    pub vm: VmSeen,
}

/// How a task ends when it is decided without running anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it was asked.
    Succeeded,
    /// It did not, for this reason.
    Failed(String),
    /// It was cancelled.
    Cancelled,
}

/// What to do with an unfinished task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rerun the task's body: it skips journaled steps and attaches to its
    /// pending job under the same operation id.
    Continue,
    /// Undo everything the journal says the task made.
    RollBack {
        /// Why.
        reason: String,
    },
    /// End the task now and record `record` as the VM's state (if any).
    Finish {
        /// How the task ends.
        outcome: Outcome,
        /// VM state to record.
        record: Option<VmPowerState>,
    },
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Continue => f.write_str("continue"),
            Decision::RollBack { reason } => write!(f, "roll back ({reason})"),
            Decision::Finish { outcome, record } => {
                match outcome {
                    Outcome::Succeeded => f.write_str("finished: it had succeeded")?,
                    Outcome::Failed(why) => write!(f, "failed: {why}")?,
                    Outcome::Cancelled => f.write_str("cancelled")?,
                }
                if let Some(s) = record {
                    write!(f, "; VM recorded {s}")?;
                }
                Ok(())
            }
        }
    }
}

fn fail(why: impl Into<String>, record: Option<VmPowerState>) -> Decision {
    Decision::Finish {
        outcome: Outcome::Failed(why.into()),
        record,
    }
}

/// The rules of the module table: what to do with an unfinished task of
/// `kind`, given its journal, whether a cancel was asked, and the world.
pub fn decide(
    kind: TaskKind,
    journal: Option<&TaskJournal>,
    cancel_requested: bool,
    world: &World,
) -> Decision {
    let Some(journal) = journal.filter(|j| j.version <= JOURNAL_VERSION) else {
        return fail(
            "the server stopped while this task ran; check the object's state and retry",
            None,
        );
    };
    let pending = journal::any_pending_job(journal);
    let job_known = matches!(world.job, Some(JobSeen::Known(_)));
    match kind {
        TaskKind::VmCreate => {
            if world.record.is_none() {
                return Decision::RollBack {
                    reason: "the VM's record is gone".into(),
                };
            }
            if journal::rolling_back(journal) {
                return Decision::RollBack {
                    reason: "the rollback was under way".into(),
                };
            }
            if cancel_requested {
                return Decision::RollBack {
                    reason: "the task was cancelled".into(),
                };
            }
            if let (Some(p), Some(JobSeen::Unreachable)) = (&pending, world.job) {
                if p.kind == JobKind::Start {
                    return fail(
                        format!(
                            "host '{}' did not answer after the server restarted while it started the VM; the VM is kept; start or delete it once the host is back",
                            p.host
                        ),
                        Some(VmPowerState::Unknown),
                    );
                }
                return Decision::RollBack {
                    reason: format!(
                        "host '{}' did not answer after the server restarted; files it made may remain there",
                        p.host
                    ),
                };
            }
            Decision::Continue
        }
        TaskKind::VmStart
        | TaskKind::VmStop
        | TaskKind::VmShutdown
        | TaskKind::VmSuspend
        | TaskKind::VmReset
        | TaskKind::VmPause
        | TaskKind::VmResume => {
            if world.record.is_none() {
                return fail("the VM no longer exists", None);
            }
            if pending.is_some() && job_known {
                return Decision::Continue;
            }
            let observed = match world.vm {
                VmSeen::Reported(s) => s,
                VmSeen::Unreachable => {
                    return fail(
                        "the VM's host did not answer after the server restarted; its state follows the host's reports",
                        Some(VmPowerState::Unknown),
                    )
                }
                VmSeen::NotReported => {
                    let had_process = world.record.flatten().is_some_and(|s| s.has_process());
                    let record = had_process.then_some(VmPowerState::Stopped);
                    return fail(
                        "the server restarted and the VM's host no longer reports the VM",
                        record,
                    );
                }
            };
            if kind.goal().contains(&observed) {
                return Decision::Finish {
                    outcome: Outcome::Succeeded,
                    record: Some(observed),
                };
            }
            if cancel_requested {
                return Decision::Finish {
                    outcome: Outcome::Cancelled,
                    record: Some(observed),
                };
            }
            let why = match (kind, observed) {
                (TaskKind::VmSuspend, VmPowerState::Running | VmPowerState::Paused) => format!(
                    "the server restarted before the suspend completed; the VM still runs ({observed}); suspend it again"
                ),
                (TaskKind::VmShutdown, VmPowerState::Running | VmPowerState::Paused) => format!(
                    "the server restarted before the guest powered off; the VM still runs ({observed}); shut it down again"
                ),
                _ => format!("the server restarted during the operation; the VM is {observed}"),
            };
            fail(why, Some(observed))
        }
        TaskKind::VmDelete => {
            if world.record.is_none() {
                Decision::Finish {
                    outcome: Outcome::Succeeded,
                    record: None,
                }
            } else {
                Decision::Continue
            }
        }
        TaskKind::VmFailover => {
            if world.record.is_none() {
                fail("the VM no longer exists", None)
            } else {
                Decision::Continue
            }
        }
        TaskKind::TemplateImport => {
            if pending.is_some() && job_known {
                Decision::Continue
            } else {
                Decision::RollBack {
                    reason: if cancel_requested {
                        "the task was cancelled".into()
                    } else {
                        "the import was interrupted; import the image again".into()
                    },
                }
            }
        }
        TaskKind::VmMigrate => {
            if world.record.is_none() {
                fail("the VM no longer exists", None)
            } else {
                Decision::Continue
            }
        }
        TaskKind::Snapshot => {
            if world.record.is_none() {
                return fail("the VM no longer exists", None);
            }
            let has_action = matches!(journal.params, TaskParams::Snapshot { .. });
            if has_action && pending.is_some() && job_known {
                return Decision::Continue;
            }
            if has_action && journal::job_succeeded(journal, JobKind::Snapshot) {
                // The job ended well; only the task's end was lost.
                return Decision::Finish {
                    outcome: Outcome::Succeeded,
                    record: None,
                };
            }
            fail(
                "the server restarted while the snapshot job was sent or after its host lost it; see 'vdc vm snapshot list' and retry",
                None,
            )
        }
        TaskKind::Other => fail(
            "the server stopped while this task ran; check the object's state and retry",
            None,
        ),
    }
}

#[cfg(test)]
mod tests;
