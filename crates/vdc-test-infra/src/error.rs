//! Errors of the test fixture.

use std::path::PathBuf;

/// What can go wrong setting up a test lab or talking to a guest.
#[derive(Debug, thiserror::Error)]
pub enum TestInfraError {
    /// The lab failed.
    #[error("starting the test lab failed")]
    Lab(#[from] vdc_lab::LabError),
    /// The temporary directory could not be made.
    #[error("cannot create a temporary directory")]
    TempDir(#[source] std::io::Error),
    /// A lock file could not be made.
    #[error("cannot name a lab id lock")]
    Lock(#[source] std::io::Error),
    /// No free port on 127.0.0.1.
    #[error("cannot find a free port")]
    Port(#[source] std::io::Error),
    /// Every candidate lab id is taken.
    #[error("no free test lab id")]
    NoFreeLabId,
    /// Every test subnet is taken.
    #[error("no free test subnet (10.77.201.0/24 to 10.77.254.0/24)")]
    NoFreeSubnet,
    /// The `vdc` binary is missing.
    #[error("vdc binary {0} not found; build it with 'cargo build -p vdc'")]
    NoBinary(PathBuf),
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace '{netns}'")]
    Netns {
        /// The namespace.
        netns: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to, writing to or reading from a guest failed.
    #[error("guest service {addr}: {what}")]
    Guest {
        /// `ADDR:PORT`.
        addr: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest closed the connection before answering.
    #[error("guest service {0} closed the connection before answering")]
    GuestClosed(String),
    /// The helper thread panicked.
    #[error("guest request thread panicked")]
    Thread,
}
