//! Errors of the backup store.

use std::path::PathBuf;

/// What went wrong with a backup store.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file of the store could not be read or written.
    #[error("{what} '{path}'")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory is not a backup store.
    #[error("'{0}' is not a vdc backup store (no vdc-backup-store.json)")]
    NotAStore(PathBuf),
    /// A file has the wrong magic number or cannot be parsed.
    #[error("{what} '{path}' is damaged: {detail}")]
    Corrupt {
        /// Which kind of file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A file was written by a newer vdc.
    #[error("{what} '{path}' has version {found}; this vdc reads up to {supported}")]
    TooNew {
        /// Which kind of file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// A chunk's content does not match its name.
    #[error("chunk {digest} fails its digest check")]
    ChunkDigest {
        /// The chunk's name.
        digest: String,
    },
    /// A chunk the backup needs is not in the store.
    #[error("chunk {digest} is missing from the store")]
    ChunkMissing {
        /// The chunk's name.
        digest: String,
    },
    /// The store is encrypted and no key (or the wrong key) was given.
    #[error("{0}")]
    Key(String),
    /// No backup with that id.
    #[error("no backup '{0}' in the store")]
    NoBackup(String),
    /// The NBD server answered something unexpected.
    #[error("NBD: {0}")]
    Nbd(String),
    /// The work was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl BackupError {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BackupError::Io { what, path, source }
    }
}

/// Result of the store's operations.
pub type Result<T> = std::result::Result<T, BackupError>;
