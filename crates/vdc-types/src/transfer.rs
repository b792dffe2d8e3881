//! Moving a VM's files from one host to another (cold and suspended
//! migration to a datastore the source host cannot see), and the pure
//! rule that rewrites a VM's configuration for its new datastore.
//!
//! The copy goes agent to agent; the server only arranges it:
//!
//! ```text
//!  server ──POST /agent/v1/exports {id, token, config}──► source agent
//!         ◄── {files: [{name, size_bytes, sha256}]} ──────  (sizes and SHA-256 read once)
//!  server ──job receive_vm {config', source_url, export_id, token, files}──► destination agent
//!                          destination ──GET /agent/v1/exports/{id}/files/{name}──► source
//!                                        (Authorization: Bearer <token>; nothing else is
//!                                         readable with it; each file's SHA-256 checked)
//!  server ──DELETE /agent/v1/exports/{id}──► source agent (the token stops working)
//! ```
//!
//! The token is one the server draws for this copy only (128 random bits);
//! the source agent keeps its SHA-256 and forgets it when the export is
//! closed or after [`EXPORT_TTL_S`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::vm::VmConfig;

/// Seconds an export stays readable when nobody closes it.
pub const EXPORT_TTL_S: u64 = 3600;

/// Name of the memory state file in an export.
pub const STATE_FILE: &str = "suspend.state";

/// Export name of disk `disk` (e.g. `disk.disk0`).
pub fn disk_file(disk: &str) -> String {
    format!("disk.{disk}")
}

/// `POST /agent/v1/exports`: offer a stopped or suspended VM's files to
/// another agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportRequest {
    /// Export id chosen by the server (an operation id).
    pub id: String,
    /// One-time secret the reader must present (at least 16 characters).
    pub token: String,
    /// The VM as it is on this host.
    pub config: VmConfig,
}

/// One file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportFile {
    /// `disk.<disk name>` or `suspend.state`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
}

/// Answer of `POST /agent/v1/exports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportResponse {
    /// The export id.
    pub id: String,
    /// Its files.
    pub files: Vec<ExportFile>,
}

/// Job `receive_vm`: copy a VM's files from another agent's export into a
/// datastore of this host, under the configuration it will have here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReceiveVmRequest {
    /// The VM's configuration on this host (see [`relocate`]).
    pub config: VmConfig,
    /// Base URL of the source agent.
    pub source_url: String,
    /// The export to read.
    pub export_id: String,
    /// Its one-time token.
    pub token: String,
    /// What to copy.
    pub files: Vec<ExportFile>,
}

/// Job `mirror_disks`: storage migration of a running VM on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MirrorDisksRequest {
    /// The VM's configuration now.
    pub config: VmConfig,
    /// The datastore its disks move to.
    pub datastore: String,
}

/// The configuration of `config` with its directory and every disk on
/// datastore `datastore`: the directory keeps its name, each disk file
/// keeps its file name inside it.
pub fn relocate(config: &VmConfig, datastore: &str) -> VmConfig {
    let mut moved = config.clone();
    moved.datastore = datastore.to_string();
    for disk in &mut moved.disks {
        *disk = disk_on(config, disk, datastore);
    }
    moved
}

/// The configuration of a running `config` after a storage migration of
/// its disks to `datastore`: the disks move (into the VM directory's name
/// there); the VM's home directory (configuration copy, lease, logs) stays
/// where it is until the VM is moved while stopped.
pub fn relocate_disks(config: &VmConfig, datastore: &str) -> VmConfig {
    let mut moved = config.clone();
    for disk in &mut moved.disks {
        *disk = disk_on(config, disk, datastore);
    }
    moved
}

fn disk_on(config: &VmConfig, disk: &crate::vm::DiskSpec, datastore: &str) -> crate::vm::DiskSpec {
    let file = disk.path.rsplit('/').next().unwrap_or(&disk.path);
    crate::vm::DiskSpec {
        datastore: datastore.to_string(),
        path: format!("{}/{file}", config.dir),
        ..disk.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::DiskSpec;

    fn config() -> VmConfig {
        serde_json::from_value(serde_json::json!({
            "version": 2, "id": "id-1", "name": "web", "cpus": 1, "memory_mib": 128,
            "datastore": "local-host-1", "dir": "web",
            "disks": [
                {"name": "disk0", "datastore": "local-host-1", "path": "web/disk0.qcow2", "size_bytes": 1},
                {"name": "disk1", "datastore": "shared", "path": "other/web/data.qcow2", "size_bytes": 2}
            ],
            "nics": [], "hostname": "web", "created_ms": 1
        }))
        .expect("config")
    }

    #[test]
    fn relocate_moves_the_directory_and_every_disk_into_it() {
        let moved = relocate(&config(), "local-host-2");
        assert_eq!(moved.datastore, "local-host-2");
        assert_eq!(moved.dir, "web");
        let disks: Vec<(&str, &str)> = moved
            .disks
            .iter()
            .map(|d: &DiskSpec| (d.datastore.as_str(), d.path.as_str()))
            .collect();
        assert_eq!(
            disks,
            [
                ("local-host-2", "web/disk0.qcow2"),
                ("local-host-2", "web/data.qcow2")
            ]
        );
        assert_eq!(moved.disks[1].size_bytes, 2);
    }

    #[test]
    fn relocate_disks_keeps_the_home_directory() {
        let moved = relocate_disks(&config(), "shared");
        assert_eq!(moved.datastore, "local-host-1");
        assert_eq!(moved.disks[0].datastore, "shared");
        assert_eq!(moved.disks[0].path, "web/disk0.qcow2");
    }
}
