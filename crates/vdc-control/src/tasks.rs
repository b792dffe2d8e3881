//! The task engine: long operations run in the background and are visible
//! as [`Task`] records (state, progress, stage, error) that clients poll or
//! follow on the event stream.
//!
//! A task body receives a [`TaskCtx`] to report progress and to check for
//! cancellation at its safe points; a body that sees a cancellation undoes
//! its partial work and returns [`cancelled`]. Tasks left running by a
//! server that stopped are marked failed when the next server starts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;
use vdc_store::{Store, StoreExt};
use vdc_types::{now_ms, ApiError, ErrorCode, Task, TaskState};

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
    cancel_flags: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

/// Handle a task body uses to report progress and see cancellation.
#[derive(Clone)]
pub struct TaskCtx {
    id: String,
    store: Arc<dyn Store>,
    cancel: Arc<AtomicBool>,
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

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
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
    /// Opens the engine; tasks a previous server left unfinished are failed.
    pub async fn open(
        store: Arc<dyn Store>,
        events: Arc<EventBus>,
    ) -> Result<TaskEngine, vdc_store::StoreError> {
        let tasks: Vec<(String, Task)> = store.list_json(PREFIX).await?;
        for (k, mut t) in tasks {
            if !t.state.is_final() {
                t.state = TaskState::Failed;
                t.finished_ms = Some(now_ms());
                t.error = Some(ApiError::internal(
                    "the server stopped while this task ran; check the object's state and retry",
                ));
                store.put_json(&k, &t).await?;
            }
        }
        Ok(TaskEngine {
            store,
            events,
            cancel_flags: Mutex::new(HashMap::new()),
        })
    }

    /// Creates a task and runs `body` in the background. Returns the task as
    /// recorded (queued).
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
        };
        self.store
            .put_json(&key(&task.id), &task)
            .await
            .map_err(|e| ApiError::internal(format!("cannot record task: {e}")))?;
        let flag = Arc::new(AtomicBool::new(false));
        self.cancel_flags
            .lock()
            .await
            .insert(task.id.clone(), flag.clone());
        let ctx = TaskCtx {
            id: task.id.clone(),
            store: self.store.clone(),
            cancel: flag,
        };
        let engine = self.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            engine
                .set(&id, |t| {
                    t.state = TaskState::Running;
                    t.started_ms = Some(now_ms());
                })
                .await;
            let result = tokio::spawn(body(ctx)).await.unwrap_or_else(|e| {
                Err(ApiError::internal(format!(
                    "task body failed unexpectedly: {e}"
                )))
            });
            let finished = engine
                .set(&id, |t| {
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
            engine.cancel_flags.lock().await.remove(&id);
            if let Some(t) = finished {
                let msg = match &t.error {
                    None => format!("{} {} succeeded", t.kind, t.target),
                    Some(e) => format!("{} {} {}: {}", t.kind, t.target, t.state_str(), e.message),
                };
                engine
                    .events
                    .publish(
                        "task.finished",
                        &t.target,
                        msg,
                        serde_json::to_value(&t).unwrap_or_default(),
                    )
                    .await;
            }
            engine.prune().await;
        });
        Ok(task)
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

    /// Requests cancellation of a running task.
    pub async fn cancel(&self, id: &str) -> Result<Task, ApiError> {
        let t = self.get(id).await?;
        if t.state.is_final() {
            return Err(ApiError::invalid_state(format!(
                "task '{id}' has already ended ({})",
                t.state_str()
            )));
        }
        if let Some(flag) = self.cancel_flags.lock().await.get(id) {
            flag.store(true, Ordering::SeqCst);
        }
        Ok(self
            .set(id, |t| t.cancel_requested = true)
            .await
            .unwrap_or(t))
    }

    async fn prune(&self) {
        let Ok(mut all) = self.list().await else {
            return;
        };
        all.retain(|t| t.state.is_final());
        for t in all.iter().skip(KEEP_FINISHED) {
            let _ = self.store.delete(&key(&t.id)).await;
        }
    }
}

trait StateStr {
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
