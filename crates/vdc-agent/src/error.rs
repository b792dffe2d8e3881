//! Errors of the agent process, and the mapping of lower-layer errors to
//! the API's [`ApiError`] body.

use std::net::SocketAddr;
use std::path::PathBuf;

use vdc_types::{ApiError, ErrorCode};

/// Why the agent could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag or configuration value is wrong.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// The credential file cannot be read.
    #[error("cannot read credential file {path}")]
    CredentialFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The state directory cannot be created or read.
    #[error("cannot use state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A datastore directory is missing or unreadable.
    #[error("datastore '{name}' at {path} is not usable")]
    Datastore {
        /// Datastore name.
        name: String,
        /// Its path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: vdc_disk::DiskError,
    },
    /// The API address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("agent API server failed")]
    Serve(#[source] std::io::Error),
}

/// "what: cause: cause…" for an API message, walking the source chain.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// A host-side failure as an API error: `what` and the cause chain in the
/// message, tool output (qemu-img / ip stderr) in `details`.
pub(crate) fn host_error(
    what: impl std::fmt::Display,
    err: &(dyn std::error::Error + 'static),
) -> ApiError {
    let mut e = ApiError::new(ErrorCode::HostError, format!("{what}: {}", chain(err)));
    let stderr = if let Some(vdc_disk::DiskError::QemuImg { stderr, .. }) = err.downcast_ref() {
        Some(stderr.clone())
    } else if let Some(vdc_net::NetError::Command { stderr, .. }) = err.downcast_ref() {
        Some(stderr.clone())
    } else {
        None
    };
    if let Some(stderr) = stderr {
        e.message.push_str(&format!(" ({stderr})"));
        e = e.with_details(serde_json::json!({ "stderr": stderr }));
    }
    e
}

/// A storage error as an API error: a path outside a datastore or a
/// refused image is the caller's mistake (400), a held lock is 409, the
/// rest is a host failure.
pub(crate) fn disk_error(what: impl std::fmt::Display, err: vdc_disk::DiskError) -> ApiError {
    match &err {
        vdc_disk::DiskError::PathOutsideDatastore { .. } => {
            ApiError::invalid(format!("{what}: {err}"))
        }
        vdc_disk::DiskError::ImageRefused { .. } => {
            ApiError::invalid(format!("{what}: {}", chain(&err)))
        }
        vdc_disk::DiskError::Locked { .. } => ApiError::invalid_state(format!("{what}: {err}")),
        _ => host_error(what, &err),
    }
}
