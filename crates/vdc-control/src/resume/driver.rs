//! Carrying out the resume rules after a server restart:
//!
//! 1. take the tasks the previous server left unfinished (their VMs stay
//!    claimed: each VM's record names the operation and its task, so
//!    reports and new operations keep off them until the task ends and
//!    releases it);
//! 2. wait until every recorded host has reported, or
//!    [`RESUME_HOST_WAIT`] passed; a host that does not answer while a
//!    task is observed is asked again every second for up to as long
//!    (an agent busy writing a suspend file can be slow); only then is it
//!    unreachable;
//! 3. per task, observe the world (the record, the pending job on its
//!    host, the VM as its host reports it), [`decide`], journal the
//!    decision, publish `task.resumed`, and run the continuation under the
//!    same task id.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vdc_types::api::DEFAULT_SHUTDOWN_TIMEOUT_S;
use vdc_types::{ApiError, ErrorCode, Step, Task, TaskParams, VmPowerState};

use super::{decide, Decision, JobSeen, Outcome, TaskKind, VmSeen, World};
use crate::tasks::{cancelled, TaskCtx};
use crate::{journal, Cluster, HostRecord};

/// Longest wait for the recorded hosts to report after a restart.
pub const RESUME_HOST_WAIT: Duration = Duration::from_secs(20);

impl Cluster {
    /// Takes the tasks a previous server left unfinished and marks their
    /// VMs busy now (before any request is served), then resumes or
    /// reconciles them in the background.
    pub async fn spawn_resume(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        // Their VMs stay claimed: the operation recorded in each VM's
        // record names the task, which has not ended.
        let held = self.tasks.take_unfinished().await;
        let me = self.clone();
        tokio::spawn(async move { me.resume_unfinished(held).await })
    }

    async fn resume_unfinished(self: Arc<Self>, held: Vec<Task>) {
        if held.is_empty() {
            return;
        }
        tracing::info!(count = held.len(), "resuming tasks left unfinished");
        self.wait_for_hosts(RESUME_HOST_WAIT).await;
        let patience = tokio::time::Instant::now() + RESUME_HOST_WAIT;
        for t in held {
            // Read again: a cancel may have come while the hosts reported.
            let t = self.tasks.get(&t.id).await.unwrap_or(t);
            let world = self.observe_patiently(&t, patience).await;
            let kind = TaskKind::parse(&t.kind);
            let decision = decide(kind, t.journal.as_ref(), t.cancel_requested, &world);
            tracing::info!(task = %t.id, kind = %t.kind, target = %t.target, ?world, %decision, "resuming task");
            self.events
                .publish(
                    "task.resumed",
                    &t.target,
                    format!(
                        "{} {} resumed after a server restart: {decision}",
                        t.kind, t.target
                    ),
                    json!({"task": t.id, "kind": t.kind, "decision": decision.to_string()}),
                )
                .await;
            let me = self.clone();
            let task = t.clone();
            self.tasks
                .adopt(&t, move |ctx| async move {
                    let result = async {
                        if task.journal.is_some() {
                            ctx.journal(Step::Resumed {
                                decision: decision.to_string(),
                            })
                            .await?;
                        }
                        me.carry_out(&ctx, &task, kind, decision).await
                    }
                    .await;
                    if task.target_kind == "vm" {
                        // Release the VM's operation this task claimed.
                        me.end_operation(&task.target, Some(&task.id)).await;
                    }
                    result
                })
                .await;
        }
    }

    /// Waits until every recorded host is connected, or `limit` passed.
    async fn wait_for_hosts(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let recorded: Vec<HostRecord> = self.list_values("/hosts/").await.unwrap_or_default();
            let all = {
                let live = self.live.read().await;
                recorded
                    .iter()
                    .all(|h| live.get(&h.name).is_some_and(|l| l.connected))
            };
            if all || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// [`Self::observe`], again every second while a host does not answer
    /// (a busy agent may be slow for a while), until `patience` passes.
    async fn observe_patiently(&self, t: &Task, patience: tokio::time::Instant) -> World {
        loop {
            let world = self.observe(t).await;
            let unsure = world.job == Some(JobSeen::Unreachable) || world.vm == VmSeen::Unreachable;
            if !unsure || tokio::time::Instant::now() >= patience {
                return world;
            }
            tracing::info!(task = %t.id, ?world, "a host does not answer yet; looking again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// What the restarted server sees of a task's object, job and VM.
    async fn observe(&self, t: &Task) -> World {
        let mut vm_id = None;
        let mut vm_host = None;
        let record = match t.target_kind.as_str() {
            "vm" => match self.record(&t.target).await {
                Ok(r) => {
                    vm_id = Some(r.config.id.clone());
                    vm_host = r.owner.clone();
                    Some(Some(r.state))
                }
                Err(_) => None,
            },
            _ => self.get_template(&t.target).await.ok().map(|_| None),
        };
        let pending = t.journal.as_ref().and_then(journal::any_pending_job);
        let job = match &pending {
            None => None,
            Some(p) => Some(match self.agent_url(&p.host).await {
                Err(_) => JobSeen::Unreachable,
                Ok(url) => match self.agents.job(&p.host, &url, &p.operation_id, 0).await {
                    Ok(j) => JobSeen::Known(j.state),
                    Err(e) if e.code == ErrorCode::HostUnavailable => JobSeen::Unreachable,
                    Err(_) => JobSeen::Unknown,
                },
            }),
        };
        let host = pending.map(|p| p.host).or(vm_host).or_else(|| {
            match t.journal.as_ref().map(|j| &j.params) {
                Some(TaskParams::VmPower { host, .. }) => host.clone(),
                _ => None,
            }
        });
        let vm = match (host, vm_id) {
            (Some(h), Some(id)) => match self.agent_url(&h).await {
                Err(_) => VmSeen::Unreachable,
                Ok(_) => match self.runtime(&h, &id).await {
                    Some(rt) => VmSeen::Reported(rt.state),
                    None => VmSeen::NotReported,
                },
            },
            _ => VmSeen::NotReported,
        };
        World { record, job, vm }
    }

    async fn carry_out(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        task: &Task,
        kind: TaskKind,
        decision: Decision,
    ) -> Result<(), ApiError> {
        let name = task.target.as_str();
        match decision {
            Decision::Continue => self.continue_task(ctx, task, kind).await,
            Decision::RollBack { reason } => {
                match kind {
                    TaskKind::TemplateImport => self.forget_template(name).await,
                    _ => self.roll_back_create(ctx, name, &reason).await,
                }
                if task.cancel_requested {
                    Err(cancelled())
                } else {
                    Err(ApiError::internal(format!(
                        "rolled back after a server restart: {reason}"
                    )))
                }
            }
            Decision::Finish { outcome, record } => {
                if let Some(state) = record {
                    if let Err(e) = self.set_state(name, state, None).await {
                        tracing::warn!(vm = %name, error = %e, "cannot record the reconciled state");
                    }
                }
                match outcome {
                    Outcome::Succeeded => Ok(()),
                    Outcome::Cancelled => Err(cancelled()),
                    Outcome::Failed(why) => Err(ApiError::internal(why)),
                }
            }
        }
    }

    async fn continue_task(
        self: &Arc<Self>,
        ctx: &TaskCtx,
        task: &Task,
        kind: TaskKind,
    ) -> Result<(), ApiError> {
        let name = task.target.as_str();
        let params = task.journal.as_ref().map(|j| j.params.clone());
        match (kind, params) {
            (TaskKind::VmCreate, _) => self.create_body(ctx, name).await,
            (TaskKind::VmDelete, _) => self.delete_body(ctx, name).await,
            (
                TaskKind::VmMigrate,
                Some(TaskParams::VmMigrate {
                    migration: vdc_types::migration::MigrationKind::Live,
                    source,
                    target,
                    datastore,
                    ..
                }),
            ) => {
                self.settle_after_restart(ctx, task, &source, &target, datastore.as_deref())
                    .await
            }
            (
                TaskKind::VmMigrate,
                Some(TaskParams::VmMigrate {
                    migration,
                    source,
                    target,
                    datastore,
                    ..
                }),
            ) => {
                self.settle_move_after_restart(
                    ctx,
                    task,
                    migration,
                    &source,
                    &target,
                    datastore.as_deref(),
                )
                .await
            }
            (TaskKind::VmFailover, _) => self.failover_body(ctx, name).await,
            (TaskKind::Snapshot, Some(TaskParams::Snapshot { action, .. })) => {
                self.snapshot_body(ctx, name, action).await
            }
            (TaskKind::VmStart, Some(TaskParams::VmPower { host, .. })) => {
                self.start_body(ctx, name, host, VmPowerState::Stopped)
                    .await
            }
            (
                TaskKind::TemplateImport,
                Some(TaskParams::TemplateImport {
                    host,
                    source,
                    format,
                }),
            ) => self.import_body(ctx, name, &host, &source, format).await,
            (
                _,
                Some(TaskParams::VmPower {
                    host: Some(host),
                    shutdown_timeout_s,
                    ..
                }),
            ) => {
                let timeout = shutdown_timeout_s.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_S);
                self.resume_power_body(ctx, name, &task.kind, &host, timeout)
                    .await
            }
            _ => Err(ApiError::internal(format!(
                "task {} cannot be continued: its journal lacks its parameters",
                task.id
            ))),
        }
    }
}
