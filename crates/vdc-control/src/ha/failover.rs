//! `vm.failover`: restarting a VM of a failed host on a surviving one.
//!
//! ```text
//!  unknown (owner A) ──claim──► unknown, failing_over{from: A}
//!     │ place on a connected host B ≠ A reaching the VM's datastores
//!     │ commit the move: owner B, state starting (journal: start job on B)
//!     │ B's start job: its VM supervisor takes the lease only once it saw
//!     │ A's lease unchanged for a TTL (or released): never two QEMUs
//!     ├─ started ──► running on B (ha.vm_restarted)
//!     └─ refused (lease still renewed: A's VMs still run), no room, B
//!        failed ──► unknown, owner A again (ha.failover_failed; retried)
//! ```
//!
//! Durable: the start job is journaled before it is submitted, so a server
//! restarted in the middle resumes the task and attaches to the same job
//! (same operation id: nothing runs twice).

use std::sync::Arc;

use serde_json::json;
use vdc_sched::Demand;
use vdc_types::agent::AgentStartRequest;
use vdc_types::job::{JobKind, JobOp};
use vdc_types::{ApiError, ErrorCode, Task, TaskParams, VmAction, VmOperation, VmPowerState};

use crate::tasks::TaskCtx;
use crate::{journal, ownership, Cluster, VmRecord};

pub(super) fn demand_of(rec: &VmRecord) -> Demand {
    crate::migration::live::demand_of(rec)
}

impl Cluster {
    /// Claims a failover of VM `name` (lost by its host) and runs it as a
    /// `vm.failover` task.
    pub(crate) async fn failover_vm(
        self: &Arc<Self>,
        name: &str,
        why: &str,
    ) -> Result<Task, ApiError> {
        let (rec, step) = self.begin_operation(name, VmAction::Failover, None).await?;
        let from = rec.owner.clone().unwrap_or_default();
        self.events
            .publish(
                "ha.failover_started",
                name,
                format!("restarting VM {name} elsewhere: {why} ({from})"),
                json!({"from": from, "reason": why, "priority": format!("{:?}", super::priority_of(&rec)).to_lowercase()}),
            )
            .await;
        let me = self.clone();
        let n = name.to_string();
        let params = TaskParams::VmPower {
            vm_id: rec.config.id.clone(),
            host: None,
            shutdown_timeout_s: None,
        };
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move { me.failover_body(&ctx, &n).await },
        )
        .await
    }

    /// The task body (also run again by a resumed task).
    pub(crate) async fn failover_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
    ) -> Result<(), ApiError> {
        let rec = self.record(name).await?;
        let from = match rec.operation.as_ref().map(|o| &o.operation) {
            Some(VmOperation::FailingOver { from }) => from.clone(),
            _ => {
                return Err(ApiError::invalid_state(format!(
                    "VM '{name}' is not failing over"
                )))
            }
        };
        let result = self.restart_elsewhere(ctx, name, &from).await;
        match &result {
            Ok(host) => {
                if let Ok(mut m) = self.ha.lock() {
                    m.no_room.remove(name);
                }
                let runs = format!("VM {name} runs again, on {host}");
                if let Err(e) = self
                    .clear_alarms(super::order::DEFERRED_ALARM, name, &runs)
                    .await
                {
                    tracing::warn!(vm = %name, error = %e, "cannot clear the deferred-restart alarm");
                }
                self.events
                    .publish(
                        "ha.vm_restarted",
                        name,
                        format!("VM {name} restarted on {host} after {from} failed"),
                        json!({"from": from, "to": host}),
                    )
                    .await;
            }
            Err(e) => {
                let restored = self
                    .change_record(name, |r| {
                        let still_ours = matches!(
                            r.operation.as_ref().map(|o| &o.operation),
                            Some(VmOperation::FailingOver { .. })
                        );
                        (still_ours && r.state != VmPowerState::Running).then(|| {
                            let mut n = r.clone();
                            n.state = VmPowerState::Unknown;
                            n.set_owner(&from);
                            n
                        })
                    })
                    .await;
                match restored {
                    Ok(Some((before, after))) if before.state != after.state => {
                        self.publish_state_change(name, before.state, &after).await
                    }
                    Ok(_) => {}
                    Err(re) => {
                        tracing::warn!(vm = %name, error = %re, "cannot record the VM back on its failed host after a failed failover")
                    }
                }
                self.note_failover_failed(name);
                if e.code == ErrorCode::InsufficientCapacity {
                    // Placement raced with other starts: deferred until room appears.
                    self.defer_restart(name, &e.message).await;
                } else {
                    self.events
                        .publish(
                            "ha.failover_failed",
                            name,
                            format!("VM {name} was not restarted: {}; retried", e.message),
                            json!({"from": from, "reason": e.message, "code": e.code}),
                        )
                        .await;
                }
            }
        }
        result.map(|_| ())
    }

    /// Places, commits the move and starts the VM; the host it runs on.
    async fn restart_elsewhere(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        from: &str,
    ) -> Result<String, ApiError> {
        let rec = self.record(name).await?;
        let pending = journal::pending_job(&ctx.journal_now().await?, JobKind::Start);
        let host = match pending {
            Some(p) => p.host,
            None => {
                let caps: Vec<_> = self
                    .capacities()
                    .await
                    .into_iter()
                    .filter(|c| c.name != from)
                    .collect();
                vdc_sched::place(&demand_of(&rec), &caps)
                    .map_err(super::super::vms::placement_error)?
            }
        };
        let _pending = self.promise_memory(&host, rec.config.memory_mib).await;
        let url = self.agent_url(&host).await?;
        ctx.check_cancel()?;
        ctx.progress(30, &format!("starting on {host} once the lease is free"))
            .await;
        let mut bridges = Vec::with_capacity(rec.config.nics.len());
        for nic in &rec.config.nics {
            bridges.push(self.get_network(&nic.network).await.ok());
        }
        let target = host.clone();
        let (before, rec) = self
            .update_record(name, |r| {
                let mut n = if r.owner.as_deref() == Some(target.as_str()) {
                    r
                } else {
                    ownership::commit_move(&r, &target)
                        .map_err(|e| ApiError::invalid_state(e.to_string()))?
                };
                for (nic, bridge) in n.config.nics.iter_mut().zip(&bridges) {
                    if let Some(net) = bridge {
                        crate::switches::attach(nic, net);
                    }
                }
                n.state = VmPowerState::Starting;
                Ok(n)
            })
            .await?;
        if before.state != rec.state {
            self.publish_state_change(name, before.state, &rec).await;
        }
        let request = AgentStartRequest {
            config: rec.config.clone(),
        };
        let rt = self
            .agent_job(ctx, &host, &url, JobOp::Start { request }, (30, 95))
            .await
            .and_then(crate::jobs::vm_result)?;
        self.set_runtime(name, &rt, Some(host.clone())).await?;
        Ok(host)
    }
}
