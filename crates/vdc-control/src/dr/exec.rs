//! Performs a run's steps ([`vdc_dr::steps`]) one after another, recording
//! each in the run (`/dr-runs/<id>`) with its times and outcome and
//! publishing `dr.step`; the first failed step ends the run. At the end the
//! plan's state follows [`vdc_dr::run::next_state`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vdc_dr::plan::{test_network, PlanStep};
use vdc_dr::run::{next_state, rpo_ms, rto_ms};
use vdc_dr::steps::{recovered_name, Step};
use vdc_dr::{Operation, Plan, Run, RunState, StepOutcome, VmOutcome};
use vdc_store::StoreExt;
use vdc_types::{now_ms, ApiError, VmAction};

use super::sites::{wait_task, SiteOps};
use super::waits::{await_ready, power_off, run_command};
use super::{plan_key, run_key, CONTINUE, PLAN_LOCK};
use crate::{Cluster, TaskCtx};

/// Longest wait for one VM's recovery, sync, shutdown or deletion.
pub(super) const TASK_WAIT: Duration = Duration::from_secs(1800);
/// How often a VM's readiness or a prompt's answer is polled.
pub(super) const POLL: Duration = Duration::from_millis(250);

/// What a step did when it did not fail.
pub(super) struct Done {
    pub(super) outcome: StepOutcome,
    pub(super) detail: Option<String>,
}

pub(super) fn ok() -> Result<Done, ApiError> {
    Ok(Done {
        outcome: StepOutcome::Ok,
        detail: None,
    })
}

pub(super) fn skipped(why: impl Into<String>) -> Result<Done, ApiError> {
    Ok(Done {
        outcome: StepOutcome::Skipped,
        detail: Some(why.into()),
    })
}

/// One run being performed.
pub(super) struct Exec {
    c: Arc<Cluster>,
    plan: Plan,
    run: Run,
    protected: Result<Arc<dyn SiteOps>, ApiError>,
    recovery: Arc<dyn SiteOps>,
    /// Protected VMs this run shut down (started again if a planned
    /// migration fails before recovering anything).
    shut_down: Vec<String>,
}

impl Exec {
    pub(super) fn new(
        c: Arc<Cluster>,
        plan: Plan,
        run: Run,
        protected: Result<Arc<dyn SiteOps>, ApiError>,
        recovery: Arc<dyn SiteOps>,
    ) -> Exec {
        Exec {
            c,
            plan,
            run,
            protected,
            recovery,
            shut_down: Vec::new(),
        }
    }

    /// The task body.
    pub(super) async fn run(mut self, ctx: TaskCtx) -> Result<(), ApiError> {
        self.run.task = ctx.id().to_string();
        self.save().await;
        let op = self.run.operation;
        self.c
            .events
            .publish(
                "dr.run_started",
                &self.plan.name,
                format!(
                    "DR {} of plan {} started ({} → {})",
                    op.word(),
                    self.plan.name,
                    self.run.protected_site,
                    self.run.recovery_site
                ),
                json!({"run": self.run.id, "operation": op, "protected_site": self.run.protected_site, "recovery_site": self.run.recovery_site}),
            )
            .await;
        let steps = vdc_dr::steps::steps(&self.plan, op);
        let n = steps.len().max(1);
        let mut failure: Option<ApiError> = None;
        for (i, step) in steps.iter().enumerate() {
            if ctx.is_cancelled() {
                failure = Some(crate::tasks::cancelled());
                break;
            }
            ctx.progress((i * 100 / n) as u8, &self.run.steps[i].name)
                .await;
            self.run.steps[i].outcome = StepOutcome::Running;
            self.run.steps[i].started_ms = Some(now_ms());
            self.save().await;
            let r = self.step(step).await;
            let rec = &mut self.run.steps[i];
            rec.finished_ms = Some(now_ms());
            match r {
                Ok(d) => {
                    rec.outcome = d.outcome;
                    rec.detail = d.detail;
                }
                Err(e) => {
                    rec.outcome = StepOutcome::Failed;
                    rec.detail = Some(e.message.clone());
                    self.run
                        .errors
                        .push(format!("{}: {}", self.run.steps[i].name, e.message));
                    failure = Some(e);
                }
            }
            let rec = self.run.steps[i].clone();
            self.c
                .events
                .publish(
                    "dr.step",
                    &self.plan.name,
                    format!(
                        "DR {} of plan {}: {} {:?}",
                        op.word(),
                        self.plan.name,
                        rec.name,
                        rec.outcome
                    )
                    .to_lowercase(),
                    json!({"run": self.run.id, "index": i, "step": rec}),
                )
                .await;
            self.save().await;
            if failure.is_some() {
                break;
            }
        }
        self.finish(failure.is_none()).await;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A planned migration that failed before recovering anything starts
    /// the protected VMs it shut down again, where they were.
    async fn roll_back(&mut self) {
        let Ok(p) = self.protected().cloned() else {
            return;
        };
        for vm in std::mem::take(&mut self.shut_down) {
            let r = match p.vm_action(&vm, VmAction::Start).await {
                Ok(t) => wait_task(p.as_ref(), &t.id, TASK_WAIT).await.map(drop),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => self.run.errors.push(format!(
                    "rolled back: {vm} started again at site {}",
                    p.site()
                )),
                Err(e) => {
                    tracing::warn!(vm, error = %e.message, "cannot start a protected VM again after a failed planned migration");
                    self.run.errors.push(format!(
                        "rollback: cannot start {vm} again at site {}: {}",
                        p.site(),
                        e.message
                    ));
                }
            }
        }
    }

    async fn finish(&mut self, ok: bool) {
        let op = self.run.operation;
        let recovered_any = !self.run.vms.is_empty();
        if !ok && op.planned() && !recovered_any {
            self.roll_back().await;
        }
        self.run.finished_ms = Some(now_ms());
        self.run.rto_ms = rto_ms(self.run.started_ms, &self.run.vms);
        self.run.state = if ok {
            RunState::Succeeded
        } else {
            RunState::Failed
        };
        self.run.prompt = None;
        self.save().await;
        {
            let _g = PLAN_LOCK.lock().await;
            match self.c.get_plan(&self.plan.name).await {
                Ok(mut p) => {
                    p.state = next_state(op, ok, recovered_any);
                    p.active_run = None;
                    if let Err(e) = self.c.store.put_json(&plan_key(&p.name), &p).await {
                        tracing::warn!(plan = %p.name, error = %e, "cannot record the plan's state after a run");
                    }
                }
                Err(e) => {
                    tracing::warn!(plan = %self.plan.name, error = %e.message, "plan gone at the end of its run")
                }
            }
        }
        let topic = if op == Operation::Cleanup {
            "dr.cleanup"
        } else {
            "dr.run_finished"
        };
        self.c
            .events
            .publish(
                topic,
                &self.plan.name,
                format!(
                    "DR {} of plan {} {}{}",
                    op.word(),
                    self.plan.name,
                    if ok { "succeeded" } else { "failed" },
                    self.run
                        .rto_ms
                        .map(|r| format!(", RTO {} ms", r))
                        .unwrap_or_default()
                ),
                json!({"run": self.run.id, "operation": op, "state": self.run.state, "rto_ms": self.run.rto_ms,
                    "rpo_ms": self.run.vms.iter().map(|v| (v.vm.clone(), v.rpo_ms)).collect::<BTreeMap<_, _>>(),
                    "errors": self.run.errors}),
            )
            .await;
    }

    async fn save(&self) {
        if let Err(e) = self
            .c
            .store
            .put_json(&run_key(&self.run.id), &self.run)
            .await
        {
            tracing::warn!(run = %self.run.id, error = %e, "cannot record a DR run's progress");
        }
    }

    fn protected(&self) -> Result<&Arc<dyn SiteOps>, ApiError> {
        self.protected.as_ref().map_err(Clone::clone)
    }

    async fn step(&mut self, step: &Step) -> Result<Done, ApiError> {
        match step {
            Step::CheckProtected => {
                self.protected()?.ping().await.map_err(|e| {
                    ApiError::invalid_state(format!(
                        "protected site '{}' does not answer ({}); use failover",
                        self.run.protected_site, e.message
                    ))
                })?;
                ok()
            }
            Step::BuildBubble => {
                let made = self.c.build_bubble(&self.plan).await?;
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some(made),
                })
            }
            Step::RemoveBubble => {
                let gone = self.c.remove_bubble(&self.plan).await?;
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some(gone),
                })
            }
            Step::Custom { step, .. } => self.custom(step).await,
            Step::Sync { vm, .. } => {
                let p = self.protected()?.clone();
                let t = p.sync(vm).await?;
                wait_task(p.as_ref(), &t.id, TASK_WAIT).await?;
                ok()
            }
            Step::Shutdown { vm } => {
                let p = self.protected()?.clone();
                let d = power_off(p.as_ref(), vm, VmAction::Shutdown).await?;
                if d.outcome == StepOutcome::Ok {
                    self.shut_down.push(vm.clone());
                }
                Ok(d)
            }
            Step::Fence => {
                let p = match self.protected() {
                    Ok(p) => p.clone(),
                    Err(e) => return skipped(format!("protected site unreachable: {}", e.message)),
                };
                if let Err(e) = p.ping().await {
                    return skipped(format!("protected site unreachable: {}", e.message));
                }
                let names: Vec<String> = vdc_dr::plan::vms(&self.plan)
                    .map(|v| v.name.clone())
                    .collect();
                let mut stopped = Vec::new();
                for vm in &names {
                    let d = power_off(p.as_ref(), vm, VmAction::Stop).await?;
                    if d.outcome == StepOutcome::Ok {
                        stopped.push(vm.clone());
                    }
                }
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some(if stopped.is_empty() {
                        "no protected VM was running".into()
                    } else {
                        format!("powered off {}", stopped.join(", "))
                    }),
                })
            }
            Step::Recover { group } => self.recover_group(*group).await,
            Step::AwaitReady { group } => self.await_group(*group).await,
            Step::RemoveClone { vm } => {
                let name = recovered_name(Operation::Test, vm);
                let r = self.recovery.clone();
                if r.vm(&name).await?.is_none() {
                    return skipped(format!("{name} does not exist"));
                }
                power_off(r.as_ref(), &name, VmAction::Stop).await?;
                let t = r.delete_vm(&name).await?;
                wait_task(r.as_ref(), &t.id, TASK_WAIT).await?;
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some(format!("{name} deleted")),
                })
            }
            Step::Retire { vm } => {
                let p = self.protected()?.clone();
                let mut did = Vec::new();
                if p.stop_replication(vm).await? {
                    did.push("replication stopped".to_string());
                }
                if p.vm(vm).await?.is_some() {
                    power_off(p.as_ref(), vm, VmAction::Stop).await?;
                    let t = p.delete_vm(vm).await?;
                    wait_task(p.as_ref(), &t.id, TASK_WAIT).await?;
                    did.push("stale VM deleted".into());
                }
                if p.delete_replica(vm).await? {
                    did.push("stale replica deleted".into());
                }
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some(if did.is_empty() {
                        "nothing stale".into()
                    } else {
                        did.join(", ")
                    }),
                })
            }
            Step::Replicate { vm } => {
                let r = self.recovery.clone();
                // A failed-over replica whose point the VM still runs on
                // stays (its record goes with the VM, at the next
                // reprotect's retire step).
                let kept = match r.delete_replica(vm).await {
                    Ok(_) => None,
                    Err(e) if e.code == vdc_types::ErrorCode::InvalidState => Some(e.message),
                    Err(e) => return Err(e),
                };
                let t = r.replicate(vm, &self.run.protected_site).await?;
                wait_task(r.as_ref(), &t.id, TASK_WAIT).await?;
                let mut detail = format!(
                    "replicated to site {} (first full copy done)",
                    self.run.protected_site
                );
                if let Some(k) = kept {
                    detail += &format!("; old replica record kept: {k}");
                }
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some(detail),
                })
            }
            Step::SwapDirection => {
                let _g = PLAN_LOCK.lock().await;
                let mut p = self.c.get_plan(&self.plan.name).await?;
                std::mem::swap(&mut p.protected_site, &mut p.recovery_site);
                p.reprotects += 1;
                self.c
                    .store
                    .put_json(&plan_key(&p.name), &p)
                    .await
                    .map_err(crate::store_err)?;
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some(format!(
                        "the plan now protects site {} to site {}",
                        p.protected_site, p.recovery_site
                    )),
                })
            }
        }
    }

    async fn custom(&mut self, step: &PlanStep) -> Result<Done, ApiError> {
        match step {
            PlanStep::Wait { seconds } => {
                tokio::time::sleep(Duration::from_secs(*seconds)).await;
                ok()
            }
            PlanStep::Command { command, timeout_s } => {
                let out = run_command(command, Duration::from_secs(*timeout_s)).await?;
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some(out),
                })
            }
            PlanStep::Prompt { message } => {
                self.run.state = RunState::Waiting;
                self.run.prompt = Some(message.clone());
                self.save().await;
                self.c
                    .events
                    .publish(
                        "dr.prompt",
                        &self.plan.name,
                        format!(
                            "DR run {} of plan {} waits: {message} (vdc plan continue {})",
                            self.run.id, self.plan.name, self.run.id
                        ),
                        json!({"run": self.run.id, "message": message}),
                    )
                    .await;
                let key = format!("{CONTINUE}{}", self.run.id);
                loop {
                    match self.c.store.get(&key).await {
                        Ok(Some(_)) => break,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot read a prompt's answer"),
                    }
                    tokio::time::sleep(POLL).await;
                }
                if let Err(e) = self.c.store.delete(&key).await {
                    tracing::warn!(run = %self.run.id, error = %e, "cannot clear a prompt's answer");
                }
                self.run.state = RunState::Running;
                self.run.prompt = None;
                Ok(Done {
                    outcome: StepOutcome::Ok,
                    detail: Some("continued".into()),
                })
            }
        }
    }

    /// Recovers every VM of group `g` in parallel.
    async fn recover_group(&mut self, g: usize) -> Result<Done, ApiError> {
        let op = self.run.operation;
        let group = self.plan.groups[g - 1].clone();
        let mode = if op == Operation::Test {
            "test"
        } else {
            "failover"
        };
        let network_map: BTreeMap<String, String> = self
            .plan
            .networks
            .iter()
            .map(|m| {
                let to = if op == Operation::Test {
                    test_network(&self.plan.name, m)
                } else {
                    m.recovery.clone()
                };
                (m.protected.clone(), to)
            })
            .collect();
        let r = self.recovery.clone();
        let started = self.run.started_ms;
        let jobs = group.vms.iter().map(|v| {
            let r = r.clone();
            let network_map = network_map.clone();
            async move {
                let name = recovered_name(op, &v.name);
                let replica = r.replica(&v.name).await?;
                if r.vm(&name).await?.is_some() {
                    if op == Operation::Test {
                        return Err(ApiError::invalid_state(format!(
                            "a VM named {name} exists at site {}; remove it or run cleanup",
                            r.site()
                        )));
                    }
                    // A failover run again keeps what the last one recovered.
                    return Ok((v.name.clone(), name, None, None));
                }
                let point = replica.latest().cloned().ok_or_else(|| {
                    ApiError::invalid_state(format!(
                        "replica of {} has no point yet; wait for its first sync",
                        v.name
                    ))
                })?;
                let mut body = json!({
                    "point": point.id,
                    "name": name,
                    "mode": mode,
                    "network_map": network_map,
                    "start": true,
                });
                if let Some(ip) = &v.ip {
                    body["ip"] = Value::String(ip.clone());
                }
                if let Some(h) = &v.hostname {
                    body["hostname"] = Value::String(h.clone());
                }
                let t = r.recover(&v.name, body).await?;
                wait_task(r.as_ref(), &t.id, TASK_WAIT).await?;
                Ok::<_, ApiError>((
                    v.name.clone(),
                    name,
                    Some(point.id.to_string()),
                    Some(point.time_ms),
                ))
            }
        });
        let results = futures::future::join_all(jobs).await;
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok((vm, recovered_as, point, point_ms)) => self.run.vms.push(VmOutcome {
                    vm,
                    recovered_as,
                    group: g,
                    point,
                    point_ms,
                    rpo_ms: point_ms.map(|p| rpo_ms(op, started, p)),
                    ready_ms: None,
                }),
                Err(e) => errors.push(e.message),
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::internal(errors.join("; ")));
        }
        ok()
    }

    /// Waits until every VM of group `g` is ready, by its plan's wait.
    async fn await_group(&mut self, g: usize) -> Result<Done, ApiError> {
        let group = self.plan.groups[g - 1].clone();
        let op = self.run.operation;
        let r = self.recovery.clone();
        let jobs = group.vms.iter().map(|v| {
            let r = r.clone();
            async move {
                let name = recovered_name(op, &v.name);
                await_ready(r.as_ref(), &name, &v.wait, v.ip.as_deref()).await?;
                Ok::<_, ApiError>((v.name.clone(), now_ms()))
            }
        });
        let mut errors = Vec::new();
        for res in futures::future::join_all(jobs).await {
            match res {
                Ok((vm, at)) => {
                    if let Some(o) = self.run.vms.iter_mut().find(|o| o.vm == vm) {
                        o.ready_ms = Some(at);
                    }
                }
                Err(e) => errors.push(e.message),
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::internal(errors.join("; ")));
        }
        ok()
    }
}
