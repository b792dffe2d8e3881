//! Waiting for a task, with a progress bar when a person is watching.
//!
//! Steps: poll the task through the client (which backs off up to 250 ms
//! between polls); on a terminal, draw a bar on stderr from the task's
//! `progress` and `stage`; otherwise stay quiet until the end. Either way one
//! final line on stderr says how the task ended and how long it took, so the
//! standard output carries only the result. Ctrl-C stops the waiting, not
//! the task, and says how to pick it up again.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vdc_client::{Client, ClientError};
use vdc_types::{Task, TaskState};

use crate::error::CliError;
use crate::format::duration_ms;

/// Waits until `task` ends (or `timeout` passes). A failed or cancelled task
/// is an error carrying the task.
pub async fn wait_task(client: &Client, task: &Task, timeout: Duration) -> Result<Task, CliError> {
    let bar = if std::io::stderr().is_terminal() {
        Some(progress_bar(task))
    } else {
        None
    };
    let poll = client.wait_task(&task.id, timeout, |t| {
        if let Some(bar) = &bar {
            bar.set_position(u64::from(t.progress.min(100)));
            bar.set_message(
                t.stage
                    .clone()
                    .unwrap_or_else(|| state_word(t.state).to_string()),
            );
        }
    });
    let result = tokio::select! {
        r = poll => r,
        _ = tokio::signal::ctrl_c() => {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            return Err(CliError::Interrupted(task.id.clone()));
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match &result {
        Ok(t) => eprintln!("{}", final_line(t)),
        Err(ClientError::TaskFailed(t)) => eprintln!("{}", final_line(t)),
        Err(_) => {}
    }
    Ok(result?)
}

fn progress_bar(task: &Task) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos:>3}% {wide_msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("{} {}", task.kind, task.target));
    bar.set_position(u64::from(task.progress.min(100)));
    bar.set_message(task.stage.clone().unwrap_or_default());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// The line printed once a task has ended, e.g.
/// `vm.start web-1: succeeded in 3.2s`.
pub fn final_line(t: &Task) -> String {
    let took = match (t.started_ms.or(Some(t.created_ms)), t.finished_ms) {
        (Some(start), Some(end)) => format!(" in {}", duration_ms(end.saturating_sub(start))),
        _ => String::new(),
    };
    format!("{} {}: {}{took}", t.kind, t.target, state_word(t.state))
}

/// The API's word for a task state.
pub fn state_word(s: TaskState) -> &'static str {
    match s {
        TaskState::Queued => "queued",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_line_says_outcome_and_time() {
        let t = Task {
            id: "1".into(),
            kind: "vm.start".into(),
            target_kind: "vm".into(),
            target: "web-1".into(),
            state: TaskState::Succeeded,
            progress: 100,
            stage: None,
            error: None,
            cancel_requested: false,
            created_ms: 1000,
            started_ms: Some(1500),
            finished_ms: Some(4700),
            journal: None,
            migration: None,
        };
        assert_eq!(final_line(&t), "vm.start web-1: succeeded in 3.2s");
        let mut t = t;
        t.finished_ms = None;
        t.state = TaskState::Running;
        assert_eq!(final_line(&t), "vm.start web-1: running");
    }
}
