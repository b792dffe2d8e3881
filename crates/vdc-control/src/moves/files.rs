//! Cold and suspended migration, and a stopped VM's datastore move on its
//! host: the steps are in the parent module's diagram.

use std::sync::Arc;

use vdc_types::agent::DestroyVmRequest;
use vdc_types::job::{JobOp, JobResult};
use vdc_types::migration::MigrationKind;
use vdc_types::transfer::{relocate, ExportRequest, ReceiveVmRequest};
use vdc_types::{ApiError, ErrorCode, Task, VmPowerState};

use super::plan::{plan_files, DatastoreFact, FilesPlan};
use crate::ownership::commit_move;
use crate::tasks::TaskCtx;
use crate::Cluster;

impl Cluster {
    /// Moves stopped or suspended VM `name` to host `to` (default: the
    /// connected host with the most free memory other than its own) and,
    /// when its files must be copied, to datastore `datastore` there (a
    /// `vm.migrate` task). Everything that can be checked is checked before
    /// the task starts (a 4xx, nothing changed).
    pub async fn move_vm_files(
        self: &Arc<Self>,
        name: &str,
        to: Option<String>,
        datastore: Option<String>,
    ) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        if !matches!(rec.state, VmPowerState::Stopped | VmPowerState::Suspended) {
            return Err(ApiError::invalid_state(format!(
                "VM '{name}' is {}; only a stopped or suspended VM's files move this way",
                rec.state
            )));
        }
        let source = rec.owner.clone().ok_or_else(|| {
            ApiError::invalid_state(format!(
                "VM '{name}' has no owner host; start it once first"
            ))
        })?;
        let target = match to {
            Some(t) => t,
            None if datastore.is_some() => source.clone(),
            None => self.other_host(&source).await?,
        };
        self.agent_url(&source).await?;
        self.agent_url(&target).await?;
        self.check_placeable(&target).await?;
        let reaches = self.host_datastores(&target).await;
        let known: Vec<DatastoreFact> = self
            .list_datastores()
            .await?
            .into_iter()
            .map(|d| DatastoreFact {
                name: d.name,
                kind: d.kind,
            })
            .collect();
        let plan = plan_files(
            &rec.config,
            source == target,
            &target,
            &reaches,
            datastore.as_deref(),
            &known,
        )?;
        if let FilesPlan::Copy { datastore } = &plan {
            // The snapshot tree moves with the files (every image of each
            // chain); clones that read its images would be left behind.
            self.refuse_with_clones(&rec, "a move of its files").await?;
            // Checked here, before anything moves (the destination agent
            // checks again before it copies).
            self.storage_room(name, &rec, datastore).await?;
        }
        let (_, step) = self.claim_move(name, &target).await?;
        let me = self.clone();
        let n = name.to_string();
        let (kind, migration) = if rec.state == VmPowerState::Suspended {
            ("suspended", MigrationKind::Suspended)
        } else {
            ("cold", MigrationKind::Cold)
        };
        let copy_to = match &plan {
            FilesPlan::Copy { datastore } => Some(datastore.as_str()),
            FilesPlan::OwnershipOnly => None,
        };
        let params = super::move_params(&rec, migration, &source, &target, copy_to);
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move {
                me.move_files_body(&ctx, &n, kind, &source, &target, plan)
                    .await
            },
        )
        .await
    }

    async fn move_files_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        kind: &str,
        source: &str,
        target: &str,
        plan: FilesPlan,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let datastore = match plan {
            FilesPlan::OwnershipOnly => {
                ctx.progress(50, "moving the VM's ownership").await;
                self.commit_files_move(name, target, None).await?;
                self.publish_moved(name, kind, source, target, None).await;
                return Ok(());
            }
            FilesPlan::Copy { datastore } => datastore,
        };
        let source_url = self.agent_url(source).await?;
        let target_url = self.agent_url(target).await?;
        let moved = relocate(&rec.config, &datastore);
        let export_id = format!("{}.export", ctx.id());
        let token = format!("{:032x}", rand::random::<u128>());
        ctx.progress(2, "reading the VM's files on the source host")
            .await;
        let export = self
            .agents
            .open_export(
                source,
                &source_url,
                &ExportRequest {
                    id: export_id.clone(),
                    token: token.clone(),
                    config: rec.config.clone(),
                },
            )
            .await?;
        let copied = async {
            ctx.check_cancel()?;
            let op = JobOp::ReceiveVm {
                request: ReceiveVmRequest {
                    config: moved.clone(),
                    source_url: source_url.clone(),
                    export_id: export_id.clone(),
                    token,
                    files: export.files.clone(),
                },
            };
            match self
                .agent_job(ctx, target, &target_url, op, (5, 95))
                .await?
            {
                JobResult::Vm(_) => Ok(()),
                other => Err(ApiError::internal(format!(
                    "the copy answered {other:?} instead of the VM"
                ))),
            }
        }
        .await;
        if let Err(e) = self
            .agents
            .close_export(source, &source_url, &export_id)
            .await
        {
            tracing::warn!(vm = %name, export = %export_id, error = %e, "cannot close an export; it expires by itself");
        }
        copied?;
        // The record moves only if the task was not cancelled meanwhile;
        // otherwise the copy on the destination goes again.
        let committed = match ctx.check_cancel() {
            Ok(()) => self.commit_files_move(name, target, Some(&moved)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            self.remove_copy(name, target, &target_url, &moved).await;
            return Err(e);
        }
        ctx.progress(97, "removing the source copy").await;
        self.destroy_old_files(name, source, &source_url, &rec.config)
            .await;
        self.publish_moved(name, kind, source, target, Some(&datastore))
            .await;
        Ok(())
    }

    /// The record after a move of files: owner `target`, and the new
    /// configuration when the files were copied.
    async fn commit_files_move(
        &self,
        name: &str,
        target: &str,
        config: Option<&vdc_types::VmConfig>,
    ) -> Result<(), ApiError> {
        self.update_record(name, |rec| {
            let mut new = if rec.owner.as_deref() == Some(target) {
                rec.clone()
            } else {
                commit_move(&rec, target).map_err(|e| ApiError::invalid_state(e.to_string()))?
            };
            if let Some(c) = config {
                new.config = c.clone();
            }
            Ok(new)
        })
        .await
        .map(|_| ())
    }

    /// Removes the files a VM left behind on `host` after it moved (its
    /// old configuration `old`): a failure is logged and published as
    /// `vm.files_left`, never an error (the move stands).
    pub(crate) async fn destroy_old_files(
        &self,
        name: &str,
        host: &str,
        url: &str,
        old: &vdc_types::VmConfig,
    ) {
        let req = DestroyVmRequest {
            config: old.clone(),
            keep_boot_disk_as: None,
        };
        match self.agents.destroy(host, url, &req).await {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => {
                tracing::warn!(vm = %name, host, error = %e, "the VM moved, but its old files could not be removed");
                self.events
                    .publish(
                        "vm.files_left",
                        name,
                        format!(
                            "VM {name} moved; its old files on host {host} remain: {}",
                            e.message
                        ),
                        serde_json::json!({"host": host, "datastore": old.datastore, "error": e}),
                    )
                    .await;
            }
        }
    }

    /// Removes a copy whose move was not committed (logged, never fails).
    async fn remove_copy(&self, name: &str, host: &str, url: &str, config: &vdc_types::VmConfig) {
        let req = DestroyVmRequest {
            config: config.clone(),
            keep_boot_disk_as: None,
        };
        if let Err(e) = self.agents.destroy(host, url, &req).await {
            tracing::warn!(vm = %name, host, error = %e, "cannot remove the copy of a move that did not commit");
        }
    }

    /// Datastores host `host` reaches, from its latest report.
    pub(crate) async fn host_datastores(&self, host: &str) -> Vec<String> {
        self.capacities()
            .await
            .into_iter()
            .find(|c| c.name == host)
            .map(|c| c.datastores)
            .unwrap_or_default()
    }

    /// The connected host other than `source` with the most free memory.
    async fn other_host(&self, source: &str) -> Result<String, ApiError> {
        let mut hosts: Vec<_> = self
            .capacities()
            .await
            .into_iter()
            .filter(|c| c.available && c.name != source)
            .collect();
        let mut placeable = Vec::new();
        for h in hosts.drain(..) {
            if self.check_placeable(&h.name).await.is_ok() {
                placeable.push(h);
            }
        }
        placeable.sort_by(|a, b| {
            b.memory_free_mib
                .cmp(&a.memory_free_mib)
                .then(a.name.cmp(&b.name))
        });
        placeable.first().map(|h| h.name.clone()).ok_or_else(|| {
            ApiError::new(
                ErrorCode::HostUnavailable,
                format!("no other connected host can take a VM from host '{source}'"),
            )
        })
    }
}
