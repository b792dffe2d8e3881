//! OVF/OVA export of a powered-off VM (`POST /vms/{name}/export`).
//!
//! The VM is claimed with the lifecycle's `clone` action (a copy of its
//! disks: it must be stopped, and stays so while the copy runs), then a
//! host that reaches its files runs an `export_ova` job (agent `ova.rs`:
//! streamOptimized VMDKs, descriptor, SHA-256 manifest, tar in OVF's
//! order, nothing left on failure or cancel). The task is `vm.export`;
//! `vm.exported` is published with the file and its size.

use std::sync::Arc;

use serde_json::json;
use vdc_types::job::{JobOp, JobResult};
use vdc_types::ova::{ExportOvaRequest, ExportVmRequest};
use vdc_types::{ApiError, ErrorCode, Task, VmAction};

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
