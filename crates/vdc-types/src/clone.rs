//! Clones and templates made from VMs: the request bodies of
//! `POST /api/v1/vms/{name}/clone`, `POST /api/v1/vms/{name}/to-template`
//! and the answer of `GET /api/v1/templates/{name}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::Template;

/// `POST /api/v1/vms/{name}/clone`: a new VM from a powered-off VM's disks,
/// with new MAC addresses and, optionally, a new hostname and address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneVmRequest {
    /// Name of the new VM.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Linked clone (qcow2 overlay on a read-only base) instead of a full
    /// copy. Only a template is a read-only base: cloning a VM this way is
    /// refused with what to do instead.
    #[serde(default)]
    pub linked: bool,
    /// Hostname given to the clone's guest (default: the clone's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub hostname: Option<String>,
    /// Static address of the clone's first NIC, CIDR notation (default:
    /// the next free address of the network's pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 18)]
    pub ip: Option<String>,
    /// The clone's guest asks DHCP for its address instead.
    #[serde(default)]
    pub dhcp: bool,
    /// Datastore of the clone (default: the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub datastore: Option<String>,
    /// Power the clone on once made.
    #[serde(default)]
    pub start: bool,
}

/// `POST /api/v1/vms/{name}/to-template`: make a template of a powered-off
/// VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmToTemplateRequest {
    /// Name of the template (default: the VM's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
    /// Keep the VM and copy its boot disk into the template (a clone to a
    /// template), instead of converting the VM (instant: its disk becomes
    /// the template's image and the VM is gone).
    #[serde(default)]
    pub keep_vm: bool,
}

/// `GET /api/v1/templates/{name}`: a template with the VMs and templates
/// that read its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateDetails {
    /// The template.
    #[serde(flatten)]
    pub template: Template,
    /// VMs whose boot disk is a linked clone of it (they keep it from
    /// being deleted).
    pub linked_clones: Vec<String>,
    /// Templates made from a linked clone of it (they keep it too).
    pub dependent_templates: Vec<String>,
    /// VMs deployed from it as full copies.
    pub full_clones: Vec<String>,
}

/// Checks a guest hostname: 1 to 63 letters, digits and `-`, not starting
/// or ending with `-` (RFC 1123 label).
pub fn validate_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "hostname '{}' must be 1 to 63 letters, digits and '-', not starting or ending with '-'",
            h.escape_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["web-1", "a", "A9", &"x".repeat(63)] {
            assert!(validate_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", "a b", &"x".repeat(64)] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
    }
}

/// `POST /api/v1/imports/disk`: a new VM from a disk image in vmdk, vhd,
/// vhdx, qcow2 or raw, or a physical disk's raw image or block device
/// (V2V/P2V), converted to qcow2 on the host that reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportDiskRequest {
    /// Name of the new VM.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// The image: an absolute path on the importing host, inside one of
    /// its import directories or datastores (a block device only when
    /// listed itself as an import directory).
    #[schema(pattern = "^/", max_length = 4096)]
    pub source: String,
    /// Its format (default: what `qemu-img` finds in it; a stated format
    /// the content contradicts is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::api::ImageFormat>,
    /// Host that reads the image and makes the VM (default: the first
    /// connected host reaching the datastore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub host: Option<String>,
    /// Datastore of the VM (default: the first shared one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub datastore: Option<String>,
    /// Network of the first NIC (default: the first network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub network: Option<String>,
    /// vCPUs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 32)]
    pub memory_mib: Option<u64>,
    /// Power the VM on once made.
    #[serde(default)]
    pub start: bool,
}
