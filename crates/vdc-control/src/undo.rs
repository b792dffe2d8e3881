//! Undoing a `vm.create`: everything its journal says it made, in reverse
//! order — the files on the host a provision was sent to, the addresses,
//! the record. Each step is idempotent (a missing file, address or record
//! is already undone), so a rollback cut short by a server restart is
//! simply run again. A step that fails is logged and the next one still
//! runs.

use std::sync::Arc;

use vdc_store::StoreExt;
use vdc_types::agent::DestroyVmRequest;
use vdc_types::{ErrorCode, Step, VmOperation};

use crate::tasks::TaskCtx;
use crate::vms::records::holds;
use crate::{journal, Cluster, VmRecord};

impl Cluster {
    /// Rolls back the create of VM `name` (see the module docs).
    pub(crate) async fn roll_back_create(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        reason: &str,
    ) {
        if let Err(e) = ctx
            .journal(Step::RollingBack {
                reason: reason.to_string(),
            })
            .await
        {
            tracing::warn!(vm = %name, error = %e, "cannot journal the rollback");
        }
        ctx.progress(90, "rolling back").await;
        let done = match ctx.journal_now().await {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::warn!(vm = %name, error = %e, "cannot read the journal; undoing what the record shows");
                None
            }
        };
        let key = format!("/vms/{name}");
        let rec: Option<VmRecord> = match self.store.get_json(&key).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(vm = %name, error = %e, "cannot read the VM record");
                None
            }
        };
        let files_on = done
            .as_ref()
            .and_then(journal::files_on)
            .or_else(|| rec.as_ref().and_then(|r| r.owner.clone()));
        match (&rec, files_on) {
            (Some(rec), Some(host)) => self.destroy_made_files(rec, &host).await,
            (None, Some(host)) => {
                tracing::warn!(vm = %name, host = %host, "the VM record is gone; files the create made on that host may remain")
            }
            _ => {}
        }
        self.release_addresses_of(name).await;
        if rec.is_some() {
            // Only while the record is still this task's.
            let task = ctx.id().to_string();
            let gone = self
                .delete_record_if(name, |r| holds(r, &VmOperation::Creating, Some(&task)))
                .await;
            if let Err(e) = gone {
                tracing::warn!(vm = %name, error = %e, "cannot delete the VM record during rollback");
            }
        }
    }

    async fn destroy_made_files(&self, rec: &VmRecord, host: &str) {
        let name = &rec.config.name;
        let url = match self.agent_url(host).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(vm = %name, host, error = %e, "cannot reach the host to remove the VM's files");
                return;
            }
        };
        let req = DestroyVmRequest {
            config: rec.config.clone(),
            keep_boot_disk_as: None,
        };
        match self.agents.destroy(host, &url, &req).await {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => {
                tracing::warn!(vm = %name, host, error = %e, "cannot remove the VM's files during rollback")
            }
        }
    }

    /// The address of `network` reserved for VM `name`, as `addr/prefix`,
    /// if there is one: a create killed between reserving an address and
    /// journaling it finds it again instead of reserving a second one.
    pub(crate) async fn address_held_by(
        &self,
        network: &vdc_types::Network,
        name: &str,
    ) -> Result<Option<String>, vdc_types::ApiError> {
        let prefix = crate::ipam::Subnet::parse(&network.subnet)
            .map_err(vdc_types::ApiError::internal)?
            .prefix;
        let held: Vec<(String, String)> = self
            .store
            .list_json(&format!("/ipam/{}/", network.name))
            .await
            .map_err(crate::store_err)?;
        Ok(held
            .into_iter()
            .find(|(_, holder)| holder == name)
            .and_then(|(key, _)| key.rsplit('/').next().map(|a| format!("{a}/{prefix}"))))
    }

    /// Releases every address reserved for VM `name` (the address keys
    /// hold the VM's name), including one reserved just before a crash
    /// and never journaled.
    pub(crate) async fn release_addresses_of(&self, name: &str) {
        let held: Vec<(String, String)> = match self.store.list_json("/ipam/").await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(vm = %name, error = %e, "cannot list addresses to release");
                return;
            }
        };
        for (key, holder) in held {
            if holder == name {
                if let Err(e) = self.store.delete(&key).await {
                    tracing::warn!(vm = %name, key = %key, error = %e, "cannot release an address");
                }
            }
        }
    }
}
