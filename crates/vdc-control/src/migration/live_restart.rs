//! A live migration whose server restarted mid-way (the `vm.migrate` rule
//! of `crate::resume`): it ends with one owner.

use std::time::Instant;

use vdc_types::job::{JobKind, JobResult, JobState};
use vdc_types::migration::{MigrationKind, MigrationOutcome, MigrationReport};
use vdc_types::{ApiError, ErrorCode, Task};

use super::live_jobs::CANCEL_LIMIT;
use crate::journal;
use crate::tasks::{cancelled, TaskCtx};
use crate::Cluster;

impl Cluster {
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
        datastore: Option<&str>,
    ) -> Result<(), ApiError> {
        let name = task.target.as_str();
        let jobs = task.journal.as_ref().map(journal::jobs).unwrap_or_default();
        let last = |kind: JobKind| jobs.iter().rev().find(|j| j.kind == kind).cloned();
        let mut report = task.migration.clone().unwrap_or(MigrationReport {
            kind: Some(MigrationKind::Live),
            source: source.to_string(),
            target: target.to_string(),
            datastore: datastore.map(str::to_string),
            ..Default::default()
        });
        if let Some(ds) = datastore {
            // With storage the destination decides: the guest ran there
            // only if its job succeeded; otherwise it is stopped first and
            // the source's guest runs on.
            let inc = last(JobKind::MigrateIn);
            let out = last(JobKind::MigrateOut);
            let rec = self.record(name).await?;
            if let Some(inc) = &inc {
                if let Ok(url) = self.agent_url(&inc.host).await {
                    if let Ok(j) = self.agents.job(&inc.host, &url, &inc.operation_id, 0).await {
                        if let (JobState::Succeeded, Some(JobResult::Vm(rt))) =
                            (&j.state, &j.result)
                        {
                            let moved = vdc_types::transfer::relocate(&rec.config, ds);
                            self.commit_live(
                                ctx,
                                name,
                                source,
                                target,
                                rt,
                                &mut report,
                                Some(&moved),
                            )
                            .await?;
                            if let (Some(out), Ok(src_url)) = (&out, self.agent_url(source).await) {
                                self.clean_source(
                                    name,
                                    source,
                                    &src_url,
                                    &out.operation_id,
                                    &rec.config,
                                )
                                .await;
                            }
                            return Ok(());
                        }
                    }
                    self.cancel_and_wait(&inc.host, &url, &inc.operation_id)
                        .await;
                }
            }
            if let Some(out) = &out {
                if let Ok(url) = self.agent_url(&out.host).await {
                    self.cancel_and_wait(&out.host, &url, &out.operation_id)
                        .await;
                }
            }
            return self.stay_on_source(ctx, name, source).await;
        }
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
                            encrypted: m.encrypted,
                        });
                        report.tls = m.encrypted;
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
                                        .commit_live(
                                            ctx,
                                            name,
                                            source,
                                            target,
                                            rt,
                                            &mut report,
                                            None,
                                        )
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
        self.stay_on_source(ctx, name, source).await
    }

    /// The end of an interrupted migration that did not move the VM: its
    /// state as the source reports it, the task failed (or cancelled).
    async fn stay_on_source(
        &self,
        ctx: &TaskCtx,
        name: &str,
        source: &str,
    ) -> Result<(), ApiError> {
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
}
