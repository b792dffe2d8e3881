//! Re-attach on agent start: VMs recorded in the state directory whose
//! QEMU still runs are followed again, with the supervisor that kept
//! their lease meanwhile (or a new one if it died); the others are
//! reported as they were left (crashed, with the fence reason if their
//! supervisor stopped them, suspended or stopped).

use std::path::Path;
use std::sync::Arc;

use vdc_supervisor::FenceRecord;
use vdc_types::{ApiError, VmConfig, VmPowerState};

use crate::error::host_error;
use crate::slot::{read_persisted_state, RUNTIME_CONFIG};
use crate::supervisor;

use crate::agent::Agent;

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
            if run_dir
                .join(crate::migration::INCOMING_STORAGE_MARK)
                .exists()
                && self.recover_incoming_storage(&config, &run_dir).await
            {
                continue;
            }
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
        match attached {
            Some(vm) => {
                let vm = Arc::new(vm);
                let run_dir = self.run_dir(&config.id);
                match vdc_supervisor::client::find(&run_dir) {
                    Some(pid) => {
                        slot.inner().vm_supervisor =
                            Some(Arc::new(vdc_qemu::process::Process::from_pid(pid)));
                    }
                    None => {
                        // QEMU lost its supervisor while the agent was away:
                        // a new one re-takes the lease, or fences QEMU if
                        // another host holds it.
                        tracing::warn!(vm = %config.name, "QEMU runs without a supervisor; starting one");
                        self.resupervise(&slot, &vm, layout.vm_dir.path()).await;
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
                let fence = FenceRecord::read(&self.run_dir(&config.id));
                let state = if layout.vm_dir.suspend_state().exists() {
                    VmPowerState::Suspended
                } else if last.has_process() || last == VmPowerState::Crashed || fence.is_some() {
                    VmPowerState::Crashed
                } else {
                    last
                };
                if last.has_process() {
                    supervisor::cleanup_network(&taps).await;
                    if fence.is_none() {
                        self.release_lease(&config.id, layout.vm_dir.path()).await;
                    }
                }
                {
                    let mut inner = slot.inner();
                    inner.taps.clear();
                    inner.runtime.fenced = fence.map(|f| f.reason);
                }
                slot.set_state(state);
            }
        }
        Ok(())
    }
}
