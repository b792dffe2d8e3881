//! Reading a task journal: what a task has made so far, and which agent
//! job it is waiting on. Pure functions of the journal, shared by the live
//! task bodies (to skip what is done and attach to a submitted job instead
//! of repeating it) and by the resume rules.

use vdc_types::job::{JobKind, JobState};
use vdc_types::{Step, TaskJournal};

/// An agent job a task submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedJob {
    /// Host running it.
    pub host: String,
    /// Operation id (= job id).
    pub operation_id: String,
    /// What it does.
    pub kind: JobKind,
    /// How it ended, if the task saw it end.
    pub ended: Option<JobState>,
}

/// Every job the task submitted, oldest first, with its end if journaled.
pub fn jobs(journal: &TaskJournal) -> Vec<SubmittedJob> {
    let mut out: Vec<SubmittedJob> = Vec::new();
    for step in journal.steps() {
        match step {
            Step::JobSubmitted {
                host,
                operation_id,
                job,
            } => out.push(SubmittedJob {
                host: host.clone(),
                operation_id: operation_id.clone(),
                kind: *job,
                ended: None,
            }),
            Step::JobEnded {
                operation_id,
                state,
            } => {
                if let Some(j) = out.iter_mut().find(|j| &j.operation_id == operation_id) {
                    j.ended = Some(*state);
                }
            }
            _ => {}
        }
    }
    out
}

/// The last submitted job of `kind` that the task has not seen end.
pub fn pending_job(journal: &TaskJournal, kind: JobKind) -> Option<SubmittedJob> {
    jobs(journal)
        .into_iter()
        .rev()
        .find(|j| j.kind == kind)
        .filter(|j| j.ended.is_none())
}

/// The last submitted job, of any kind, that the task has not seen end.
pub fn any_pending_job(journal: &TaskJournal) -> Option<SubmittedJob> {
    jobs(journal).into_iter().rev().find(|j| j.ended.is_none())
}

/// Whether a job of `kind` succeeded.
pub fn job_succeeded(journal: &TaskJournal, kind: JobKind) -> bool {
    jobs(journal)
        .iter()
        .any(|j| j.kind == kind && j.ended == Some(JobState::Succeeded))
}

/// The operation id of the next job: `<task id>.<n>`, n counting the jobs
/// already submitted, so ids never repeat within a task.
pub fn next_operation_id(task_id: &str, journal: &TaskJournal) -> String {
    format!("{task_id}.{}", jobs(journal).len())
}

/// Addresses reserved by the task, as (network, address).
pub fn addresses(journal: &TaskJournal) -> Vec<(String, String)> {
    journal
        .steps()
        .filter_map(|s| match s {
            Step::AddressAllocated { network, address } => Some((network.clone(), address.clone())),
            _ => None,
        })
        .collect()
}

/// The host the task placed the VM on, if it did.
pub fn placed(journal: &TaskJournal) -> Option<String> {
    journal.steps().find_map(|s| match s {
        Step::Placed { host } => Some(host.clone()),
        _ => None,
    })
}

/// The host that may hold files the task made: where a provision job was
/// submitted (it may have made files even if it never answered).
pub fn files_on(journal: &TaskJournal) -> Option<String> {
    jobs(journal)
        .into_iter()
        .find(|j| j.kind == JobKind::Provision)
        .map(|j| j.host)
}

/// Whether the task began undoing its work.
pub fn rolling_back(journal: &TaskJournal) -> bool {
    journal
        .steps()
        .any(|s| matches!(s, Step::RollingBack { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::agent::DiskSource;
    use vdc_types::{TaskParams, TaskStep};

    fn journal(steps: Vec<Step>) -> TaskJournal {
        let mut j = TaskJournal::new(TaskParams::VmCreate {
            data_images: Vec::new(),
            more_networks: Vec::new(),
            vm_id: "id".into(),
            start: true,
            host: None,
            network: Some("lab".into()),
            boot_source: DiskSource::Blank,
            data_sources: Vec::new(),
            address: None,
            dhcp: false,
        });
        j.steps = steps
            .into_iter()
            .map(|step| TaskStep { at_ms: 1, step })
            .collect();
        j
    }

    fn submitted(op: &str, job: JobKind) -> Step {
        Step::JobSubmitted {
            host: "host-2".into(),
            operation_id: op.into(),
            job,
        }
    }

    #[test]
    fn a_job_is_pending_until_its_end_is_journaled() {
        let j = journal(vec![
            Step::AddressAllocated {
                network: "lab".into(),
                address: "10.0.0.5".into(),
            },
            Step::Placed {
                host: "host-2".into(),
            },
            submitted("t.0", JobKind::Provision),
        ]);
        assert_eq!(addresses(&j), [("lab".to_string(), "10.0.0.5".to_string())]);
        assert_eq!(placed(&j).as_deref(), Some("host-2"));
        assert_eq!(files_on(&j).as_deref(), Some("host-2"));
        let p = pending_job(&j, JobKind::Provision).expect("pending");
        assert_eq!(p.operation_id, "t.0");
        assert_eq!(next_operation_id("t", &j), "t.1");
        assert!(!job_succeeded(&j, JobKind::Provision));

        let mut j = j;
        j.steps.push(TaskStep {
            at_ms: 2,
            step: Step::JobEnded {
                operation_id: "t.0".into(),
                state: JobState::Succeeded,
            },
        });
        assert!(pending_job(&j, JobKind::Provision).is_none());
        assert!(any_pending_job(&j).is_none());
        assert!(job_succeeded(&j, JobKind::Provision));
        j.steps.push(TaskStep {
            at_ms: 3,
            step: submitted("t.1", JobKind::Start),
        });
        assert_eq!(any_pending_job(&j).map(|p| p.kind), Some(JobKind::Start));
        assert!(!rolling_back(&j));
    }

    #[test]
    fn an_empty_journal_made_nothing() {
        let j = journal(vec![]);
        assert!(addresses(&j).is_empty());
        assert!(placed(&j).is_none() && files_on(&j).is_none());
        assert!(any_pending_job(&j).is_none());
        assert_eq!(next_operation_id("t", &j), "t.0");
    }
}
