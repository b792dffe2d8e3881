//! The body of `vm.create`: its journaled steps, run again by a restarted
//! server, and their rollback.

use super::{placement_err, random_mac};
use std::sync::Arc;

use serde_json::json;
use vdc_sched::Demand;
use vdc_types::agent::{DiskSource, ProvisionVmRequest};
use vdc_types::job::{JobKind, JobOp};
use vdc_types::{ApiError, ErrorCode, NicSpec, Step, TaskParams, VmPowerState};

use crate::clones::Asked;
use crate::journal;
use crate::tasks::TaskCtx;
use crate::Cluster;

impl Cluster {
    /// The body of `vm.create`, also run again by a restarted server: each
    /// step journaled as done is skipped, a submitted job is attached to.
    /// On failure or cancel everything made is rolled back (`undo`), except
    /// that a VM made but failing to start is kept, stopped, and one whose
    /// host went silent while starting it is kept, `unknown`.
    pub(crate) async fn create_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
    ) -> Result<(), ApiError> {
        let params = ctx.journal_now().await?.params;
        let TaskParams::VmCreate {
            start,
            host,
            network,
            boot_source,
            data_sources,
            data_images,
            more_networks,
            address,
            dhcp,
            ..
        } = params
        else {
            return Err(ApiError::internal(
                "vm.create task without create parameters",
            ));
        };
        let result = self
            .create_steps(
                ctx,
                name,
                start,
                host,
                network,
                (boot_source, data_sources, data_images),
                &more_networks,
                Asked { address, dhcp },
            )
            .await;
        let Err(e) = result else {
            return Ok(());
        };
        let done = ctx.journal_now().await.ok();
        if e.code == ErrorCode::HostUnavailable {
            let pending = done.as_ref().and_then(journal::any_pending_job);
            if let Some(p) = pending.filter(|p| p.kind == JobKind::Start) {
                // The host stopped answering while it started the VM: it may
                // run there. Keep the VM, as the resume rules do.
                if let Err(se) = self.set_state(name, VmPowerState::Unknown, None).await {
                    tracing::warn!(vm = %name, error = %se, "cannot record the VM's state");
                }
                return Err(ApiError::new(
                    ErrorCode::HostUnavailable,
                    format!(
                        "host '{}' stopped answering while starting VM '{name}'; the VM is kept; start or delete it once the host is back",
                        p.host
                    ),
                ));
            }
        }
        let made = done
            .as_ref()
            .is_some_and(|j| journal::job_succeeded(j, JobKind::Provision));
        if start && made && e.code != ErrorCode::Cancelled {
            // The VM was made; only starting it failed. Keep it, stopped.
            if let Ok(r) = self.record(name).await {
                if r.state == VmPowerState::Stopped || r.state == VmPowerState::Starting {
                    if let Err(se) = self.set_state(name, VmPowerState::Stopped, None).await {
                        tracing::warn!(vm = %name, error = %se, "cannot record the VM stopped after its start failed");
                    }
                }
            }
            return Err(e);
        }
        tracing::warn!(vm = %name, error = %e, "create failed, rolling back");
        self.roll_back_create(ctx, name, &e.message).await;
        Err(e)
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_steps(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        start: bool,
        host: Option<String>,
        network: Option<String>,
        (boot_source, data_sources, data_images): (
            DiskSource,
            Vec<vdc_types::agent::DiskFile>,
            Vec<DiskSource>,
        ),
        more_networks: &[String],
        asked: Asked,
    ) -> Result<(), ApiError> {
        let mut rec = self.record(name).await?;
        let done = ctx.journal_now().await?;
        if let Some(net_name) = &network {
            if rec.config.nics.is_empty() {
                let net = self.get_network(net_name).await?;
                let ip = match journal::addresses(&done).into_iter().next() {
                    _ if asked.dhcp => None,
                    Some((_, address)) => Some(address),
                    None => {
                        ctx.progress(5, "allocating an address").await;
                        let ip = match (self.address_held_by(&net, name).await?, &asked.address) {
                            (Some(ip), _) => ip,
                            (None, Some(a)) => self.reserve_ip(&net, name, a).await?,
                            (None, None) => self.allocate_ip(&net, name).await?,
                        };
                        ctx.journal(Step::AddressAllocated {
                            network: net.name.clone(),
                            address: ip.clone(),
                        })
                        .await?;
                        Some(ip)
                    }
                };
                let mut nic = NicSpec {
                    network: net.name.clone(),
                    mac: random_mac(),
                    dhcp: ip.is_none(),
                    ip,
                    gateway: net.gateway.clone(),
                    ..Default::default()
                };
                crate::switches::attach(&mut nic, &net);
                rec = self
                    .update_record(name, |mut r| {
                        if r.config.nics.is_empty() {
                            r.config.nics.push(nic.clone());
                        }
                        Ok(r)
                    })
                    .await?
                    .1;
            }
            rec = self.add_more_nics(ctx, name, rec, more_networks).await?;
        }
        ctx.check_cancel()?;
        let host = match journal::placed(&done) {
            Some(h) => h,
            None => {
                let h = match host {
                    Some(h) => h,
                    None => {
                        let demand = Demand {
                            cpus: rec.config.cpus,
                            memory_mib: rec.config.memory_mib,
                            datastores: rec
                                .config
                                .disks
                                .iter()
                                .map(|d| d.datastore.clone())
                                .collect(),
                            cpu_model: Some(rec.config.cpu_model.clone()),
                            switches: crate::switches::switches_of(&rec.config),
                        };
                        vdc_sched::place(&demand, &self.capacities().await)
                            .map_err(placement_err)?
                    }
                };
                ctx.journal(Step::Placed { host: h.clone() }).await?;
                h
            }
        };
        if !journal::job_succeeded(&done, JobKind::Provision) {
            ctx.progress(10, "creating disks").await;
            // Promise the memory now, so that concurrent creates spread out.
            let _pending = if start {
                Some(self.promise_memory(&host, rec.config.memory_mib).await)
            } else {
                None
            };
            let url = self.agent_url(&host).await?;
            let request = ProvisionVmRequest {
                config: rec.config.clone(),
                boot_source,
                data_sources,
                data_images,
            };
            self.agent_job(ctx, &host, &url, JobOp::Provision { request }, (10, 45))
                .await?;
            ctx.journal(Step::Provisioned { host: host.clone() })
                .await?;
            // The host that made the VM owns it: its reports now count.
            self.update_record(name, |mut r| {
                r.set_owner(&host);
                Ok(r)
            })
            .await?;
            self.events
                .publish(
                    "vm.created",
                    name,
                    format!("VM {name} created"),
                    json!({"id": rec.config.id}),
                )
                .await;
        }
        ctx.check_cancel()?;
        if start {
            ctx.progress(50, "starting").await;
            self.start_body(ctx, name, Some(host), VmPowerState::Stopped)
                .await?;
        }
        Ok(())
    }

    /// The NICs after the first (an OVA's), one per network of
    /// `more_networks` not yet on the record, each with an address from
    /// its network's pool (journaled, so a resumed create reuses it).
    async fn add_more_nics(
        &self,
        ctx: &TaskCtx,
        name: &str,
        mut rec: crate::VmRecord,
        more_networks: &[String],
    ) -> Result<crate::VmRecord, ApiError> {
        let first_journaled = usize::from(rec.config.nics.first().is_some_and(|n| n.ip.is_some()));
        for (k, net_name) in more_networks.iter().enumerate() {
            if rec.config.nics.len() > k + 1 {
                continue;
            }
            let net = self.get_network(net_name).await?;
            let done = ctx.journal_now().await?;
            let ip = match journal::addresses(&done).get(first_journaled + k) {
                Some((_, address)) => address.clone(),
                None => {
                    let ip = self.allocate_ip(&net, name).await?;
                    ctx.journal(Step::AddressAllocated {
                        network: net.name.clone(),
                        address: ip.clone(),
                    })
                    .await?;
                    ip
                }
            };
            let mut nic = NicSpec {
                network: net.name.clone(),
                mac: random_mac(),
                ip: Some(ip),
                gateway: net.gateway.clone(),
                ..Default::default()
            };
            crate::switches::attach(&mut nic, &net);
            rec = self
                .update_record(name, |mut r| {
                    if r.config.nics.len() == k + 1 {
                        r.config.nics.push(nic.clone());
                    }
                    Ok(r)
                })
                .await?
                .1;
        }
        Ok(rec)
    }
}
