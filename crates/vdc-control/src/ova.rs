//! OVF/OVA export of a powered-off VM (`POST /vms/{name}/export`).
//!
//! The VM is claimed with the lifecycle's `clone` action (a copy of its
//! disks: it must be stopped, and stays so while the copy runs), then a
//! host that reaches its files runs an `export_ova` job (agent `ova.rs`:
//! streamOptimized VMDKs, descriptor, SHA-256 manifest, tar in OVF's
//! order, nothing left on failure or cancel). The task is `vm.export`;
//! `vm.exported` is published with the file and its size.
//!
//! OVA import (`POST /imports/ova`): the host that reads the file
//! inspects it synchronously (agent `ova_read.rs`: descriptor first,
//! manifest digests, every disk present and a single-file VMDK); vCPUs
//! beyond the limit are refused, and the NIC's network is mapped (the
//! request's `network_map`, else a vdc network of the same name, else a
//! 400 naming it). Then a `vm.create` on that host reads the boot disk in
//! place from the tar. The answer lists what was ignored: the
//! descriptor's devices and sections vdc does not make, further NICs and
//! disks beyond the boot disk.

use std::sync::Arc;

use serde_json::json;
use vdc_types::agent::DiskSource;
use vdc_types::api::{CreateVmRequest, MAX_CPUS};
use vdc_types::job::{JobOp, JobResult};
use vdc_types::ova::{
    ExportOvaRequest, ExportVmRequest, ImportOvaRequest, ImportOvaResponse, InspectOvaRequest,
};
use vdc_types::{ApiError, ErrorCode, Task, VmAction};

use crate::clones::Origin;
use crate::Cluster;

impl Cluster {
    /// Exports powered-off VM `name` as an OVA (a `vm.export` task).
    pub async fn export_vm(
        self: &Arc<Self>,
        name: &str,
        req: ExportVmRequest,
    ) -> Result<Task, ApiError> {
        if !req.ova.starts_with('/') || !req.ova.ends_with(".ova") {
            return Err(ApiError::invalid(format!(
                "OVA file '{}' must be an absolute path ending in .ova on the exporting host",
                req.ova
            )));
        }
        let rec = self.record(name).await?;
        rec.decide(VmAction::Clone, None)?;
        if let Some(h) = &req.host {
            self.agent_url(h).await?;
        }
        let (rec, _) = self.begin_operation(name, VmAction::Clone, None).await?;
        let params = vdc_types::TaskParams::VmCopy {
            vm_id: rec.config.id.clone(),
        };
        let me = self.clone();
        let n = name.to_string();
        self.spawn_operation(name, "vm.export", Some(params), move |ctx| async move {
            let rec = me.record(&n).await?;
            let (host, url) = match req.host {
                Some(h) => {
                    let u = me.agent_url(&h).await?;
                    (h, u)
                }
                None => me.host_for_files(&rec).await?,
            };
            ctx.progress(2, "converting the disks").await;
            let op = JobOp::ExportOva {
                request: ExportOvaRequest {
                    config: rec.config.clone(),
                    ova: req.ova.clone(),
                },
            };
            match me.agent_job(&ctx, &host, &url, op, (2, 98)).await? {
                JobResult::Exported(out) => {
                    ctx.progress(100, &format!("wrote {}", out.ova)).await;
                    me.events
                        .publish(
                            "vm.exported",
                            &n,
                            format!("VM {n} exported to {} on {host}", out.ova),
                            json!({"ova": out.ova, "size_bytes": out.size_bytes, "files": out.files, "host": host}),
                        )
                        .await;
                    Ok(())
                }
                _ => Err(ApiError::new(
                    ErrorCode::HostError,
                    "the host answered an export with something else",
                )),
            }
        })
        .await
    }
}

impl Cluster {
    /// Imports an OVA as a new VM (its `vm.create` task and what was
    /// ignored).
    pub async fn import_ova(
        self: &Arc<Self>,
        req: ImportOvaRequest,
    ) -> Result<ImportOvaResponse, ApiError> {
        let (datastore, host, url) = self
            .import_target(&req.source, req.datastore.as_deref(), req.host.as_deref())
            .await?;
        let seen = self
            .agents
            .inspect_ova(
                &host,
                &url,
                &InspectOvaRequest {
                    source: req.source.clone(),
                },
            )
            .await?;
        if seen.cpus == 0 || seen.cpus > MAX_CPUS {
            return Err(ApiError::invalid(format!(
                "the OVA asks for {} vCPUs; vdc VMs have 1 to {MAX_CPUS}",
                seen.cpus
            )));
        }
        let Some(boot) = seen.disks.first() else {
            return Err(ApiError::invalid("the OVA has no disk to boot from"));
        };
        let ignored = seen.ignored.clone();
        for k in req.network_map.keys() {
            if !seen.networks.contains(k) {
                return Err(ApiError::invalid(format!(
                    "--network-map names '{k}', which the OVA does not use (it uses: {})",
                    seen.networks.join(", ")
                )));
            }
        }
        // Every NIC, each on its mapped network, in the descriptor's order.
        let mut networks = Vec::new();
        for n in &seen.networks {
            let target = req.network_map.get(n).unwrap_or(n);
            match self.get_network(target).await {
                Ok(net) => networks.push(net.name),
                Err(_) => {
                    return Err(ApiError::invalid(format!(
                        "the OVA's network '{n}' has no vdc network '{target}'; map it: --network-map '{n}=NETWORK'"
                    )))
                }
            }
        }
        let network = networks.first().cloned();
        let name = req.name.clone().unwrap_or_else(|| seen.name.clone());
        let create = CreateVmRequest {
            name: name.clone(),
            cpus: Some(seen.cpus),
            memory_mib: Some(seen.memory_mib),
            datastore: Some(datastore.name.clone()),
            network: network.clone(),
            host: Some(host),
            start: req.start,
            ..Default::default()
        };
        let origin = Origin {
            boot: Some(DiskSource::OvaDisk {
                ova: req.source.clone(),
                offset: boot.offset,
                size: boot.size,
            }),
            boot_bytes: seen.capacities.first().copied().filter(|c| *c > 0),
            data: Vec::new(),
            // Every further disk, read in place from the tar like the
            // boot disk.
            data_images: seen
                .disks
                .iter()
                .zip(seen.capacities.iter().chain(std::iter::repeat(&0)))
                .skip(1)
                .map(|(d, cap)| {
                    (
                        DiskSource::OvaDisk {
                            ova: req.source.clone(),
                            offset: d.offset,
                            size: d.size,
                        },
                        *cap,
                    )
                })
                .collect(),
            more_networks: networks.iter().skip(1).cloned().collect(),
        };
        let task = self.create_vm_from(create, origin).await?;
        Ok(ImportOvaResponse {
            task,
            vm: name,
            network,
            ignored,
        })
    }
}
