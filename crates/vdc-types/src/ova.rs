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
