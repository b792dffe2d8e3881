//! Replication of VMs to a paired site, and their replicas there.
//!
//! The protected site keeps a [`Replication`] per VM (`/replications/<vm>`);
//! the recovery site keeps a [`Replica`] per VM (`/replicas/<vm>` in its
//! store, and `replica.json` beside the point images on its datastore).
//! Only fully applied points are ever listed in a replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Current format version of a stored [`Replication`].
pub const REPLICATION_VERSION: u32 = 1;
/// Current format version of a stored [`Replica`] and of `replica.json`.
pub const REPLICA_VERSION: u32 = 1;
/// Points kept when a replication does not say.
pub const DEFAULT_RETAIN_LAST: u32 = 6;
/// RPO target when a replication does not say, seconds.
pub const DEFAULT_RPO_S: u64 = 60;

/// How a VM is replicated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMode {
    /// Changed blocks shipped as points in time, every cycle.
    #[default]
    Async,
    /// Every guest write held by both sites before it is acknowledged.
    Sync,
}

/// What a synchronous replication does when the link drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkLossPolicy {
    /// The VM pauses until the link returns.
    Pause,
    /// Replication falls back to asynchronous, with an alarm.
    #[default]
    Async,
}

/// State of a replication at the protected site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationState {
    /// The first full copy runs.
    InitialSync,
    /// Points arrive within the RPO target.
    Ok,
    /// The newest applied point is older than the RPO target.
    RpoViolated,
    /// The recovery site does not answer; cycles retry with backoff.
    LinkDown,
    /// The VM is paused (synchronous, link lost, policy `pause`).
    Paused,
    /// Replication was disabled.
    Stopped,
    /// Cycles fail for another reason (see `error`).
    Error,
}

/// Whether a point was taken with the guest's file systems frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PointConsistency {
    /// Frozen through the guest agent.
    Quiesced,
    /// As after a power loss.
    Crash,
}

/// `POST /api/v1/replications`: protect a VM to a paired site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableReplicationRequest {
    /// The VM.
    pub vm: String,
    /// The paired site that keeps the replica.
    pub site: String,
    /// RPO target, seconds (a point at least this often).
    #[serde(default = "default_rpo")]
    pub rpo_s: u64,
    /// `async` or `sync`.
    #[serde(default)]
    pub mode: ReplicationMode,
    /// Points kept at the recovery site.
    #[serde(default = "default_retain")]
    pub retain_last: u32,
    /// Synchronous mode: what a dropped link does.
    #[serde(default)]
    pub on_link_loss: LinkLossPolicy,
    /// Quiesced points (guest agent) at most this often, seconds; 0 never.
    #[serde(default)]
    pub quiesce_every_s: u64,
    /// Datastore of the recovery site for the replica (default: its first
    /// shared one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
}

fn default_rpo() -> u64 {
    DEFAULT_RPO_S
}

fn default_retain() -> u32 {
    DEFAULT_RETAIN_LAST
}

/// A replication as the protected site keeps and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Replication {
    /// Format version ([`REPLICATION_VERSION`]).
    pub version: u32,
    /// The VM.
    pub vm: String,
    /// Its id.
    pub vm_id: String,
    /// The recovery site.
    pub site: String,
    /// Mode.
    pub mode: ReplicationMode,
    /// RPO target, seconds.
    pub rpo_s: u64,
    /// Points kept at the recovery site.
    pub retain_last: u32,
    /// Synchronous mode: what a dropped link does.
    pub on_link_loss: LinkLossPolicy,
    /// Quiesced points at most this often, seconds; 0 never.
    #[serde(default)]
    pub quiesce_every_s: u64,
    /// Datastore of the replica at the recovery site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
    /// State.
    pub state: ReplicationState,
    /// Time of the newest point applied at the recovery site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_point_ms: Option<UnixMillis>,
    /// Time of the newest quiesced point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_quiesced_ms: Option<UnixMillis>,
    /// How far the replica is behind now, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// Largest gap between consecutive points over the recent cycles, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_rpo_ms: Option<u64>,
    /// Bytes shipped in all.
    pub bytes_sent: u64,
    /// Bytes shipped by the last point.
    #[serde(default)]
    pub last_point_bytes: u64,
    /// Points applied.
    pub points: u64,
    /// The next cycle copies the whole disk (no usable bitmap).
    #[serde(default)]
    pub needs_full: bool,
    /// Why the last or next full copy was needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
    /// The last cycle's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When replication was enabled.
    pub enabled_ms: UnixMillis,
}

/// `POST /api/v1/replications/{vm}/sync`: a point now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncReplicationRequest {
    /// Quiesce the guest's file systems for this point.
    #[serde(default)]
    pub quiesce: bool,
}

/// A NIC of a replicated VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaNic {
    /// Network (port group) at the protected site.
    pub network: String,
    /// Static address, CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// What the recovery site needs to make a VM of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaConfig {
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Size of each disk, bytes (the boot disk first).
    pub disks: Vec<u64>,
    /// NICs.
    pub nics: Vec<ReplicaNic>,
    /// Has the guest agent channel.
    pub guest_agent: bool,
    /// Hostname.
    pub hostname: String,
    /// Static address of the first NIC, CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// One fully applied point in time of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaPoint {
    /// Id, increasing.
    pub id: u64,
    /// The instant at the protected site.
    pub time_ms: UnixMillis,
    /// Consistency.
    pub consistency: PointConsistency,
    /// Bytes shipped for it.
    pub bytes: u64,
    /// Its image, relative to the replica's directory.
    pub file: String,
}

/// State of a replica at the recovery site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Points are applied.
    Replicating,
    /// A failover made a VM of it; no more points are applied.
    FailedOver,
    /// The protected site stopped replicating.
    Stopped,
}

/// A VM made from a point (it pins the point).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaPin {
    /// The point.
    pub point: u64,
    /// The VM made from it.
    pub vm: String,
    /// `test` or `failover`.
    pub mode: RecoverMode,
}

/// A replica as the recovery site keeps and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    /// Format version ([`REPLICA_VERSION`]).
    pub version: u32,
    /// The VM's name at the protected site.
    pub vm: String,
    /// The protected site.
    pub source_site: String,
    /// Mode of the replication.
    pub mode: ReplicationMode,
    /// State.
    pub state: ReplicaState,
    /// The VM's configuration.
    pub config: ReplicaConfig,
    /// Datastore of the replica.
    pub datastore: String,
    /// Directory of the replica, relative to the datastore.
    pub dir: String,
    /// Host that applies the points.
    pub host: String,
    /// Fully applied points, oldest first.
    pub points: Vec<ReplicaPoint>,
    /// Time of the newest point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_point_ms: Option<UnixMillis>,
    /// VMs made from points.
    #[serde(default)]
    pub pins: Vec<ReplicaPin>,
    /// The point being applied (never listed, never used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying: Option<u64>,
    /// The last point id handed out (ids of dropped points are not reused).
    #[serde(default)]
    pub last_begun: u64,
}

/// `POST /api/v1/replicas/{vm}/points`: the protected site starts a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BeginPointRequest {
    /// The protected site.
    pub source_site: String,
    /// Mode of the replication.
    pub mode: ReplicationMode,
    /// The VM's configuration now.
    pub config: ReplicaConfig,
    /// A full copy (no base point is used).
    pub full: bool,
    /// Datastore for a new replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
}

/// Where the protected host writes a point: an NBD export relayed by the
/// recovery site's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BeginPointResponse {
    /// The point's id.
    pub point: u64,
    /// NBD server address.
    pub host: String,
    /// NBD server port.
    pub port: u16,
    /// Export name.
    pub export: String,
}

/// `POST /api/v1/replicas/{vm}/points/{id}/commit`: the point is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitPointRequest {
    /// The instant at the protected site.
    pub time_ms: UnixMillis,
    /// Consistency.
    pub consistency: PointConsistency,
    /// Bytes shipped.
    pub bytes: u64,
    /// Points to keep.
    pub retain_last: u32,
}

/// How a replica is recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecoverMode {
    /// A linked clone on the point; replication goes on.
    Test,
    /// The VM takes over; no more points are applied.
    Failover,
}

/// `POST /api/v1/replicas/{vm}/recover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// Point id (default: the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<u64>,
    /// Name of the VM made (default: the protected VM's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `test` or `failover`.
    pub mode: RecoverMode,
    /// Protected network → network at this site.
    #[serde(default)]
    pub network_map: BTreeMap<String, String>,
    /// Address of the first NIC, CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Host to run it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Start it.
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

/// Where a VM made from a replica came from (on its record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecoveredFrom {
    /// The protected site.
    pub site: String,
    /// The VM there.
    pub vm: String,
    /// The point.
    pub point: u64,
    /// The point's instant.
    pub point_ms: UnixMillis,
    /// How.
    pub mode: RecoverMode,
}

/// Agent job: ship a running VM's changed blocks (or all of them) into an
/// NBD export, at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicateJobRequest {
    /// The VM.
    pub config: crate::VmConfig,
    /// The disk (node name, e.g. `disk0`).
    pub disk: String,
    /// The replication's persistent dirty bitmap.
    pub bitmap: String,
    /// Copy everything and start the bitmap anew.
    pub full: bool,
    /// NBD server address.
    pub host: String,
    /// NBD server port.
    pub port: u16,
    /// Export name.
    pub export: String,
    /// Freeze the guest's file systems around the instant.
    pub quiesce: bool,
}

/// What a replicate job shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicatedPoint {
    /// The instant.
    pub time_ms: UnixMillis,
    /// Bytes copied.
    pub bytes: u64,
    /// Consistency.
    pub consistency: PointConsistency,
}

/// `POST /agent/v1/replica-points`: serve a new point image over NBD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServePointRequest {
    /// Datastore.
    pub datastore: String,
    /// Replica directory, relative to the datastore.
    pub dir: String,
    /// The new image's file name.
    pub file: String,
    /// The previous point's file name (its backing), none for a full copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
    /// Disk size, bytes.
    pub size_bytes: u64,
    /// Files of the listed points: anything else in the directory is a
    /// leftover and removed first.
    pub keep: Vec<String>,
}

/// Where the agent serves the point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServePointResponse {
    /// Address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// `POST /agent/v1/replica-points/end`: the point is written (`commit`,
/// with the replica to write as `replica.json`) or abandoned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndPointRequest {
    /// Datastore.
    pub datastore: String,
    /// Replica directory, relative to the datastore.
    pub dir: String,
    /// The point's file name.
    pub file: String,
    /// The replica listing the point (commit), or none (abort: the file
    /// goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<Replica>,
    /// Points to merge away (retention): `(older, newer)` file names, the
    /// newer one committed into the older one which takes its name.
    #[serde(default)]
    pub merge: Vec<(String, String)>,
}
