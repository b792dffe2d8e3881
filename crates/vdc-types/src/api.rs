//! Request bodies of the REST API (`/api/v1`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Default vCPUs of a new VM.
pub const DEFAULT_CPUS: u32 = 1;
/// Default memory of a new VM, MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Default size of a blank boot disk, GiB.
pub const DEFAULT_DISK_GIB: u64 = 8;
/// Most vCPUs a VM may have.
pub const MAX_CPUS: u32 = 64;
/// Least memory a VM may have, MiB.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest disk, GiB (64 TiB, qcow2's practical limit).
pub const MAX_DISK_GIB: u64 = 64 * 1024;

/// `POST /api/v1/vms`: create a VM, from a template or with a blank disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Unique name: letters, digits, `-`, `_`, `.`; at most 63 characters.
    pub name: String,
    /// vCPUs (default 1, at most 64).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 256, at least 32).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Template to deploy from; without it the VM gets a blank disk.
    #[serde(default)]
    pub template: Option<String>,
    /// Deploy as a linked clone (qcow2 backing file on the template) instead
    /// of a full copy.
    #[serde(default)]
    pub linked_clone: bool,
    /// Size of the boot disk in GiB (blank disk size, or grow the template's).
    #[serde(default)]
    pub disk_gib: Option<u64>,
    /// Datastore for the VM's directory (default: the first shared one).
    #[serde(default)]
    pub datastore: Option<String>,
    /// Network for the first NIC (default: the first network).
    #[serde(default)]
    pub network: Option<String>,
    /// Host to run on (default: placement picks one).
    #[serde(default)]
    pub host: Option<String>,
    /// Power the VM on once created.
    #[serde(default)]
    pub start: bool,
    /// Extra (data) disks, blank.
    #[serde(default)]
    pub disks: Vec<DiskRequest>,
}

/// An extra blank disk of a new VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskRequest {
    /// Size in GiB.
    pub size_gib: u64,
    /// Datastore (default: the VM's).
    #[serde(default)]
    pub datastore: Option<String>,
    /// File path relative to the datastore (default `<vm>/diskN.qcow2`);
    /// must stay inside the datastore.
    #[serde(default)]
    pub path: Option<String>,
}

/// `POST /api/v1/vms/{name}/start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartVmRequest {
    /// Host to start on (default: placement, or the host holding its
    /// suspended state).
    #[serde(default)]
    pub host: Option<String>,
}

/// `POST /api/v1/vms/{name}/shutdown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownVmRequest {
    /// Seconds to wait for the guest before powering it off (default 60).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// Default graceful-shutdown timeout, seconds.
pub const DEFAULT_SHUTDOWN_TIMEOUT_S: u64 = 60;
/// Longest graceful-shutdown timeout, seconds.
pub const MAX_SHUTDOWN_TIMEOUT_S: u64 = 3600;

/// `POST /api/v1/templates`: import a disk image file as a template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// Unique name.
    pub name: String,
    /// Datastore to keep the template in (must be shared).
    pub datastore: String,
    /// Image file to import (qcow2, raw, vmdk, vhdx…); a path on the host
    /// that does the import.
    pub source: String,
    /// Host that reads `source` (default: any connected host).
    #[serde(default)]
    pub host: Option<String>,
}

/// A template: a read-only boot disk VMs are deployed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    /// Name.
    pub name: String,
    /// Datastore holding it.
    pub datastore: String,
    /// Path relative to the datastore root.
    pub path: String,
    /// Virtual size of the disk.
    pub size_bytes: u64,
    /// Creation time.
    pub created_ms: UnixMillis,
}

/// Answer of `GET /api/v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// vdc version.
    pub version: String,
    /// API version (`v1`).
    pub api: String,
}
