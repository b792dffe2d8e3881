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

use crate::Cluster;

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
            let ha = &after.config.ha;
            self.events
                .publish(
                    "vm.updated",
                    name,
                    format!(
                        "VM {name}: HA priority {}, isolation response {:?}, group {}",
                        ha.priority,
                        ha.isolation_response,
                        ha.group.as_deref().unwrap_or("none")
                    ),
                    json!({"ha": ha}),
                )
                .await;
        }
        self.get_vm(name).await
    }
}
