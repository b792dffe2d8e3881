//! `backup.restore`: a backup written into a new VM, or over the original
//! VM (powered off), whole or one disk.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_types::api::{CreateVmRequest, DiskRequest};
use vdc_types::backup::{RestoreJobRequest, RestoreRequest};
use vdc_types::job::{JobOp, JobResult};
use vdc_types::{ApiError, Task, TaskState, VmAction};

use crate::tasks::TaskCtx;
use crate::Cluster;

const GIB: u64 = 1 << 30;
/// Longest wait for the creation of the VM a restore writes into.
const CREATE_WAIT: Duration = Duration::from_secs(1800);
/// How often that creation is looked at.
const POLL: Duration = Duration::from_millis(200);

impl Cluster {
    /// `POST /api/v1/backups/{id}/restore`.
    pub async fn restore_backup(
        self: &Arc<Self>,
        id: &str,
        req: &RestoreRequest,
    ) -> Result<Task, ApiError> {
        let (store, m) = self.find_backup(id, req.store.as_deref()).await?;
        let backup = m.backup;
        let base = RestoreJobRequest {
            backup_id: backup.id.clone(),
            store_path: store.path.clone(),
            encryption_key: store.encryption_key.clone(),
            config: backup.config.clone(),
            disks: Vec::new(),
        };
        let Some(new) = req.name.clone() else {
            if req.instant {
                return Err(ApiError::invalid(
                    "an instant restore starts a new VM; give its name (--name)",
                ));
            }
            return self
                .restore_over(&backup.vm, req, base, &backup.disks)
                .await;
        };
        if req.disk.is_some() {
            return Err(ApiError::invalid(
                "one disk is restored over the original VM only; leave out the new VM's name",
            ));
        }
        let cfg = &backup.config;
        let gib = |b: u64| b.div_ceil(GIB).max(1);
        let mut sizes = backup.disks.iter().map(|d| gib(d.size_bytes));
        let create = CreateVmRequest {
            name: new.clone(),
            cpus: Some(cfg.cpus),
            memory_mib: Some(cfg.memory_mib),
            disk_gib: sizes.next(),
            datastore: Some(
                req.datastore
                    .clone()
                    .unwrap_or_else(|| cfg.datastore.clone()),
            ),
            host: req.host.clone(),
            start: false,
            disks: sizes
                .map(|g| DiskRequest {
                    size_gib: g,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let created = self.create_vm(create).await?;
        let (instant, disks) = (req.instant, backup.disks.clone());
        let me = self.clone();
        let n = new.clone();
        let params = vdc_types::TaskParams::Restore {
            vm: new.clone(),
            backup_id: id.to_string(),
        };
        self.tasks
            .spawn_journaled(
                "backup.restore",
                "vm",
                &new,
                Some(params),
                move |ctx| async move {
                    me.wait_backup_task(&created.id, CREATE_WAIT).await?;
                    if instant {
                        return me.instant_restore_body(&ctx, &n, base, &disks).await;
                    }
                    let r = me.restore_new_body(&ctx, &n, base).await;
                    if r.is_err() {
                        me.undo_new_vm(&n).await;
                    }
                    r
                },
            )
            .await
    }

    /// Waits for task `id` to end: its result (a failure as its error).
    pub(crate) async fn wait_backup_task(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Task, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let t = self.tasks.get(id).await?;
            match t.state {
                TaskState::Succeeded => return Ok(t),
                s if s.is_final() => {
                    return Err(t.error.unwrap_or_else(|| {
                        ApiError::internal(format!("task {id} ended {s:?} without an error"))
                    }))
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ApiError::internal(format!("task {id} did not end in time")))
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn restore_new_body(
        &self,
        ctx: &TaskCtx,
        name: &str,
        mut job: RestoreJobRequest,
    ) -> Result<(), ApiError> {
        self.begin_operation(name, VmAction::Restore, None).await?;
        if let Err(e) = self.attach_task(name, ctx.id()).await {
            self.end_operation(name, None).await;
            return Err(e);
        }
        let rec = self.record(name).await?;
        job.disks = job
            .config
            .disks
            .iter()
            .zip(&rec.config.disks)
            .map(|(from, to)| (from.name.clone(), to.name.clone()))
            .collect();
        job.config = rec.config.clone();
        let r = self.restore_job(ctx, name, job).await;
        self.end_operation(name, Some(ctx.id())).await;
        r
    }

    /// Removes the VM a failed restore created (logged on failure).
    pub(super) async fn undo_new_vm(self: &Arc<Self>, name: &str) {
        let deleted = match self.delete_vm(name).await {
            Ok(t) => self.wait_backup_task(&t.id, CREATE_WAIT).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            tracing::warn!(vm = %name, error = %e.message, "cannot remove the VM of a failed restore");
        }
    }

    async fn restore_over(
        self: &Arc<Self>,
        name: &str,
        req: &RestoreRequest,
        mut job: RestoreJobRequest,
        disks: &[vdc_types::backup::DiskBackup],
    ) -> Result<Task, ApiError> {
        if req.host.is_some() || req.datastore.is_some() {
            return Err(ApiError::invalid(
                "a restore over the original VM writes where its disks are; host and datastore are for a new VM (give its name)",
            ));
        }
        let rec = self.record(name).await?;
        rec.decide(VmAction::Restore, None)?;
        let wanted: Vec<&str> = match &req.disk {
            Some(d) => vec![d.as_str()],
            None => disks.iter().map(|d| d.name.as_str()).collect(),
        };
        for d in &wanted {
            if !disks.iter().any(|x| x.name == *d) {
                return Err(ApiError::invalid(format!(
                    "backup '{}' has no disk '{d}'",
                    job.backup_id
                )));
            }
            if !rec.config.disks.iter().any(|x| x.name == *d) {
                return Err(ApiError::invalid(format!(
                    "VM '{name}' has no disk '{d}' any more; restore the backup as a new VM"
                )));
            }
        }
        job.disks = wanted
            .iter()
            .map(|d| (d.to_string(), d.to_string()))
            .collect();
        job.config = rec.config.clone();
        self.begin_operation(name, VmAction::Restore, None).await?;
        let params = vdc_types::TaskParams::Restore {
            vm: name.to_string(),
            backup_id: job.backup_id.clone(),
        };
        let me = self.clone();
        let n = name.to_string();
        self.spawn_operation(
            name,
            "backup.restore",
            Some(params),
            move |ctx| async move { me.restore_job(&ctx, &n, job).await },
        )
        .await
    }

    async fn restore_job(
        &self,
        ctx: &TaskCtx,
        name: &str,
        job: RestoreJobRequest,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let host = self.disk_reader_host(&rec).await?;
        let url = self.agent_url(&host).await?;
        let id = job.backup_id.clone();
        let (_, m) = self.find_backup(&id, None).await?;
        let r = self
            .agent_job(
                ctx,
                &host,
                &url,
                JobOp::Restore {
                    request: job.clone(),
                },
                (2, 99),
            )
            .await;
        match r {
            Ok(JobResult::Restored { disks }) => {
                self.update_record(name, |mut r| {
                    for (from, to) in &job.disks {
                        let size = m
                            .backup
                            .disks
                            .iter()
                            .find(|d| &d.name == from)
                            .map(|d| d.size_bytes);
                        if let (Some(d), Some(size)) =
                            (r.config.disks.iter_mut().find(|d| &d.name == to), size)
                        {
                            d.size_bytes = size;
                        }
                    }
                    Ok(r)
                })
                .await?;
                self.events
                    .publish(
                        "backup.restored",
                        name,
                        format!(
                            "backup {id} restored into VM {name} on host {host} ({})",
                            disks.join(", ")
                        ),
                        json!({"backup": id, "host": host, "disks": disks, "task": ctx.id()}),
                    )
                    .await;
                Ok(())
            }
            Ok(other) => Err(ApiError::internal(format!(
                "the restore job answered {other:?}"
            ))),
            Err(e) => {
                self.events
                    .publish(
                        "backup.restore_failed",
                        name,
                        format!(
                            "restore of backup {id} into VM {name} failed: {}",
                            e.message
                        ),
                        json!({"backup": id, "error": e, "task": ctx.id()}),
                    )
                    .await;
                Err(e)
            }
        }
    }
}
