//! Errors of the storage layer.

use std::path::PathBuf;

/// What went wrong with a datastore, a disk image, a VM directory or a lock.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `qemu-img` could not be started.
    #[error("cannot run qemu-img")]
    QemuImgSpawn(#[source] std::io::Error),
    /// `qemu-img` exited with an error; its stderr is kept in `stderr`.
    #[error("qemu-img {operation} failed for {path}")]
    QemuImg {
        /// Subcommand (`create`, `convert`, `resize`, `info`).
        operation: &'static str,
        /// Image the command worked on.
        path: PathBuf,
        /// Exit code, if the process exited normally.
        status: Option<i32>,
        /// What qemu-img wrote to stderr.
        stderr: String,
    },
    /// `qemu-img` did not finish in time (and was killed).
    #[error("qemu-img {operation} of {path} did not finish within {seconds} s")]
    QemuImgTimeout {
        /// Subcommand.
        operation: &'static str,
        /// Image.
        path: PathBuf,
        /// The time allowed.
        seconds: u64,
    },
    /// `qemu-img info` printed something that is not the expected JSON.
    #[error("cannot parse qemu-img info output for {path}")]
    QemuImgOutput {
        /// Image.
        path: PathBuf,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A disk can only grow.
    #[error("cannot shrink {path} from {current_bytes} to {requested_bytes} bytes")]
    Shrink {
        /// Image.
        path: PathBuf,
        /// Current virtual size.
        current_bytes: u64,
        /// Requested virtual size.
        requested_bytes: u64,
    },
    /// A path relative to a datastore is not acceptable.
    #[error("path '{path}' is not inside datastore '{datastore}': {reason}")]
    PathOutsideDatastore {
        /// Datastore name.
        datastore: String,
        /// The offending path as given.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An image from outside vdc breaks the rules of [`crate::image`].
    #[error("image {path} refused")]
    ImageRefused {
        /// The image as given.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        reason: crate::image::ImageRefusal,
    },
    /// A file system operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done (`create`, `read`, `write`, `remove`, …).
        action: &'static str,
        /// File or directory.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// statvfs(2) failed on a datastore.
    #[error("cannot measure free space of {path}")]
    Statvfs {
        /// Directory.
        path: PathBuf,
        /// OS error.
        #[source]
        source: nix::errno::Errno,
    },
    /// A JSON file of ours (`vm.json`, `vm.lock`) cannot be parsed.
    #[error("cannot parse {path}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON file of ours was written by a newer version.
    #[error("{path} has format version {found}; this build reads up to {supported}")]
    UnsupportedVersion {
        /// File.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// Another host holds a live lease on the VM directory.
    #[error("VM directory is locked by host '{holder_host}'")]
    Locked {
        /// Host holding the lease.
        holder_host: String,
        /// Generation of its lease seen last.
        generation: u64,
    },
    /// Lease I/O did not finish in time (the datastore may hang).
    #[error("lease I/O on the datastore did not finish within {after:?}")]
    LeaseIoTimeout {
        /// The deadline.
        after: std::time::Duration,
    },
    /// An earlier lease I/O call still hangs.
    #[error("an earlier lease I/O on the datastore has not finished")]
    LeaseIoPending,
    /// The lease I/O thread is gone.
    #[error("the lease I/O thread stopped")]
    LeaseIoStopped,
    /// The lease this host held was taken by another host.
    #[error("lease on the VM directory was lost to host '{holder_host}'")]
    LeaseLost {
        /// Host that holds it now (empty if the lease file is gone).
        holder_host: String,
    },
}

impl DiskError {
    /// Shorthand for [`DiskError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DiskError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
