//! Errors of every store operation, whatever the implementation.

use crate::LeaseId;

/// Error from a [`Store`](crate::Store) or one of its helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage backend failed (I/O, database or connection error).
    #[error("store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store file was written in a format this build does not read.
    #[error("unsupported store format version {found} (expected {expected})")]
    UnsupportedFormat {
        /// Version found in the file.
        found: u64,
        /// Version this build reads and writes.
        expected: u64,
    },
    /// A stored record could not be decoded.
    #[error("corrupt store record for key {key:?}")]
    Corrupt {
        /// Key of the damaged record.
        key: String,
    },
    /// The key is empty.
    #[error("empty key")]
    InvalidKey,
    /// A transaction branch puts a key twice, or puts and deletes it.
    #[error("transaction touches key {0:?} more than once")]
    InvalidTxn(String),
    /// A lease TTL of zero was requested.
    #[error("lease TTL must be positive")]
    InvalidTtl,
    /// The lease does not exist (it expired, was revoked, or never existed).
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    /// The key does not exist.
    #[error("key {0:?} not found")]
    NotFound(String),
    /// The key already exists.
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    /// A read-modify-write lost the race too many times in a row.
    #[error("key {key:?} kept changing during update ({attempts} attempts)")]
    Conflict {
        /// Key being updated.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A value could not be serialized to JSON.
    #[error("cannot encode value for key {key:?}")]
    Encode {
        /// Key being written.
        key: String,
        /// Serializer error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value is not the expected JSON.
    #[error("cannot decode value of key {key:?}")]
    Decode {
        /// Key being read.
        key: String,
        /// Deserializer error.
        #[source]
        source: serde_json::Error,
    },
    /// The watcher fell behind and was dropped; re-list and watch again.
    #[error("watch fell behind and was closed")]
    WatchLagged,
    /// A watch asked for history the store no longer holds (etcd compacted
    /// it, or the store keeps none); list again and watch from there.
    #[error(
        "history from revision {requested} is gone (oldest available: {available}); list again"
    )]
    Compacted {
        /// Revision the caller asked to resume after.
        requested: u64,
        /// Oldest revision the store can still resume after.
        available: u64,
    },
    /// The store must be used from inside a tokio runtime.
    #[error("no tokio runtime")]
    NoRuntime,
    /// A background task of the store failed.
    #[error("store task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// Wrap a backend error.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Backend(e.into())
    }
}
