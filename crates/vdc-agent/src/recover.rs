//! Re-attach on agent start: VMs recorded in the state directory whose
//! QEMU still runs are supervised again; the others are reported as they
//! were left (crashed, suspended or stopped).

use std::path::Path;
use std::sync::Arc;

use vdc_disk::DiskError;
use vdc_types::{ApiError, VmConfig, VmPowerState};

use crate::error::host_error;
use crate::slot::{read_persisted_state, RUNTIME_CONFIG};
use crate::supervisor;

use crate::agent::{Agent, LEASE_TTL};

impl Agent {
    /// Re-attaches to the VMs recorded in the state directory.
    pub async fn recover(self: &Arc<Self>) {
        let vms_dir = self.config.state_dir.join("vms");
        let entries = match std::fs::read_dir(&vms_dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = %vms_dir.display(), error = %e, "cannot scan the state directory");
                return;
            }
        };
        for entry in entries.flatten() {
            let run_dir = entry.path();
            let config: VmConfig = match std::fs::read(run_dir.join(RUNTIME_CONFIG))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(path = %run_dir.display(), error = %e, "skipping runtime directory without a readable vm.json");
                    continue;
                }
            };
            if let Err(e) = self.recover_one(config.clone(), &run_dir).await {
                tracing::error!(vm = %config.name, error = %e, "cannot recover VM");
            }
        }
        self.changed.notify_one();
    }

    async fn recover_one(
        self: &Arc<Self>,
        config: VmConfig,
        run_dir: &Path,
    ) -> Result<(), ApiError> {
        let persisted = read_persisted_state(run_dir);
        let last = persisted
            .as_ref()
            .map(|p| p.state)
            .unwrap_or(VmPowerState::Stopped);
        let taps = persisted.map(|p| p.taps).unwrap_or_default();
        let slot = self.slot_or_insert(&config, last);
        slot.inner().taps = taps.clone();
        let layout = self.layout(&config)?;
        let attached = vdc_qemu::Vm::attach(&layout.paths)
            .await
            .map_err(|e| host_error("re-attach to QEMU", &e))?;
        let lock = layout.vm_dir.lock();
        match attached {
            Some(vm) => {
                let vm = Arc::new(vm);
                match lock
                    .acquire(&self.config.name, &self.agent_id, LEASE_TTL)
                    .await
                {
                    Ok(_) => {}
                    Err(DiskError::Locked { holder_host, .. }) => {
                        // Another host took the VM over while this agent was
                        // away: this copy must not keep running.
                        tracing::error!(vm = %config.name, holder = %holder_host, "VM lease held by another host; powering off the local copy");
                        slot.inner().exit_requested = true;
                        if let Err(e) = vm.power_off().await {
                            tracing::error!(vm = %config.name, error = %e, "cannot power off fenced VM");
                        }
                        supervisor::cleanup_network(&taps).await;
                        slot.set_state(VmPowerState::Stopped);
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(vm = %config.name, error = %crate::error::chain(&e), "cannot renew the lease after restart")
                    }
                }
                let state = match vm.run_state().await {
                    Ok(vdc_qemu::RunState::Running) => VmPowerState::Running,
                    Ok(_) => VmPowerState::Paused,
                    Err(_) => VmPowerState::Running,
                };
                {
                    let mut inner = slot.inner();
                    inner.runtime.pid = Some(vm.pid());
                }
                // Keep a transitional state (e.g. shutting down) only if
                // QEMU agrees a process runs; otherwise use QEMU's view.
                if !matches!(last, VmPowerState::ShuttingDown) || state != VmPowerState::Running {
                    slot.set_state(state);
                } else {
                    slot.set_state(VmPowerState::ShuttingDown);
                }
                supervisor::start(self.clone(), slot.clone(), vm, &layout);
                tracing::info!(vm = %config.name, "re-attached");
            }
            None => {
                let state = if layout.vm_dir.suspend_state().exists() {
                    VmPowerState::Suspended
                } else if last.has_process() || last == VmPowerState::Crashed {
                    VmPowerState::Crashed
                } else {
                    last
                };
                if last.has_process() {
                    supervisor::cleanup_network(&taps).await;
                    if let Err(e) = lock.release(&self.config.name) {
                        tracing::warn!(vm = %config.name, error = %crate::error::chain(&e), "cannot release lease");
                    }
                }
                slot.inner().taps.clear();
                slot.set_state(state);
            }
        }
        Ok(())
    }
}
