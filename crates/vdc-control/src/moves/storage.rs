//! Storage migration of a running VM on its host (the `mirror_disks`
//! agent job; the steps are in the parent module's diagram).

use std::sync::Arc;

use vdc_types::job::{JobOp, JobResult};
use vdc_types::transfer::MirrorDisksRequest;
use vdc_types::{ApiError, ErrorCode, Task, VmPowerState};

use crate::tasks::TaskCtx;
use crate::Cluster;

impl Cluster {
    /// Moves the disks of running (or paused) VM `name` to datastore
    /// `datastore` of its host while it runs (a `vm.migrate` task). A host
    /// move at the same time is refused: migrate the VM, then its disks.
    pub async fn move_vm_storage(
        self: &Arc<Self>,
        name: &str,
        to: Option<String>,
        datastore: &str,
    ) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        if !matches!(rec.state, VmPowerState::Running | VmPowerState::Paused) {
            return Err(ApiError::invalid_state(format!(
                "VM '{name}' is {}; only a running or paused VM's disks are mirrored",
                rec.state
            )));
        }
        let host = rec
            .owner
            .clone()
            .ok_or_else(|| ApiError::invalid_state(format!("VM '{name}' has no owner host")))?;
        if to.as_deref().is_some_and(|t| t != host) {
            return Err(ApiError::invalid(format!(
                "this moves the disks of VM '{name}' on host '{host}' only; a move to another host with its disks is a live migration with storage (--to and --datastore)"
            )));
        }
        self.get_datastore(datastore).await?;
        if !self
            .host_datastores(&host)
            .await
            .iter()
            .any(|d| d == datastore)
        {
            return Err(ApiError::invalid(format!(
                "datastore '{datastore}' is not present on host '{host}', where VM '{name}' runs"
            )));
        }
        if rec.config.disks.iter().all(|d| d.datastore == datastore) {
            return Err(ApiError::invalid(format!(
                "every disk of VM '{name}' is on datastore '{datastore}' already; nothing to move"
            )));
        }
        let free = self.get_datastore(datastore).await?.free_bytes;
        let need: u64 = rec
            .config
            .disks
            .iter()
            .filter(|d| d.datastore != datastore)
            .map(|d| d.size_bytes)
            .sum();
        if need > free {
            return Err(ApiError::new(
                ErrorCode::InsufficientCapacity,
                format!(
                    "datastore '{datastore}' has {free} bytes free; the disks of VM '{name}' may grow to {need} bytes"
                ),
            ));
        }
        let url = self.agent_url(&host).await?;
        // A chain of snapshot overlays moves whole (the agent copies its
        // frozen images, then mirrors the active layer).
        self.refuse_with_clones(&rec, "a move of its disks").await?;
        let (_, step) = self.claim_move(name, &host).await?;
        let params = super::move_params(
            &rec,
            vdc_types::migration::MigrationKind::Storage,
            &host,
            &host,
            Some(datastore),
        );
        let me = self.clone();
        let n = name.to_string();
        let ds = datastore.to_string();
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move { me.move_storage_body(&ctx, &n, &host, &url, &ds).await },
        )
        .await
    }

    async fn move_storage_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        host: &str,
        url: &str,
        datastore: &str,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let op = JobOp::MirrorDisks {
            request: MirrorDisksRequest {
                config: rec.config.clone(),
                datastore: datastore.to_string(),
            },
        };
        let config = match self.agent_job(ctx, host, url, op, (2, 98)).await? {
            JobResult::Config(c) => c,
            other => {
                return Err(ApiError::internal(format!(
                    "the storage migration answered {other:?} instead of the configuration"
                )))
            }
        };
        self.update_record(name, |mut r| {
            r.config = config.clone();
            Ok(r)
        })
        .await?;
        self.publish_moved(name, "storage", host, host, Some(datastore))
            .await;
        Ok(())
    }
}
