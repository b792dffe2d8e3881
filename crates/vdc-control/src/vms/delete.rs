//! VM delete: a host reaching the VM's datastore removes its files, the
//! addresses are released, and the record goes (compare-and-swap: only
//! while it is still this task's `deleting` record).

use std::sync::Arc;

use serde_json::json;
use vdc_types::agent::DestroyVmRequest;
use vdc_types::{ApiError, Task, VmAction, VmOperation};

use super::records::holds;
use crate::Cluster;

impl Cluster {
    /// Deletes a VM that does not run: its files, addresses and record.
    pub async fn delete_vm(self: &Arc<Self>, name: &str) -> Result<Task, ApiError> {
        let rec = self.record(name).await?;
        rec.decide(VmAction::Delete, None)?;
        let (rec, step) = self.begin_operation(name, VmAction::Delete, None).await?;
        let me = self.clone();
        let n = name.to_string();
        self.spawn_operation(name, step.operation.task_kind(), move |ctx| async move {
            ctx.progress(10, "removing files").await;
            let (host, url) = me.host_for_files(&rec).await?;
            me.agents
                .destroy(
                    &host,
                    &url,
                    &DestroyVmRequest {
                        config: rec.config.clone(),
                    },
                )
                .await?;
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
        })
        .await
    }
}
