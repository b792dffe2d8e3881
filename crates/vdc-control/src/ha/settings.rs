//! A VM's HA settings (restart priority, isolation response, order group),
//! changed with `PATCH /api/v1/vms/{name}`.
//!
//! The record changes at once (the HA manager reads priority and group from
//! it). The isolation response is applied by the VM's host, so a VM with a
//! process has its new settings pushed to its host's agent at once, which
//! rewrites its runtime copy and the VM's `vm.json` on the datastore.

use serde_json::json;
use vdc_types::ha::UpdateVmRequest;
use vdc_types::{ApiError, Vm};

use crate::{Cluster, VmRecord};

impl Cluster {
    /// `PATCH /api/v1/vms/{name}`: changes a VM's HA settings.
    pub async fn update_vm(&self, name: &str, req: &UpdateVmRequest) -> Result<Vm, ApiError> {
        if req.is_empty() {
            // Nothing to change: the VM as it is (404 if there is none).
            return self.get_vm(name).await;
        }
        // Present: join (the group must exist) or leave (null).
        let group = match &req.ha_group {
            Some(g) => Some(self.known_ha_group(g.as_deref()).await?),
            None => None,
        };
        let (before, after) = self
            .update_record(name, |mut r| {
                if let Some(p) = req.ha_priority {
                    r.config.ha.priority = p;
                }
                if let Some(i) = req.isolation_response {
                    r.config.ha.isolation_response = i;
                }
                if let Some(g) = &group {
                    r.config.ha.group = g.clone();
                }
                r.config.version = vdc_types::vm::VM_CONFIG_VERSION;
                Ok(r)
            })
            .await?;
        if before.config.ha != after.config.ha {
            let applied = self.push_ha(&after).await;
            let ha = &after.config.ha;
            self.events
                .publish(
                    "vm.updated",
                    name,
                    format!(
                        "VM {name}: HA priority {}, isolation response {:?}, group {}; {}",
                        ha.priority,
                        ha.isolation_response,
                        ha.group.as_deref().unwrap_or("none"),
                        match &applied {
                            Some(h) => format!("applied on {h} now"),
                            None => "its host applies it at its next start".into(),
                        }
                    ),
                    json!({"ha": ha, "applied_on": applied}),
                )
                .await;
        }
        self.get_vm(name).await
    }

    /// Pushes a VM's HA settings to the host running it; that host, if it
    /// took them. A host that cannot be reached gets them at the VM's
    /// next start (the start writes `vm.json` from the record).
    async fn push_ha(&self, rec: &VmRecord) -> Option<String> {
        if !rec.state.has_process() {
            return None;
        }
        let host = rec.owner.clone()?;
        let url = self.agent_url(&host).await.ok()?;
        match self
            .agents
            .set_ha(&host, &url, &rec.config.id, &rec.config.ha)
            .await
        {
            Ok(_) => Some(host),
            Err(e) => {
                tracing::warn!(vm = %rec.config.name, host = %host, error = %e, "the VM's host did not take its new HA settings; they apply at its next start");
                None
            }
        }
    }
}
