//! The error body every API (REST and agent) returns.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable, machine-readable error codes. Each maps to one HTTP status in the
/// API crate; the CLI maps them to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or a value was out of range (400).
    InvalidInput,
    /// Missing or wrong API token (401).
    Unauthorized,
    /// The credential is valid but may not do this (403).
    Forbidden,
    /// The named object does not exist (404).
    NotFound,
    /// An object with that name already exists (409).
    AlreadyExists,
    /// The object is in a state that does not allow the operation (409).
    InvalidState,
    /// Another host holds the VM's lock (409).
    Locked,
    /// No host has the capacity the request needs (409).
    InsufficientCapacity,
    /// The request was well formed but a host failed to carry it out (502).
    HostError,
    /// The target host is not connected (503).
    HostUnavailable,
    /// A paired site does not answer (503).
    SiteUnreachable,
    /// The operation was cancelled (409).
    Cancelled,
    /// The request body is larger than the route accepts (413).
    PayloadTooLarge,
    /// The request took longer than the server allows (503).
    Timeout,
    /// An unexpected server-side failure (500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Timeout => 503,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists
            | ErrorCode::InvalidState
            | ErrorCode::Locked
            | ErrorCode::InsufficientCapacity
            | ErrorCode::Cancelled => 409,
            ErrorCode::HostError => 502,
            ErrorCode::HostUnavailable | ErrorCode::SiteUnreachable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// JSON error body: `{code, message, details?}`. `message` says what was
/// wrong and, where possible, what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable sentence.
    pub message: String,
    /// Optional structured details (e.g. the offending field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// A new error with no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }
    /// `InvalidInput` shorthand.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }
    /// `NotFound` shorthand: "`kind` 'name' not found".
    pub fn not_found(kind: &str, name: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!(
                "{kind} '{name}' not found; list them with 'vdc {} list'",
                kind.to_lowercase()
            ),
        )
    }
    /// `InvalidState` shorthand.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidState, message)
    }
    /// `Internal` shorthand.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// Attaches structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}
