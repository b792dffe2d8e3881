//! The source of a live migration: the stream to the destination, driven
//! by the convergence policy; once it completed (this QEMU's vCPUs
//! stopped for good) the lease is handed to the destination; on failure
//! or cancel the stream is cancelled and the guest keeps running here.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_types::job::JobResult;
use vdc_types::migration::{MigrationJobInfo, MigrationProgress, OutgoingRequest};
use vdc_types::{ApiError, ErrorCode, VmPowerState};

use super::policy::{Action, Convergence, Sample};
use crate::agent::Agent;
use crate::error::host_error;
use crate::jobs::{job_cancelled, JobCell};

/// How often the figures are sampled and the policy consulted.
const SAMPLE: Duration = Duration::from_millis(200);
/// Longest wait for one QMP answer during the migration.
const QMP_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the old QEMU to be stopped by its supervisor once the
/// destination took the lease.
const OLD_QEMU_EXIT: Duration = Duration::from_secs(20);
/// Longest wait for the supervisor's answer to a hand-over.
const HAND_OVER_WAIT: Duration = Duration::from_secs(5);

impl Agent {
    /// `migrate_out` job: see the module documentation.
    pub(crate) async fn migrate_out_job(
        self: &Arc<Self>,
        cell: &JobCell,
        req: OutgoingRequest,
    ) -> Result<JobResult, ApiError> {
        let slot = self.slot(&req.vm_id)?;
        let _op = slot.op.lock().await;
        let (slot, vm) = self.running(&req.vm_id)?;
        if !matches!(slot.state(), VmPowerState::Running | VmPowerState::Paused) {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' is {}; only a running or paused VM can migrate",
                slot.inner().config.name,
                slot.state()
            )));
        }
        let was_running = slot.state() == VmPowerState::Running;
        let tls_dir = if req.tls {
            Some(self.migration_tls_dir()?)
        } else {
            None
        };
        let run_dir = self.run_dir(&req.vm_id);
        let mut policy = req.policy.clone();
        if req.nbd.is_some() {
            // The source must keep every disk block until the mirrors
            // finish, after the memory: no post-copy.
            policy.allow_postcopy = false;
        }
        let mut conv = Convergence::new(policy.clone());
        let mut info = MigrationJobInfo {
            policy_steps: vec![conv.first_step()],
            ..Default::default()
        };
        if req.nbd.is_some() {
            info.policy_steps
                .push("post-copy off: the disks move with the VM".to_string());
        }
        cell.set_migration(&info);
        let mirrors = match &req.nbd {
            Some(nbd) => {
                cell.progress(5, "mirroring the disks");
                let config = slot.inner().config.clone();
                let bw = policy.max_bandwidth_mib_s;
                self.mirror_out(cell, &vm, &config, nbd, bw, &mut info)
                    .await?
            }
            None => Vec::new(),
        };
        let qmp_err = |what: &str, e: vdc_qemu::QmpError| host_error(what.to_string(), &e);
        let mut caps = super::common_capabilities(policy.allow_postcopy);
        caps.push(("auto-converge", true));
        let caps = vm
            .qmp()
            .migrate_set_capabilities(&caps)
            .await
            .map_err(|e| qmp_err("cannot set migration capabilities", e));
        let set = match caps {
            Ok(_) => vm
                .qmp()
                .migrate_set_parameters(json!({
                    "max-bandwidth": policy.max_bandwidth_mib_s.saturating_mul(1024 * 1024),
                    "downtime-limit": policy.downtime_limit_ms,
                }))
                .await
                .map_err(|e| qmp_err("cannot set migration parameters", e)),
            Err(e) => Err(e),
        };
        let set = match (set, &tls_dir) {
            (Ok(()), Some(dir)) => {
                let client = super::tls::Endpoint::Client {
                    hostname: req.target.clone(),
                };
                match super::tls::arm(&vm, dir, &client).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        super::tls::disarm(&vm).await;
                        Err(qmp_err("cannot set up TLS for the stream", e))
                    }
                }
            }
            (Ok(()), None) => {
                super::tls::plain(&vm).await;
                Ok(())
            }
            (Err(e), _) => Err(e),
        };
        let mut events = vm.events();
        let memory_from = if mirrors.is_empty() { 5 } else { 50 };
        cell.progress(memory_from, "sending memory");
        let started = match set {
            Ok(()) => vm
                .qmp()
                .migrate(&req.uri)
                .await
                .map_err(|e| qmp_err("migrate failed", e)),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            if tls_dir.is_some() {
                super::tls::disarm(&vm).await;
            }
            super::outgoing_storage::abort_mirrors(&vm, &mirrors).await;
            return Err(e);
        }
        info.encrypted = super::tls::encrypted(&vm).await;
        tracing::info!(vm = %req.vm_id, uri = %req.uri, target = %req.target, "migration started");

        let mut tick = tokio::time::interval(SAMPLE);
        let outcome: Result<(), ApiError> = loop {
            let status = tokio::select! {
                _ = cell.cancel.cancelled() => break Err(job_cancelled()),
                ev = events.recv() => match ev {
                    Ok(ev) if ev.name == "MIGRATION" => ev
                        .data
                        .get("status")
                        .and_then(|s| s.as_str())
                        .unwrap_or("")
                        .to_string(),
                    Ok(_) => continue,
                    Err(_) => String::new(),
                },
                _ = tick.tick() => {
                    match tokio::time::timeout(QMP_WAIT, vm.qmp().query_migrate()).await {
                        Ok(Ok(q)) => {
                            let ram = q.ram.clone().unwrap_or_default();
                            let status = q.status.clone().unwrap_or_default();
                            info.progress = Some(progress_of(&q));
                            let (action, steps) = conv.observe(&Sample {
                                status: status.clone(),
                                passes: ram.dirty_sync_count,
                                remaining: ram.remaining,
                                throttle_percent: q.cpu_throttle_percentage.unwrap_or(0),
                                bytes_per_s: (ram.mbps.max(0.0) * 1e6 / 8.0) as u64,
                            });
                            info.policy_steps.extend(steps);
                            if let Some(a) = action {
                                if let Err(e) = apply(&vm, a).await {
                                    tracing::warn!(vm = %req.vm_id, error = %e, "a policy step failed");
                                    info.policy_steps.push(format!("policy step failed: {e}"));
                                }
                            }
                            info.postcopy = conv.postcopy();
                            cell.set_migration(&info);
                            let pct = match mirrors.is_empty() {
                                true => q.percent().clamp(5, 95),
                                false => (50 + u16::from(q.percent().min(95)) * 45 / 100) as u8,
                            };
                            cell.progress(pct, "sending memory");
                            status
                        }
                        Ok(Err(e)) if e.is_disconnected() => "qemu-gone".to_string(),
                        _ => String::new(),
                    }
                }
            };
            match status.as_str() {
                "completed" => break Ok(()),
                "failed" | "cancelled" => {
                    let why = vm
                        .qmp()
                        .query_migrate()
                        .await
                        .ok()
                        .and_then(|i| i.error_desc)
                        .unwrap_or_else(|| status.clone());
                    break Err(ApiError::new(
                        ErrorCode::HostError,
                        format!("the migration of VM '{}' failed: {why}", req.vm_id),
                    ));
                }
                "qemu-gone" => {
                    break Err(ApiError::new(
                        ErrorCode::HostError,
                        format!("QEMU of VM '{}' went away during the migration", req.vm_id),
                    ))
                }
                _ => {}
            }
        };

        if outcome.is_ok() && req.nbd.is_none() {
            // The stream completed: this QEMU's vCPUs stay stopped
            // (post-migrate) and every page is on the destination, which
            // runs the guest already. Name it in the lease now, outside
            // the downtime; its supervisor takes the lease and ours then
            // stops this QEMU. (Not earlier: after a post-copy this QEMU
            // served pages until the end, and a lease taken would have its
            // supervisor kill it.)
            if let Err(e) =
                vdc_supervisor::client::hand_over(&run_dir, &req.target, HAND_OVER_WAIT).await
            {
                // The destination waits for this lease; without it, ours
                // lapses and the destination cannot guard the guest.
                tracing::error!(vm = %req.vm_id, error = %crate::error::chain(&e), "cannot hand the lease over after the migration");
            }
        }
        match outcome {
            Ok(()) => {
                if let Ok(q) = vm.qmp().query_migrate().await {
                    info.downtime_ms = q.downtime;
                    info.total_ms = q.total_time;
                    info.progress = Some(progress_of(&q));
                }
                info.postcopy = conv.postcopy();
                cell.set_migration(&info);
                if req.nbd.is_some() {
                    self.hand_storage_over(cell, &slot, &vm, &mirrors, was_running, &mut info)
                        .await?;
                    tracing::info!(vm = %req.vm_id, target = %req.target, downtime_ms = ?info.downtime_ms, "migrated out with its storage");
                    return Ok(JobResult::Migration(info));
                }
                cell.progress(97, "waiting for the destination to take the lease");
                // The destination's supervisor takes the lease; ours then
                // stops the old QEMU (paused since the switchover).
                if !vm.wait_exit_for(OLD_QEMU_EXIT).await {
                    tracing::warn!(vm = %req.vm_id, "the old QEMU still runs (paused) after the migration; its supervisor stops it when its lease lapses");
                }
                tracing::info!(vm = %req.vm_id, target = %req.target, downtime_ms = ?info.downtime_ms, "migrated out");
                Ok(JobResult::Migration(info))
            }
            Err(e) => {
                super::outgoing_storage::abort_mirrors(&vm, &mirrors).await;
                self.keep_running_here(&vm, was_running, &req.vm_id).await;
                if tls_dir.is_some() {
                    super::tls::disarm(&vm).await;
                }
                Err(e)
            }
        }
    }

    /// After a failed or cancelled migration: the stream is cancelled and
    /// the guest runs here as before.
    pub(super) async fn keep_running_here(
        &self,
        vm: &vdc_qemu::Vm,
        was_running: bool,
        vm_id: &str,
    ) {
        if vm.has_exited() {
            return;
        }
        // Until QEMU says the migration is over, cancel it.
        for _ in 0..50 {
            match tokio::time::timeout(QMP_WAIT, vm.qmp().query_migrate()).await {
                Ok(Ok(q)) => match q.status.as_deref() {
                    Some("completed" | "failed" | "cancelled" | "none") | None => break,
                    _ => {
                        if let Err(e) = vm.qmp().migrate_cancel().await {
                            tracing::warn!(vm = %vm_id, error = %e, "migrate_cancel failed");
                        }
                    }
                },
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Paused by the migration, or stopped after a stream that
        // completed while the destination never ran the guest (storage).
        if was_running
            && matches!(
                vm.run_state().await,
                Ok(vdc_qemu::RunState::Paused | vdc_qemu::RunState::PostMigrate)
            )
        {
            if let Err(e) = vm.resume().await {
                tracing::error!(vm = %vm_id, error = %e, "cannot resume the VM after a failed migration");
            }
        }
        tracing::info!(vm = %vm_id, "migration undone; the VM keeps running here");
    }
}

/// The task's figures from one `query-migrate` answer.
fn progress_of(q: &vdc_qemu::MigrationInfo) -> MigrationProgress {
    let ram = q.ram.clone().unwrap_or_default();
    MigrationProgress {
        status: q.status.clone().unwrap_or_default(),
        bytes_sent: ram.transferred,
        bytes_remaining: ram.remaining,
        bytes_total: ram.total,
        dirty_pages_rate: ram.dirty_pages_rate,
        iterations: ram.dirty_sync_count,
        expected_downtime_ms: q.expected_downtime,
        cpu_throttle_percent: q.cpu_throttle_percentage,
    }
}

/// Carries a policy action out on the source QEMU.
async fn apply(vm: &vdc_qemu::Vm, action: Action) -> Result<(), vdc_qemu::QmpError> {
    match action {
        Action::StartPostcopy => vm.qmp().migrate_start_postcopy().await,
        Action::RaiseDowntime { downtime_limit_ms } => {
            vm.qmp()
                .migrate_set_parameters(json!({ "downtime-limit": downtime_limit_ms }))
                .await
        }
        Action::RaiseLimits { downtime_limit_ms } => {
            vm.qmp()
                .migrate_set_parameters(json!({
                    "downtime-limit": downtime_limit_ms,
                    "max-bandwidth": 0u64,
                }))
                .await
        }
    }
}
