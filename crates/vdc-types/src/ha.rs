//! High availability: the datastore heartbeat file and the HA status view.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Version of the datastore heartbeat file. Bump it when a field changes
/// meaning; readers refuse newer versions.
pub const DATASTORE_HEARTBEAT_VERSION: u32 = 1;

/// Directory of the heartbeat files at the root of a shared datastore.
pub const HEARTBEAT_DIR: &str = ".vdc-heartbeats";

/// `<datastore>/.vdc-heartbeats/<host>.json`: rewritten by the host's agent
/// about every second (temporary file, fsync, rename). Readers judge its
/// age by watching `seq` change on their own clock, never by `written_ms`
/// (another host's wall clock), which is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreHeartbeat {
    /// [`DATASTORE_HEARTBEAT_VERSION`].
    pub version: u32,
    /// The writing host.
    pub host: String,
    /// Grows by one on every write (starts again from 1 when the agent
    /// restarts: readers look for a change, not for growth).
    pub seq: u64,
    /// The agent started at (its wall clock); with `seq`, tells a restarted
    /// agent's writes apart.
    pub agent_started_ms: UnixMillis,
    /// Written at (the writer's wall clock, for people).
    pub written_ms: UnixMillis,
}

/// The file name of `host`'s heartbeat inside [`HEARTBEAT_DIR`].
pub fn heartbeat_file_name(host: &str) -> String {
    format!("{host}.json")
}

/// What the HA manager makes of a host from its two heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HaHostState {
    /// Its reports arrive.
    Connected,
    /// Reports stopped, its datastore heartbeat goes on: cut off, alive.
    /// Its VMs are not restarted while they hold their leases.
    IsolatedOrPartitioned,
    /// Both heartbeats stopped: its protected VMs are restarted elsewhere
    /// once their leases expire.
    Failed,
}

impl HaHostState {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            HaHostState::Connected => "connected",
            HaHostState::IsolatedOrPartitioned => "isolated_or_partitioned",
            HaHostState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for HaHostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host in [`HaStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HaHost {
    /// Host name.
    pub name: String,
    /// Its HA state.
    pub state: HaHostState,
    /// Time since its last report, ms (absent: none since the server
    /// started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_heartbeat_age_ms: Option<u64>,
    /// Time since the server last saw its datastore heartbeat change, ms
    /// (absent: never seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_heartbeat_age_ms: Option<u64>,
    /// Memory free for failover restarts, MiB (0 unless connected).
    pub memory_free_mib: u64,
}

/// `GET /api/v1/ha`: the HA settings and each host's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HaStatus {
    /// Whether the server restarts the protected VMs of failed hosts.
    pub enabled: bool,
    /// Longest silence of a host's reports, ms.
    pub network_timeout_ms: u64,
    /// Longest silence of a host's datastore heartbeat, ms.
    pub datastore_timeout_ms: u64,
    /// Memory free on connected hosts for restarts, MiB.
    pub failover_capacity_mib: u64,
    /// Admission control: host failures the cluster must tolerate (0: off).
    pub tolerate_host_failures: u32,
    /// Host failures (largest hosts first) the cluster tolerates now.
    pub tolerated_failures_now: u32,
    /// Memory of the protected VMs that run, QEMU overhead included, MiB.
    pub protected_mib: u64,
    /// The hosts.
    pub hosts: Vec<HaHost>,
}

/// A VM's restart priority: higher priorities restart first after a host
/// failure; `disabled` VMs are not restarted.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HaPriority {
    /// Restarted first.
    High,
    /// The default.
    #[default]
    Medium,
    /// Restarted last.
    Low,
    /// Not protected: never restarted elsewhere.
    Disabled,
}

impl HaPriority {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            HaPriority::High => "high",
            HaPriority::Medium => "medium",
            HaPriority::Low => "low",
            HaPriority::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for HaPriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HaPriority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "high" => HaPriority::High,
            "medium" => HaPriority::Medium,
            "low" => HaPriority::Low,
            "disabled" => HaPriority::Disabled,
            _ => {
                return Err(format!(
                    "unknown HA priority '{s}': use high, medium, low or disabled"
                ))
            }
        })
    }
}

/// What a host that lost both the server and its isolation address does
/// with the VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsolationResponse {
    /// Keep the VM running (it holds its lease; nothing restarts it).
    #[default]
    KeepRunning,
    /// Shut the guest down, releasing the lease so it restarts elsewhere.
    Shutdown,
    /// Power the VM off, releasing the lease so it restarts elsewhere.
    PowerOff,
}

/// A VM's HA settings (in its [`crate::VmConfig`] since version 3; `group`
/// since version 4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmHa {
    /// Restart priority.
    #[serde(default)]
    pub priority: HaPriority,
    /// Isolation response.
    #[serde(default)]
    pub isolation_response: IsolationResponse,
    /// Order group (see [`crate::ha_group::HaGroup`]); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `PATCH /api/v1/vms/{name}`: the settings to change (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVmRequest {
    /// New restart priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_priority: Option<HaPriority>,
    /// New isolation response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation_response: Option<IsolationResponse>,
    /// New order group: a group's name joins it, `null` leaves the VM's
    /// group; absent: unchanged.
    #[serde(
        default,
        deserialize_with = "some_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable = true, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", min_length = 1, max_length = 63)]
    pub ha_group: Option<Option<String>>,
}

impl UpdateVmRequest {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ha_priority.is_none() && self.isolation_response.is_none() && self.ha_group.is_none()
    }
}

/// A present field, `null` included, as `Some` (absent stays `None` through
/// `#[serde(default)]`).
fn some_or_null<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

/// Version of the stored HA policy (`/ha/policy`).
pub const HA_POLICY_VERSION: u32 = 1;

/// The cluster's HA admission policy (store key `/ha/policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HaPolicy {
    /// [`HA_POLICY_VERSION`].
    #[serde(default)]
    pub version: u32,
    /// A create or power-on is refused when the protected VMs would no
    /// longer fit on the hosts left after this many host failures (the
    /// largest hosts first). 0 turns admission control off.
    pub tolerate_host_failures: u32,
}

/// `PUT /api/v1/ha`: the admission policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHaPolicyRequest {
    /// Host failures to tolerate (0–63; 0: admission control off).
    #[schema(minimum = 0, maximum = 63)]
    pub tolerate_host_failures: u32,
}
