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
use vdc_types::job::{Job, JobKind, JobOp, JobRequest, JobResult, JobState};
use vdc_types::migration::{
    IncomingRequest, MigrateRequest, MigrationKind, MigrationOutcome, MigrationReport,
    OutgoingRequest,
};
use vdc_types::{ApiError, ErrorCode, Step, Task, TaskParams, VmAction};

use crate::journal;
use crate::tasks::{cancelled, TaskCtx};
use crate::vms::placement_err;
use crate::{Cluster, VmRecord};

/// Longest wait for the destination to listen.
const LISTEN_LIMIT: Duration = Duration::from_secs(120);
/// How long a host may stay silent during a migration before it fails.
const SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// Longest wait for a cancelled job to end.
const CANCEL_LIMIT: Duration = Duration::from_secs(30);

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
        let target = self
            .pick_target(name, &rec, &source, req.to.as_deref())
            .await?;
        let allow_postcopy = req
            .allow_postcopy
            .unwrap_or(self.migration_settings().policy.allow_postcopy);
        let (_, step) = self
            .begin_operation(name, VmAction::Migrate, Some(&target))
            .await?;
        let params = TaskParams::VmMigrate {
            vm_id: rec.config.id.clone(),
            migration: MigrationKind::Live,
            source: source.clone(),
            target: target.clone(),
            datastore: None,
            allow_postcopy,
        };
        let me = self.clone();
        let n = name.to_string();
        self.spawn_operation(
            name,
            step.operation.task_kind(),
            Some(params),
            move |ctx| async move {
                me.live_body(&ctx, &n, &source, &target, allow_postcopy)
                    .await
            },
        )
        .await
    }

    /// The destination: `to` checked, or placement's choice among the
    /// other hosts.
    async fn pick_target(
        &self,
        name: &str,
        rec: &VmRecord,
        source: &str,
        to: Option<&str>,
    ) -> Result<String, ApiError> {
        let demand = demand_of(rec);
        let caps = self.capacities().await;
        let Some(to) = to else {
            let others: Vec<_> = caps.into_iter().filter(|c| c.name != source).collect();
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
        let cap = caps
            .iter()
            .find(|c| c.name == to)
            .ok_or_else(|| ApiError::not_found("Host", to))?;
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

    /// The task body: see the module documentation.
    pub(crate) async fn live_body(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        name: &str,
        source: &str,
        target: &str,
        allow_postcopy: bool,
    ) -> Result<(), ApiError> {
        let begun = Instant::now();
        let mut report = MigrationReport {
            kind: Some(MigrationKind::Live),
            source: source.to_string(),
            target: target.to_string(),
            ..Default::default()
        };
        ctx.set_migration(&report).await;
        let _slot = self.migration_slot(ctx, source, target).await?;
        let rec = self.record(name).await?;
        let _pending = self.promise_memory(target, rec.config.memory_mib).await;
        let src_url = self.agent_url(source).await?;
        let dst_url = self.agent_url(target).await?;
        ctx.check_cancel()?;
        ctx.progress(5, "starting QEMU on the destination").await;

        let mut config = rec.config.clone();
        for nic in config.nics.iter_mut() {
            if let Ok(n) = self.get_network(&nic.network).await {
                nic.bridge = Some(n.bridge);
            }
        }
        let incoming = JobOp::MigrateIn {
            request: IncomingRequest {
                config,
                source: source.to_string(),
                allow_postcopy,
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
                allow_postcopy,
                &mut report,
            )
            .await;
        let rt = match result {
            Ok(rt) => rt,
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
        self.commit_live(ctx, name, source, target, &rt, &mut report)
            .await
    }

    /// Records the move as done: the destination owns the VM (one
    /// compare-and-swap write), `vm.migrated` with the figures.
    async fn commit_live(
        &self,
        ctx: &TaskCtx,
        name: &str,
        source: &str,
        target: &str,
        rt: &vdc_types::agent::VmRuntime,
        report: &mut MigrationReport,
    ) -> Result<(), ApiError> {
        // Commit: the destination owns the VM.
        let (before, after) = self
            .update_record(name, |r| {
                let mut new = crate::ownership::commit_move(&r, target)
                    .map_err(|e| ApiError::internal(format!("cannot commit the move: {e}")))?;
                new.state = rt.state;
                new.since_ms = rt.since_ms;
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
        self.events
            .publish(
                "vm.migrated",
                name,
                format!(
                    "VM {name} migrated live from {source} to {target} (downtime {} ms, total {} ms)",
                    outcome.downtime_ms, outcome.total_ms
                ),
                json!({
                    "source": source,
                    "target": target,
                    "kind": MigrationKind::Live,
                    "downtime_ms": outcome.downtime_ms,
                    "total_ms": outcome.total_ms,
                    "migration_ms": outcome.migration_ms,
                    "postcopy": outcome.postcopy,
                    "policy_steps": report.policy_steps,
                }),
            )
            .await;
        Ok(())
    }

    /// A live migration whose server restarted mid-way: the stream is
    /// cancelled (a completed one cannot be); if it had completed and the
    /// destination runs the VM, the move is committed; else the
    /// destination's job is cancelled (its QEMU, taps and runtime
    /// directory go) and the VM stays on the source.
    pub(crate) async fn settle_after_restart(
        &self,
        ctx: &TaskCtx,
        task: &Task,
        source: &str,
        target: &str,
    ) -> Result<(), ApiError> {
        let name = task.target.as_str();
        let jobs = task.journal.as_ref().map(journal::jobs).unwrap_or_default();
        let last = |kind: JobKind| jobs.iter().rev().find(|j| j.kind == kind).cloned();
        let mut report = task.migration.clone().unwrap_or(MigrationReport {
            kind: Some(MigrationKind::Live),
            source: source.to_string(),
            target: target.to_string(),
            ..Default::default()
        });
        let mut sent = false;
        if let Some(out) = last(JobKind::MigrateOut) {
            if let Ok(url) = self.agent_url(&out.host).await {
                self.cancel_and_wait(&out.host, &url, &out.operation_id)
                    .await;
                if let Ok(j) = self.agents.job(&out.host, &url, &out.operation_id, 0).await {
                    sent = j.state == JobState::Succeeded;
                    if let Some(JobResult::Migration(m)) = &j.result {
                        report.policy_steps = m.policy_steps.clone();
                        report.outcome = Some(MigrationOutcome {
                            downtime_ms: m.downtime_ms.unwrap_or(0),
                            migration_ms: m.total_ms.unwrap_or(0),
                            total_ms: m.total_ms.unwrap_or(0),
                            postcopy: m.postcopy,
                        });
                    }
                }
            }
        }
        if let Some(inc) = last(JobKind::MigrateIn) {
            if let Ok(url) = self.agent_url(&inc.host).await {
                if sent {
                    let since = Instant::now();
                    while since.elapsed() < CANCEL_LIMIT {
                        match self.agents.job(&inc.host, &url, &inc.operation_id, 5).await {
                            Ok(j) if j.state.is_final() => {
                                if let (JobState::Succeeded, Some(JobResult::Vm(rt))) =
                                    (&j.state, &j.result)
                                {
                                    return self
                                        .commit_live(ctx, name, source, target, rt, &mut report)
                                        .await;
                                }
                                break;
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
                self.cancel_and_wait(&inc.host, &url, &inc.operation_id)
                    .await;
            }
        }
        let rec = self.record(name).await?;
        if let Some(rt) = self.runtime(source, &rec.config.id).await {
            if let Err(e) = self.set_runtime(name, &rt, None).await {
                tracing::warn!(vm = %name, error = %e, "cannot record the VM's state after an interrupted migration");
            }
        }
        if ctx.is_cancelled() {
            return Err(cancelled());
        }
        Err(ApiError::new(
            ErrorCode::HostError,
            format!("the server restarted during the migration; VM '{name}' stays on host '{source}'; migrate it again"),
        ))
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
        allow_postcopy: bool,
        report: &mut MigrationReport,
    ) -> Result<vdc_types::agent::VmRuntime, ApiError> {
        // 1. The destination listens.
        let listening = Instant::now();
        let uri = loop {
            ctx.check_cancel()?;
            let j = self.follow(ctx, target, dst_url, in_id, 2).await?;
            if let Some(uri) = j.migration.as_ref().and_then(|m| m.uri.clone()) {
                break uri;
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
        ctx.progress(10, "sending memory").await;
        // 2. The source sends.
        let mut policy = self.migration_settings().policy;
        policy.allow_postcopy = allow_postcopy;
        let vm_id = self.record(name).await?.config.id;
        let outgoing = JobOp::MigrateOut {
            request: OutgoingRequest {
                vm_id,
                target: target.to_string(),
                uri,
                policy,
            },
        };
        let out_id = self
            .submit_journaled(ctx, source, src_url, outgoing)
            .await?;
        let mut cancel_sent = false;
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
                report.policy_steps = m.policy_steps.clone();
                ctx.set_migration(report).await;
                if let Some(p) = &m.progress {
                    let pct = 10
                        + (80 * p.bytes_total.saturating_sub(p.bytes_remaining))
                            .checked_div(p.bytes_total)
                            .unwrap_or(0) as u8;
                    ctx.progress(pct.min(90), &format!("sending memory ({})", p.status))
                        .await;
                }
            }
            if j.state.is_final() {
                break j;
            }
            // The destination failing (its QEMU killed) ends the stream.
            if !cancel_sent {
                if let Ok(d) = self.agents.job(target, dst_url, in_id, 0).await {
                    if d.state.is_final() && d.state != JobState::Succeeded {
                        tracing::warn!(vm = %name, "the destination gave up; cancelling the stream");
                        cancel_sent = true;
                        if let Err(e) = self.agents.cancel_job(source, src_url, &out_id).await {
                            tracing::warn!(vm = %name, error = %e, "cannot cancel the outgoing migration");
                        }
                    }
                }
            }
        };
        self.journal_end(ctx, &out_id, out.state).await;
        match out.state {
            JobState::Succeeded => {}
            JobState::Cancelled if ctx.is_cancelled() => return Err(cancelled()),
            _ => {
                // The destination's error says more when it failed first.
                if let Ok(d) = self.agents.job(target, dst_url, in_id, 0).await {
                    if d.state == JobState::Failed {
                        return Err(job_error(target, &d));
                    }
                }
                return Err(job_error(source, &out));
            }
        }
        if let Some(JobResult::Migration(m)) = &out.result {
            report.policy_steps = m.policy_steps.clone();
            report.outcome = Some(MigrationOutcome {
                downtime_ms: m.downtime_ms.unwrap_or(0),
                migration_ms: m.total_ms.unwrap_or(0),
                total_ms: 0,
                postcopy: m.postcopy,
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
                    (JobState::Succeeded, Some(JobResult::Vm(rt))) => Ok(rt.clone()),
                    _ => Err(job_error(target, &d)),
                };
            }
        }
    }

    /// Submits `op` on `host`, journaled first (so a restarted server can
    /// find and cancel it). Returns the operation id.
    async fn submit_journaled(
        &self,
        ctx: &TaskCtx,
        host: &str,
        url: &str,
        op: JobOp,
    ) -> Result<String, ApiError> {
        let kind = op.kind();
        let recorded = ctx.journal_now().await?;
        let id = journal::next_operation_id(ctx.id(), &recorded);
        ctx.journal(Step::JobSubmitted {
            host: host.to_string(),
            operation_id: id.clone(),
            job: kind,
        })
        .await?;
        let req = JobRequest {
            operation_id: id.clone(),
            op,
        };
        self.agents.submit_job(host, url, &req).await?;
        Ok(id)
    }

    async fn journal_end(&self, ctx: &TaskCtx, id: &str, state: JobState) {
        if let Err(e) = ctx
            .journal(Step::JobEnded {
                operation_id: id.to_string(),
                state,
            })
            .await
        {
            tracing::warn!(task = %ctx.id(), error = %e, "cannot journal the end of a job");
        }
    }

    /// A job's status (long poll of `wait_s`); a host silent for longer than
    /// [`SILENCE_LIMIT`] fails the migration.
    async fn follow(
        &self,
        _ctx: &TaskCtx,
        host: &str,
        url: &str,
        id: &str,
        wait_s: u64,
    ) -> Result<Job, ApiError> {
        let since = Instant::now();
        loop {
            match self.agents.job(host, url, id, wait_s).await {
                Ok(j) => return Ok(j),
                Err(e)
                    if e.code == ErrorCode::HostUnavailable && since.elapsed() < SILENCE_LIMIT =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) if e.code == ErrorCode::NotFound => {
                    return Err(ApiError::new(
                        ErrorCode::HostError,
                        format!("host '{host}' lost the migration job {id} (its agent restarted)"),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Cancels a job and waits (bounded) for it to end; failures are
    /// logged.
    pub(crate) async fn cancel_and_wait(&self, host: &str, url: &str, id: &str) {
        match self.agents.cancel_job(host, url, id).await {
            Ok(j) if j.state.is_final() => return,
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => return,
            Err(e) => {
                tracing::warn!(%host, job = %id, error = %e, "cannot cancel the migration job; the host cleans up when its wait ends");
                return;
            }
        }
        let since = Instant::now();
        while since.elapsed() < CANCEL_LIMIT {
            match self.agents.job(host, url, id, 5).await {
                Ok(j) if j.state.is_final() => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%host, job = %id, error = %e, "cannot follow the cancelled migration job");
                    return;
                }
            }
        }
        tracing::warn!(%host, job = %id, "the cancelled migration job did not end in time");
    }
}

/// The error of an ended job that did not succeed.
fn job_error(host: &str, j: &Job) -> ApiError {
    match (&j.state, &j.error) {
        (JobState::Cancelled, _) => cancelled(),
        (_, Some(e)) => {
            let mut e = e.clone();
            if !e.message.contains(host) {
                e.message = format!("host '{host}': {}", e.message);
            }
            e
        }
        _ => ApiError::new(
            ErrorCode::HostError,
            format!(
                "the {} job {} on host '{host}' did not succeed",
                j.kind, j.id
            ),
        ),
    }
}
