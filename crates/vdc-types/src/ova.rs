//! OVF/OVA export and import: request and answer bodies of the API and of
//! the agent's `export_ova` job.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::VmConfig;

/// `POST /api/v1/vms/{name}/export`: write a powered-off VM as an OVA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportVmRequest {
    /// The OVA file to write: an absolute path ending in `.ova` on the
    /// exporting host, inside one of its import directories (`vdc agent
    /// --import-dir`); it must not exist.
    #[schema(pattern = "^/.*\\.ova$", max_length = 4096)]
    pub ova: String,
    /// Host that writes it (default: the VM's owner, or a host reaching its
    /// datastore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub host: Option<String>,
}

/// The agent's `export_ova` job: the VM and where its OVA goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportOvaRequest {
    /// The VM (stopped on this host).
    pub config: VmConfig,
    /// The OVA file, absolute, inside an import directory.
    pub ova: String,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportOvaResponse {
    /// The OVA file.
    pub ova: String,
    /// Its size, bytes.
    pub size_bytes: u64,
    /// The members of the tar, in order (descriptor, manifest, disks).
    pub files: Vec<String>,
}

/// `POST /api/v1/imports/ova`: a new VM from an OVA (vdc's, VMware's,
/// VirtualBox's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportOvaRequest {
    /// The OVA: an absolute path on the importing host, inside one of its
    /// import directories.
    #[schema(pattern = "^/", max_length = 4096)]
    pub source: String,
    /// Name of the new VM (default: the descriptor's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
    /// The OVA's network names mapped to vdc networks; a network not
    /// mapped must exist in vdc under its own name.
    #[serde(default)]
    pub network_map: std::collections::BTreeMap<String, String>,
    /// Datastore of the VM (default: the first shared one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub datastore: Option<String>,
    /// Host that reads the OVA (default: the first reaching the datastore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub host: Option<String>,
    /// Power the VM on once made.
    #[serde(default)]
    pub start: bool,
}

/// A disk inside an OVA: its member's place in the tar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OvaMember {
    /// Member name.
    pub file: String,
    /// Offset of its data in the tar, bytes.
    pub offset: u64,
    /// Its size, bytes.
    pub size: u64,
}

/// `POST /agent/v1/ova/inspect`: read and verify an OVA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InspectOvaRequest {
    /// Absolute path on the host.
    pub source: String,
}

/// What an OVA holds, its manifest verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OvaInspection {
    /// Name in the descriptor.
    pub name: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Disks, in the hardware section's order.
    pub disks: Vec<OvaMember>,
    /// Capacities of the disks, bytes (same order).
    pub capacities: Vec<u64>,
    /// Networks of the NICs, in order.
    pub networks: Vec<String>,
    /// What the descriptor holds that vdc does not make.
    pub ignored: Vec<String>,
}

/// Answer of `POST /api/v1/imports/ova`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportOvaResponse {
    /// The new VM's `vm.create` task.
    pub task: crate::Task,
    /// The new VM's name.
    pub vm: String,
    /// The network its NIC joins, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// What the import leaves behind, in words.
    pub ignored: Vec<String>,
}
