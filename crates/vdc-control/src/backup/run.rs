//! `backup.run`: a backup of one VM into a store.

use std::sync::Arc;

use serde_json::json;
use vdc_types::backup::{BackupJobRequest, RunBackupRequest};
use vdc_types::job::{JobOp, JobResult};
use vdc_types::{now_ms, ApiError, ErrorCode, Task, VmAction, VmPowerState};

use crate::tasks::TaskCtx;
use crate::{Cluster, VmRecord};

impl Cluster {
    /// The host that reads VM `rec`'s disks: its owner when it runs there
    /// (or owns it, connected), else any connected host reaching every
    /// datastore of its disks.
    pub(crate) async fn disk_reader_host(&self, rec: &VmRecord) -> Result<String, ApiError> {
        let name = &rec.config.name;
        let caps = self.capacities().await;
        let live = matches!(rec.state, VmPowerState::Running | VmPowerState::Paused);
        if let Some(owner) = &rec.owner {
            if self.agent_url(owner).await.is_ok() {
                return Ok(owner.clone());
            }
            if live {
                return Err(ApiError::new(
                    ErrorCode::HostUnavailable,
                    format!("host '{owner}' of VM '{name}' is disconnected"),
                ));
            }
        }
        let needs: Vec<&str> = rec
            .config
            .disks
            .iter()
            .map(|d| d.datastore.as_str())
            .collect();
        for c in caps {
            if needs.iter().all(|d| c.datastores.iter().any(|x| x == d))
                && self.agent_url(&c.name).await.is_ok()
            {
                return Ok(c.name);
            }
        }
        Err(ApiError::new(
            ErrorCode::HostUnavailable,
            format!("no connected host reaches the disks of VM '{name}'"),
        ))
    }

    /// `POST /api/v1/vms/{name}/backup`: backs VM `name` up into a store
    /// (a `backup.run` task).
    pub async fn run_backup(
        self: &Arc<Self>,
        name: &str,
        req: &RunBackupRequest,
    ) -> Result<Task, ApiError> {
        let store = self.get_backup_store(&req.store).await?;
        let rec = self.record(name).await?;
        rec.decide(VmAction::Backup, None)?;
        let host = self.disk_reader_host(&rec).await?;
        let url = self.agent_url(&host).await?;
        let (rec, step) = self.begin_operation(name, VmAction::Backup, None).await?;
        let id = super::new_backup_id(name, now_ms());
        let request = BackupJobRequest {
            backup_id: id.clone(),
            store: store.name.clone(),
            store_path: store.path.clone(),
            encryption_key: store.encryption_key.clone(),
            config: rec.config.clone(),
        };
        let params = vdc_types::TaskParams::Backup {
            vm_id: rec.config.id.clone(),
            backup_id: id.clone(),
            store: store.name.clone(),
            host: host.clone(),
        };
        let me = self.clone();
        let n = name.to_string();
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move { me.backup_body(&ctx, &n, &host, &url, request).await },
        )
        .await
    }

    async fn backup_body(
        &self,
        ctx: &TaskCtx,
        name: &str,
        host: &str,
        url: &str,
        request: BackupJobRequest,
    ) -> Result<(), ApiError> {
        let (id, store) = (request.backup_id.clone(), request.store.clone());
        self.events
            .publish(
                "backup.started",
                name,
                format!("backup {id} of VM {name} into store {store} started on host {host}"),
                json!({"backup": id, "store": store, "host": host, "task": ctx.id()}),
            )
            .await;
        let r = self
            .agent_job(ctx, host, url, JobOp::Backup { request }, (2, 99))
            .await;
        match r {
            Ok(JobResult::Backup(b)) => {
                let (read, new, reused, zero) = b.disks.iter().fold((0, 0, 0, 0), |a, d| {
                    (
                        a.0 + d.chunks_read,
                        a.1 + d.chunks_new,
                        a.2 + d.chunks_reused,
                        a.3 + d.chunks_zero,
                    )
                });
                self.events
                    .publish(
                        "backup.completed",
                        name,
                        format!(
                            "backup {id} of VM {name} complete ({}): {read} chunk(s) read, {new} new, {reused} reused, {zero} zero",
                            b.consistency
                        ),
                        json!({"backup": id, "store": store, "consistency": b.consistency,
                               "chunks_read": read, "chunks_new": new, "chunks_reused": reused,
                               "chunks_zero": zero, "task": ctx.id()}),
                    )
                    .await;
                Ok(())
            }
            Ok(other) => Err(ApiError::internal(format!(
                "the backup job answered {other:?} instead of the backup"
            ))),
            Err(e) => {
                self.events
                    .publish(
                        "backup.failed",
                        name,
                        format!("backup {id} of VM {name} failed: {}", e.message),
                        json!({"backup": id, "store": store, "error": e, "task": ctx.id()}),
                    )
                    .await;
                Err(e)
            }
        }
    }
}
