//! NIC hot plug on a running VM: a tap backend and a virtio-net-pci device
//! on one of the VM's spare PCIe root ports ([`crate::MachineSpec::hotplug_ports`]).
//!
//! Plug: `netdev_add` (the tap, which the caller created and put on its
//! bridge), then `device_add` on the port; if the device cannot be added,
//! the backend is removed again. Unplug: `device_del`, which only asks the
//! guest (ACPI/PCIe hot plug) to release the device; QEMU announces the
//! removal with `DEVICE_DELETED` (`data.device` = the id), awaited with a
//! deadline; then `netdev_del`.

use std::time::Duration;

use serde_json::json;

use crate::error::QemuError;
use crate::spec::{hotplug_port_id, NicDevice};
use crate::vm::Vm;

impl Vm {
    /// Plugs `nic` (with a port) into the running VM.
    pub async fn plug_nic(&self, nic: &NicDevice) -> Result<(), QemuError> {
        let port = nic.port.ok_or(QemuError::NotHotplug)?;
        let netdev = format!("hn-{}", nic.id);
        self.qmp()
            .execute(
                "netdev_add",
                json!({"type": "tap", "id": netdev, "ifname": nic.tap,
                       "script": "no", "downscript": "no"}),
            )
            .await
            .map_err(QemuError::qmp("netdev_add"))?;
        let added = self
            .qmp()
            .execute(
                "device_add",
                json!({"driver": "virtio-net-pci", "id": nic.id, "netdev": netdev,
                       "mac": nic.mac, "bus": hotplug_port_id(port)}),
            )
            .await
            .map_err(QemuError::qmp("device_add"));
        if let Err(e) = added {
            if let Err(undo) = self
                .qmp()
                .execute("netdev_del", json!({ "id": netdev }))
                .await
            {
                tracing::warn!(netdev = %netdev, error = %undo, "cannot remove the backend of a NIC that could not be plugged");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Unplugs `nic` from the running VM: asks the guest to release it and
    /// waits up to `timeout` for QEMU's `DEVICE_DELETED`.
    pub async fn unplug_nic(&self, nic: &NicDevice, timeout: Duration) -> Result<(), QemuError> {
        let mut events = self.events();
        self.qmp()
            .execute("device_del", json!({ "id": nic.id }))
            .await
            .map_err(QemuError::qmp("device_del"))?;
        let gone = async {
            loop {
                match events.recv().await {
                    Ok(ev)
                        if ev.name == "DEVICE_DELETED"
                            && ev.data.get("device").and_then(|d| d.as_str())
                                == Some(nic.id.as_str()) =>
                    {
                        return Ok(())
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return Err(QemuError::Exited)
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, gone).await {
            Ok(r) => r?,
            Err(_) => {
                // The device may have gone while we missed the event.
                if self.has_device(&nic.id).await? {
                    return Err(QemuError::Timeout {
                        what: "the guest's release of the NIC",
                        after: timeout,
                    });
                }
            }
        }
        self.qmp()
            .execute("netdev_del", json!({ "id": format!("hn-{}", nic.id) }))
            .await
            .map_err(QemuError::qmp("netdev_del"))?;
        Ok(())
    }

    /// Whether a device with id `id` exists under `/machine/peripheral`.
    pub async fn has_device(&self, id: &str) -> Result<bool, QemuError> {
        let list = self
            .qmp()
            .execute("qom-list", json!({"path": "/machine/peripheral"}))
            .await
            .map_err(QemuError::qmp("qom-list"))?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.get("name").and_then(|n| n.as_str()) == Some(id)))
    }
}
