//! Errors of the benchmarks.

use std::path::PathBuf;

/// What can go wrong running a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The lab failed.
    #[error("the benchmark's lab failed")]
    Lab(#[from] vdc_lab::LabError),
    /// The vdc API answered an error.
    #[error("vdc API: {what}")]
    Api {
        /// What was asked.
        what: String,
        /// Why it failed.
        #[source]
        source: vdc_client::ClientError,
    },
    /// A vdc task failed.
    #[error("vdc task {kind} on {target} failed: {message}")]
    Task {
        /// Task kind.
        kind: String,
        /// Its target.
        target: String,
        /// The server's message.
        message: String,
    },
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace '{netns}'")]
    Netns {
        /// The namespace.
        netns: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the guest failed.
    #[error("guest service {addr}: {what}")]
    Guest {
        /// The guest's address.
        addr: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest refused a command.
    #[error("the guest answered {answer:?} to {command:?}")]
    GuestRefused {
        /// The command.
        command: String,
        /// Its answer.
        answer: String,
    },
    /// Not an IPv4 address.
    #[error("not an address: {0}")]
    BadAddress(String),
    /// A helper thread panicked.
    #[error("a benchmark thread panicked")]
    Thread,
    /// A program could not be run.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program failed.
    #[error("{program} failed: {stderr}")]
    Command {
        /// The command line.
        program: String,
        /// The end of its error output.
        stderr: String,
    },
    /// A file could not be written or read.
    #[error("cannot write or read {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waited too long.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A backup store step failed.
    #[error("vdc backup")]
    Backup(#[from] vdc_backup::BackupError),
    /// A trial's events lack one its figures need.
    #[error("the server's events lack a measure")]
    MissingEvent(#[from] crate::ha_report::MissingEvent),
}
