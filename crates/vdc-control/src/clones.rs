//! Clones of powered-off VMs and guest customization.
//!
//! A clone is a create ([`Cluster::create_vm_from`]) whose disks are copied
//! from the source VM instead of a template: the same validation, address
//! allocation, placement, provision job and rollback. While the copy runs
//! the source is claimed with the lifecycle's `cloning` operation (a
//! `vm.clone` task that ends with the clone's `vm.create`), so it cannot be
//! started, moved or deleted under the copy.
//!
//! ```text
//!  POST /vms/SRC/clone ─► claim SRC (clone: stopped, else 409)
//!                     ─► validate the clone (name, datastore, address) ─► 4xx, SRC released
//!                     ─► vm.create NEW (disks copied from SRC's files)
//!                     ─► vm.clone SRC: waits for vm.create, releases SRC
//! ```
//!
//! Guest customization, at deploy (from a template) and at clone: the
//! hostname and the first NIC's address (static, inside the network's
//! subnet, reserved in the store, or DHCP) reach the guest through the
//! SMBIOS OEM strings it reads at boot (`vdc.hostname`, `vdc.ip`,
//! `vdc.gw`). Every clone gets new MAC addresses.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_store::StoreError;
use vdc_types::agent::{DiskFile, DiskSource};
use vdc_types::api::CreateVmRequest;
use vdc_types::clone::{validate_hostname, CloneVmRequest};
use vdc_types::{ApiError, ErrorCode, Network, Task, VmAction};

use crate::ipam::Subnet;
use crate::{store_err, Cluster};

/// Where a new VM's disks come from when it is a clone of a VM.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    /// The boot disk's source.
    pub boot: Option<DiskSource>,
    /// The boot disk's size.
    pub boot_bytes: Option<u64>,
    /// The data disks' files and sizes, in order.
    pub data: Vec<(DiskFile, u64)>,
    /// Further data disks read from elsewhere (an OVA's), with their
    /// sizes, after `data`.
    pub data_images: Vec<(DiskSource, u64)>,
    /// Networks of the NICs after the first (an OVA's), in order.
    pub more_networks: Vec<String>,
}

/// The address a create asks for (guest customization).
#[derive(Debug, Clone, Default)]
pub(crate) struct Asked {
    /// A static address, CIDR.
    pub address: Option<String>,
    /// DHCP instead.
    pub dhcp: bool,
}

/// A create's guest customization, validated.
#[derive(Debug, Clone)]
pub(crate) struct Custom {
    /// Hostname of the guest.
    pub hostname: String,
    /// Static address asked for, CIDR.
    pub address: Option<String>,
    /// DHCP.
    pub dhcp: bool,
}

/// Checks a static address asked for on a network: inside its subnet, a
/// host address, not its gateway; the prefix, if given, the subnet's.
/// Returns it in CIDR form with the subnet's prefix.
pub fn static_address(net: &Network, asked: &str) -> Result<(Ipv4Addr, String), String> {
    let subnet = Subnet::parse(&net.subnet)?;
    let (addr, prefix) = match asked.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (asked, None),
    };
    if let Some(p) = prefix {
        if p.parse::<u8>().ok() != Some(subnet.prefix) {
            return Err(format!(
                "address '{asked}' has prefix /{p} but network '{}' is {}; give /{} or no prefix",
                net.name, net.subnet, subnet.prefix
            ));
        }
    }
    let a = crate::ipam::parse_host(&subnet, addr, "address")
        .map_err(|e| format!("{e} (network '{}')", net.name))?;
    if net.gateway.as_deref() == Some(addr) {
        return Err(format!(
            "address {a} is the gateway of network '{}'; choose another",
            net.name
        ));
    }
    Ok((a, format!("{a}/{}", subnet.prefix)))
}

impl Cluster {
    /// Validates a create's guest customization (no side effects; a taken
    /// address is refused here and reserved by the create task).
    pub(crate) async fn customization(
        &self,
        req: &CreateVmRequest,
        network: Option<&Network>,
    ) -> Result<Custom, ApiError> {
        let hostname = match &req.hostname {
            Some(h) => {
                validate_hostname(h).map_err(ApiError::invalid)?;
                h.clone()
            }
            None => req.name.clone(),
        };
        if req.dhcp && req.ip.is_some() {
            return Err(ApiError::invalid(
                "give a static address ('ip') or DHCP ('dhcp'), not both",
            ));
        }
        let needs_net = req.dhcp || req.ip.is_some();
        let Some(net) = network.filter(|_| needs_net) else {
            if needs_net {
                return Err(ApiError::invalid(
                    "an address needs a network; create one ('vdc network create') or name it",
                ));
            }
            return Ok(Custom {
                hostname,
                address: None,
                dhcp: false,
            });
        };
        let address = match &req.ip {
            Some(ip) => {
                let (a, cidr) = static_address(net, ip).map_err(ApiError::invalid)?;
                let key = format!("/ipam/{}/{a}", net.name);
                let holder: Option<String> = vdc_store::StoreExt::get_json(&*self.store, &key)
                    .await
                    .map_err(store_err)?;
                if let Some(h) = holder.filter(|h| h != &req.name) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!(
                            "address {a} of network '{}' is taken by VM '{h}'; choose another",
                            net.name
                        ),
                    ));
                }
                Some(cidr)
            }
            None => None,
        };
        Ok(Custom {
            hostname,
            address,
            dhcp: req.dhcp,
        })
    }

    /// Reserves `address` (CIDR) of `net` for VM `vm`, or fails with 409
    /// when another VM holds it.
    pub(crate) async fn reserve_ip(
        &self,
        net: &Network,
        vm: &str,
        address: &str,
    ) -> Result<String, ApiError> {
        let (a, cidr) = static_address(net, address).map_err(ApiError::invalid)?;
        let key = format!("/ipam/{}/{a}", net.name);
        match vdc_store::StoreExt::create_json(&*self.store, &key, &vm).await {
            Ok(_) => Ok(cidr),
            Err(StoreError::AlreadyExists(_)) => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "address {a} of network '{}' was taken meanwhile; choose another",
                    net.name
                ),
            )),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Clones powered-off VM `source` into a new VM (a `vm.clone` task on
    /// the source that ends when the clone is made).
    pub async fn clone_vm(
        self: &Arc<Self>,
        source: &str,
        req: CloneVmRequest,
    ) -> Result<Task, ApiError> {
        let rec = self.record(source).await?;
        rec.decide(VmAction::Clone, None)?;
        if req.linked {
            return Err(ApiError::invalid(format!(
                "a linked clone reads a base that never changes, and VM '{source}' can change: make a template of it first ('vdc vm to-template {source} --keep-vm --name T', then 'vdc vm create {} --template T --linked'), or clone it in full",
                req.name
            )));
        }
        // With snapshots, the clone copies the current images (flattened);
        // it has no snapshots of its own.
        let disks = self.current_disks(&rec).await?;
        let Some((boot, data)) = disks.split_first() else {
            return Err(ApiError::invalid_state(format!(
                "VM '{source}' has no disk to clone"
            )));
        };
        let origin = Origin {
            boot: Some(DiskSource::Template {
                datastore: boot.datastore.clone(),
                path: boot.path.clone(),
                linked: false,
            }),
            boot_bytes: Some(boot.size_bytes),
            data: data
                .iter()
                .map(|d| {
                    (
                        DiskFile {
                            datastore: d.datastore.clone(),
                            path: d.path.clone(),
                        },
                        d.size_bytes,
                    )
                })
                .collect(),
            ..Default::default()
        };
        let create = CreateVmRequest {
            name: req.name.clone(),
            cpus: Some(rec.config.cpus),
            memory_mib: Some(rec.config.memory_mib),
            datastore: Some(
                req.datastore
                    .clone()
                    .unwrap_or_else(|| rec.config.datastore.clone()),
            ),
            network: rec.config.nics.first().map(|n| n.network.clone()),
            start: req.start,
            ha_priority: Some(rec.config.ha.priority),
            isolation_response: Some(rec.config.ha.isolation_response),
            hostname: req.hostname.clone(),
            ip: req.ip.clone(),
            dhcp: req.dhcp,
            ..Default::default()
        };
        self.begin_operation(source, VmAction::Clone, None).await?;
        let made = match self.create_vm_from(create, origin).await {
            Ok(t) => t,
            Err(e) => {
                self.end_operation(source, None).await;
                return Err(e);
            }
        };
        let me = self.clone();
        let (src, new) = (source.to_string(), req.name.clone());
        self.spawn_operation(source, "vm.clone", None, move |ctx| async move {
            ctx.progress(5, &format!("copying the disks into VM {new}"))
                .await;
            let end = me.wait_task_or_cancel(&ctx, &made.id).await?;
            match end.state {
                vdc_types::TaskState::Succeeded => {
                    me.events
                        .publish(
                            "vm.cloned",
                            &src,
                            format!("VM {src} cloned into {new}"),
                            json!({"clone": new, "create_task": made.id}),
                        )
                        .await;
                    Ok(())
                }
                _ => Err(end.error.unwrap_or_else(|| {
                    ApiError::new(ErrorCode::Cancelled, format!("the create of {new} ended"))
                })),
            }
        })
        .await
    }

    /// Waits for task `id` to end; a cancel of `ctx` cancels it.
    pub(crate) async fn wait_task_or_cancel(
        &self,
        ctx: &crate::tasks::TaskCtx,
        id: &str,
    ) -> Result<Task, ApiError> {
        let mut cancel_sent = false;
        loop {
            let t = self.tasks.get(id).await?;
            if t.state.is_final() {
                return Ok(t);
            }
            if ctx.is_cancelled() && !cancel_sent {
                cancel_sent = true;
                if let Err(e) = self.tasks.cancel(id).await {
                    tracing::warn!(task = %id, error = %e, "cannot pass a cancel on");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        serde_json::from_value(json!({
            "name": "lan", "bridge": "br0", "subnet": "10.9.0.0/24",
            "gateway": "10.9.0.1", "pool_start": "10.9.0.100", "pool_end": "10.9.0.200"
        }))
        .unwrap()
    }

    #[test]
    fn static_addresses_stay_in_the_subnet() {
        assert_eq!(static_address(&net(), "10.9.0.7").unwrap().1, "10.9.0.7/24");
        assert_eq!(
            static_address(&net(), "10.9.0.250/24").unwrap().1,
            "10.9.0.250/24"
        );
        for bad in [
            "10.9.1.7",
            "10.9.0.7/16",
            "10.9.0.1",
            "10.9.0.0",
            "10.9.0.255",
            "x",
            "",
        ] {
            assert!(static_address(&net(), bad).is_err(), "{bad}");
        }
    }
}
