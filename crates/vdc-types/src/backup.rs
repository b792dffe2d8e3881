//! Backups: stores, backups and the requests of the REST and agent APIs.
//!
//! A backup store is a directory (local, or shared by every host and the
//! server) holding a deduplicated chunk store and one manifest per backup;
//! its formats are in `vdc_backup` and `docs/architecture.md`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{UnixMillis, VmConfig};

/// A registered backup store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupStore {
    /// Unique name.
    pub name: String,
    /// Directory of the store, the same path on the server and every host.
    pub path: String,
    /// Key file of an encrypted store (chunks and their names are then
    /// keyed; the manifests hold no guest data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
    /// Registration time.
    pub created_ms: UnixMillis,
}

/// `POST /api/v1/backup-stores`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddBackupStoreRequest {
    /// Name of the store: letters, digits, `-`, `_`, `.`; at most 63
    /// characters.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Directory (absolute path); made and initialised when empty.
    #[schema(pattern = "^/", min_length = 1)]
    pub path: String,
    /// Key file (32 random bytes, or 64 hex digits) for an encrypted store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
}

/// `POST /api/v1/vms/{name}/backup`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunBackupRequest {
    /// Store to back up into.
    pub store: String,
}

/// How consistent a backup's point in time is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// The VM was stopped: its disks did not change while read.
    Stopped,
    /// The disks as at one instant of a running VM, as after a power cut.
    CrashConsistent,
    /// The guest's file systems were frozen through its agent at the instant.
    Quiesced,
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Consistency::Stopped => "stopped",
            Consistency::CrashConsistent => "crash_consistent",
            Consistency::Quiesced => "quiesced",
        })
    }
}

/// How a disk was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum DiskRead {
    /// Every chunk was read.
    Full {
        /// Why not only the changed chunks.
        reason: String,
    },
    /// Only the chunks a dirty bitmap marked were read; the others were
    /// taken from the backup named.
    Incremental {
        /// The backup the unchanged chunks come from.
        base: String,
        /// The dirty bitmap used.
        bitmap: String,
    },
}

/// What a backup did with one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskBackup {
    /// Device name, e.g. `disk0`.
    pub name: String,
    /// Virtual size in bytes.
    pub size_bytes: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// How it was read.
    pub read: DiskRead,
    /// Chunks in the disk's index (zero chunks included).
    pub chunks: u64,
    /// Chunks read from the disk.
    pub chunks_read: u64,
    /// Chunks read that were all zeros (recorded as such, not stored).
    pub chunks_zero: u64,
    /// Chunks written to the store (new to it).
    pub chunks_new: u64,
    /// Chunks read that the store had already (deduplicated).
    pub chunks_reused: u64,
    /// Bytes read from the disk.
    pub bytes_read: u64,
    /// Bytes written to the store (after compression).
    pub bytes_stored: u64,
}

/// A backup of a VM, as listed (its manifest less the chunk indexes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Backup {
    /// Identifier: `VMNAME-YYYYmmddTHHMMSSZ-XXXX`.
    pub id: String,
    /// Store it is in.
    pub store: String,
    /// Name of the VM backed up.
    pub vm: String,
    /// Id of the VM backed up.
    pub vm_id: String,
    /// Host that read the disks.
    pub host: String,
    /// The point in time.
    pub consistency: Consistency,
    /// Start time.
    pub started_ms: UnixMillis,
    /// End time (the manifest is written last).
    pub finished_ms: UnixMillis,
    /// Per disk.
    pub disks: Vec<DiskBackup>,
    /// Sum of the disks' virtual sizes.
    pub size_bytes: u64,
    /// Whether the last verify found a missing or damaged chunk.
    #[serde(default)]
    pub damaged: bool,
    /// The VM's configuration when it was backed up.
    pub config: VmConfig,
}

/// `POST /api/v1/backups/{id}/restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestoreRequest {
    /// Store the backup is in (default: the store that has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Name of the new VM; absent: over the original VM (powered off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host of the new VM (default: placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Datastore of the new VM (default: the backed-up VM's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
    /// Restore only this disk (over the original VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Instant restore (a new VM only): the VM starts at once on overlays
    /// whose backing is the backup served over NBD, and its disks are
    /// copied into the overlays while it runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub instant: bool,
}

/// `POST /api/v1/backups/{id}/verify` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// The backup.
    pub backup: String,
    /// Distinct chunks re-read and re-hashed.
    pub chunks_checked: u64,
    /// Chunks missing or failing their digest.
    pub damaged_chunks: Vec<String>,
    /// Whether the backup is now marked damaged.
    pub damaged: bool,
}

/// Agent job `backup`: read a VM's disks into a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupJobRequest {
    /// Id the backup will have.
    pub backup_id: String,
    /// Store name (recorded in the manifest).
    pub store: String,
    /// Store directory.
    pub store_path: String,
    /// Key file of an encrypted store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
    /// The VM, as recorded by the server.
    pub config: VmConfig,
}

/// Agent job `restore`: write a backup's disks into a VM's images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestoreJobRequest {
    /// Backup to restore.
    pub backup_id: String,
    /// Store directory.
    pub store_path: String,
    /// Key file of an encrypted store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
    /// The VM whose images are written (new or the original, stopped).
    pub config: VmConfig,
    /// Pairs (disk in the backup, disk of `config`) to write.
    pub disks: Vec<(String, String)>,
}

/// Agent job `instant_stream`: copy an instantly restored VM's disks from
/// the backup's exports into their overlays while it runs, then end the
/// exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstantStreamRequest {
    /// The VM (running on the host that serves its exports).
    pub config: VmConfig,
    /// End the exports without copying (the VM never started).
    #[serde(default)]
    pub abandon: bool,
}

/// How many backups to keep, per rule (0: the rule is off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Retention {
    /// The N newest.
    #[serde(default)]
    pub keep_last: u32,
    /// One per hour, for the N most recent hours with a backup.
    #[serde(default)]
    pub keep_hourly: u32,
    /// One per day.
    #[serde(default)]
    pub keep_daily: u32,
    /// One per ISO week.
    #[serde(default)]
    pub keep_weekly: u32,
    /// One per month.
    #[serde(default)]
    pub keep_monthly: u32,
}

impl Retention {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
}

/// What a gc did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    /// Chunks named by complete backups.
    pub chunks_in_use: u64,
    /// Chunks removed.
    pub chunks_removed: u64,
    /// Bytes freed.
    pub bytes_removed: u64,
    /// Unused chunks kept because a running backup may need them.
    pub chunks_pending: u64,
}

/// `POST /api/v1/backup-stores/{name}/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PruneRequest {
    /// Only this VM's backups (default: each VM's, separately).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// What to keep.
    #[serde(flatten)]
    pub retention: Retention,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PruneReport {
    /// Backups removed (their chunks go at the next gc).
    pub removed: Vec<String>,
}

/// A backup job: VMs backed up into a store on a schedule, then pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupJob {
    /// Unique name.
    pub name: String,
    /// VMs it backs up.
    pub vms: Vec<String>,
    /// Store it backs up into.
    pub store: String,
    /// Seconds between runs (the schedule).
    pub every_s: u64,
    /// What a run keeps of each VM's backups in the store afterwards
    /// (no rule: keep everything).
    #[serde(default)]
    pub retention: Retention,
    /// Creation time.
    pub created_ms: UnixMillis,
    /// Start of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_ms: Option<UnixMillis>,
    /// Outcome of the last run, per VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
}

/// `POST /api/v1/backup-jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateBackupJobRequest {
    /// Name of the job.
    pub name: String,
    /// VMs to back up (at least one).
    pub vms: Vec<String>,
    /// Store to back up into.
    pub store: String,
    /// Seconds between runs (at least 1).
    pub every_s: u64,
    /// What to keep after each run.
    #[serde(default)]
    pub retention: Retention,
}

/// A file or directory in a backed-up file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Name in its directory.
    pub name: String,
    /// `dir`, `file`, `link` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
}

/// `POST /api/v1/backup-stores/{name}/sync`: copy the backups of store
/// `name` that store `to` lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SyncRequest {
    /// The store to copy to (unencrypted like the source, or encrypted with
    /// the same key).
    pub to: String,
    /// Only this VM's backups (default: every backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SyncReport {
    /// Backups copied (their manifests written last, after their chunks).
    pub backups_copied: Vec<String>,
    /// Backups the target already had.
    pub backups_present: u64,
    /// Backups not copied because the last verify marked them damaged.
    pub backups_skipped_damaged: Vec<String>,
    /// Chunks sent (the target lacked them); each checked on arrival.
    pub chunks_sent: u64,
    /// Chunks the copied backups need that the target already had.
    pub chunks_present: u64,
    /// Bytes of chunk files sent.
    pub bytes_sent: u64,
}
