//! Replication of this site's VMs to a paired site (the protected side),
//! and the replicas of the peer's VMs kept here ([`replicas`]).
//!
//! # A cycle (asynchronous mode), every `rpo_s / 3` (at least 1 s)
//! 1. the recovery site starts a point (`POST /replicas/{vm}/points`):
//!    a new overlay served over NBD, reachable through its relay;
//! 2. the VM's host runs a `replicate` job: one backup job at one instant
//!    into that export, full the first time (or when the bitmap was lost),
//!    else only what the replication's persistent dirty bitmap marks;
//! 3. the recovery site commits the point (flushed, then listed); a
//!    failure anywhere aborts it there, and the bitmap keeps every change
//!    for the next cycle.
//!
//! # States
//! ```text
//!  enable ─► initial_sync ─► ok ◄──────────────► rpo_violated
//!                  │          ▲ │  lag > rpo / point   ▲
//!                  │  link up │ ▼                      │
//!                  └──────► link_down ─────────────────┘
//!  any ─► error (cycle failed for another reason; retried) ; disable ─► stopped
//! ```
//! Events: `replication.enabled|point|rpo_violated|rpo_restored|link_down|
//! link_up|full_resync|disabled`; an alarm is raised while the RPO is
//! violated and while the link is down.

mod cycle;
mod relay;
pub mod replicas;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use vdc_store::{StoreError, StoreExt};
use vdc_types::replication::{
    EnableReplicationRequest, Replication, ReplicationMode, ReplicationState,
    SyncReplicationRequest, REPLICATION_VERSION,
};
use vdc_types::{now_ms, ApiError, ErrorCode, Task, VmPowerState};

use crate::{store_err, Cluster};

/// Store prefix of the replication records (`/replications/<vm>`).
pub const REPLICATIONS_PREFIX: &str = "/replications/";

fn replication_key(vm: &str) -> String {
    format!("{REPLICATIONS_PREFIX}{vm}")
}

/// What the server keeps of replications at run time.
#[derive(Debug, Default)]
pub struct Runtime {
    /// One cycle at a time per VM.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// VMs whose loop runs.
    running: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Points being applied here (recovery side).
    pub(crate) applying: replicas::Applying,
}

impl Runtime {
    fn lock(&self, vm: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vm.to_string())
            .or_default()
            .clone()
    }
}

impl Cluster {
    /// `GET /api/v1/replications`.
    pub async fn list_replications(&self) -> Result<Vec<Replication>, ApiError> {
        let mut v: Vec<Replication> = self.list_values(REPLICATIONS_PREFIX).await?;
        let now = now_ms();
        for r in &mut v {
            fill_lag(r, now);
        }
        Ok(v)
    }

    /// `GET /api/v1/replications/{vm}`.
    pub async fn get_replication(&self, vm: &str) -> Result<Replication, ApiError> {
        let mut r = self.replication_record(vm).await?;
        fill_lag(&mut r, now_ms());
        Ok(r)
    }

    pub(crate) async fn replication_record(&self, vm: &str) -> Result<Replication, ApiError> {
        let r: Replication = self
            .store
            .get_json(&replication_key(vm))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("replication", vm))?;
        if r.version > REPLICATION_VERSION {
            return Err(ApiError::internal(format!(
                "replication record '{vm}' has version {}; this server reads up to {REPLICATION_VERSION}",
                r.version
            )));
        }
        Ok(r)
    }

    /// Changes the replication record of `vm` with `f` (compare and swap).
    pub(crate) async fn update_replication(
        &self,
        vm: &str,
        f: impl Fn(&mut Replication) + Send + Sync,
    ) -> Result<Replication, ApiError> {
        self.store
            .update_json::<Replication, StoreError, _>(&replication_key(vm), |mut r| {
                f(&mut r);
                Ok(r)
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => ApiError::not_found("replication", vm),
                e => store_err(e),
            })
    }

    /// `POST /api/v1/replications`: protects a VM to a paired site; the
    /// first full copy runs as task `replication.initial_sync`.
    pub async fn enable_replication(
        self: &Arc<Self>,
        req: EnableReplicationRequest,
    ) -> Result<(Replication, Task), ApiError> {
        let rec = self.record(&req.vm).await?;
        self.site_record(&req.site).await?;
        if req.rpo_s == 0 || req.rpo_s > 86_400 {
            return Err(ApiError::invalid(format!(
                "rpo_s must be between 1 and 86400 seconds, not {}",
                req.rpo_s
            )));
        }
        if req.retain_last == 0 || req.retain_last > 1000 {
            return Err(ApiError::invalid(format!(
                "retain_last must be between 1 and 1000, not {}",
                req.retain_last
            )));
        }
        if req.mode == ReplicationMode::Sync {
            return Err(ApiError::invalid(
                "synchronous replication is not available yet; use mode 'async' with a short rpo_s",
            ));
        }
        if rec.config.disks.len() != 1 {
            return Err(ApiError::invalid(format!(
                "VM '{}' has {} disks; replication of VMs with more than one disk is not available yet",
                req.vm,
                rec.config.disks.len()
            )));
        }
        if rec.state != VmPowerState::Running {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' is {}; start it first (a replication ships a running VM's writes)",
                req.vm, rec.state
            )));
        }
        let r = Replication {
            version: REPLICATION_VERSION,
            vm: req.vm.clone(),
            vm_id: rec.config.id.clone(),
            site: req.site.clone(),
            mode: req.mode,
            rpo_s: req.rpo_s,
            retain_last: req.retain_last,
            on_link_loss: req.on_link_loss,
            quiesce_every_s: req.quiesce_every_s,
            datastore: req.datastore.clone(),
            state: ReplicationState::InitialSync,
            last_point_ms: None,
            last_quiesced_ms: None,
            lag_ms: None,
            achieved_rpo_ms: None,
            bytes_sent: 0,
            last_point_bytes: 0,
            points: 0,
            needs_full: true,
            full_reason: Some("first copy".into()),
            error: None,
            enabled_ms: now_ms(),
        };
        match self.store.create_json(&replication_key(&req.vm), &r).await {
            Ok(_) => {}
            Err(StoreError::AlreadyExists(_)) => {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "VM '{}' is already replicated; see 'vdc replication show {}'",
                        req.vm, req.vm
                    ),
                ))
            }
            Err(e) => return Err(store_err(e)),
        }
        self.events
            .publish(
                "replication.enabled",
                &req.vm,
                format!(
                    "replication of {} to site {} enabled (RPO {} s)",
                    req.vm, req.site, req.rpo_s
                ),
                json!({"vm": req.vm, "site": req.site, "rpo_s": req.rpo_s, "mode": req.mode}),
            )
            .await;
        let me = self.clone();
        let vm = req.vm.clone();
        let task = self
            .tasks
            .spawn(
                "replication.initial_sync",
                "vm",
                &req.vm,
                move |ctx| async move {
                    let r = me.run_cycle(&vm, false, Some(&ctx)).await;
                    me.spawn_replication_loop(&vm);
                    r.map(drop)
                },
            )
            .await?;
        Ok((r, task))
    }

    /// `POST /api/v1/replications/{vm}/sync`: a point now; the task ends
    /// when it is applied at the recovery site.
    pub async fn sync_replication(
        self: &Arc<Self>,
        vm: &str,
        req: SyncReplicationRequest,
    ) -> Result<Task, ApiError> {
        let r = self.replication_record(vm).await?;
        if r.state == ReplicationState::Stopped {
            return Err(ApiError::invalid_state(format!(
                "the replication of '{vm}' is stopped"
            )));
        }
        let me = self.clone();
        let n = vm.to_string();
        self.tasks
            .spawn("replication.sync", "vm", vm, move |ctx| async move {
                me.run_cycle(&n, req.quiesce, Some(&ctx)).await.map(drop)
            })
            .await
    }

    /// `DELETE /api/v1/replications/{vm}`: stops replicating; the replica
    /// and its points stay at the recovery site.
    pub async fn disable_replication(&self, vm: &str) -> Result<(), ApiError> {
        let r = self.replication_record(vm).await?;
        let lock = self.replication.lock(vm);
        let _held = lock.lock().await;
        // The recovery site first: once the record is gone here, the replica
        // there already says it is stopped.
        match self.site_client(&r.site).await {
            Ok(peer) => {
                if let Err(e) = peer.replica_stopped(vm).await {
                    tracing::warn!(vm, site = %r.site, error = %e, "cannot tell the recovery site that replication stopped");
                }
            }
            Err(e) => {
                tracing::warn!(vm, site = %r.site, error = %e, "cannot tell the recovery site that replication stopped")
            }
        }
        self.store
            .delete(&replication_key(vm))
            .await
            .map_err(store_err)?;
        for kind in ["replication.rpo", "replication.link"] {
            if let Err(e) = self.clear_alarms(kind, vm, "replication disabled").await {
                tracing::warn!(vm, error = %e, "cannot clear a replication alarm");
            }
        }
        self.events
            .publish(
                "replication.disabled",
                vm,
                format!("replication of {vm} to site {} disabled", r.site),
                json!({"vm": vm, "site": r.site}),
            )
            .await;
        Ok(())
    }

    /// Starts the replication loops of every enabled replication (server
    /// start).
    pub async fn resume_replications(self: &Arc<Self>) {
        match self.list_values::<Replication>(REPLICATIONS_PREFIX).await {
            Ok(all) => {
                for r in all {
                    if r.state != ReplicationState::Stopped {
                        self.spawn_replication_loop(&r.vm);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the replications to resume"),
        }
    }
}

/// Lag now: the age of the newest applied point.
fn fill_lag(r: &mut Replication, now: u64) {
    r.lag_ms = r.last_point_ms.map(|t| now.saturating_sub(t));
}
