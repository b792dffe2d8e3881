//! Tasks: long operations the server runs on behalf of a request.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ApiError, UnixMillis};

/// Life cycle of a task.
///
/// ```text
/// queued ──► running ──► succeeded
///    │          ├──────► failed
///    └──────────┴──────► cancelled   (cancel requested and honoured)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, not started.
    Queued,
    /// In progress.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error; see `error`.
    Failed,
    /// Stopped on request before finishing; any partial work was undone.
    Cancelled,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A long-running operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Identifier (UUID).
    pub id: String,
    /// What the task does, e.g. `vm.create`, `vm.start`.
    pub kind: String,
    /// Kind of object it works on (`vm`, `host`).
    pub target_kind: String,
    /// Name of the object it works on.
    pub target: String,
    /// State.
    pub state: TaskState,
    /// Progress, 0–100.
    pub progress: u8,
    /// What the task is doing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// Cancellation was requested.
    pub cancel_requested: bool,
    /// Creation time.
    pub created_ms: UnixMillis,
    /// Start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<UnixMillis>,
    /// End time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<UnixMillis>,
}
