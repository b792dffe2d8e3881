//! A VM's HA settings changed while it runs (`PUT /agent/v1/vms/{id}/ha`):
//! the isolation response is applied by this host, so the server pushes a
//! change at once instead of leaving it for the next start.
//!
//! The slot's configuration changes at once (what the isolation watcher
//! reads), then its runtime copy and, when this host holds the VM's lease
//! (it runs the VM), `vm.json` on the datastore: only the lease holder
//! writes the VM's files.

use vdc_types::ha::VmHa;
use vdc_types::ApiError;

use crate::agent::{datastore_io, Agent};
use crate::error::{disk_error, host_error};

impl Agent {
    /// Applies `ha` to VM `id`; the settings now in force.
    pub(crate) async fn set_ha(&self, id: &str, ha: VmHa) -> Result<VmHa, ApiError> {
        let slot = self.slot(id)?;
        let config = {
            let mut inner = slot.inner();
            inner.config.ha = ha;
            inner.config.version = inner.config.version.max(vdc_types::vm::VM_CONFIG_VERSION);
            inner.config.clone()
        };
        tracing::info!(vm = %config.name, ha = ?config.ha, "HA settings changed");
        let persisted = slot.clone();
        crate::slot::blocking_io(move || persisted.persist_config())
            .map_err(|e| host_error("cannot write the runtime directory", &e))?;
        if slot.state().has_process() {
            let layout = self.layout(&config)?;
            let (vm_dir, to_save) = (layout.vm_dir.clone(), config.clone());
            datastore_io("cannot write vm.json", move || {
                vm_dir.write_config(&to_save)
            })
            .await
            .and_then(|r| r.map_err(|e| disk_error("cannot write vm.json", e)))?;
        }
        slot.notify();
        Ok(config.ha)
    }
}
