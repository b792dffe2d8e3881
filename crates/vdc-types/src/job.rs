//! Agent-side jobs: the long operations an agent runs on the server's
//! behalf (disk copies, starts, suspends, shutdowns, image imports).
//!
//! The server submits a job with an *operation id* of its own choosing and
//! the agent answers at once. Submitting the same operation id again
//! attaches to the job already known instead of running it twice, so a
//! retry after a lost answer or a server restart is safe. The job's id is
//! its operation id.
//!
//! ```text
//!   submit ──► running ──► succeeded   (result: the VM's runtime or the image)
//!                 ├──────► failed      (error)
//!                 └──────► cancelled   (DELETE: the operation was stopped and undone)
//! ```

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agent::{
    AgentStartRequest, ImportImageRequest, ImportImageResponse, ProvisionVmRequest, VmRuntime,
};
use crate::transfer::{MirrorDisksRequest, ReceiveVmRequest};
use crate::{ApiError, UnixMillis};

/// Longest operation id an agent accepts.
pub const MAX_OPERATION_ID_LEN: usize = 128;

/// Longest long-poll wait of `GET /agent/v1/jobs/{id}?wait_s=N`.
pub const MAX_JOB_WAIT_S: u64 = 20;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Create a VM's directory, disks and `vm.json`.
    Provision,
    /// Take the VM's lease and launch QEMU (or resume from suspend).
    Start,
    /// ACPI power button, power off after a timeout.
    Shutdown,
    /// Save memory to `suspend.state` and end QEMU.
    Suspend,
    /// Copy an image into a datastore.
    ImportImage,
    /// Receive a live migration (destination).
    MigrateIn,
    /// Send a live migration (source).
    MigrateOut,
    /// Storage migration of a running VM's disks to another datastore.
    MirrorDisks,
    /// Copy a stopped or suspended VM's files from another host's export.
    ReceiveVm,
    /// Read a VM's disks at one instant into a backup store.
    Backup,
    /// Write a backup's disks into a VM's images.
    Restore,
    /// Serve a backup's disks over NBD and put overlays on them in place
    /// of a VM's images (the first half of an instant restore).
    InstantServe,
    /// Copy an instantly restored VM's disks into its overlays while it
    /// runs, then end the exports.
    InstantStream,
    /// Write a stopped VM as an OVA.
    ExportOva,
    /// Take, revert or delete a snapshot.
    Snapshot,
    /// Ship a VM's changed blocks to its replica at another site.
    Replicate,
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobKind::Provision => "provision",
            JobKind::Start => "start",
            JobKind::Shutdown => "shutdown",
            JobKind::Suspend => "suspend",
            JobKind::ImportImage => "image import",
            JobKind::MigrateIn => "incoming migration",
            JobKind::MigrateOut => "outgoing migration",
            JobKind::MirrorDisks => "disk mirror",
            JobKind::ReceiveVm => "VM copy",
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::InstantServe => "instant restore",
            JobKind::InstantStream => "instant restore copy",
            JobKind::ExportOva => "OVA export",
            JobKind::Snapshot => "snapshot",
            JobKind::Replicate => "replication",
        })
    }
}

/// The operation of a job and its parameters.
// A message type, built once per request: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum JobOp {
    /// See [`JobKind::Provision`].
    Provision {
        /// The request of `PUT /agent/v1/vms/{id}`.
        request: ProvisionVmRequest,
    },
    /// See [`JobKind::Start`].
    Start {
        /// The request of `POST /agent/v1/vms/{id}/start`.
        request: AgentStartRequest,
    },
    /// See [`JobKind::Shutdown`].
    Shutdown {
        /// VM id.
        vm_id: String,
        /// Seconds before falling back to power-off.
        timeout_s: u64,
    },
    /// See [`JobKind::Suspend`].
    Suspend {
        /// VM id.
        vm_id: String,
    },
    /// See [`JobKind::ImportImage`].
    ImportImage {
        /// The request of `POST /agent/v1/images/import`.
        request: ImportImageRequest,
    },
    /// See [`JobKind::MigrateIn`].
    MigrateIn {
        /// What to receive.
        request: crate::migration::IncomingRequest,
    },
    /// See [`JobKind::MigrateOut`].
    MigrateOut {
        /// What to send, where, and how.
        request: crate::migration::OutgoingRequest,
    },
    /// See [`JobKind::MirrorDisks`].
    MirrorDisks {
        /// Which VM, and where its disks go.
        request: MirrorDisksRequest,
    },
    /// See [`JobKind::ReceiveVm`].
    ReceiveVm {
        /// What to copy from where.
        request: ReceiveVmRequest,
    },
    /// See [`JobKind::Backup`].
    Backup {
        /// Which VM, into which store.
        request: crate::backup::BackupJobRequest,
    },
    /// See [`JobKind::Restore`].
    Restore {
        /// Which backup, into which images.
        request: crate::backup::RestoreJobRequest,
    },
    /// See [`JobKind::InstantServe`].
    InstantServe {
        /// Which backup, under which images.
        request: crate::backup::RestoreJobRequest,
    },
    /// See [`JobKind::InstantStream`].
    InstantStream {
        /// Which VM.
        request: crate::backup::InstantStreamRequest,
    },
    /// See [`JobKind::ExportOva`].
    ExportOva {
        /// The VM and the OVA file.
        request: crate::ova::ExportOvaRequest,
    },
    /// See [`JobKind::Snapshot`].
    Snapshot {
        /// Which VM and what to do.
        request: crate::snapshot::SnapshotJobRequest,
    },
    /// See [`JobKind::Replicate`].
    Replicate {
        /// Which VM, where to.
        request: crate::replication::ReplicateJobRequest,
    },
}

impl JobOp {
    /// What the operation does.
    pub fn kind(&self) -> JobKind {
        match self {
            JobOp::Provision { .. } => JobKind::Provision,
            JobOp::Start { .. } => JobKind::Start,
            JobOp::Shutdown { .. } => JobKind::Shutdown,
            JobOp::Suspend { .. } => JobKind::Suspend,
            JobOp::ImportImage { .. } => JobKind::ImportImage,
            JobOp::MigrateIn { .. } => JobKind::MigrateIn,
            JobOp::MigrateOut { .. } => JobKind::MigrateOut,
            JobOp::MirrorDisks { .. } => JobKind::MirrorDisks,
            JobOp::ReceiveVm { .. } => JobKind::ReceiveVm,
            JobOp::Backup { .. } => JobKind::Backup,
            JobOp::Restore { .. } => JobKind::Restore,
            JobOp::InstantServe { .. } => JobKind::InstantServe,
            JobOp::InstantStream { .. } => JobKind::InstantStream,
            JobOp::ExportOva { .. } => JobKind::ExportOva,
            JobOp::Snapshot { .. } => JobKind::Snapshot,
            JobOp::Replicate { .. } => JobKind::Replicate,
        }
    }

    /// The VM it works on, if any.
    pub fn vm_id(&self) -> Option<&str> {
        match self {
            JobOp::Provision { request } => Some(&request.config.id),
            JobOp::Start { request } => Some(&request.config.id),
            JobOp::Shutdown { vm_id, .. } | JobOp::Suspend { vm_id } => Some(vm_id),
            JobOp::ImportImage { .. } => None,
            JobOp::MigrateIn { request } => Some(&request.config.id),
            JobOp::MigrateOut { request } => Some(&request.vm_id),
            JobOp::MirrorDisks { request } => Some(&request.config.id),
            JobOp::ReceiveVm { request } => Some(&request.config.id),
            JobOp::Backup { request } => Some(&request.config.id),
            JobOp::Restore { request } | JobOp::InstantServe { request } => {
                Some(&request.config.id)
            }
            JobOp::InstantStream { request } => Some(&request.config.id),
            JobOp::ExportOva { request } => Some(&request.config.id),
            JobOp::Snapshot { request } => Some(&request.config.id),
            JobOp::Replicate { request } => Some(&request.config.id),
        }
    }
}

/// `POST /agent/v1/jobs`: start a job (or attach to the one with that
/// operation id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobRequest {
    /// Chosen by the server, unique per operation; becomes the job id.
    /// Letters, digits, '-', '.' and '_', at most [`MAX_OPERATION_ID_LEN`].
    pub operation_id: String,
    /// What to do.
    pub op: JobOp,
}

/// Life cycle of a job (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// In progress.
    Running,
    /// Done; see `result`.
    Succeeded,
    /// Ended with an error; see `error`.
    Failed,
    /// Stopped on request; the operation undid what it had done.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        self != JobState::Running
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        })
    }
}

/// What a successful job produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum JobResult {
    /// The VM after the operation.
    Vm(VmRuntime),
    /// The imported image.
    Image(ImportImageResponse),
    /// The OVA written.
    Exported(crate::ova::ExportOvaResponse),
    /// A migration sent (the source's job).
    Migration(crate::migration::MigrationJobInfo),
    /// The VM's configuration after the operation (a storage migration).
    Config(crate::vm::VmConfig),
    /// The backup made.
    Backup(Box<crate::backup::Backup>),
    /// A restore ended: the disks written.
    Restored {
        /// Disks written.
        disks: Vec<String>,
    },
    /// The VM's snapshot tree after the operation.
    Snapshots(crate::snapshot::SnapshotTree),
    /// An instant restore's exports: the unix sockets serving the backup's
    /// disks (up while the VM's disks are copied; gone after).
    InstantExports {
        /// Socket paths, one per disk.
        sockets: Vec<String>,
    },
    /// The point a replicate job shipped.
    Replicated(crate::replication::ReplicatedPoint),
}

/// A job as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// The operation id it was submitted with.
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// The VM it works on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// State.
    pub state: JobState,
    /// Progress, 0–100.
    pub progress: u8,
    /// What it is doing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Cancellation was requested.
    pub cancel_requested: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// What it produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    /// Start time (agent clock).
    pub started_ms: UnixMillis,
    /// End time (agent clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<UnixMillis>,
    /// A migration job's figures while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::migration::MigrationJobInfo>,
}

/// Checks an operation id: 1–[`MAX_OPERATION_ID_LEN`] characters of
/// letters, digits, '-', '.' and '_'.
pub fn validate_operation_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_OPERATION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "operation id '{}' must be 1 to {MAX_OPERATION_ID_LEN} letters, digits, '-', '.' or '_'",
            id.escape_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids() {
        assert!(validate_operation_id("0f3c-1.2_x").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(MAX_OPERATION_ID_LEN + 1)] {
            assert!(validate_operation_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_job_request_reads_back() {
        let r = JobRequest {
            operation_id: "t1.0".into(),
            op: JobOp::Suspend {
                vm_id: "abc".into(),
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"kind\":\"suspend\""), "{s}");
        assert_eq!(serde_json::from_str::<JobRequest>(&s).unwrap(), r);
    }
}
