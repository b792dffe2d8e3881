//! Errors of the QMP client.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to the QMP socket failed.
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the socket failed.
    #[error("QMP socket I/O failed")]
    Io(#[source] std::io::Error),
    /// QEMU sent something that is not QMP.
    #[error("QMP protocol violation: {0}")]
    Protocol(String),
    /// A message could not be encoded or decoded as JSON.
    #[error("invalid QMP JSON")]
    Json(#[source] serde_json::Error),
    /// QEMU answered the command with an error.
    #[error("{class}: {desc}")]
    Command {
        /// QMP error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        /// Human-readable description from QEMU.
        desc: String,
    },
    /// QEMU sent a message longer than the client reads; the connection
    /// was dropped.
    #[error("QMP message larger than {max} bytes")]
    TooLarge {
        /// The cap ([`crate::MAX_MESSAGE`]).
        max: usize,
    },
    /// The connection closed (QEMU exited or the socket broke) before the
    /// answer arrived.
    #[error("QMP connection closed")]
    Disconnected,
    /// No answer arrived in time.
    #[error("QMP command {command} got no answer within {after:?}")]
    Timeout {
        /// The command sent.
        command: String,
        /// How long the client waited.
        after: Duration,
    },
}

impl QmpError {
    /// Whether this error means the connection is gone (as opposed to QEMU
    /// refusing one command).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, QmpError::Disconnected | QmpError::Io(_))
    }
}
