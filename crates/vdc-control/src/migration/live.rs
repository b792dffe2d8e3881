//! Live migration of a running VM to another host, orchestrated by the
//! server as a `vm.migrate` task; the memory stream goes agent to agent.
//!
//! ```text
//!  checks (4xx, nothing changed) ─► claim: migrating{source,target}
//!    │
//!  [slot] wait for a migration slot (limits per host and cluster)
//!    │
//!  destination job migrate_in ──► listening (uri)
//!    │
//!  source job migrate_out(uri, policy) ──► progress, policy steps on the task
//!    │                               │
//!    │ completed                     │ failed / cancelled / a host lost
//!    ▼                               ▼
//!  commit_move: owner = target     both jobs cancelled: the destination's
//!  (the lease moved at the          QEMU, taps and runtime directory go;
//!  switchover), vm.migrated         the VM keeps running on the source
//! ```
//!
//! Ownership moves exactly once: the destination's supervisor takes the
//! lease handed over at the switchover (the source's supervisor then stops
//! the old, paused QEMU), and the record's owner changes in one
//! compare-and-swap write ([`crate::ownership::commit_move`]). Until then
//! the operation in flight makes the server ignore both hosts' reports
//! about the VM's state; after it, the source's reports no longer count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vdc_sched::Demand;
use vdc_types::job::{JobOp, JobResult, JobState};
use vdc_types::migration::{
    IncomingRequest, MigrateRequest, MigrationKind, MigrationOutcome, MigrationPolicy,
    MigrationReport, OutgoingRequest,
};
use vdc_types::{ApiError, ErrorCode, Step, Task, TaskParams, VmAction};

use super::live_jobs::job_error;
use crate::tasks::{cancelled, TaskCtx};
use crate::{Cluster, VmRecord};

/// Longest wait for the destination to listen.
const LISTEN_LIMIT: Duration = Duration::from_secs(120);

/// What a live migration needs from the VM's record.
pub(crate) fn demand_of(rec: &VmRecord) -> Demand {
    let mut datastores: Vec<String> = rec
        .config
        .disks
        .iter()
        .map(|d| d.datastore.clone())
        .collect();
    datastores.push(rec.config.datastore.clone());
    datastores.sort();
    datastores.dedup();
    Demand {
        cpus: rec.config.cpus,
        memory_mib: rec.config.memory_mib,
        datastores,
        cpu_model: Some(rec.config.cpu_model.clone()),
        switches: crate::switches::switches_of(&rec.config),
    }
}

impl Cluster {
    /// Moves running VM `name` to another host while it runs (a
    /// `vm.migrate` task). Every check runs before anything moves.
    pub(crate) async fn live_migration(
        self: &Arc<Self>,
        name: &str,
        rec: VmRecord,
        req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        // The lifecycle first: busy, unknown host, …
        rec.decide(VmAction::Migrate, Some("another host"))?;
        let source = rec
            .owner
            .clone()
            .ok_or_else(|| ApiError::internal(format!("VM '{name}' runs but has no owner")))?;
        self.agent_url(&source).await?;
        let (target, storage) = self.live_destination(name, &rec, &source, &req).await?;
        let mut policy = self.migration_settings().policy;
        if let Some(p) = req.allow_postcopy {
            policy.allow_postcopy = p;
        }
        if let Some(ds) = &storage {
            self.check_storage_move(name, &rec, ds, &req).await?;
            self.refuse_disk_copy_with_snapshots(&rec).await?;
            policy.allow_postcopy = false;
        }
        if let Some(b) = req.bandwidth_mib_s {
            if b > 1 << 20 {
                return Err(ApiError::invalid(format!(
                    "bandwidth {b} MiB/s is more than {} MiB/s; use 0 for unlimited",
                    1 << 20
                )));
            }
            policy.max_bandwidth_mib_s = b;
        }
        let allow_postcopy = policy.allow_postcopy;
        let tls = self.tls_for(&source, &target, req.tls).await?;
        let (_, step) = self
            .begin_operation(name, VmAction::Migrate, Some(&target))
            .await?;
        let params = TaskParams::VmMigrate {
            vm_id: rec.config.id.clone(),
            migration: MigrationKind::Live,
            source: source.clone(),
            target: target.clone(),
            datastore: storage.clone(),
            allow_postcopy,
        };
        let me = self.clone();
        let n = name.to_string();
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move {
                me.live_body(&ctx, &n, &source, &target, policy, storage, tls)
                    .await
            },
        )
        .await
    }

    /// The task body: see the module documentation. `storage`: the
    /// datastore the disks move to (a live migration with storage).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn live_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        source: &str,
        target: &str,
        policy: MigrationPolicy,
        storage: Option<String>,
        tls: bool,
    ) -> Result<(), ApiError> {
        let begun = Instant::now();
        let allow_postcopy = policy.allow_postcopy;
        let mut report = MigrationReport {
            kind: Some(MigrationKind::Live),
            source: source.to_string(),
            target: target.to_string(),
            datastore: storage.clone(),
            tls,
            ..Default::default()
        };
        ctx.set_migration(&report).await;
        let _slot = self.migration_slot(ctx, name, source, target).await?;
        let rec = self.record(name).await?;
        let _pending = self.promise_memory(target, rec.config.memory_mib).await;
        let src_url = self.agent_url(source).await?;
        let dst_url = self.agent_url(target).await?;
        ctx.check_cancel()?;
        ctx.progress(5, "starting QEMU on the destination").await;

        let mut config = match &storage {
            Some(ds) => vdc_types::transfer::relocate(&rec.config, ds),
            None => rec.config.clone(),
        };
        for nic in config.nics.iter_mut() {
            if let Ok(n) = self.get_network(&nic.network).await {
                crate::switches::attach(nic, &n);
            }
        }
        let incoming = JobOp::MigrateIn {
            request: IncomingRequest {
                config: config.clone(),
                source: source.to_string(),
                allow_postcopy,
                copy_storage: storage.is_some(),
                keep_paused: rec.state == vdc_types::VmPowerState::Paused,
                tls,
            },
        };
        let in_id = self
            .submit_journaled(ctx, target, &dst_url, incoming)
            .await?;
        let result = self
            .stream(
                ctx,
                name,
                source,
                &src_url,
                target,
                &dst_url,
                &in_id,
                policy,
                storage.is_some(),
                &mut report,
            )
            .await;
        let (rt, out_id) = match result {
            Ok(done) => done,
            Err(e) => {
                self.cancel_and_wait(target, &dst_url, &in_id).await;
                // The source's reports tell the VM's state from now on.
                if let Some(rt) = self.runtime(source, &rec.config.id).await {
                    if let Err(b) = self.set_runtime(name, &rt, None).await {
                        tracing::warn!(vm = %name, error = %b, "cannot record the VM's state after a failed migration");
                    }
                }
                return Err(e);
            }
        };
        report.outcome.get_or_insert_with(Default::default).total_ms =
            begun.elapsed().as_millis() as u64;
        let moved = storage.is_some().then_some(&config);
        self.commit_live(ctx, name, source, target, &rt, &mut report, moved)
            .await?;
        if storage.is_some() {
            self.clean_source(name, source, &src_url, &out_id, &rec.config)
                .await;
        }
        Ok(())
    }

    /// Records the move as done: the destination owns the VM, with its
    /// configuration on the new datastore after a move with storage (one
    /// compare-and-swap write), `vm.migrated` with the figures.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit_live(
        &self,
        ctx: &TaskCtx,
        name: &str,
        source: &str,
        target: &str,
        rt: &vdc_types::agent::VmRuntime,
        report: &mut MigrationReport,
        moved: Option<&vdc_types::VmConfig>,
    ) -> Result<(), ApiError> {
        // Commit: the destination owns the VM.
        let (before, after) = self
            .update_record(name, |r| {
                let mut new = crate::ownership::commit_move(&r, target)
                    .map_err(|e| ApiError::internal(format!("cannot commit the move: {e}")))?;
                new.state = rt.state;
                new.since_ms = rt.since_ms;
                if let Some(c) = moved {
                    let mut c = c.clone();
                    // The bridges are the server's business, filled in at
                    // each start.
                    for (nic, old) in c.nics.iter_mut().zip(&r.config.nics) {
                        nic.bridge.clone_from(&old.bridge);
                        nic.switch.clone_from(&old.switch);
                        nic.vlan = old.vlan;
                        nic.shaping = old.shaping;
                    }
                    new.config = c;
                }
                Ok(new)
            })
            .await?;
        if let Err(e) = ctx
            .journal(Step::Placed {
                host: target.to_string(),
            })
            .await
        {
            tracing::warn!(vm = %name, error = %e, "cannot journal the committed move");
        }
        if before.state != after.state {
            self.publish_state_change(name, before.state, &after).await;
        }
        let outcome = report.outcome.clone().unwrap_or_default();
        ctx.set_migration(report).await;
        let with = match &report.datastore {
            Some(ds) => format!(" with its disks to datastore {ds}"),
            None => String::new(),
        };
        self.events
            .publish(
                "vm.migrated",
                name,
                format!(
                    "VM {name} migrated live from {source} to {target}{with} (downtime {} ms, total {} ms, stream {})",
                    outcome.downtime_ms,
                    outcome.total_ms,
                    if outcome.encrypted { "encrypted" } else { "plain" }
                ),
                json!({
                    "source": source,
                    "target": target,
                    "datastore": report.datastore,
                    "kind": MigrationKind::Live,
                    "downtime_ms": outcome.downtime_ms,
                    "total_ms": outcome.total_ms,
                    "migration_ms": outcome.migration_ms,
                    "postcopy": outcome.postcopy,
                    "encrypted": outcome.encrypted,
                    "policy_steps": report.policy_steps,
                }),
            )
            .await;
        Ok(())
    }

    /// Waits for the destination to listen, runs the source's job to its
    /// end and the destination's after it. Returns the VM's runtime on the
    /// destination.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        source: &str,
        src_url: &str,
        target: &str,
        dst_url: &str,
        in_id: &str,
        policy: MigrationPolicy,
        storage: bool,
        report: &mut MigrationReport,
    ) -> Result<(vdc_types::agent::VmRuntime, String), ApiError> {
        // 1. The destination listens.
        let listening = Instant::now();
        let (uri, nbd) = loop {
            ctx.check_cancel()?;
            let j = self.follow(ctx, target, dst_url, in_id, 2).await?;
            if let Some(uri) = j.migration.as_ref().and_then(|m| m.uri.clone()) {
                break (uri, j.migration.and_then(|m| m.nbd));
            }
            if j.state.is_final() {
                return Err(job_error(target, &j));
            }
            if listening.elapsed() > LISTEN_LIMIT {
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!("host '{target}' did not get ready to receive VM '{name}'"),
                ));
            }
        };
        if storage && nbd.is_none() {
            return Err(ApiError::new(
                ErrorCode::HostError,
                format!("host '{target}' offered no NBD export for the disks of VM '{name}'"),
            ));
        }
        ctx.progress(
            10,
            if storage {
                "mirroring the disks"
            } else {
                "sending memory"
            },
        )
        .await;
        // 2. The source sends.
        let vm_id = self.record(name).await?.config.id;
        let outgoing = JobOp::MigrateOut {
            request: OutgoingRequest {
                vm_id,
                target: target.to_string(),
                uri,
                policy,
                nbd,
                tls: report.tls,
            },
        };
        let out_id = self
            .submit_journaled(ctx, source, src_url, outgoing)
            .await?;
        let mut cancel_sent = false;
        let mut dest_lost = false;
        let out = loop {
            if ctx.is_cancelled() && !cancel_sent {
                cancel_sent = true;
                if let Err(e) = self.agents.cancel_job(source, src_url, &out_id).await {
                    tracing::warn!(vm = %name, error = %e, "cannot cancel the outgoing migration yet");
                    cancel_sent = false;
                }
            }
            let j = tokio::select! {
                j = self.follow(ctx, source, src_url, &out_id, 1) => j?,
                _ = ctx.cancelled(), if !cancel_sent => continue,
            };
            if let Some(m) = &j.migration {
                report.progress = m.progress.clone();
                report.disks = m.disks;
                report.policy_steps = m.policy_steps.clone();
                ctx.set_migration(report).await;
                if m.progress.is_none() {
                    if let Some(d) = &m.disks {
                        let done = (40 * d.bytes_mirrored)
                            .checked_div(d.bytes_mirrored + d.bytes_remaining)
                            .unwrap_or(0);
                        ctx.progress(10 + done.min(40) as u8, "mirroring the disks")
                            .await;
                    }
                }
                if let Some(p) = &m.progress {
                    let done = (80 * p.bytes_total.saturating_sub(p.bytes_remaining))
                        .checked_div(p.bytes_total)
                        .unwrap_or(0);
                    let pct = 10 + done.min(80) as u8;
                    ctx.progress(pct.min(90), &format!("sending memory ({})", p.status))
                        .await;
                }
            }
            let synced = storage && j.migration.as_ref().is_some_and(|m| m.disks_synced);
            if j.state.is_final() || synced {
                break j;
            }
            // The destination failing (its QEMU killed) or its agent gone
            // ends the stream: without its agent nobody would take the
            // lease or follow the VM there.
            if !cancel_sent {
                let gone = match self.agents.job(target, dst_url, in_id, 0).await {
                    Ok(d) => d.state.is_final() && d.state != JobState::Succeeded,
                    Err(e) => matches!(e.code, ErrorCode::HostUnavailable | ErrorCode::NotFound),
                };
                if gone {
                    tracing::warn!(vm = %name, "the destination gave up or went away; cancelling the stream");
                    dest_lost = true;
                    cancel_sent = true;
                    if let Err(e) = self.agents.cancel_job(source, src_url, &out_id).await {
                        tracing::warn!(vm = %name, error = %e, "cannot cancel the outgoing migration");
                    }
                }
            }
        };
        if storage && !out.state.is_final() {
            // Every disk synced, the guest paused on the source.
            let m = out.migration.clone().unwrap_or_default();
            report.policy_steps = m.policy_steps.clone();
            report.disks = m.disks;
            report.outcome = Some(MigrationOutcome {
                downtime_ms: m.downtime_ms.unwrap_or(0),
                migration_ms: m.total_ms.unwrap_or(0),
                total_ms: 0,
                postcopy: false,
                encrypted: m.encrypted,
            });
            let rt = self
                .switch_over_storage(
                    ctx, name, source, src_url, &out_id, target, dst_url, in_id, report,
                )
                .await?;
            return Ok((rt, out_id));
        }
        self.journal_end(ctx, &out_id, out.state).await;
        match out.state {
            JobState::Succeeded => {}
            JobState::Cancelled if ctx.is_cancelled() => return Err(cancelled()),
            _ => {
                // The destination's error says more when it failed first.
                match self.agents.job(target, dst_url, in_id, 0).await {
                    Ok(d) if d.state == JobState::Failed => {
                        // Both sides' words: a TLS handshake refused by
                        // either is told by the other's error.
                        let mut e = job_error(target, &d);
                        if let Some(src) = &out.error {
                            e.message = format!("{} (host '{source}': {})", e.message, src.message);
                        }
                        return Err(e);
                    }
                    Err(e) if dest_lost => {
                        return Err(ApiError::new(
                            ErrorCode::HostUnavailable,
                            format!(
                                "host '{target}' stopped answering during the migration ({}); VM '{name}' stays on host '{source}'",
                                e.message
                            ),
                        ))
                    }
                    _ => {}
                }
                return Err(job_error(source, &out));
            }
        }
        if let Some(JobResult::Migration(m)) = &out.result {
            report.policy_steps = m.policy_steps.clone();
            if m.progress.is_some() {
                report.progress = m.progress.clone();
            }
            report.outcome = Some(MigrationOutcome {
                downtime_ms: m.downtime_ms.unwrap_or(0),
                migration_ms: m.total_ms.unwrap_or(0),
                total_ms: 0,
                postcopy: m.postcopy,
                encrypted: m.encrypted,
            });
        }
        ctx.progress(95, "the destination takes the lease over")
            .await;
        // 3. The destination runs the VM.
        loop {
            let d = self.follow(ctx, target, dst_url, in_id, 5).await?;
            if d.state.is_final() {
                self.journal_end(ctx, in_id, d.state).await;
                return match (&d.state, &d.result) {
                    (JobState::Succeeded, Some(JobResult::Vm(rt))) => Ok((rt.clone(), out_id)),
                    _ => Err(job_error(target, &d)),
                };
            }
        }
    }
}
