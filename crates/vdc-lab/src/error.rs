//! Errors of the lab.

use std::path::PathBuf;

/// What can go wrong bringing a lab up, inspecting it or tearing it down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab id breaks the naming rules.
    #[error("invalid lab id '{id}': {reason}")]
    InvalidLabId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The number of hosts is out of range.
    #[error("invalid number of hosts {0}: use 1 to 64")]
    InvalidHostCount(usize),
    /// The subnet index is out of range.
    #[error("invalid subnet index {0}: use 0 to 254")]
    InvalidSubnetIndex(u8),
    /// Port 0 was given.
    #[error("invalid API port 0")]
    InvalidPort,
    /// The lab needs root rights (namespaces, bridges).
    #[error("the lab must run as root (it creates network namespaces and bridges)")]
    NotRoot,
    /// Another route already covers the lab's subnet.
    #[error("subnet {subnet} is already in use by route '{route}'; pick another --subnet-index")]
    SubnetInUse {
        /// The lab's subnet.
        subnet: String,
        /// The route that overlaps it.
        route: String,
    },
    /// The lab is already running.
    #[error("lab '{0}' is already up; see 'vdc lab status' or run 'vdc lab down --lab-id {0}'")]
    AlreadyUp(String),
    /// The lab's namespaces or bridge exist but its state file does not.
    #[error("network namespaces or bridge of lab '{0}' exist without a state file; remove them with 'vdc lab down --lab-id {0}'")]
    Leftovers(String),
    /// There is no state file for the lab.
    #[error("lab '{0}' is not up (no state file); start it with 'vdc lab up'")]
    NotUp(String),
    /// An `ip` command failed; `stderr` is what it said.
    #[error("'{command}' failed: {stderr}")]
    Ip {
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A program could not be started.
    #[error("cannot run '{command}'")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done ("create", "read", "write", "remove").
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error("cannot parse lab state file {path}")]
    StateFormat {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state file was written by an incompatible version.
    #[error("lab state file {path} has version {found}; this vdc reads version {expected}")]
    StateVersion {
        /// The state file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        expected: u32,
    },
    /// The lab has no host of that name.
    #[error("lab '{lab_id}' has no host '{host}'; see 'vdc lab status'")]
    NoSuchHost {
        /// Lab id.
        lab_id: String,
        /// The host asked for.
        host: String,
    },
    /// A fault could not be injected or healed.
    #[error("{0}")]
    Fault(String),
    /// A lab process exited while the lab was starting.
    #[error("{what} exited while the lab was starting; last lines of {log}:\n{tail}")]
    ProcessExited {
        /// Which process.
        what: String,
        /// Its log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {secs} s waiting for {what}; last lines of {log}:\n{tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
        /// The most relevant log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// No guest image and no way to build one.
    #[error("guest image {0} not found; build it with scripts/setup.sh (or pass --image PATH)")]
    ImageMissing(PathBuf),
    /// The guest image build script failed.
    #[error("building the guest image with {script} failed: {stderr}")]
    ImageBuild {
        /// The script.
        script: PathBuf,
        /// The end of its standard error.
        stderr: String,
    },
    /// A call to the lab's REST API failed.
    #[error("{what} failed")]
    Api {
        /// What the lab asked the API.
        what: String,
        /// Why.
        #[source]
        source: vdc_client::ClientError,
    },
    /// Tearing down finished but some steps failed.
    #[error("lab '{lab_id}' teardown left things behind: {}", failures.join("; "))]
    Teardown {
        /// Lab id.
        lab_id: String,
        /// One line per failed step.
        failures: Vec<String>,
    },
    /// A blocking task could not be joined.
    #[error("lab worker thread failed")]
    Join(#[source] tokio::task::JoinError),
}

/// Result with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;
