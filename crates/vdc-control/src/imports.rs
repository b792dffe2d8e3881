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
use vdc_types::{ApiError, Datastore, DatastoreKind, ErrorCode, Task};

use crate::clones::Origin;
use crate::Cluster;

impl Cluster {
    /// Where an import reads and writes: the datastore (named, or the
    /// first shared one), the host that reads `source` (named, or the
    /// first connected host reaching the datastore) and its agent's URL.
    /// `source` must be an absolute path on that host.
    pub(crate) async fn import_target(
        &self,
        source: &str,
        datastore: Option<&str>,
        host: Option<&str>,
    ) -> Result<(Datastore, String, String), ApiError> {
        if !source.starts_with('/') {
            return Err(ApiError::invalid(format!(
                "source '{source}' must be an absolute path on the importing host"
            )));
        }
        self.require_connected_host().await?;
        let datastore = match datastore {
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
        let host = match host {
            Some(h) => h.to_string(),
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
        Ok((datastore, host, url))
    }

    /// Imports a disk image as a new VM (a `vm.create` task).
    pub async fn import_disk(self: &Arc<Self>, req: ImportDiskRequest) -> Result<Task, ApiError> {
        vdc_types::names::validate_name("VM", &req.name).map_err(ApiError::invalid)?;
        let (datastore, host, url) = self
            .import_target(&req.source, req.datastore.as_deref(), req.host.as_deref())
            .await?;
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
            ..Default::default()
        };
        self.create_vm_from(create, origin).await
    }
}

impl Cluster {
    /// 503 when no host is connected (nothing can read a file then).
    pub(crate) async fn require_connected_host(&self) -> Result<(), ApiError> {
        if self.capacities().await.iter().any(|c| c.available) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::HostUnavailable,
                "no host is connected; start an agent ('vdc lab status')",
            ))
        }
    }
}
