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
    /// Latest figures while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<MigrationProgress>,
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
