//! Hosts, datastores and networks.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// How a host runs guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulator (slow, always available).
    Tcg,
}

impl Accelerator {
    /// QEMU's name for it (`-accel NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// Connection state of a host as seen by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Heartbeats arrive.
    Connected,
    /// No heartbeat for longer than the timeout.
    Disconnected,
}

/// A hypervisor host running a `vdc agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Host {
    /// Name (unique).
    pub name: String,
    /// Management address of the host.
    pub address: String,
    /// Base URL of the host's agent API.
    pub agent_url: String,
    /// Connection state.
    pub state: HostState,
    /// Accelerator its VMs use.
    pub accelerator: Accelerator,
    /// QEMU version on the host.
    pub qemu_version: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory, MiB.
    pub memory_mib: u64,
    /// Memory available for new VMs, MiB, as the host measures it.
    pub memory_free_mib: u64,
    /// Host CPU use, percent of all CPUs.
    pub cpu_percent: f64,
    /// Number of VMs with a QEMU process on this host.
    pub vm_count: u32,
    /// Datastores the host can reach.
    pub datastores: Vec<String>,
    /// Last heartbeat.
    pub last_seen_ms: UnixMillis,
    /// Maintenance mode, when the host is in it (it takes no new VMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceState>,
    /// How the host's CPU meets the cluster's CPU baseline (absent until
    /// its agent reported its CPU's flags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_baseline: Option<HostCpuFit>,
    /// The certificate the host holds for the migration stream (its
    /// expiry shown by `vdc host list`); none until its agent joined with a
    /// certificate request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::auth::HostCertificate>,
    /// How the host realizes each switch (as last reported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switches: Vec<crate::switch::HostSwitchState>,
    /// The host's migration network address (vSphere's vMotion network):
    /// live migrations to the host come in on it. The management address
    /// unless its agent runs with `--migration-address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_address: Option<String>,
}

/// How one host's CPU meets the cluster's CPU baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostCpuFit {
    /// Whether the host can run the baseline model (and so every VM
    /// created under it).
    pub meets: bool,
    /// Whether QEMU emulates the CPU there (TCG: any model runs, slowly).
    pub emulated: bool,
    /// Flags of the baseline model the host's CPU lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_flags: Vec<String>,
    /// One sentence for the administrator.
    pub reason: String,
}

/// The cluster's CPU baseline (like vSphere's EVC): the QEMU CPU model
/// every new VM gets, so that any VM can land on any host that meets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CpuBaseline {
    /// `auto` (the newest model every host with hardware virtualization
    /// can run) or the model the administrator fixed (`vdc server
    /// --cpu-baseline`).
    pub mode: String,
    /// The model new VMs get now.
    pub model: String,
    /// The newest model every connected host with hardware virtualization
    /// can run (absent when there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_common: Option<String>,
    /// Each connected host that reported its CPU, and how it meets `model`.
    pub hosts: Vec<HostCpuBaseline>,
}

/// One host's line of [`CpuBaseline`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostCpuBaseline {
    /// Host name.
    pub host: String,
    /// How it meets the baseline.
    #[serde(flatten)]
    pub fit: HostCpuFit,
}

/// Maintenance mode of a host.
///
/// ```text
///  (none) ──enter──► entering ──every VM moved or reported──► in_maintenance
///     ▲                  │                                       │
///     └──────────exit────┴───────────────────exit────────────────┘
/// ```
///
/// From `entering` on, placement skips the host and starts or creates
/// naming it are refused; the evacuation task moves its VMs away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MaintenanceState {
    /// Its VMs are being moved away.
    Entering,
    /// The evacuation ended (VMs it could not move are named on its task).
    InMaintenance,
}

impl MaintenanceState {
    /// Lower-case name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceState::Entering => "entering",
            MaintenanceState::InMaintenance => "in_maintenance",
        }
    }
}

/// Whether a datastore is reachable from one host or from all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum DatastoreKind {
    /// A directory on one host's own disk.
    Local {
        /// The host that has it.
        host: String,
    },
    /// A directory every host mounts at the same path (NFS in production).
    Shared,
}

/// How QEMU opens the disk images of a datastore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskCacheMode {
    /// `cache=none`: direct I/O (`O_DIRECT`), bypassing the host's page
    /// cache, so no host holds writes another host cannot see (shared
    /// storage, migration).
    None,
    /// `cache=writeback`: through the host's page cache; used where the
    /// file system refuses direct I/O.
    #[default]
    Writeback,
}

impl DiskCacheMode {
    /// Lower-case name, as in the API and QEMU's `cache=` option.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskCacheMode::None => "none",
            DiskCacheMode::Writeback => "writeback",
        }
    }
}

impl std::fmt::Display for DiskCacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A directory holding VM directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Datastore {
    /// Name (unique).
    pub name: String,
    /// Local or shared.
    pub kind: DatastoreKind,
    /// Mount path on the hosts that reach it.
    pub path: String,
    /// Capacity in bytes (as last reported).
    pub capacity_bytes: u64,
    /// Free bytes (as last reported).
    pub free_bytes: u64,
    /// Cache mode of disks on this datastore: `none` (direct I/O) where the
    /// file system supports it, probed by each agent at start (as last
    /// reported).
    #[serde(default)]
    pub cache_mode: DiskCacheMode,
    /// Why direct I/O is not used, when `cache_mode` is `writeback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_reason: Option<String>,
}

/// A network (port group) VMs connect to: a switch (a bridge on every
/// host) and, on a managed switch, a VLAN id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    /// Name (unique).
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Linux bridge on each host that VM NICs are attached to, filled in
    /// by the server: the switch's bridge, or its VLAN's bridge. Given
    /// alone, it names an `existing` switch of that name (created if
    /// needed).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]*$", max_length = 15)]
    pub bridge: String,
    /// Subnet in CIDR notation, e.g. `10.77.0.0/24`.
    #[schema(
        pattern = "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}/([89]|[12][0-9]|30)$"
    )]
    pub subnet: String,
    /// Gateway handed to guests, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$"
    )]
    pub gateway: Option<String>,
    /// First address handed out to VMs.
    #[schema(
        pattern = "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$"
    )]
    pub pool_start: String,
    /// Last address handed out to VMs.
    #[schema(
        pattern = "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$"
    )]
    pub pool_end: String,
    /// Format version ([`crate::switch::NETWORK_VERSION`]; filled in by the
    /// server, absent in version 1; a newer one is refused).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub version: u32,
    /// Switch the port group is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 63)]
    pub switch: Option<String>,
    /// VLAN id, 1-4094 (managed switches only): the port group's NICs
    /// share a broadcast domain with that VLAN's NICs on every host and
    /// with nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4094)]
    pub vlan: Option<u16>,
    /// Traffic shaping toward each NIC of the port group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shaping: Option<crate::switch::Shaping>,
    /// Traffic shaping of what each NIC of the port group sends (from the
    /// VM): average rate and burst, policed on the host (frames over the
    /// rate are dropped; TCP settles at the rate). A peak rate is not
    /// applied in this direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_shaping: Option<crate::switch::Shaping>,
    /// Security policy of the port group's NICs (none: forged transmits
    /// allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<crate::switch::SecurityPolicy>,
}
