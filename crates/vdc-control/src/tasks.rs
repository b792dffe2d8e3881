//! The task engine: long operations run in the background and are visible
//! as [`Task`] records (state, progress, stage, error, journal) that
//! clients poll or follow on the event stream.
//!
//! A task body receives a [`TaskCtx`] to report progress, to journal its
//! steps and to see cancellation. Each step that makes something (an
//! address, a host's files, an agent job) is written to the task's
//! [`TaskJournal`] with compare-and-swap *before* the body relies on it, so
//! that a server killed at any point leaves a record of what exists. A
//! cancel fires the task's cancellation token at once: a body waiting on an
//! agent job forwards it to the job, and every body undoes its partial work
//! and returns [`cancelled`].
//!
//! Tasks left unfinished by a server that stopped are not failed blindly:
//! [`TaskEngine::open`] keeps them aside ([`TaskEngine::take_unfinished`])
//! for the cluster to resume or reconcile (see `resume`), and
//! [`TaskEngine::adopt`] runs the continuation under the same task id.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use vdc_store::{Store, StoreExt};
use vdc_types::{
    now_ms, ApiError, ErrorCode, Step, Task, TaskJournal, TaskParams, TaskState, TaskStep,
};

use crate::events::EventBus;

const PREFIX: &str = "/tasks/";
/// Finished tasks kept in the store.
pub const KEEP_FINISHED: usize = 500;

/// The error a task body returns when it honoured a cancellation.
pub fn cancelled() -> ApiError {
    ApiError::new(ErrorCode::Cancelled, "the task was cancelled")
}

/// Runs and records tasks.
pub struct TaskEngine {
    store: Arc<dyn Store>,
    events: Arc<EventBus>,
    cancel_tokens: Mutex<HashMap<String, CancellationToken>>,
    unfinished: Mutex<Vec<Task>>,
}

/// Handle a task body uses to report progress, journal steps and see
/// cancellation.
#[derive(Clone)]
pub struct TaskCtx {
    id: String,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
}

impl TaskCtx {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Records progress (0–100) and what the task is doing now.
    pub async fn progress(&self, percent: u8, stage: &str) {
        let stage = stage.to_string();
        let r: Result<Task, vdc_store::StoreError> = self
            .store
            .update_json(&key(&self.id), |mut t: Task| {
                t.progress = percent.min(100).max(t.progress);
                t.stage = Some(stage.clone());
                Ok(t)
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(task = %self.id, error = %e, "cannot record progress");
        }
    }

    /// Shows the task as waiting its turn (`queued`, with `stage` saying
    /// for what) or as running again.
    pub async fn set_waiting(&self, waiting: bool, stage: &str) {
        let stage = stage.to_string();
        let r: Result<Task, vdc_store::StoreError> = self
            .store
            .update_json(&key(&self.id), |mut t: Task| {
                if !t.state.is_final() {
                    t.state = if waiting {
                        TaskState::Queued
                    } else {
                        TaskState::Running
                    };
                }
                t.stage = Some(stage.clone());
                Ok(t)
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(task = %self.id, error = %e, "cannot record the task's turn");
        }
    }

    /// Records a migration task's figures (progress, policy steps, outcome).
    pub async fn set_migration(&self, report: &vdc_types::migration::MigrationReport) {
        let r: Result<Task, vdc_store::StoreError> = self
            .store
            .update_json(&key(&self.id), |mut t: Task| {
                t.migration = Some(report.clone());
                Ok(t)
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(task = %self.id, error = %e, "cannot record migration figures");
        }
    }

    /// Appends `step` to the task's journal (compare-and-swap). A body must
    /// not go on when its journal cannot be written: the error says so.
    pub async fn journal(&self, step: Step) -> Result<(), ApiError> {
        let described = step.to_string();
        self.store
            .update_json(&key(&self.id), |mut t: Task| {
                match &mut t.journal {
                    Some(j) => j.steps.push(TaskStep {
                        at_ms: now_ms(),
                        step: step.clone(),
                    }),
                    None => {
                        return Err(vdc_store::StoreError::Backend(
                            format!("task {} has no journal", self.id).into(),
                        ))
                    }
                }
                Ok(t)
            })
            .await
            .map(|_| tracing::debug!(task = %self.id, step = %described, "journaled"))
            .map_err(|e| ApiError::internal(format!("cannot journal a task step: {e}")))
    }

    /// The task's journal as recorded now.
    pub async fn journal_now(&self) -> Result<TaskJournal, ApiError> {
        self.store
            .get_json::<Task>(&key(&self.id))
            .await
            .map_err(|e| ApiError::internal(format!("cannot read the task: {e}")))?
            .and_then(|t| t.journal)
            .ok_or_else(|| ApiError::internal(format!("task {} has no journal", self.id)))
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when cancellation is requested.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// `Err(cancelled())` if cancellation was requested: use with `?` at a
    /// safe point.
    pub fn check_cancel(&self) -> Result<(), ApiError> {
        if self.is_cancelled() {
            Err(cancelled())
        } else {
            Ok(())
        }
    }
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

impl TaskEngine {
    /// Opens the engine. Tasks a previous server left unfinished stay as
    /// they are, set aside for [`Self::take_unfinished`].
    pub async fn open(
        store: Arc<dyn Store>,
        events: Arc<EventBus>,
    ) -> Result<TaskEngine, vdc_store::StoreError> {
        let unfinished: Vec<Task> = store
            .list_json::<Task>(PREFIX)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| !t.state.is_final())
            .collect();
        Ok(TaskEngine {
            store,
            events,
            cancel_tokens: Mutex::new(HashMap::new()),
            unfinished: Mutex::new(unfinished),
        })
    }

    /// Reads again the unfinished tasks, for a server that takes the lead
    /// from another: the tasks the old leader was running are now this
    /// server's to resume or reconcile.
    pub async fn reload_unfinished(&self) -> Result<(), vdc_store::StoreError> {
        let unfinished: Vec<Task> = self
            .store
            .list_json::<Task>(PREFIX)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| !t.state.is_final())
            .collect();
        *self.unfinished.lock().await = unfinished;
        Ok(())
    }

    /// The tasks a previous server left unfinished (once; later calls
    /// return nothing).
    pub async fn take_unfinished(&self) -> Vec<Task> {
        std::mem::take(&mut *self.unfinished.lock().await)
    }

    /// Creates a task without a journal and runs `body` in the background.
    /// Returns the task as recorded (queued).
    pub async fn spawn<F, Fut>(
        self: &Arc<Self>,
        kind: &str,
        target_kind: &str,
        target: &str,
        body: F,
    ) -> Result<Task, ApiError>
    where
        F: FnOnce(TaskCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
    {
        self.spawn_journaled(kind, target_kind, target, None, body)
            .await
    }

    /// Creates a task whose journal starts with `params` and runs `body` in
    /// the background. Returns the task as recorded (queued).
    pub async fn spawn_journaled<F, Fut>(
        self: &Arc<Self>,
        kind: &str,
        target_kind: &str,
        target: &str,
        params: Option<TaskParams>,
        body: F,
    ) -> Result<Task, ApiError>
    where
        F: FnOnce(TaskCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
    {
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.to_string(),
            target_kind: target_kind.to_string(),
            target: target.to_string(),
            state: TaskState::Queued,
            progress: 0,
            stage: None,
            error: None,
            cancel_requested: false,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            journal: params.map(TaskJournal::new),
            migration: None,
        };
        self.store
            .put_json(&key(&task.id), &task)
            .await
            .map_err(|e| ApiError::internal(format!("cannot record task: {e}")))?;
        self.run(&task.id, false, body).await;
        Ok(task)
    }

    /// Runs `body` for a task a previous server left unfinished, under the
    /// same id; a cancel asked before the restart is seen by the body at
    /// once.
    pub async fn adopt<F, Fut>(self: &Arc<Self>, task: &Task, body: F)
    where
        F: FnOnce(TaskCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
    {
        // A cancel may have been recorded since the task was set aside.
        let cancel_requested = match self.get(&task.id).await {
            Ok(t) => t.cancel_requested,
            Err(_) => task.cancel_requested,
        };
        self.run(&task.id, cancel_requested, body).await;
    }

    async fn run<F, Fut>(self: &Arc<Self>, id: &str, cancel_requested: bool, body: F)
    where
        F: FnOnce(TaskCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ApiError>> + Send + 'static,
    {
        let token = CancellationToken::new();
        if cancel_requested {
            token.cancel();
        }
        self.cancel_tokens
            .lock()
            .await
            .insert(id.to_string(), token.clone());
        let ctx = TaskCtx {
            id: id.to_string(),
            store: self.store.clone(),
            cancel: token,
        };
        let engine = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            engine
                .set(&id, |t| {
                    t.state = TaskState::Running;
                    t.started_ms.get_or_insert(now_ms());
                })
                .await;
            let result = tokio::spawn(body(ctx)).await.unwrap_or_else(|e| {
                Err(ApiError::internal(format!(
                    "task body failed unexpectedly: {e}"
                )))
            });
            engine.finish(&id, result).await;
        });
    }

    async fn finish(&self, id: &str, result: Result<(), ApiError>) {
        let finished = self
            .set(id, |t| {
                t.finished_ms = Some(now_ms());
                match &result {
                    Ok(()) => {
                        t.state = TaskState::Succeeded;
                        t.progress = 100;
                        t.stage = None;
                    }
                    Err(e) if e.code == ErrorCode::Cancelled => {
                        t.state = TaskState::Cancelled;
                        t.error = Some(e.clone());
                    }
                    Err(e) => {
                        t.state = TaskState::Failed;
                        t.error = Some(e.clone());
                    }
                }
            })
            .await;
        self.cancel_tokens.lock().await.remove(id);
        if let Some(t) = finished {
            let msg = match &t.error {
                None => format!("{} {} succeeded", t.kind, t.target),
                Some(e) => format!("{} {} {}: {}", t.kind, t.target, t.state_str(), e.message),
            };
            self.events
                .publish(
                    "task.finished",
                    &t.target,
                    msg,
                    serde_json::to_value(&t).unwrap_or_default(),
                )
                .await;
        }
        self.prune().await;
    }

    async fn set(&self, id: &str, f: impl Fn(&mut Task) + Send + Sync) -> Option<Task> {
        let r: Result<Task, vdc_store::StoreError> = self
            .store
            .update_json(&key(id), |mut t: Task| {
                f(&mut t);
                Ok(t)
            })
            .await;
        match r {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "cannot update task");
                None
            }
        }
    }

    /// One task.
    pub async fn get(&self, id: &str) -> Result<Task, ApiError> {
        self.store
            .get_json::<Task>(&key(id))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("task '{id}' not found; list tasks with 'vdc task list'"),
                )
            })
    }

    /// All recorded tasks, newest first.
    pub async fn list(&self) -> Result<Vec<Task>, ApiError> {
        let mut v: Vec<Task> = self
            .store
            .list_json::<Task>(PREFIX)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        Ok(v)
    }

    /// Requests cancellation of a running task: recorded, and the task's
    /// body sees it at once.
    pub async fn cancel(&self, id: &str) -> Result<Task, ApiError> {
        let t = self.get(id).await?;
        if t.state.is_final() {
            return Err(ApiError::invalid_state(format!(
                "task '{id}' has already ended ({})",
                t.state_str()
            )));
        }
        let recorded = self.set(id, |t| t.cancel_requested = true).await;
        if let Some(token) = self.cancel_tokens.lock().await.get(id) {
            token.cancel();
        }
        Ok(recorded.unwrap_or(t))
    }

    async fn prune(&self) {
        let Ok(mut all) = self.list().await else {
            return;
        };
        all.retain(|t| t.state.is_final());
        for t in all.iter().skip(KEEP_FINISHED) {
            if let Err(e) = self.store.delete(&key(&t.id)).await {
                tracing::warn!(task = %t.id, error = %e, "cannot prune an old task");
            }
        }
    }
}

/// The state of a task as a word.
pub(crate) trait StateStr {
    fn state_str(&self) -> &'static str;
}
impl StateStr for Task {
    fn state_str(&self) -> &'static str {
        match self.state {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}
