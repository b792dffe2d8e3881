//! NIC hot plug on a running VM (`POST /agent/v1/vms/{id}/nics/plug` and
//! `…/unplug`), under the VM's operation lock.
//!
//! Plug: the NIC's tap on its port group's bridge (shaped), then QEMU's
//! backend and device on the NIC's hot-plug port; then the configuration
//! with the NIC is saved (the slot, its runtime copy and, as the lease
//! holder, `vm.json`), so a restart, a migration or an HA restart bring the
//! NIC back. Any failure undoes the steps already done, in reverse.
//!
//! Unplug: the guest is asked to release the device and QEMU's
//! `DEVICE_DELETED` awaited ([`UNPLUG_TIMEOUT`]); then the backend and the
//! tap go and the configuration without the NIC is saved. A guest that
//! does not release the device in time keeps it: nothing changed.

use std::sync::Arc;
use std::time::Duration;

use vdc_types::agent::VmRuntime;
use vdc_types::nic::NicHotplug;
use vdc_types::{ApiError, VmConfig};

use crate::agent::{datastore_io, Agent};
use crate::error::{disk_error, host_error};
use crate::slot::VmSlot;

/// How long a guest may take to release an unplugged NIC.
pub(crate) const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

impl Agent {
    /// Plugs the NIC on `req.port` of `req.config` into running VM `id`.
    pub(crate) async fn plug_nic(&self, id: &str, req: NicHotplug) -> Result<VmRuntime, ApiError> {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        let vm = running(&slot)?;
        let config = req.config;
        let name = config.name.clone();
        let (ports, devices) = self.nic_plan(&config)?;
        let i = config
            .nics
            .iter()
            .position(|n| n.port == Some(req.port) && n.mac == req.mac)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "VM '{name}' has no NIC {} on hot-plug port {}",
                    req.mac, req.port
                ))
            })?;
        if slot
            .inner()
            .config
            .nics
            .iter()
            .any(|n| n.port == Some(req.port))
        {
            return Err(ApiError::invalid_state(format!(
                "hot-plug port {} of VM '{name}' is taken already",
                req.port
            )));
        }
        let (port, device) = (&ports[i], &devices[i]);
        self.create_taps(&name, std::slice::from_ref(port)).await?;
        if let Err(e) = vm.plug_nic(device).await {
            crate::supervisor::cleanup_network(std::slice::from_ref(&port.tap)).await;
            return Err(host_error(
                format!("cannot plug NIC {} into VM '{name}'", device.id),
                &e,
            ));
        }
        slot.inner().taps.push(port.tap.clone());
        slot.persist_taps();
        if let Err(e) = self.save_config(&slot, config).await {
            if let Err(undo) = self.unplug(&slot, &vm, device, &port.tap).await {
                tracing::warn!(vm = %name, nic = %device.id, error = %undo.message, "cannot undo a NIC plug whose configuration could not be saved");
            }
            return Err(e);
        }
        tracing::info!(vm = %name, nic = %device.id, mac = %device.mac, tap = %port.tap, "NIC plugged");
        self.ports_changed();
        slot.notify();
        Ok(slot.runtime())
    }

    /// Unplugs the NIC on `req.port` from running VM `id`; `req.config` is
    /// the configuration without it.
    pub(crate) async fn unplug_nic(
        &self,
        id: &str,
        req: NicHotplug,
    ) -> Result<VmRuntime, ApiError> {
        let slot = self.slot(id)?;
        let _op = slot.op.lock().await;
        let vm = running(&slot)?;
        let current = slot.inner().config.clone();
        let (ports, devices) = self.nic_plan(&current)?;
        let i = current
            .nics
            .iter()
            .position(|n| n.port == Some(req.port) && n.mac == req.mac)
            .ok_or_else(|| {
                ApiError::invalid_state(format!(
                    "VM '{}' has no NIC {} on hot-plug port {} on this host",
                    current.name, req.mac, req.port
                ))
            })?;
        self.unplug(&slot, &vm, &devices[i], &ports[i].tap).await?;
        self.save_config(&slot, req.config).await?;
        tracing::info!(vm = %current.name, nic = %devices[i].id, "NIC unplugged");
        self.ports_changed();
        slot.notify();
        Ok(slot.runtime())
    }

    async fn unplug(
        &self,
        slot: &Arc<VmSlot>,
        vm: &vdc_qemu::Vm,
        device: &vdc_qemu::NicDevice,
        tap: &str,
    ) -> Result<(), ApiError> {
        let name = slot.inner().config.name.clone();
        vm.unplug_nic(device, UNPLUG_TIMEOUT).await.map_err(|e| {
            tracing::warn!(vm = %name, nic = %device.id, error = %crate::error::chain(&e), "NIC not unplugged");
            host_error(
                format!(
                    "cannot unplug NIC {} from VM '{name}' (does its guest handle PCIe hot plug?)",
                    device.id
                ),
                &e,
            )
        })?;
        crate::supervisor::cleanup_network(&[tap.to_string()]).await;
        slot.inner().taps.retain(|t| t != tap);
        slot.persist_taps();
        Ok(())
    }

    /// Saves `config` as VM `slot`'s: the slot, the runtime copy, and
    /// `vm.json` (this host holds the lease: the VM runs here).
    async fn save_config(&self, slot: &Arc<VmSlot>, config: VmConfig) -> Result<(), ApiError> {
        let layout = self.layout(&config)?;
        let (vm_dir, to_save) = (layout.vm_dir.clone(), config.clone());
        datastore_io("cannot write vm.json", move || {
            vm_dir.write_config(&to_save)
        })
        .await
        .and_then(|r| r.map_err(|e| disk_error("cannot write vm.json", e)))?;
        slot.inner().config = config;
        let persisted = slot.clone();
        crate::slot::blocking_io(move || persisted.persist_config())
            .map_err(|e| host_error("cannot write the runtime directory", &e))
    }
}

/// The QEMU of a VM that runs here, or a 409.
fn running(slot: &VmSlot) -> Result<Arc<vdc_qemu::Vm>, ApiError> {
    let state = slot.state();
    match slot.vm() {
        Some(vm) if state == vdc_types::VmPowerState::Running => Ok(vm),
        _ => Err(ApiError::invalid_state(format!(
            "VM '{}' is {state} on this host; NICs are hot-plugged into a running VM",
            slot.inner().config.name
        ))),
    }
}
