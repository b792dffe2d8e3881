//! Admission control: a create with start or a power-on is refused when
//! the protected VMs (priority other than `disabled`), with the new one,
//! would no longer fit on the hosts left after the policy's number of host
//! failures (the largest hosts first; pure rule in
//! [`vdc_sched::ha::admission_shortfall`]). The policy is kept in the
//! store (`/ha/policy`, versioned) and set with `PUT /api/v1/ha`
//! (`vdc ha set --tolerate-host-failures N`).

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::ha::{HaPolicy, HaPriority, SetHaPolicyRequest, HA_POLICY_VERSION};
use vdc_types::{ApiError, ErrorCode};

use crate::{store_err, Cluster, VmRecord};

const POLICY_KEY: &str = "/ha/policy";

/// Largest number of host failures a policy may ask to tolerate.
pub const MAX_TOLERATED: u32 = 63;

impl Cluster {
    /// The admission policy (the default, off, when none was set).
    pub async fn ha_policy(&self) -> Result<HaPolicy, ApiError> {
        let p: Option<HaPolicy> = self.store.get_json(POLICY_KEY).await.map_err(store_err)?;
        match p {
            Some(p) if p.version > HA_POLICY_VERSION => Err(ApiError::internal(format!(
                "the stored HA policy has version {}; this server reads version {HA_POLICY_VERSION}",
                p.version
            ))),
            Some(p) => Ok(p),
            None => Ok(HaPolicy {
                version: HA_POLICY_VERSION,
                tolerate_host_failures: 0,
            }),
        }
    }

    /// `PUT /api/v1/ha`: sets the admission policy.
    pub async fn set_ha_policy(&self, req: &SetHaPolicyRequest) -> Result<HaPolicy, ApiError> {
        if req.tolerate_host_failures > MAX_TOLERATED {
            return Err(ApiError::invalid(format!(
                "tolerate_host_failures must be between 0 and {MAX_TOLERATED}, not {}",
                req.tolerate_host_failures
            )));
        }
        let p = HaPolicy {
            version: HA_POLICY_VERSION,
            tolerate_host_failures: req.tolerate_host_failures,
        };
        self.store
            .put_json(POLICY_KEY, &p)
            .await
            .map_err(store_err)?;
        self.events
            .publish(
                "ha.policy_changed",
                "cluster",
                format!(
                    "HA admission control: tolerate {} host failure(s)",
                    p.tolerate_host_failures
                ),
                json!({"tolerate_host_failures": p.tolerate_host_failures}),
            )
            .await;
        Ok(p)
    }

    /// Memory of each host that may take restarts (connected, not in
    /// maintenance), and of the protected VMs that run.
    pub(crate) async fn admission_view(&self) -> (Vec<u64>, u64) {
        let hosts: Vec<u64> = self
            .capacities()
            .await
            .into_iter()
            .filter(|c| c.available)
            .map(|c| c.memory_mib)
            .collect();
        let records: Vec<VmRecord> = self.list_values("/vms/").await.unwrap_or_default();
        let protected = records
            .iter()
            .filter(|r| r.state.has_process() && r.config.ha.priority != HaPriority::Disabled)
            .map(|r| vdc_sched::footprint_mib(r.config.memory_mib))
            .sum();
        (hosts, protected)
    }

    /// Refuses to power on VM `name` (of `memory_mib`, restart priority
    /// `priority`) when that would leave too little failover capacity.
    pub(crate) async fn check_admission(
        &self,
        name: &str,
        memory_mib: u64,
        priority: HaPriority,
    ) -> Result<(), ApiError> {
        let policy = self.ha_policy().await?;
        if policy.tolerate_host_failures == 0 || priority == HaPriority::Disabled {
            return Ok(());
        }
        let (hosts, protected) = self.admission_view().await;
        let need = protected + vdc_sched::footprint_mib(memory_mib);
        let short = vdc_sched::ha::admission_shortfall(&hosts, need, policy.tolerate_host_failures);
        if short == 0 {
            return Ok(());
        }
        let err = ApiError::new(
            ErrorCode::InsufficientCapacity,
            format!(
                "powering on VM '{name}' would leave too little failover capacity: the protected VMs would need {need} MiB but only {} MiB remain after {} host failure(s), {short} MiB short; free memory, add a host, lower the VM's HA priority to disabled, or tolerate fewer failures (vdc ha set --tolerate-host-failures N)",
                need - short,
                policy.tolerate_host_failures
            ),
        );
        self.events
            .publish(
                "ha.admission_refused",
                name,
                err.message.clone(),
                json!({"short_mib": short, "need_mib": need, "tolerate_host_failures": policy.tolerate_host_failures}),
            )
            .await;
        Err(err)
    }
}
