//! HA order groups (which VMs restart after which) and alarms (a condition
//! an administrator must see until it clears, e.g. a protected VM that
//! found no room to restart).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Version of a stored order group (`/ha/groups/<name>`). Bump it when a
/// field changes meaning; readers refuse newer versions.
pub const HA_GROUP_VERSION: u32 = 1;

/// Default readiness timeout of an order group, seconds: how long the
/// groups that start after it wait for its VMs' guests to report ready.
pub const DEFAULT_READY_TIMEOUT_S: u64 = 120;

/// Longest readiness timeout a group may ask for, seconds (one day).
pub const MAX_READY_TIMEOUT_S: u64 = 86_400;

/// Most groups one group may start after.
pub const MAX_GROUP_AFTER: usize = 32;

/// An HA order group: after a host failure, its VMs are restarted only once
/// every VM of the groups in `after` that is being restarted too reports
/// its guest ready, or those groups' readiness timeouts passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HaGroup {
    /// [`HA_GROUP_VERSION`].
    #[serde(default)]
    pub version: u32,
    /// Group name.
    pub name: String,
    /// The groups whose VMs must be ready first.
    #[serde(default)]
    pub after: Vec<String>,
    /// How long the groups started after this one wait for its VMs to
    /// report ready, seconds.
    pub ready_timeout_s: u64,
    /// Creation time.
    pub created_ms: UnixMillis,
    /// The VMs in the group (filled in by the API, not stored).
    #[serde(default)]
    pub vms: Vec<String>,
    /// Position in the restart order: 0 for a group that starts after no
    /// other, else one more than the highest of the groups it starts after
    /// (filled in by the API, not stored).
    #[serde(default)]
    pub rank: u32,
}

/// `POST /api/v1/ha/groups`: a new order group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHaGroupRequest {
    /// Group name.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// The groups whose VMs must be ready first (existing groups, no cycle).
    #[serde(default)]
    #[schema(max_items = 32)]
    pub after: Vec<String>,
    /// Readiness timeout, seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub ready_timeout_s: Option<u64>,
}

/// Version of a stored alarm (`/alarms/<id>`).
pub const ALARM_VERSION: u32 = 1;

/// How bad an alarm's condition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmSeverity {
    /// Needs attention.
    Warning,
    /// Something protected is down.
    Critical,
}

impl AlarmSeverity {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmSeverity::Warning => "warning",
            AlarmSeverity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for AlarmSeverity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An alarm: raised when a condition starts, cleared when it ends; kept
/// (cleared) for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Alarm {
    /// [`ALARM_VERSION`].
    #[serde(default)]
    pub version: u32,
    /// Alarm id.
    pub id: String,
    /// What kind of condition, e.g. `ha.restart_deferred`.
    pub kind: String,
    /// How bad.
    pub severity: AlarmSeverity,
    /// The object concerned (a VM name).
    pub object: String,
    /// Why it was raised, and what to do.
    pub reason: String,
    /// Raised at.
    pub raised_ms: UnixMillis,
    /// Cleared at (absent: still raised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_ms: Option<UnixMillis>,
    /// Why it cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_reason: Option<String>,
    /// An administrator acknowledged it.
    #[serde(default)]
    pub acknowledged: bool,
}
