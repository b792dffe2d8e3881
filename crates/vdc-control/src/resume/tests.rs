//! The resume rules, case by case.

use super::*;
use vdc_types::agent::DiskSource;
use vdc_types::{Step, TaskParams, TaskStep};
use VmPowerState as S;

fn create_journal(steps: Vec<Step>) -> TaskJournal {
    let mut j = TaskJournal::new(TaskParams::VmCreate {
        data_images: Vec::new(),
        more_networks: Vec::new(),
        vm_id: "id".into(),
        start: false,
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

fn power_journal(steps: Vec<Step>) -> TaskJournal {
    let mut j = create_journal(steps);
    j.params = TaskParams::VmPower {
        vm_id: "id".into(),
        host: Some("host-1".into()),
        shutdown_timeout_s: None,
    };
    j
}

fn submitted(op: &str, job: JobKind) -> Step {
    Step::JobSubmitted {
        host: "host-1".into(),
        operation_id: op.into(),
        job,
    }
}

fn world(record: Option<VmPowerState>, job: Option<JobSeen>, vm: VmSeen) -> World {
    World {
        record: record.map(Some),
        job,
        vm,
    }
}

fn failed_with(d: &Decision, record: Option<VmPowerState>, words: &str) {
    match d {
        Decision::Finish {
            outcome: Outcome::Failed(why),
            record: r,
        } => {
            assert_eq!(*r, record, "{d}");
            assert!(why.contains(words), "{why}");
        }
        d => panic!("expected a failure, got {d:?}"),
    }
}

#[test]
fn a_task_without_journal_fails_as_before() {
    let w = world(Some(S::Running), None, VmSeen::Reported(S::Running));
    for kind in [TaskKind::VmCreate, TaskKind::VmSuspend, TaskKind::Other] {
        failed_with(
            &decide(kind, None, false, &w),
            None,
            "server stopped while this task ran",
        );
    }
    let mut newer = create_journal(vec![]);
    newer.version = JOURNAL_VERSION + 1;
    failed_with(
        &decide(TaskKind::VmCreate, Some(&newer), false, &w),
        None,
        "server stopped",
    );
}

#[test]
fn a_create_continues_from_its_journal() {
    let w = world(Some(S::Stopped), None, VmSeen::NotReported);
    // Killed before anything, after the address, while the job ran.
    for steps in [
        vec![],
        vec![Step::AddressAllocated {
            network: "lab".into(),
            address: "10.0.0.5".into(),
        }],
    ] {
        let j = create_journal(steps);
        assert_eq!(
            decide(TaskKind::VmCreate, Some(&j), false, &w),
            Decision::Continue
        );
    }
    let j = create_journal(vec![submitted("t.0", JobKind::Provision)]);
    for job in [
        JobSeen::Known(JobState::Running),
        JobSeen::Known(JobState::Succeeded),
        JobSeen::Known(JobState::Failed),
        JobSeen::Unknown,
    ] {
        let w = world(Some(S::Stopped), Some(job), VmSeen::NotReported);
        assert_eq!(
            decide(TaskKind::VmCreate, Some(&j), false, &w),
            Decision::Continue,
            "{job:?}"
        );
    }
}

#[test]
fn a_create_rolls_back_when_cancelled_gone_or_already_rolling_back() {
    let j = create_journal(vec![submitted("t.0", JobKind::Provision)]);
    let running = Some(JobSeen::Known(JobState::Running));
    let w = world(Some(S::Stopped), running, VmSeen::NotReported);
    assert!(matches!(
        decide(TaskKind::VmCreate, Some(&j), true, &w),
        Decision::RollBack { .. }
    ));
    let gone = world(None, running, VmSeen::NotReported);
    assert!(matches!(
        decide(TaskKind::VmCreate, Some(&j), false, &gone),
        Decision::RollBack { .. }
    ));
    let mut rolling = j.clone();
    rolling.steps.push(TaskStep {
        at_ms: 2,
        step: Step::RollingBack {
            reason: "provision failed".into(),
        },
    });
    assert!(matches!(
        decide(TaskKind::VmCreate, Some(&rolling), false, &w),
        Decision::RollBack { .. }
    ));
}

#[test]
fn a_create_whose_host_is_gone_rolls_back_unless_the_vm_may_run_there() {
    let j = create_journal(vec![submitted("t.0", JobKind::Provision)]);
    let w = world(
        Some(S::Stopped),
        Some(JobSeen::Unreachable),
        VmSeen::Unreachable,
    );
    assert!(matches!(
        decide(TaskKind::VmCreate, Some(&j), false, &w),
        Decision::RollBack { .. }
    ));
    let j = create_journal(vec![
        submitted("t.0", JobKind::Provision),
        Step::JobEnded {
            operation_id: "t.0".into(),
            state: JobState::Succeeded,
        },
        submitted("t.1", JobKind::Start),
    ]);
    failed_with(
        &decide(TaskKind::VmCreate, Some(&j), false, &w),
        Some(S::Unknown),
        "start or delete it",
    );
}

#[test]
fn a_suspend_is_reconciled_with_the_host() {
    let j = power_journal(vec![submitted("t.0", JobKind::Suspend)]);
    // The agent still runs (or finished) the job: attach to it.
    for state in [JobState::Running, JobState::Succeeded, JobState::Failed] {
        let w = world(
            Some(S::Suspending),
            Some(JobSeen::Known(state)),
            VmSeen::Reported(S::Suspending),
        );
        assert_eq!(
            decide(TaskKind::VmSuspend, Some(&j), false, &w),
            Decision::Continue
        );
    }
    // The agent forgot the job; the VM is suspended: done.
    let w = world(
        Some(S::Suspending),
        Some(JobSeen::Unknown),
        VmSeen::Reported(S::Suspended),
    );
    assert_eq!(
        decide(TaskKind::VmSuspend, Some(&j), false, &w),
        Decision::Finish {
            outcome: Outcome::Succeeded,
            record: Some(S::Suspended)
        }
    );
    // The VM still runs: recorded running, the task says so.
    let w = world(
        Some(S::Suspending),
        Some(JobSeen::Unknown),
        VmSeen::Reported(S::Running),
    );
    failed_with(
        &decide(TaskKind::VmSuspend, Some(&j), false, &w),
        Some(S::Running),
        "still runs",
    );
    // Killed before the job was submitted.
    let j = power_journal(vec![]);
    failed_with(
        &decide(TaskKind::VmSuspend, Some(&j), false, &w),
        Some(S::Running),
        "suspend it again",
    );
    // A cancel asked before the restart, the suspend did not happen.
    assert_eq!(
        decide(TaskKind::VmSuspend, Some(&j), true, &w),
        Decision::Finish {
            outcome: Outcome::Cancelled,
            record: Some(S::Running)
        }
    );
}

#[test]
fn power_tasks_reach_a_defined_end_whatever_the_host_says() {
    let j = power_journal(vec![submitted("t.0", JobKind::Shutdown)]);
    let kinds = [
        TaskKind::VmStart,
        TaskKind::VmStop,
        TaskKind::VmShutdown,
        TaskKind::VmSuspend,
        TaskKind::VmReset,
        TaskKind::VmPause,
        TaskKind::VmResume,
    ];
    let vms = [
        VmSeen::Unreachable,
        VmSeen::NotReported,
        VmSeen::Reported(S::Running),
        VmSeen::Reported(S::Stopped),
        VmSeen::Reported(S::Paused),
        VmSeen::Reported(S::Suspended),
        VmSeen::Reported(S::Crashed),
    ];
    for kind in kinds {
        for vm in vms {
            for job in [None, Some(JobSeen::Unknown), Some(JobSeen::Unreachable)] {
                let w = world(Some(S::ShuttingDown), job, vm);
                let d = decide(kind, Some(&j), false, &w);
                let Decision::Finish { outcome, record } = &d else {
                    panic!("{kind:?} {vm:?} {job:?}: {d:?}");
                };
                // Never a transitional state recorded.
                assert!(
                    !matches!(record, Some(S::Starting | S::ShuttingDown | S::Suspending)),
                    "{d}"
                );
                match vm {
                    VmSeen::Reported(s) if kind.goal().contains(&s) => {
                        assert_eq!(*outcome, Outcome::Succeeded)
                    }
                    VmSeen::Unreachable => assert_eq!(*record, Some(S::Unknown)),
                    _ => assert!(matches!(outcome, Outcome::Failed(_)), "{d}"),
                }
            }
        }
        let gone = world(None, None, VmSeen::NotReported);
        failed_with(&decide(kind, Some(&j), false, &gone), None, "no longer");
    }
}

#[test]
fn delete_and_import() {
    let j = power_journal(vec![]);
    let w = world(Some(S::Stopped), None, VmSeen::NotReported);
    assert_eq!(
        decide(TaskKind::VmDelete, Some(&j), false, &w),
        Decision::Continue
    );
    let gone = world(None, None, VmSeen::NotReported);
    assert_eq!(
        decide(TaskKind::VmDelete, Some(&j), false, &gone),
        Decision::Finish {
            outcome: Outcome::Succeeded,
            record: None
        }
    );
    let j = power_journal(vec![submitted("t.0", JobKind::ImportImage)]);
    let known = World {
        record: Some(None),
        job: Some(JobSeen::Known(JobState::Running)),
        vm: VmSeen::Unreachable,
    };
    assert_eq!(
        decide(TaskKind::TemplateImport, Some(&j), true, &known),
        Decision::Continue
    );
    let lost = World {
        job: Some(JobSeen::Unknown),
        ..known
    };
    assert!(matches!(
        decide(TaskKind::TemplateImport, Some(&j), false, &lost),
        Decision::RollBack { .. }
    ));
}

#[test]
fn a_snapshot_task_attaches_to_its_job_or_fails_cleanly() {
    let create =
        vdc_types::snapshot::SnapshotAction::Create(vdc_types::snapshot::CreateSnapshotRequest {
            name: "s1".into(),
            description: String::new(),
            memory: true,
        });
    let snap_journal = |steps: Vec<Step>| {
        let mut j = create_journal(steps);
        j.params = TaskParams::Snapshot {
            vm_id: "id".into(),
            host: Some("host-1".into()),
            action: create.clone(),
        };
        j
    };
    let sent = snap_journal(vec![submitted("t.0", JobKind::Snapshot)]);
    let running = VmSeen::Reported(S::Running);
    let known = world(
        Some(S::Running),
        Some(JobSeen::Known(JobState::Running)),
        running,
    );
    assert_eq!(
        decide(TaskKind::Snapshot, Some(&sent), false, &known),
        Decision::Continue
    );
    let lost = world(Some(S::Running), Some(JobSeen::Unknown), running);
    failed_with(
        &decide(TaskKind::Snapshot, Some(&sent), false, &lost),
        None,
        "snapshot list",
    );
    let never = snap_journal(vec![]);
    failed_with(
        &decide(TaskKind::Snapshot, Some(&never), false, &known),
        None,
        "retry",
    );
    // A revert keeps the power journal: it is never continued.
    let revert = power_journal(vec![submitted("t.0", JobKind::Snapshot)]);
    failed_with(
        &decide(TaskKind::Snapshot, Some(&revert), false, &known),
        None,
        "retry",
    );
    let gone = world(None, Some(JobSeen::Known(JobState::Running)), running);
    failed_with(
        &decide(TaskKind::Snapshot, Some(&sent), false, &gone),
        None,
        "no longer exists",
    );
    let ended = snap_journal(vec![
        submitted("t.0", JobKind::Snapshot),
        Step::JobEnded {
            operation_id: "t.0".into(),
            state: JobState::Succeeded,
        },
    ]);
    assert_eq!(
        decide(TaskKind::Snapshot, Some(&ended), false, &lost),
        Decision::Finish {
            outcome: Outcome::Succeeded,
            record: None
        }
    );
    assert_eq!(TaskKind::parse("snapshot.create"), TaskKind::Snapshot);
    assert_eq!(TaskKind::parse("snapshot.revert"), TaskKind::Other);
}
