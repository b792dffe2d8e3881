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
/// The rule for a disk path inside a datastore, as the OpenAPI document
/// states it on [`DiskRequest::path`] (at most 1024 bytes): components of
/// letters, digits, `.`, `_`, `-` not starting with `.` or `-`, ending in
/// `.qcow2`.
pub const DISK_PATH_PATTERN: &str =
    r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*\.qcow2$";

/// `POST /api/v1/vms`: create a VM, from a template or with a blank disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Unique name: letters, digits, `-`, `_`, `.`; at most 63 characters.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// vCPUs (default 1, at most 64).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 256, at least 32).
    #[serde(default)]
    #[schema(minimum = 32)]
    pub memory_mib: Option<u64>,
    /// Template to deploy from; without it the VM gets a blank disk.
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub template: Option<String>,
    /// Deploy as a linked clone (qcow2 backing file on the template) instead
    /// of a full copy.
    #[serde(default)]
    pub linked_clone: bool,
    /// Size of the boot disk in GiB (blank disk size, or grow the template's).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65536)]
    pub disk_gib: Option<u64>,
    /// Datastore for the VM's directory (default: the first shared one).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub datastore: Option<String>,
    /// Network for the first NIC (default: the first network).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub network: Option<String>,
    /// Host to run on (default: placement picks one).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub host: Option<String>,
    /// Power the VM on once created.
    #[serde(default)]
    pub start: bool,
    /// HA restart priority (default medium).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_priority: Option<crate::ha::HaPriority>,
    /// What an isolated host does with the VM (default keep running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation_response: Option<crate::ha::IsolationResponse>,
    /// HA order group to join (an existing group; default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub ha_group: Option<String>,
    /// Extra (data) disks, blank.
    #[serde(default)]
    pub disks: Vec<DiskRequest>,
    /// Guest customization: hostname given to the guest (default: the VM's
    /// name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub hostname: Option<String>,
    /// Guest customization: static address of the first NIC in CIDR
    /// notation, inside the network's subnet (default: the next free
    /// address of the network's pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 18)]
    pub ip: Option<String>,
    /// Guest customization: the guest asks a DHCP server of the network
    /// for its address instead (no address reserved by vdc).
    #[serde(default)]
    pub dhcp: bool,
}

/// An extra blank disk of a new VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskRequest {
    /// Size in GiB.
    #[schema(minimum = 1, maximum = 65536)]
    pub size_gib: u64,
    /// Datastore (default: the VM's).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub datastore: Option<String>,
    /// File path relative to the datastore (default `<vm>/diskN.qcow2`);
    /// must stay inside the datastore.
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*\\.qcow2$",
        max_length = 1024
    )]
    pub path: Option<String>,
}

/// `POST /api/v1/vms/{name}/start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartVmRequest {
    /// Host to start on (default: placement, or the host holding its
    /// suspended state).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub host: Option<String>,
}

/// `POST /api/v1/vms/{name}/shutdown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownVmRequest {
    /// Seconds to wait for the guest before powering it off (default 60).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_s: Option<u64>,
}

/// Default graceful-shutdown timeout, seconds.
pub const DEFAULT_SHUTDOWN_TIMEOUT_S: u64 = 60;
/// Longest graceful-shutdown timeout, seconds.
pub const MAX_SHUTDOWN_TIMEOUT_S: u64 = 3600;

/// Largest serial console input accepted by one request, bytes.
pub const CONSOLE_INPUT_MAX_BYTES: usize = 4096;
/// Header of a console read (server and agent): the console log offset
/// just past the bytes returned, where the next read should start.
pub const CONSOLE_OFFSET_HEADER: &str = "x-console-offset";

/// `POST /api/v1/vms/{name}/console/input` (and the agent's
/// `POST /agent/v1/vms/{id}/console/input`): keystrokes for the VM's serial
/// console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleInputRequest {
    /// UTF-8 text sent to the guest as typed, 1 to 4096 bytes; end a
    /// command line with `\n` (or `\r`, what the Enter key sends).
    #[schema(min_length = 1)]
    pub data: String,
}

impl ConsoleInputRequest {
    /// Checks the size limits; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.data.is_empty() {
            return Err("console input 'data' is empty; send at least one character".into());
        }
        if self.data.len() > CONSOLE_INPUT_MAX_BYTES {
            return Err(format!(
                "console input is {} bytes; at most {CONSOLE_INPUT_MAX_BYTES} bytes per request",
                self.data.len()
            ));
        }
        Ok(())
    }
}

/// Format of a disk image file being imported. The importing host always
/// hands it to `qemu-img` explicitly (`-f`), never letting the tool guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// A plain disk image, byte for byte.
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
    /// VMware (a single-file sparse image).
    Vmdk,
    /// Hyper-V.
    Vhdx,
    /// Virtual PC / Hyper-V legacy (`.vhd`).
    Vpc,
}

impl ImageFormat {
    /// Every format vdc imports.
    pub const ALL: [ImageFormat; 5] = [
        ImageFormat::Raw,
        ImageFormat::Qcow2,
        ImageFormat::Vmdk,
        ImageFormat::Vhdx,
        ImageFormat::Vpc,
    ];

    /// The name `qemu-img` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Vpc => "vpc",
        }
    }

    /// The format `qemu-img` calls `name`, if vdc imports it.
    pub fn from_qemu_name(name: &str) -> Option<ImageFormat> {
        ImageFormat::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /api/v1/templates`: import a disk image file as a template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// Unique name.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Datastore to keep the template in (must be shared).
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub datastore: String,
    /// Image file to import: an absolute path, on the host that does the
    /// import, inside one of its import directories (`vdc agent
    /// --import-dir`) or datastores.
    #[schema(pattern = "^/", max_length = 4096)]
    pub source: String,
    /// Format of the file (default: what `qemu-img` finds in it). A stated
    /// format that differs from the file's content is refused.
    #[serde(default)]
    pub format: Option<ImageFormat>,
    /// Host that reads `source` (default: any connected host).
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
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
    /// Format the source image was read as (absent while importing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<ImageFormat>,
    /// VM the template was made from (converted or cloned), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_vm: Option<String>,
    /// Template whose image this one's is a linked clone of (a linked
    /// clone converted to a template), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Answer of `GET /api/v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// vdc version.
    pub version: String,
    /// API version (`v1`).
    pub api: String,
}
