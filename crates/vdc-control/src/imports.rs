//! V2V and P2V: a new VM from a disk image (vmdk, vhd, vhdx, qcow2, raw)
//! or a physical disk's raw image or block device.
//!
//! 1. The host that reads the file (given, or the first connected host
//!    reaching the datastore) inspects it synchronously
//!    (`POST /agent/v1/images/inspect`): a missing file, a path outside
//!    its import directories, an unsupported format or a stated format the
//!    content contradicts is a 4xx and nothing is made.
//! 2. A `vm.create` on that host follows, with the image as the boot
//!    disk's source: its provision job converts it to qcow2 (`qemu-img
//!    convert` with the format explicit; progress from the copy's size),
//!    and a failure or cancel removes everything made (the create's
//!    rollback).

use std::sync::Arc;

use vdc_types::agent::{DiskSource, InspectImageRequest};
use vdc_types::api::CreateVmRequest;
use vdc_types::clone::ImportDiskRequest;
use vdc_types::{ApiError, DatastoreKind, ErrorCode, Task};

use crate::clones::Origin;
use crate::Cluster;

impl Cluster {
    /// Imports a disk image as a new VM (a `vm.create` task).
    pub async fn import_disk(self: &Arc<Self>, req: ImportDiskRequest) -> Result<Task, ApiError> {
        vdc_types::names::validate_name("VM", &req.name).map_err(ApiError::invalid)?;
        if !req.source.starts_with('/') {
            return Err(ApiError::invalid(format!(
                "source '{}' must be an absolute path on the importing host",
                req.source
            )));
        }
        let datastore = match &req.datastore {
            Some(d) => self.get_datastore(d).await?,
            None => self
                .list_datastores()
                .await?
                .into_iter()
                .find(|d| d.kind == DatastoreKind::Shared)
                .ok_or_else(|| {
                    ApiError::invalid("no shared datastore exists; name one with 'datastore'")
                })?,
        };
        let host = match &req.host {
            Some(h) => h.clone(),
            None => self
                .hosts_reaching(&datastore.name)
                .await
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::HostUnavailable,
                        format!("no connected host reaches datastore '{}'", datastore.name),
                    )
                })?,
        };
        let url = self.agent_url(&host).await?;
        let seen = self
            .agents
            .inspect_image(
                &host,
                &url,
                &InspectImageRequest {
                    source: req.source.clone(),
                    format: req.format,
                },
            )
            .await?;
        let create = CreateVmRequest {
            name: req.name.clone(),
            cpus: req.cpus,
            memory_mib: req.memory_mib,
            datastore: Some(datastore.name.clone()),
            network: req.network.clone(),
            host: Some(host),
            start: req.start,
            ..Default::default()
        };
        let origin = Origin {
            boot: Some(DiskSource::Image {
                source: req.source.clone(),
                format: Some(seen.format),
            }),
            boot_bytes: Some(seen.size_bytes),
            data: Vec::new(),
        };
        self.create_vm_from(create, origin).await
    }
}
