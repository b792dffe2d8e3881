//! The agent protocol: what a host's agent reports to the server and the
//! requests the server sends to an agent (`/agent/v1`).
//!
//! Every request to an agent carries `Authorization: Bearer <server
//! credential>` (learned by the agent at join, see [`crate::auth`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::vm::VmStats;
use crate::{Accelerator, GuestInfo, UnixMillis, VmConfig, VmPowerState};

/// A datastore as one host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatastoreReport {
    /// Name.
    pub name: String,
    /// Mount path on this host.
    pub path: String,
    /// Whether every host mounts it (shared) or only this one (local).
    pub shared: bool,
    /// Size of the file system.
    pub capacity_bytes: u64,
    /// Free space.
    pub free_bytes: u64,
    /// Cache mode of disks here (`none` where direct I/O works).
    #[serde(default)]
    pub cache_mode: crate::host::DiskCacheMode,
    /// Why direct I/O is not used, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_reason: Option<String>,
}

/// One VM as its host sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmRuntime {
    /// VM id.
    pub id: String,
    /// VM name.
    pub name: String,
    /// Power state, following QMP events.
    pub state: VmPowerState,
    /// PID of the QEMU process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// What the guest reports.
    #[serde(default)]
    pub guest: GuestInfo,
    /// Resource usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<VmStats>,
    /// When the state last changed.
    pub since_ms: UnixMillis,
    /// Why the VM's supervisor stopped its QEMU (it could not keep the
    /// VM's lease, or handed the VM over to another host); set while the
    /// VM is crashed (or stopped) for that reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
    /// Resets of a hung guest by its host's VM monitoring since the agent
    /// started (the server publishes each new one as `ha.vm_reset`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub monitor_resets: u32,
    /// Why the last of those resets happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_reason: Option<String>,
}

/// The agent's heartbeat: sent to `POST /api/v1/agent/report` every second
/// and at once whenever a VM changes state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostReport {
    /// Host name.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Management address.
    pub address: String,
    /// Address live migration streams come in on (default: the
    /// management address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_address: Option<String>,
    /// Machine types and CPU models this host's QEMU offers (`-machine
    /// help`, `-cpu help`); absent when they could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_models: Option<QemuModelsReport>,
    /// The certificate the host holds for the migration stream (none until
    /// its agent joined with a certificate request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::auth::HostCertificate>,
    /// Base URL of this agent's API.
    pub agent_url: String,
    /// Accelerator in use.
    pub accelerator: Accelerator,
    /// QEMU version.
    pub qemu_version: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory, MiB.
    pub memory_mib: u64,
    /// Available memory, MiB.
    pub memory_free_mib: u64,
    /// CPU use, percent of all CPUs.
    pub cpu_percent: f64,
    /// Datastores.
    pub datastores: Vec<DatastoreReport>,
    /// Every VM this agent knows (running, paused, stopped, crashed,
    /// suspended) until it is destroyed here or another host holds its lock.
    pub vms: Vec<VmRuntime>,
    /// When this agent process started (a change means a restart).
    pub agent_started_ms: UnixMillis,
    /// How this host realizes each switch the server asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switches: Vec<crate::switch::HostSwitchState>,
}

/// The virtual hardware a host's QEMU offers: a VM runs (or moves) only
/// where its machine type and CPU model are offered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QemuModelsReport {
    /// Machine types, aliases included.
    pub machine_types: Vec<String>,
    /// CPU models, aliases included.
    pub cpu_models: Vec<String>,
    /// The host CPU's feature flags (`/proc/cpuinfo`), checked against the
    /// key flags of a VM's CPU model under KVM; empty from older agents
    /// (then not checked).
    #[serde(default)]
    pub cpu_flags: Vec<String>,
}

impl QemuModelsReport {
    /// Why a VM of `machine_type` and `cpu_model` cannot run here, if not.
    pub fn missing(&self, machine_type: &str, cpu_model: &str) -> Option<String> {
        if !self.machine_types.iter().any(|m| m == machine_type) {
            return Some(format!("its QEMU offers no machine type '{machine_type}'"));
        }
        if !self.cpu_models.iter().any(|c| c == cpu_model) {
            return Some(format!("its QEMU offers no CPU model '{cpu_model}'"));
        }
        None
    }
}

/// Where the boot disk of a VM being provisioned comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum DiskSource {
    /// An empty disk.
    Blank,
    /// A copy of (or a linked clone on) a template's disk.
    Template {
        /// Datastore of the template.
        datastore: String,
        /// Path relative to that datastore.
        path: String,
        /// Linked clone (backing file) instead of a full copy.
        linked: bool,
    },
    /// A disk image from outside vdc (V2V/P2V), converted to qcow2 by the
    /// rules of an image import.
    Image {
        /// Absolute path on the provisioning host.
        source: String,
        /// Its format (default: what `qemu-img` finds in it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<crate::api::ImageFormat>,
    },
    /// A VMDK inside an OVA (a tar member), read in place.
    OvaDisk {
        /// The OVA, absolute, on the provisioning host.
        ova: String,
        /// Offset of the member's data in the tar.
        offset: u64,
        /// Size of the member.
        size: u64,
    },
}

/// `POST /agent/v1/images/inspect`: what an image source holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InspectImageRequest {
    /// Absolute path on the host.
    pub source: String,
    /// Its format as stated (default: what `qemu-img` finds in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::api::ImageFormat>,
}

/// Answer of `POST /agent/v1/images/inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageInspection {
    /// Format it is read as.
    pub format: crate::api::ImageFormat,
    /// Virtual size of the disk.
    pub size_bytes: u64,
}

/// A disk file on a datastore (a qcow2 image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskFile {
    /// Datastore holding it.
    pub datastore: String,
    /// Path relative to that datastore.
    pub path: String,
}

/// `PUT /agent/v1/vms/{id}`: create the VM's directory, disks and `vm.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProvisionVmRequest {
    /// Configuration.
    pub config: VmConfig,
    /// Source of the boot disk (`disks[0]`).
    pub boot_source: DiskSource,
    /// Sources of the other disks, in order, each copied in full (a clone
    /// of a VM); a disk without one here is blank.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_sources: Vec<DiskFile>,
    /// Sources of the data disks after those of `data_sources`, in order
    /// (an OVA's further disks, read in place: [`DiskSource::OvaDisk`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_images: Vec<DiskSource>,
}

/// `POST /agent/v1/vms/{id}/start`: take the VM's lock and launch QEMU (or
/// resume from the suspended state file if there is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentStartRequest {
    /// Configuration (rewritten to `vm.json`).
    pub config: VmConfig,
}

/// `POST /agent/v1/vms/{id}/shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentShutdownRequest {
    /// Seconds before falling back to power-off.
    pub timeout_s: u64,
}

/// `DELETE /agent/v1/vms/{id}`: remove the VM's files (it must be stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DestroyVmRequest {
    /// Configuration naming the files.
    pub config: VmConfig,
    /// Keep the boot disk as this file of the VM's datastore (a template's
    /// image, `templates/NAME.qcow2`): it is renamed there, read-only,
    /// before the rest goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_boot_disk_as: Option<String>,
}

/// `POST /agent/v1/images/import`: copy an image into a datastore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportImageRequest {
    /// Source file on this host: an absolute path inside an import
    /// directory or a datastore of the agent; with `source_datastore`, a
    /// path relative to that datastore (a VM's disk).
    pub source: String,
    /// Datastore `source` is relative to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_datastore: Option<String>,
    /// Format of the source (default: what `qemu-img` finds in it).
    #[serde(default)]
    pub format: Option<crate::api::ImageFormat>,
    /// Target datastore.
    pub datastore: String,
    /// Target path relative to the datastore.
    pub path: String,
}

/// `POST /agent/v1/images/remove`: delete a template's image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RemoveImageRequest {
    /// Datastore holding it.
    pub datastore: String,
    /// Path relative to that datastore, under `templates/`.
    pub path: String,
}

/// Answer of an image import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportImageResponse {
    /// Virtual size of the imported disk.
    pub size_bytes: u64,
    /// Format the source was read as.
    pub format: crate::api::ImageFormat,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
