//! NICs added to and removed from a VM (`vm.reconfigure` tasks), while it
//! runs (hot plug) or while it is powered off.
//!
//! Checked first, nothing changed on a refusal (4xx): the lifecycle
//! (`reconfigure`: stopped or running, nothing else in flight), the port
//! group exists, the MAC is a unicast address no other NIC of the cluster
//! uses; for a running VM, a free hot-plug port
//! ([`VmConfig::hotplug_ports`], none in a VM created before version 7)
//! and the VM's host realizing the port group's switch; a NIC removed from
//! a running VM must sit on a hot-plug port (NICs on the root complex
//! cannot be unplugged).
//!
//! The task, add: address from the port group's pool → (running) the
//! owner's agent plugs the NIC and saves `vm.json` → the record gets the
//! NIC → `vm.nic_added`. A failed plug releases the address: the VM is as
//! it was. Remove: (running) the agent unplugs it (the guest releases the
//! device) and saves `vm.json` → the record loses the NIC → its address
//! is released → `vm.nic_removed`. A powered-off VM changes in its record
//! only; its next start writes `vm.json`.
//!
//! Since the NIC is in the configuration (with its port), a restart, a
//! live migration and an HA restart give the VM the same NIC on the same
//! port.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_types::nic::{check_mac, AddNicRequest, NicChange, NicHotplug};
use vdc_types::{ApiError, ErrorCode, NicSpec, VmAction, VmConfig, VmPowerState};

use crate::{Cluster, VmRecord};

/// How long the server waits for an agent's plug or unplug (the guest's
/// release of an unplugged device is bounded by the agent).
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Adds a NIC on port group `req.network` to VM `name`.
    pub async fn add_nic(
        self: &Arc<Self>,
        name: &str,
        req: AddNicRequest,
    ) -> Result<NicChange, ApiError> {
        let rec = self.record(name).await?;
        rec.decide(VmAction::Reconfigure, None)?;
        let net = self.get_network(&req.network).await?;
        let mac = match &req.mac {
            Some(m) => check_mac(m).map_err(ApiError::invalid)?,
            None => crate::vms::random_mac(),
        };
        if let Some(other) = self
            .list_vms()
            .await?
            .into_iter()
            .find(|v| v.nics.iter().any(|n| n.mac.eq_ignore_ascii_case(&mac)))
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "MAC address {mac} is used by a NIC of VM '{}'; choose another or leave --mac out",
                    other.name
                ),
            ));
        }
        let running = rec.state == VmPowerState::Running;
        let port = if running {
            Some(self.hotplug_port(&rec)?)
        } else {
            rec.config.free_hotplug_port()
        };
        if running {
            self.check_owner_realizes(&rec, net.switch.as_deref())
                .await?;
        }
        let (rec, _) = self
            .begin_operation(name, VmAction::Reconfigure, None)
            .await?;
        let mut nic = NicSpec {
            network: net.name.clone(),
            mac: mac.clone(),
            gateway: net.gateway.clone(),
            port,
            ..Default::default()
        };
        crate::switches::attach(&mut nic, &net);
        let mut after = rec.config.nics.clone();
        after.push(nic.clone());
        let id = NicSpec::device_id(&after, after.len() - 1);
        let me = self.clone();
        let n = name.to_string();
        let task = self
            .spawn_operation(
                name,
                "vm.reconfigure",
                Some(params(&rec)),
                move |ctx| async move {
                    ctx.progress(10, "allocating an address").await;
                    let mut nic = nic;
                    nic.ip = Some(me.allocate_ip(&net, &n).await?);
                    let result = me.add_nic_body(&ctx, &n, nic.clone()).await;
                    if result.is_err() {
                        me.release_ips(std::slice::from_ref(&nic)).await;
                    }
                    result
                },
            )
            .await?;
        Ok(NicChange { task, nic: id, mac })
    }

    async fn add_nic_body(
        &self,
        ctx: &crate::tasks::TaskCtx,
        name: &str,
        nic: NicSpec,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let mut config = rec.config.clone();
        config.nics.push(nic.clone());
        let id = NicSpec::device_id(&config.nics, config.nics.len() - 1);
        if rec.state == VmPowerState::Running {
            ctx.progress(30, &format!("plugging NIC {id} into the running VM"))
                .await;
            let port = nic.port.ok_or_else(|| {
                ApiError::internal("a NIC for a running VM was given no hot-plug port")
            })?;
            self.nic_call(&rec, "plug", &config, port, &nic.mac).await?;
        }
        self.update_record(name, |mut r| {
            if !r.config.nics.iter().any(|n| n.mac == nic.mac) {
                r.config.nics.push(nic.clone());
            }
            Ok(r)
        })
        .await?;
        self.events
            .publish(
                "vm.nic_added",
                name,
                format!(
                    "VM {name}: NIC {id} ({}) added on port group {}",
                    nic.mac, nic.network
                ),
                json!({"nic": id, "mac": nic.mac, "network": nic.network, "ip": nic.ip,
                       "port": nic.port, "hot": rec.state == VmPowerState::Running}),
            )
            .await;
        Ok(())
    }

    /// Removes NIC `nic` (its device id or MAC) from VM `name`.
    pub async fn remove_nic(
        self: &Arc<Self>,
        name: &str,
        nic: &str,
    ) -> Result<NicChange, ApiError> {
        let rec = self.record(name).await?;
        rec.decide(VmAction::Reconfigure, None)?;
        let i = rec.config.nic_index(nic).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "VM '{name}' has no NIC '{nic}'; name it by its id or MAC ('vdc vm nic list {name}')"
                ),
            )
        })?;
        let id = NicSpec::device_id(&rec.config.nics, i);
        let spec = rec.config.nics[i].clone();
        if rec.state == VmPowerState::Running && spec.port.is_none() {
            return Err(ApiError::invalid_state(format!(
                "NIC {id} of VM '{name}' is on the root complex, part of the VM since it was created, and cannot be unplugged while it runs; shut the VM down and remove it then ('vdc vm shutdown {name}')"
            )));
        }
        let (rec, _) = self
            .begin_operation(name, VmAction::Reconfigure, None)
            .await?;
        let me = self.clone();
        let n = name.to_string();
        let (nic_id, mac) = (id.clone(), spec.mac.clone());
        let task = self
            .spawn_operation(
                name,
                "vm.reconfigure",
                Some(params(&rec)),
                move |ctx| async move { me.remove_nic_body(&ctx, &n, &nic_id, &mac).await },
            )
            .await?;
        Ok(NicChange {
            task,
            nic: id,
            mac: spec.mac,
        })
    }

    async fn remove_nic_body(
        &self,
        ctx: &crate::tasks::TaskCtx,
        name: &str,
        id: &str,
        mac: &str,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let mut config = rec.config.clone();
        let Some(i) = config.nics.iter().position(|n| n.mac == mac) else {
            return Ok(());
        };
        let nic = config.nics.remove(i);
        if rec.state == VmPowerState::Running {
            ctx.progress(
                20,
                &format!("unplugging NIC {id}: waiting for the guest to release it"),
            )
            .await;
            let port = nic.port.ok_or_else(|| {
                ApiError::invalid_state(format!("NIC {id} of VM '{name}' cannot be unplugged"))
            })?;
            self.nic_call(&rec, "unplug", &config, port, mac).await?;
        }
        self.update_record(name, |mut r| {
            r.config.nics.retain(|n| n.mac != mac);
            Ok(r)
        })
        .await?;
        self.release_ips(std::slice::from_ref(&nic)).await;
        self.events
            .publish(
                "vm.nic_removed",
                name,
                format!("VM {name}: NIC {id} ({mac}) removed"),
                json!({"nic": id, "mac": mac, "network": nic.network,
                       "hot": rec.state == VmPowerState::Running}),
            )
            .await;
        Ok(())
    }

    /// A free hot-plug port of running VM `rec`, or why there is none.
    fn hotplug_port(&self, rec: &VmRecord) -> Result<u32, ApiError> {
        let name = &rec.config.name;
        if rec.config.hotplug_ports == 0 {
            return Err(ApiError::invalid_state(format!(
                "VM '{name}' has no hot-plug ports: it was created before they existed (configuration version {}); its device model stays as it is, so add the NIC while it is powered off ('vdc vm shutdown {name}')",
                rec.config.version
            )));
        }
        rec.config.free_hotplug_port().ok_or_else(|| {
            ApiError::invalid_state(format!(
                "all {} hot-plug ports of VM '{name}' carry NICs; remove one first, or add the NIC while the VM is powered off",
                rec.config.hotplug_ports
            ))
        })
    }

    /// Refuses a NIC on `switch` for running VM `rec` when its host does
    /// not realize that switch.
    async fn check_owner_realizes(
        &self,
        rec: &VmRecord,
        switch: Option<&str>,
    ) -> Result<(), ApiError> {
        let (Some(owner), Some(switch)) = (rec.owner.as_deref(), switch) else {
            return Ok(());
        };
        let caps = self.capacities().await;
        let demand = vdc_sched::Demand {
            switches: vec![switch.to_string()],
            ..Default::default()
        };
        match caps.iter().find(|c| c.name == owner) {
            Some(cap) if vdc_sched::missing_switch(&demand, cap).is_some() => {
                Err(ApiError::invalid_state(format!(
                    "host '{owner}' running VM '{}' does not realize switch '{switch}' ('vdc switch show {switch}'); fix the switch there or choose another port group",
                    rec.config.name
                )))
            }
            _ => Ok(()),
        }
    }

    async fn nic_call(
        &self,
        rec: &VmRecord,
        what: &str,
        config: &VmConfig,
        port: u32,
        mac: &str,
    ) -> Result<(), ApiError> {
        let host = rec.owner.clone().ok_or_else(|| {
            ApiError::internal(format!("VM '{}' runs but has no owner", rec.config.name))
        })?;
        let url = self.agent_url(&host).await?;
        let body = NicHotplug {
            config: config.clone(),
            port,
            mac: mac.to_string(),
        };
        let _rt: vdc_types::agent::VmRuntime = self
            .agents
            .call(
                &host,
                reqwest::Method::POST,
                format!("{url}/agent/v1/vms/{}/nics/{what}", rec.config.id),
                Some(&body),
                AGENT_TIMEOUT,
            )
            .await?;
        Ok(())
    }
}

/// The task's journal parameters: like a power task, a server restart
/// fails it with the VM's operation released.
fn params(rec: &VmRecord) -> vdc_types::TaskParams {
    vdc_types::TaskParams::VmPower {
        vm_id: rec.config.id.clone(),
        host: rec.owner.clone(),
        shutdown_timeout_s: None,
    }
}
