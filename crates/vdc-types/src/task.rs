//! Tasks: long operations the server runs on behalf of a request.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agent::DiskSource;
use crate::job::{JobKind, JobState};
use crate::{ApiError, UnixMillis};

/// Version of the task journal format ([`TaskJournal`]); a server refuses
/// to resume a journal of a newer version.
pub const JOURNAL_VERSION: u32 = 1;

/// Life cycle of a task.
///
/// ```text
/// queued ──► running ──► succeeded
///    │          ├──────► failed
///    └──────────┴──────► cancelled   (cancel requested and honoured)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, not started.
    Queued,
    /// In progress.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error; see `error`.
    Failed,
    /// Stopped on request before finishing; any partial work was undone.
    Cancelled,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A long-running operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Identifier (UUID).
    pub id: String,
    /// What the task does, e.g. `vm.create`, `vm.start`.
    pub kind: String,
    /// Kind of object it works on (`vm`, `host`).
    pub target_kind: String,
    /// Name of the object it works on.
    pub target: String,
    /// State.
    pub state: TaskState,
    /// Progress, 0–100.
    pub progress: u8,
    /// What the task is doing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// Cancellation was requested.
    pub cancel_requested: bool,
    /// Creation time.
    pub created_ms: UnixMillis,
    /// Start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<UnixMillis>,
    /// End time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<UnixMillis>,
    /// What the task was asked and the steps it has done, journaled as
    /// they happen so that a restarted server can resume or undo it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<TaskJournal>,
    /// A migration task's figures: progress while it runs, policy steps,
    /// measured downtime and total time once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::migration::MigrationReport>,
}

/// A task's journal: its parameters and the steps done, with the data
/// needed to continue or undo them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskJournal {
    /// Format version ([`JOURNAL_VERSION`]).
    pub version: u32,
    /// What the task was asked to do.
    pub params: TaskParams,
    /// Steps done, oldest first.
    pub steps: Vec<TaskStep>,
}

impl TaskJournal {
    /// A journal of `params` with no step yet.
    pub fn new(params: TaskParams) -> TaskJournal {
        TaskJournal {
            version: JOURNAL_VERSION,
            params,
            steps: Vec::new(),
        }
    }

    /// Every step, without the times.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().map(|s| &s.step)
    }
}

/// What a task was asked to do, as much as resuming it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TaskParams {
    /// `vm.create`: the VM's record holds its configuration.
    VmCreate {
        /// Id of the VM being created.
        vm_id: String,
        /// Start it once made.
        start: bool,
        /// Host asked for, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// Network of its NIC, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
        /// Source of the boot disk.
        boot_source: DiskSource,
        /// Sources of the data disks (a clone of a VM), in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        data_sources: Vec<crate::agent::DiskFile>,
        /// Sources of the data disks after `data_sources` (an OVA's
        /// further disks), in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        data_images: Vec<DiskSource>,
        /// Networks of the NICs after the first, in order (each gets an
        /// address from its network's pool).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        more_networks: Vec<String>,
        /// Address asked for the NIC (guest customization), CIDR.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        /// The guest asks DHCP for its address.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dhcp: bool,
    },
    /// A snapshot taken or deleted (`snapshot.create`, `snapshot.delete`):
    /// the action is kept, so a restarted server attaches to its job.
    Snapshot {
        /// Id of the VM.
        vm_id: String,
        /// Host of the job, if known when the task began.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// What the job does.
        action: crate::snapshot::SnapshotAction,
    },
    /// A power operation on a VM (`vm.start`, `vm.stop`, `vm.shutdown`,
    /// `vm.suspend`, …; the task's kind says which).
    VmPower {
        /// Id of the VM.
        vm_id: String,
        /// Host it runs on or is asked to run on, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// Seconds a shutdown waits for the guest before powering off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shutdown_timeout_s: Option<u64>,
    },
    /// `vm.migrate`: a move of a VM to another host or datastore.
    VmMigrate {
        /// Id of the VM.
        vm_id: String,
        /// Kind of move.
        migration: crate::migration::MigrationKind,
        /// Host the VM leaves.
        source: String,
        /// Host the VM moves to.
        target: String,
        /// Datastore its disks move to (storage migration).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        datastore: Option<String>,
        /// Whether post-copy may be used (live migration).
        #[serde(default)]
        allow_postcopy: bool,
    },
    /// `vm.delete`.
    VmDelete {
        /// Id of the VM.
        vm_id: String,
    },
    /// `backup.run`: a backup of a VM into a store. After a server restart
    /// the task fails; the backup, without its manifest, never lists.
    Backup {
        /// Id of the VM.
        vm_id: String,
        /// Id the backup gets.
        backup_id: String,
        /// Store name.
        store: String,
        /// Host reading the disks.
        host: String,
    },
    /// `backup.restore`: a backup written into a VM's images.
    Restore {
        /// Name of the VM written into.
        vm: String,
        /// The backup.
        backup_id: String,
    },
    /// A copy of a stopped VM's disks by an agent job (`vm.export`, and
    /// the `vm.clone` of a clone to a template). A restarted server fails
    /// it (the VM's claim is released; the job's partial output is its
    /// host's to remove).
    VmCopy {
        /// Id of the VM.
        vm_id: String,
    },
    /// `template.import`: the template's record names the target.
    TemplateImport {
        /// Host doing the copy.
        host: String,
        /// Source file on that host.
        source: String,
        /// Format of the source, if stated.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<crate::api::ImageFormat>,
    },
}

/// One journaled step and when it was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskStep {
    /// When the step was recorded (server clock).
    pub at_ms: UnixMillis,
    /// The step.
    pub step: Step,
}

/// A step of a task, with the data needed to continue or undo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    /// An address was reserved for the VM.
    AddressAllocated {
        /// Network.
        network: String,
        /// Address reserved.
        address: String,
    },
    /// The VM was placed on a host.
    Placed {
        /// Host chosen.
        host: String,
    },
    /// An agent job is submitted (recorded before the request is sent, so
    /// that a restarted server attaches to it instead of repeating it).
    JobSubmitted {
        /// Host running it.
        host: String,
        /// Operation id, which is the job's id.
        operation_id: String,
        /// What it does.
        job: JobKind,
    },
    /// An agent job ended.
    JobEnded {
        /// Operation id.
        operation_id: String,
        /// How it ended.
        state: JobState,
    },
    /// The VM's files exist on the datastore.
    Provisioned {
        /// Host that made them.
        host: String,
    },
    /// Undoing began.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// A restarted server took the task over.
    Resumed {
        /// What it decided to do.
        decision: String,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::AddressAllocated { network, address } => {
                write!(f, "address {address} allocated on network {network}")
            }
            Step::Placed { host } => write!(f, "placed on {host}"),
            Step::JobSubmitted {
                host,
                operation_id,
                job,
            } => write!(f, "agent job {operation_id} ({job}) started on {host}"),
            Step::JobEnded {
                operation_id,
                state,
            } => write!(f, "agent job {operation_id} {state}"),
            Step::Provisioned { host } => write!(f, "files made by {host}"),
            Step::RollingBack { reason } => write!(f, "rolling back: {reason}"),
            Step::Resumed { decision } => write!(f, "resumed after a server restart: {decision}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_reads_back_in_its_documented_shape() {
        let mut j = TaskJournal::new(TaskParams::VmPower {
            vm_id: "id".into(),
            host: Some("host-1".into()),
            shutdown_timeout_s: Some(60),
        });
        j.steps.push(TaskStep {
            at_ms: 5,
            step: Step::JobSubmitted {
                host: "host-1".into(),
                operation_id: "t.0".into(),
                job: JobKind::Shutdown,
            },
        });
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["version"], JOURNAL_VERSION);
        assert_eq!(v["params"]["kind"], "vm_power");
        assert_eq!(v["steps"][0]["step"]["step"], "job_submitted");
        assert_eq!(v["steps"][0]["step"]["job"], "shutdown");
        assert_eq!(serde_json::from_value::<TaskJournal>(v).unwrap(), j);
        assert_eq!(
            j.steps[0].step.to_string(),
            "agent job t.0 (shutdown) started on host-1"
        );
    }

    #[test]
    fn a_task_written_before_journals_existed_still_reads() {
        let old = r#"{"id":"1","kind":"vm.start","target_kind":"vm","target":"a",
            "state":"running","progress":5,"cancel_requested":false,"created_ms":1}"#;
        let t: Task = serde_json::from_str(old).unwrap();
        assert!(t.journal.is_none());
    }
}
