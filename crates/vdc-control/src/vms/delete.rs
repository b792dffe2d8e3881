//! VM delete: a host reaching the VM's datastore removes its files, the
//! addresses are released, and the record goes (compare-and-swap: only
//! while it is still this task's `deleting` record).

use std::sync::Arc;

use serde_json::json;
use vdc_types::agent::DestroyVmRequest;
use vdc_types::{ApiError, ErrorCode, Task, TaskParams, VmAction, VmOperation};

use super::records::holds;
use crate::tasks::TaskCtx;
use crate::Cluster;

impl Cluster {
    /// Deletes a VM that does not run: its files, addresses and record.
    pub async fn delete_vm(self: &Arc<Self>, name: &str) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        rec.decide(VmAction::Delete, None)?;
        self.refuse_with_clones(&rec, "a delete").await?;
        let (rec, step) = self.begin_operation(name, VmAction::Delete, None).await?;
        let me = self.clone();
        let n = name.to_string();
        let params = TaskParams::VmDelete {
            vm_id: rec.config.id.clone(),
        };
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move { me.delete_body(&ctx, &n).await },
        )
        .await
    }

    /// The body of `vm.delete`; files already gone count as removed, so a
    /// resumed delete can run it again.
    pub(crate) async fn delete_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
    ) -> Result<(), ApiError> {
        let me = self;
        let n = name.to_string();
        let rec = self.record(name).await?;
        {
            ctx.progress(10, "removing files").await;
            let (host, url) = me.host_for_files(&rec).await?;
            let destroyed = me
                .agents
                .destroy(
                    &host,
                    &url,
                    &DestroyVmRequest {
                        config: rec.config.clone(),
                        keep_boot_disk_as: None,
                    },
                )
                .await;
            match destroyed {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
            me.release_ips(&rec.config.nics).await;
            let task = ctx.id().to_string();
            let deleted = me
                .delete_record_if(&n, |r| holds(r, &VmOperation::Deleting, Some(&task)))
                .await?;
            if !deleted {
                return Err(ApiError::invalid_state(format!(
                    "the record of VM '{n}' changed while it was being deleted; its files are gone, check 'vdc vm show {n}'"
                )));
            }
            me.events
                .publish(
                    "vm.deleted",
                    &n,
                    format!("VM {n} deleted"),
                    json!({"id": rec.config.id}),
                )
                .await;
            Ok(())
        }
    }
}
