//! `backup.restore` with `instant`: a new VM started straight from a
//! backup, its disks copied from the backup while it runs.
//!
//! ```text
//!  create the VM (stopped) ─► claim restoring ─► agent instant_serve
//!    (exports + overlays in place of its images) ─► sizes recorded ─► release
//!  ─► start on that host (a start task) ─► event backup.instant_restore_started
//!  ─► agent instant_stream (block-stream; the exports end when it completes)
//!  ─► event backup.instant_restore_finished
//!  failure before the VM runs: exports ended, the new VM removed (nothing left)
//!  failure of the copy: the VM keeps running on the exports (still up),
//!    event backup.instant_restore_failed, the task fails saying so
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_types::backup::{DiskBackup, InstantStreamRequest, RestoreJobRequest};
use vdc_types::job::{JobOp, JobResult};
use vdc_types::{ApiError, VmAction};

use crate::tasks::TaskCtx;
use crate::Cluster;

/// Longest wait for the start of the instantly restored VM.
const START_WAIT: Duration = Duration::from_secs(600);

impl Cluster {
    /// The body of an instant restore into the new VM `name` (created,
    /// stopped); `job` names the backup, `backed_up` its disks. A failure
    /// before the VM runs removes the VM.
    pub(super) async fn instant_restore_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        mut job: RestoreJobRequest,
        backed_up: &[DiskBackup],
    ) -> Result<(), ApiError> {
        let id = job.backup_id.clone();
        if let Err(e) = self.begin_operation(name, VmAction::Restore, None).await {
            self.undo_new_vm(name).await;
            return Err(e);
        }
        let served = self.instant_serve(ctx, name, &mut job, backed_up).await;
        self.end_operation(name, Some(ctx.id())).await;
        let (host, sockets) = match served {
            Ok(s) => s,
            Err(e) => {
                self.undo_new_vm(name).await;
                return Err(e);
            }
        };
        let config = self.record(name).await?.config;
        let url = self.agent_url(&host).await?;
        let started = match self.start_vm(name, Some(host.clone())).await {
            Ok(t) => self.wait_backup_task(&t.id, START_WAIT).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            let abandon = JobOp::InstantStream {
                request: InstantStreamRequest {
                    config,
                    abandon: true,
                },
            };
            if let Err(end) = self.agent_job(ctx, &host, &url, abandon, (50, 50)).await {
                tracing::warn!(vm = %name, error = %end.message, "cannot end the exports of a failed instant restore");
            }
            self.undo_new_vm(name).await;
            return Err(e);
        }
        self.events
            .publish(
                "backup.instant_restore_started",
                name,
                format!(
                    "VM {name} runs from backup {id} on host {host}; its disks are being copied"
                ),
                json!({"backup": id, "host": host, "exports": sockets, "task": ctx.id()}),
            )
            .await;
        let stream = JobOp::InstantStream {
            request: InstantStreamRequest {
                config,
                abandon: false,
            },
        };
        match self.agent_job(ctx, &host, &url, stream, (40, 99)).await {
            Ok(_) => {
                self.events
                    .publish(
                        "backup.instant_restore_finished",
                        name,
                        format!("VM {name}'s disks are copied from backup {id}; the backup's exports ended"),
                        json!({"backup": id, "host": host, "exports": sockets, "task": ctx.id()}),
                    )
                    .await;
                Ok(())
            }
            Err(e) => {
                self.events
                    .publish(
                        "backup.instant_restore_failed",
                        name,
                        format!("instant restore of backup {id} into VM {name}: {}", e.message),
                        json!({"backup": id, "host": host, "exports": sockets, "error": e, "task": ctx.id()}),
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// Claimed: the agent serves the backup and puts overlays in place;
    /// the record gets the backup's disk sizes. The host and the sockets.
    async fn instant_serve(
        &self,
        ctx: &TaskCtx,
        name: &str,
        job: &mut RestoreJobRequest,
        backed_up: &[DiskBackup],
    ) -> Result<(String, Vec<String>), ApiError> {
        self.attach_task(name, ctx.id()).await?;
        let rec = self.record(name).await?;
        job.disks = job
            .config
            .disks
            .iter()
            .zip(&rec.config.disks)
            .map(|(from, to)| (from.name.clone(), to.name.clone()))
            .collect();
        let sizes: Vec<(String, u64)> = job
            .disks
            .iter()
            .filter_map(|(from, to)| {
                let d = backed_up.iter().find(|d| &d.name == from)?;
                Some((to.clone(), d.size_bytes))
            })
            .collect();
        job.config = rec.config.clone();
        let host = self.disk_reader_host(&rec).await?;
        let url = self.agent_url(&host).await?;
        let op = JobOp::InstantServe {
            request: job.clone(),
        };
        let sockets = match self.agent_job(ctx, &host, &url, op, (2, 30)).await? {
            JobResult::InstantExports { sockets } => sockets,
            other => {
                return Err(ApiError::internal(format!(
                    "the instant restore job answered {other:?}"
                )))
            }
        };
        self.update_record(name, |mut r| {
            for (to, size) in &sizes {
                if let Some(d) = r.config.disks.iter_mut().find(|d| &d.name == to) {
                    d.size_bytes = *size;
                }
            }
            Ok(r)
        })
        .await?;
        Ok((host, sockets))
    }
}
