//! Recovery plans and DR runs (issue 10): the plans stored at the
//! recovery site, the operations that run them as tasks, and the run
//! records with their reports. The formats, validation and step machine
//! are pure, in `vdc-dr`; this module stores them and performs the steps
//! ([`exec`]) on the two sites ([`sites`]).
//!
//! Store keys:
//!
//! | key | value |
//! |---|---|
//! | `/plans/<name>` | [`vdc_dr::Plan`] (version 1) |
//! | `/dr-runs/<id>` | [`vdc_dr::Run`] (version 1) |
//! | `/dr-continue/<id>` | set by `continue`; the run waiting at a prompt goes on and removes it |

mod bubble;
mod exec;
mod local;
pub mod sites;
mod waits;

use std::sync::Arc;

use serde_json::json;
use vdc_dr::plan::{self, ReplicaFacts, PLAN_VERSION};
use vdc_dr::run::{self, RUN_VERSION};
use vdc_dr::{Operation, Plan, PlanState, Run, RunState};
use vdc_store::StoreExt;
use vdc_types::{now_ms, ApiError, ErrorCode, TaskState};

use crate::{store_err, Cluster};
use sites::{Local, Remote, SiteOps};

const PLANS: &str = "/plans/";
const RUNS: &str = "/dr-runs/";
const CONTINUE: &str = "/dr-continue/";

/// Serializes the plan updates of this server (start, end, delete).
static PLAN_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn plan_key(name: &str) -> String {
    format!("{PLANS}{name}")
}

fn run_key(id: &str) -> String {
    format!("{RUNS}{id}")
}

impl Cluster {
    /// `POST /api/v1/plans`: checks the plan against this site's replicas
    /// and networks and stores it (this site is its recovery site).
    pub async fn create_plan(self: &Arc<Self>, mut p: Plan) -> Result<Plan, ApiError> {
        let local = self.dr_site_name();
        p.version = PLAN_VERSION;
        p.recovery_site = local.clone();
        p.created_ms = now_ms();
        p.reprotects = 0;
        p.state = PlanState::Ready;
        p.active_run = None;
        p.last_run = None;
        let replicas = self.local_side().replicas().await?;
        let facts: Vec<ReplicaFacts> = replicas
            .iter()
            .map(|r| ReplicaFacts {
                vm: r.vm.clone(),
                source_site: r.source_site.clone(),
                networks: r.config.nics.iter().map(|n| n.network.clone()).collect(),
            })
            .collect();
        let networks: Vec<String> = self
            .list_networks()
            .await?
            .into_iter()
            .map(|n| n.name)
            .collect();
        plan::validate(&p, &local, &facts, &networks)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        self.create_unique(
            &plan_key(&p.name),
            &p,
            format!("plan '{}' already exists; choose another name", p.name),
        )
        .await?;
        self.events
            .publish(
                "dr.plan_created",
                &p.name,
                format!("recovery plan {} created", p.name),
                json!({"protected_site": p.protected_site, "vms": plan::vms(&p).count()}),
            )
            .await;
        Ok(p)
    }

    /// Every plan.
    pub async fn list_plans(&self) -> Result<Vec<Plan>, ApiError> {
        let all: Vec<Plan> = self.list_values(PLANS).await?;
        for p in &all {
            check_plan_version(p)?;
        }
        Ok(all)
    }

    /// One plan.
    pub async fn get_plan(&self, name: &str) -> Result<Plan, ApiError> {
        let p: Plan = self
            .store
            .get_json(&plan_key(name))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("plan", name))?;
        check_plan_version(&p)?;
        Ok(p)
    }

    /// Deletes a plan (refused while a run is active or test clones exist;
    /// its runs stay for their reports).
    pub async fn delete_plan(&self, name: &str) -> Result<(), ApiError> {
        let _g = PLAN_LOCK.lock().await;
        let p = self.get_plan(name).await?;
        if let Some(r) = self.active_run(&p).await? {
            return Err(ApiError::invalid_state(format!(
                "run {r} of plan '{name}' is active; wait for it to end"
            )));
        }
        if p.state == PlanState::Tested {
            return Err(ApiError::invalid_state(format!(
                "plan '{name}' has test clones; run 'vdc plan cleanup {name}' first"
            )));
        }
        self.store
            .delete(&plan_key(name))
            .await
            .map_err(store_err)?;
        self.events
            .publish(
                "dr.plan_deleted",
                name,
                format!("recovery plan {name} deleted"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// Runs, newest first (of one plan when `plan` is given).
    pub async fn list_dr_runs(&self, plan: Option<&str>) -> Result<Vec<Run>, ApiError> {
        let mut out = Vec::new();
        for r in self.list_values::<Run>(RUNS).await? {
            if plan.is_some_and(|p| p != r.plan) {
                continue;
            }
            out.push(self.settle_run(r).await?);
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
        Ok(out)
    }

    /// One run.
    pub async fn get_dr_run(&self, id: &str) -> Result<Run, ApiError> {
        let r: Run = self
            .store
            .get_json(&run_key(id))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("DR run", id))?;
        self.settle_run(r).await
    }

    /// Lets a run waiting at a prompt go on.
    pub async fn continue_dr_run(&self, id: &str) -> Result<Run, ApiError> {
        let r = self.get_dr_run(id).await?;
        if r.state != RunState::Waiting {
            return Err(ApiError::invalid_state(format!(
                "run {id} is not waiting at a prompt"
            )));
        }
        self.store
            .put_json(&format!("{CONTINUE}{id}"), &now_ms())
            .await
            .map_err(store_err)?;
        Ok(r)
    }

    /// Starts `op` on plan `name`: checks the plan's state, records the
    /// run and performs it as task `dr.<op>`. Returns the run as recorded.
    pub async fn start_dr(self: &Arc<Self>, name: &str, op: Operation) -> Result<Run, ApiError> {
        let _g = PLAN_LOCK.lock().await;
        let mut p = self.get_plan(name).await?;
        if let Some(r) = self.active_run(&p).await? {
            return Err(ApiError::invalid_state(
                run::StateError::Busy(r).to_string(),
            ));
        }
        run::may_start(p.state, op, p.reprotects)
            .map_err(|e| ApiError::invalid_state(format!("plan '{name}': {e}")))?;
        if matches!(op, Operation::Test | Operation::Cleanup)
            && p.recovery_site != self.dr_site_name()
        {
            return Err(ApiError::invalid_state(format!(
                "plan '{name}' now recovers to site {}: a test builds its isolated network there, so test from a plan stored at that site",
                p.recovery_site
            )));
        }
        let recovery = self.side(&p.recovery_site).await?;
        let protected = self.side(&p.protected_site).await;
        if op.planned() {
            // Refused before anything is touched: a planned migration
            // needs both sites.
            let reach = match &protected {
                Ok(s) => s.ping().await,
                Err(e) => Err(e.clone()),
            };
            if let Err(e) = reach {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    format!(
                        "protected site '{}' does not answer ({}); a planned migration needs both sites: use 'vdc plan failover {name}'",
                        p.protected_site, e.message
                    ),
                ));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let mut r = Run {
            version: RUN_VERSION,
            id: id.clone(),
            plan: p.name.clone(),
            task: String::new(),
            operation: op,
            state: RunState::Running,
            protected_site: p.protected_site.clone(),
            recovery_site: p.recovery_site.clone(),
            started_ms: now_ms(),
            finished_ms: None,
            steps: vdc_dr::steps::steps(&p, op)
                .iter()
                .map(|s| s.record())
                .collect(),
            vms: vec![],
            rto_ms: None,
            prompt: None,
            errors: vec![],
        };
        self.store
            .put_json(&run_key(&id), &r)
            .await
            .map_err(store_err)?;
        let before = p.clone();
        p.active_run = Some(id.clone());
        p.last_run = Some(id.clone());
        self.store
            .put_json(&plan_key(&p.name), &p)
            .await
            .map_err(store_err)?;
        let ex = exec::Exec::new(self.clone(), p.clone(), r.clone(), protected, recovery);
        // The task records its id in the run when it starts.
        match self
            .tasks
            .spawn(&format!("dr.{}", op.word()), "plan", &p.name, move |ctx| {
                ex.run(ctx)
            })
            .await
        {
            Ok(task) => r.task = task.id,
            Err(e) => {
                if let Err(e2) = self.store.put_json(&plan_key(&p.name), &before).await {
                    tracing::warn!(plan = %p.name, error = %e2, "cannot roll back a plan whose run did not start");
                }
                if let Err(e2) = self.store.delete(&run_key(&id)).await {
                    tracing::warn!(run = %id, error = %e2, "cannot remove a run that did not start");
                }
                return Err(e);
            }
        }
        Ok(r)
    }

    /// The side of site `site`: this site in-process, or the peer.
    async fn side(self: &Arc<Self>, site: &str) -> Result<Arc<dyn SiteOps>, ApiError> {
        if site == self.dr_site_name() {
            return Ok(Arc::new(self.local_side()));
        }
        let client = self.dr_peer(site).await?;
        Ok(Arc::new(Remote {
            name: site.to_string(),
            client,
        }))
    }

    fn local_side(self: &Arc<Self>) -> Local {
        Local {
            cluster: self.clone(),
            name: self.dr_site_name(),
        }
    }

    /// The plan's run still active, if any (a run whose task ended without
    /// finishing it, e.g. cut by a server restart, is not).
    async fn active_run(&self, p: &Plan) -> Result<Option<String>, ApiError> {
        let Some(id) = &p.active_run else {
            return Ok(None);
        };
        match self.get_dr_run(id).await {
            Ok(r) if matches!(r.state, RunState::Running | RunState::Waiting) => {
                Ok(Some(id.clone()))
            }
            Ok(_) => Ok(None),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A run recorded as active whose task ended (a server restart cut it)
    /// shows as failed.
    async fn settle_run(&self, mut r: Run) -> Result<Run, ApiError> {
        if r.version > RUN_VERSION {
            return Err(ApiError::internal(format!(
                "DR run '{}' has format version {}; this server reads up to {RUN_VERSION}",
                r.id, r.version
            )));
        }
        if !matches!(r.state, RunState::Running | RunState::Waiting) || r.task.is_empty() {
            return Ok(r);
        }
        let ended = match self.tasks.get(&r.task).await {
            Ok(t) => matches!(t.state, TaskState::Failed | TaskState::Cancelled),
            Err(e) => e.code == ErrorCode::NotFound,
        };
        if ended {
            r.state = RunState::Failed;
            r.errors.push(
                "the run's task ended before the run (server restart); run the operation again"
                    .into(),
            );
        }
        Ok(r)
    }
}

fn check_plan_version(p: &Plan) -> Result<(), ApiError> {
    if p.version > PLAN_VERSION {
        return Err(ApiError::internal(format!(
            "plan '{}' has format version {}; this server reads up to {PLAN_VERSION}",
            p.name, p.version
        )));
    }
    Ok(())
}
