//! Errors of the QEMU driver.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong driving a QEMU process.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A unix socket path does not fit in `sun_path` (107 bytes + NUL).
    #[error("socket path {path} is {len} bytes long; at most {max} fit in a unix socket address (use a shorter run directory)")]
    SocketPathTooLong {
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A file operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done ("create directory", "open", …).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The QEMU binary could not be started.
    #[error("cannot run {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-system-* --version` printed something unexpected.
    #[error("cannot read the QEMU version from {output:?}")]
    Version {
        /// What the binary printed.
        output: String,
    },
    /// A QEMU process for this VM already runs.
    #[error("a QEMU process for this VM already runs (pid {pid})")]
    AlreadyRunning {
        /// Its pid.
        pid: u32,
    },
    /// The state file to resume from does not exist.
    #[error("suspend state file {0} does not exist")]
    MissingStateFile(PathBuf),
    /// QEMU exited while starting.
    #[error("QEMU exited during startup; qemu.log ends with:\n{log_tail}")]
    StartFailed {
        /// The end of qemu.log.
        log_tail: String,
    },
    /// QEMU did not open its QMP socket in time.
    #[error(
        "QEMU did not answer on its QMP socket within {after:?}; qemu.log ends with:\n{log_tail}"
    )]
    StartTimeout {
        /// How long we waited.
        after: Duration,
        /// The end of qemu.log.
        log_tail: String,
    },
    /// A QMP command failed.
    #[error("QMP command {command} failed")]
    Qmp {
        /// The command.
        command: &'static str,
        /// Cause.
        #[source]
        source: vdc_qmp::QmpError,
    },
    /// A migration (suspend to file, resume from file) failed.
    #[error("migration {direction} failed with status {status}: {desc}")]
    Migration {
        /// `to file` or `from file`.
        direction: &'static str,
        /// Final migration status.
        status: String,
        /// QEMU's description, if it gave one.
        desc: String,
    },
    /// An operation took longer than allowed.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The QEMU process is gone.
    #[error("the QEMU process has exited")]
    Exited,
    /// A NIC without a hot-plug port cannot be plugged or unplugged.
    #[error("the NIC has no hot-plug port")]
    NotHotplug,
    /// The process would not die even after SIGKILL.
    #[error("QEMU process {pid} survived SIGKILL")]
    Unkillable {
        /// Its pid.
        pid: u32,
    },
}

impl QemuError {
    /// Wraps a QMP error with the command that failed.
    pub(crate) fn qmp(command: &'static str) -> impl FnOnce(vdc_qmp::QmpError) -> QemuError {
        move |source| QemuError::Qmp { command, source }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> QemuError {
        let path = path.into();
        move |source| QemuError::Io {
            action,
            path,
            source,
        }
    }
}
