//! Errors of the CLI and how they map to exit codes.
//!
//! Scripts tell failures apart by exit code, so the mapping is fixed here:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | anything else (server-side failure, task failed for another reason) |
//! | 2 | invalid input or usage |
//! | 3 | the named object does not exist |
//! | 4 | conflict: already exists, invalid state, locked, no capacity |
//! | 5 | the server could not be reached |
//! | 130 | interrupted while waiting for a task (the task goes on) |

use vdc_client::ClientError;
use vdc_types::ErrorCode;

/// Exit code for invalid input or usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a missing object.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code for a conflict.
pub const EXIT_CONFLICT: u8 = 4;
/// Exit code for an unreachable server.
pub const EXIT_UNREACHABLE: u8 = 5;
/// Exit code when the user interrupted waiting (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code for every other failure.
pub const EXIT_OTHER: u8 = 1;

/// Errors of the `vdc` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line was wrong; the text says how.
    #[error("{0}")]
    Usage(String),
    /// The REST API call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the output or reading the terminal failed.
    #[error("cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// A JSON object could not be printed.
    #[error("cannot print the answer as JSON")]
    Json(#[source] serde_json::Error),
    /// The event stream ended because the server closed it.
    #[error("the server closed the event stream")]
    StreamClosed,
    /// Waiting was interrupted (Ctrl-C); the task goes on.
    #[error("interrupted; task {0} goes on in the server: follow it with 'vdc task wait {0}'")]
    Interrupted(String),
    /// The server, agent or lab process failed.
    #[error("{0:#}")]
    Process(anyhow::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Client(e) => client_exit_code(e),
            CliError::StreamClosed => EXIT_UNREACHABLE,
            CliError::Interrupted(_) => EXIT_INTERRUPTED,
            CliError::Io(..) | CliError::Json(_) | CliError::Process(_) => EXIT_OTHER,
        }
    }

    /// The machine-readable code printed in the JSON error body.
    pub fn json_code(&self) -> String {
        match self {
            CliError::Usage(_) => code_name(ErrorCode::InvalidInput),
            CliError::Client(e) => match e {
                ClientError::Transport { .. } => "unreachable".to_string(),
                ClientError::Config(_) => code_name(ErrorCode::InvalidInput),
                ClientError::Timeout(..) => "timeout".to_string(),
                other => other
                    .code()
                    .map(code_name)
                    .unwrap_or_else(|| code_name(ErrorCode::Internal)),
            },
            CliError::StreamClosed => "unreachable".to_string(),
            CliError::Interrupted(_) => "interrupted".to_string(),
            CliError::Io(..) | CliError::Json(_) | CliError::Process(_) => {
                code_name(ErrorCode::Internal)
            }
        }
    }

    /// The error as the JSON body printed with `-o json`: `{code, message}`
    /// (plus the server's `details` and the failed task, when there are).
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "code": self.json_code(),
            "message": self.to_string(),
        });
        if let CliError::Client(ClientError::Api(api)) = self {
            if let Some(details) = &api.details {
                body["details"] = details.clone();
            }
        }
        if let CliError::Client(ClientError::TaskFailed(task)) = self {
            if let Ok(t) = serde_json::to_value(task) {
                body["task"] = t;
            }
        }
        body
    }
}

/// The exit code for an API error code.
pub fn api_exit_code(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::InvalidInput => EXIT_USAGE,
        ErrorCode::NotFound => EXIT_NOT_FOUND,
        ErrorCode::AlreadyExists
        | ErrorCode::InvalidState
        | ErrorCode::Locked
        | ErrorCode::InsufficientCapacity => EXIT_CONFLICT,
        ErrorCode::PayloadTooLarge => EXIT_USAGE,
        ErrorCode::Unauthorized
        | ErrorCode::Forbidden
        | ErrorCode::Timeout
        | ErrorCode::HostError
        | ErrorCode::HostUnavailable
        | ErrorCode::SiteUnreachable
        | ErrorCode::Cancelled
        | ErrorCode::Internal => EXIT_OTHER,
    }
}

/// The exit code for a client error.
pub fn client_exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Transport { .. } => EXIT_UNREACHABLE,
        ClientError::Config(_) => EXIT_USAGE,
        ClientError::Decode(_) | ClientError::TooLarge { .. } | ClientError::Timeout(..) => {
            EXIT_OTHER
        }
        ClientError::Api(_) | ClientError::TaskFailed(_) => {
            e.code().map(api_exit_code).unwrap_or(EXIT_OTHER)
        }
    }
}

/// The snake_case name of an error code, as the API spells it.
fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "internal".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::{ApiError, Task, TaskState};

    fn api(code: ErrorCode) -> CliError {
        CliError::Client(ClientError::Api(ApiError::new(code, "m")))
    }

    #[test]
    fn api_codes_map_to_exit_codes() {
        assert_eq!(api(ErrorCode::InvalidInput).exit_code(), 2);
        assert_eq!(api(ErrorCode::NotFound).exit_code(), 3);
        assert_eq!(api(ErrorCode::AlreadyExists).exit_code(), 4);
        assert_eq!(api(ErrorCode::InvalidState).exit_code(), 4);
        assert_eq!(api(ErrorCode::Locked).exit_code(), 4);
        assert_eq!(api(ErrorCode::InsufficientCapacity).exit_code(), 4);
        assert_eq!(api(ErrorCode::Internal).exit_code(), 1);
        assert_eq!(api(ErrorCode::HostError).exit_code(), 1);
        assert_eq!(api(ErrorCode::Unauthorized).exit_code(), 1);
    }

    #[test]
    fn other_errors_map_to_exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(
            CliError::Client(ClientError::Config("x".into())).exit_code(),
            2
        );
        assert_eq!(CliError::StreamClosed.exit_code(), 5);
        let timeout = ClientError::Timeout(std::time::Duration::from_secs(1), "t".into());
        assert_eq!(CliError::Client(timeout).exit_code(), 1);
    }

    #[test]
    fn failed_task_uses_its_error_code() {
        let task = Task {
            id: "t1".into(),
            kind: "vm.start".into(),
            target_kind: "vm".into(),
            target: "web-1".into(),
            state: TaskState::Failed,
            progress: 40,
            stage: None,
            error: Some(ApiError::new(
                ErrorCode::InsufficientCapacity,
                "no host has 64 GiB free",
            )),
            cancel_requested: false,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            journal: None,
            migration: None,
        };
        let e = CliError::Client(ClientError::TaskFailed(Box::new(task)));
        assert_eq!(e.exit_code(), 4);
        let j = e.to_json();
        assert_eq!(j["code"], "insufficient_capacity");
        assert!(j["message"]
            .as_str()
            .unwrap_or("")
            .contains("no host has 64 GiB free"));
        assert_eq!(j["task"]["id"], "t1");
    }

    #[test]
    fn json_body_has_code_and_message() {
        let e = CliError::Client(ClientError::Api(
            ApiError::new(ErrorCode::NotFound, "VM 'x' not found")
                .with_details(serde_json::json!({"field": "name"})),
        ));
        let j = e.to_json();
        assert_eq!(j["code"], "not_found");
        assert_eq!(j["message"], "VM 'x' not found");
        assert_eq!(j["details"]["field"], "name");
        assert_eq!(
            CliError::Usage("bad".into()).to_json()["code"],
            "invalid_input"
        );
    }
}
