//! The destination host of a live migration: the one named, checked, or
//! placement's choice among the other hosts.

use vdc_types::ApiError;

use super::live::demand_of;
use crate::cpu_baseline::cpu_refusal;
use crate::vms::placement_err;
use crate::{Cluster, VmRecord};

impl Cluster {
    /// The destination: `to` checked, or placement's choice among the
    /// other hosts. With `datastore` (a live migration with storage) the
    /// destination must reach that datastore instead of the VM's.
    pub(super) async fn pick_target(
        &self,
        name: &str,
        rec: &VmRecord,
        source: &str,
        to: Option<&str>,
        datastore: Option<&str>,
    ) -> Result<String, ApiError> {
        let mut demand = demand_of(rec);
        if let Some(ds) = datastore {
            demand.datastores = vec![ds.to_string()];
        }
        let caps = self.capacities().await;
        let incompatible: Vec<String> = {
            let live = self.live.read().await;
            live.iter()
                .filter(|(_, l)| {
                    l.report.qemu_models.as_ref().is_some_and(|m| {
                        m.missing(&rec.config.machine_type, &rec.config.cpu_model)
                            .is_some()
                    }) || cpu_refusal(&l.report, &rec.config.cpu_model).is_some()
                })
                .map(|(h, _)| h.clone())
                .collect()
        };
        let Some(to) = to else {
            let others: Vec<_> = caps
                .into_iter()
                .filter(|c| c.name != source && !incompatible.contains(&c.name))
                .collect();
            return vdc_sched::place(&demand, &others).map_err(|e| {
                let mut err = placement_err(e);
                err.message = format!(
                    "no other host can take VM '{name}': {}; name one with --to",
                    err.message
                );
                err
            });
        };
        if to == source {
            return Err(ApiError::invalid(format!(
                "VM '{name}' already runs on host '{to}'; name another host"
            )));
        }
        // Unknown (404) or not connected (503).
        self.agent_url(to).await?;
        if let Some(m) = self.maintenance_states().await.get(to) {
            return Err(ApiError::invalid_state(format!(
                "host '{to}' is {}: it takes no VMs; choose another host or end its maintenance ('vdc host maintenance exit {to}')",
                m.as_str().replace('_', " ")
            )));
        }
        let cap = caps
            .iter()
            .find(|c| c.name == to)
            .ok_or_else(|| ApiError::not_found("Host", to))?;
        let (models, cpu_why) = {
            let live = self.live.read().await;
            let report = live.get(to).map(|l| &l.report);
            (
                report.and_then(|r| r.qemu_models.clone()),
                report.and_then(|r| cpu_refusal(r, &rec.config.cpu_model)),
            )
        };
        if let Some(why) =
            models.and_then(|m| m.missing(&rec.config.machine_type, &rec.config.cpu_model))
        {
            return Err(ApiError::invalid(format!(
                "host '{to}' cannot run VM '{name}': {why}; choose a host whose QEMU offers it"
            )));
        }
        if let Some(why) = cpu_why {
            return Err(ApiError::invalid(format!(
                "host '{to}' cannot run VM '{name}': its {why}; choose a host that meets the cluster CPU baseline"
            )));
        }
        vdc_sched::check_host(&demand, cap).map_err(|e| {
            let mut err = placement_err(e);
            err.message = format!(
                "host '{to}' cannot take VM '{name}': {}; choose another host",
                err.message
            );
            err
        })?;
        for nic in &rec.config.nics {
            if self.get_network(&nic.network).await.is_err() {
                return Err(ApiError::invalid(format!(
                    "network '{}' of VM '{name}' no longer exists; host '{to}' cannot connect it",
                    nic.network
                )));
            }
        }
        Ok(to.to_string())
    }
}
