//! The words of VM migration shared by server, agents, API and CLI: what a
//! user asks ([`MigrateRequest`]), which kind of move it becomes
//! ([`MigrationKind`]) and what a live migration reports while it runs
//! ([`MigrationProgress`]) and when it ends ([`MigrationOutcome`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/vms/{name}/migrate`. Every field is optional: without
/// `to`, placement picks the destination host; without `datastore`, the
/// disks stay where they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// Destination host (default: placement picks one other than the
    /// VM's host).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub to: Option<String>,
    /// Datastore to move the VM's disks to (storage migration).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub datastore: Option<String>,
    /// Whether a live migration that does not converge may switch to
    /// post-copy (default: the server's policy). Post-copy always
    /// converges, but a VM whose link breaks during post-copy is lost: its
    /// memory is split between the two hosts.
    #[serde(default)]
    pub allow_postcopy: Option<bool>,
    /// Bandwidth limit of this live migration's stream, MiB/s (default:
    /// the server's; 0: unlimited).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1048576)]
    pub bandwidth_mib_s: Option<u64>,
    /// Whether this live migration's stream is encrypted with TLS between
    /// the two hosts' certificates of the cluster CA (default: the
    /// cluster's setting, `GET /api/v1/migration/settings`).
    #[serde(default)]
    pub tls: Option<bool>,
}

/// Which kind of move a migration request becomes, decided from the VM's
/// power state and the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationKind {
    /// A running (or paused) VM moves to another host while it runs.
    Live,
    /// The disks of a VM move to another datastore (with or without a host
    /// move).
    Storage,
    /// A stopped VM moves to another host.
    Cold,
    /// A suspended VM (and its saved state) moves to another host.
    Suspended,
}

impl MigrationKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationKind::Live => "live",
            MigrationKind::Storage => "storage",
            MigrationKind::Cold => "cold",
            MigrationKind::Suspended => "suspended",
        }
    }
}

impl std::fmt::Display for MigrationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A live migration's figures while it runs (QEMU's `query-migrate`), kept
/// on the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationProgress {
    /// Phase (`setup`, `active`, `postcopy-active`, `device`, `completed`, …:
    /// QEMU's migration status).
    pub status: String,
    /// Memory bytes sent so far.
    pub bytes_sent: u64,
    /// Memory bytes still to send.
    pub bytes_remaining: u64,
    /// Guest memory, bytes.
    pub bytes_total: u64,
    /// Pages the guest dirties per second.
    pub dirty_pages_rate: u64,
    /// Pre-copy passes over memory so far.
    pub iterations: u64,
    /// Downtime QEMU expects if it switched over now, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime_ms: Option<u64>,
    /// vCPU throttle applied by auto-converge, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_percent: Option<u64>,
}

/// A migration as its task shows it: the move, the figures while it runs,
/// the policy steps taken and, once done, how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationReport {
    /// Kind of move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MigrationKind>,
    /// Host the VM leaves.
    pub source: String,
    /// Host the VM moves to.
    pub target: String,
    /// Whether the stream was asked to be encrypted (TLS); whether it was
    /// is `outcome.encrypted`.
    #[serde(default)]
    pub tls: bool,
    /// Latest figures while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<MigrationProgress>,
    /// Datastore the disks move to, for a live migration with storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
    /// The disk mirrors' figures, for a live migration with storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<DiskMirrorProgress>,
    /// The policy steps taken, in order (e.g. `auto-converge after 4
    /// passes`, `post-copy started`).
    #[serde(default)]
    pub policy_steps: Vec<String>,
    /// How it ended, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<MigrationOutcome>,
}

/// How a live migration ended, kept on the task and in `vm.migrated`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MigrationOutcome {
    /// Downtime measured by QEMU (vCPUs stopped to running), ms.
    pub downtime_ms: u64,
    /// Time of the whole migration, from the request to the VM running on
    /// the target, ms.
    pub total_ms: u64,
    /// Time QEMU spent streaming, ms.
    pub migration_ms: u64,
    /// Whether it finished in post-copy.
    pub postcopy: bool,
    /// Whether the stream was encrypted (TLS): the source QEMU's
    /// migration parameters named TLS credentials during the move.
    #[serde(default)]
    pub encrypted: bool,
}

/// How a live migration is driven toward convergence (server flags,
/// passed to the source agent with each migration).
///
/// Pre-copy runs with `max_bandwidth_mib_s` and `downtime_limit_ms`, with
/// QEMU's auto-converge armed (it throttles the vCPUs once the guest dirties
/// memory faster than it is sent). When the memory left to send has not
/// reached a new low for `stall_passes` passes, or after `max_passes`
/// passes, the policy first raises the downtime limit (at most to
/// `precopy_ceiling_ms`) when the memory left would fit in the raised limit
/// at the measured rate; otherwise it switches to post-copy if allowed, or
/// doubles the downtime limit, up to `max_downtime_limit_ms`, with the
/// bandwidth limit lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MigrationPolicy {
    /// Bandwidth limit of the stream, MiB/s (0: unlimited).
    pub max_bandwidth_mib_s: u64,
    /// Downtime target, ms.
    pub downtime_limit_ms: u64,
    /// Highest downtime limit the policy may raise to when post-copy is
    /// not allowed, ms.
    pub max_downtime_limit_ms: u64,
    /// Passes without a new low of the memory left before acting.
    pub stall_passes: u64,
    /// Passes after which the policy acts anyway.
    pub max_passes: u64,
    /// Whether post-copy may be used.
    pub allow_postcopy: bool,
    /// Highest downtime limit pre-copy may be raised to, while the bandwidth
    /// cap stays, before post-copy is tried, ms (the policy raises it only
    /// when the memory left would fit in it at the measured rate).
    #[serde(default = "default_precopy_ceiling_ms")]
    pub precopy_ceiling_ms: u64,
}

fn default_precopy_ceiling_ms() -> u64 {
    200
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        MigrationPolicy {
            max_bandwidth_mib_s: 0,
            downtime_limit_ms: 50,
            max_downtime_limit_ms: 2000,
            stall_passes: 3,
            max_passes: 8,
            allow_postcopy: true,
            precopy_ceiling_ms: default_precopy_ceiling_ms(),
        }
    }
}

/// Agent job `migrate_in` on the destination: start QEMU waiting for the
/// stream (`-incoming defer`) with the VM's identical configuration and
/// listen on the host's migration address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncomingRequest {
    /// The VM's configuration (as on the source).
    pub config: crate::VmConfig,
    /// Host the VM comes from.
    pub source: String,
    /// Whether post-copy may be used (both sides enable `postcopy-ram`).
    pub allow_postcopy: bool,
    /// Live migration with storage: `config` names a datastore of this
    /// host the source cannot share; the destination makes the VM's
    /// directory and empty images of the same virtual size there, exports
    /// them over NBD for the source's mirrors, keeps the guest paused once
    /// the memory stream completed and runs it only when told to proceed
    /// (`POST /agent/v1/jobs/{id}/proceed`).
    #[serde(default)]
    pub copy_storage: bool,
    /// With `copy_storage`: the guest was paused on the source, so it stays
    /// paused here (no `cont`).
    #[serde(default)]
    pub keep_paused: bool,
    /// Whether the stream is TLS: the destination accepts only a TLS
    /// stream from a client whose certificate the cluster CA signed.
    #[serde(default)]
    pub tls: bool,
}

/// Agent job `migrate_out` on the source: send the VM's memory to the
/// destination's stream address, driven by the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutgoingRequest {
    /// VM id.
    pub vm_id: String,
    /// Host the VM moves to (named successor in the lease).
    pub target: String,
    /// The destination's stream address (`tcp:ADDR:PORT`).
    pub uri: String,
    /// The convergence policy.
    pub policy: MigrationPolicy,
    /// Whether the stream is TLS; the destination's certificate must name
    /// `target` and be signed by the cluster CA.
    #[serde(default)]
    pub tls: bool,
    /// Live migration with storage: the destination's NBD server
    /// (`HOST:PORT`), exporting each disk under its name; every disk is
    /// mirrored there before the memory moves, and the job then waits to be
    /// told to proceed (the destination runs the guest) or cancelled (the
    /// guest runs on here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
}

/// Progress of the disk mirrors of a live migration with storage: bytes
/// copied of bytes to copy, over every disk (both grow while the guest
/// writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskMirrorProgress {
    /// Bytes mirrored so far.
    pub bytes_mirrored: u64,
    /// Bytes still to mirror.
    pub bytes_remaining: u64,
    /// Whether every mirror is in sync (every new write lands on both
    /// sides).
    pub ready: bool,
}

/// What a migration job shows while it runs and when it ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationJobInfo {
    /// Where the destination listens (`migrate_in`, once it listens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Latest figures (`migrate_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<MigrationProgress>,
    /// Where the destination's NBD server listens (`migrate_in` with
    /// storage, `HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
    /// The disk mirrors' figures (`migrate_out` with storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<DiskMirrorProgress>,
    /// `migrate_out` with storage: the memory stream completed and every
    /// disk mirror finished (the destination's images hold every write the
    /// guest made); the job waits to be told to proceed or to cancel.
    #[serde(default)]
    pub disks_synced: bool,
    /// The policy steps taken (`migrate_out`).
    #[serde(default)]
    pub policy_steps: Vec<String>,
    /// Downtime measured by QEMU once completed, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// QEMU's total migration time once completed, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Whether post-copy was started.
    #[serde(default)]
    pub postcopy: bool,
    /// Whether the stream is encrypted: QEMU's migration parameters name
    /// TLS credentials (read back from QEMU once the stream started).
    #[serde(default)]
    pub encrypted: bool,
}

/// Whether live migration streams are encrypted, cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationEncryption {
    /// Plain TCP between the hosts' migration addresses.
    #[default]
    Off,
    /// TLS with the hosts' certificates of the cluster CA, both sides
    /// verified.
    On,
}

impl MigrationEncryption {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationEncryption::Off => "off",
            MigrationEncryption::On => "on",
        }
    }
}

impl std::str::FromStr for MigrationEncryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(MigrationEncryption::Off),
            "on" => Ok(MigrationEncryption::On),
            _ => Err(format!(
                "'{s}' is not a migration encryption; use on or off"
            )),
        }
    }
}

/// Version of the stored migration settings (`/migration/settings`).
pub const MIGRATION_SETTINGS_VERSION: u32 = 1;

/// The cluster's migration settings as stored (`/migration/settings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MigrationClusterSettings {
    /// Format version ([`MIGRATION_SETTINGS_VERSION`]).
    pub version: u32,
    /// Whether live migration streams are encrypted by default.
    pub encryption: MigrationEncryption,
}

impl Default for MigrationClusterSettings {
    fn default() -> Self {
        MigrationClusterSettings {
            version: MIGRATION_SETTINGS_VERSION,
            encryption: MigrationEncryption::Off,
        }
    }
}

/// `PUT /api/v1/migration/settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMigrationSettingsRequest {
    /// Whether live migration streams are encrypted by default (a
    /// migration request may say otherwise with `tls`).
    pub encryption: MigrationEncryption,
}

/// `GET /api/v1/migration/settings`: the cluster's setting, its CA and
/// each host's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MigrationSettingsView {
    /// Whether live migration streams are encrypted by default.
    pub encryption: MigrationEncryption,
    /// The cluster CA, when the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSummary>,
    /// Each known host and the certificate it holds.
    pub hosts: Vec<HostTlsStatus>,
}

/// The cluster CA as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CaSummary {
    /// When it was made, ms since the Unix epoch.
    pub created_ms: u64,
    /// End of its validity, ms.
    pub not_after_ms: u64,
    /// SHA-256 of its certificate, hex.
    pub fingerprint: String,
}

/// One host's certificate for the migration stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostTlsStatus {
    /// Host name.
    pub host: String,
    /// Its certificate, when it holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<crate::auth::HostCertificate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_refuses_unknown_fields_and_reads_empty() {
        let r: MigrateRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, MigrateRequest::default());
        assert!(serde_json::from_str::<MigrateRequest>(r#"{"host":"a"}"#).is_err());
        let r: MigrateRequest =
            serde_json::from_str(r#"{"to":"h2","allow_postcopy":false}"#).unwrap();
        assert_eq!(r.to.as_deref(), Some("h2"));
        assert_eq!(r.allow_postcopy, Some(false));
    }
}
