//! The cluster state store (design §3).
//!
//! Every piece of cluster-wide state — hosts, VMs, tasks, placements, locks —
//! lives in one key-value store with etcd-like semantics, so the control plane
//! can be written once and run either embedded (one `vdc server`, a redb file)
//! or replicated (several servers sharing etcd, later).
//!
//! The model, shared by every implementation of [`Store`]:
//!
//! - Keys are non-empty UTF-8 strings, conventionally `/`-separated paths
//!   (`/vms/<id>`); values are opaque bytes (JSON through [`StoreExt`]).
//! - A global **revision** counts committed changes. Each write that changes
//!   something bumps it by exactly one, whatever the number of keys it
//!   touched; a write that changes nothing (deleting an absent key, a
//!   transaction whose branch is empty) leaves it alone. Every [`KeyValue`]
//!   carries the revision that created it and the one that last modified it.
//! - [`Store::txn`] is the single atomic primitive: a list of [`Compare`]s
//!   picks the success or the failure branch, whose [`Op`]s are applied
//!   together under one revision. Optimistic concurrency is built on it
//!   ([`StoreExt::create_json`], [`StoreExt::update_json`]).
//! - [`Store::watch`] streams every change under a key prefix, in revision
//!   order, from the moment the watch is created.
//! - **Leases** have a time to live; keys put with a lease disappear (and
//!   watchers see a delete) when the lease expires or is revoked, unless kept
//!   alive. They are how a process says "I am here" (host heartbeats, leader
//!   election, VM ownership).
//!
//! Implementations: [`RedbStore`] (embedded, default) and, in the
//! `vdc-store-etcd` crate, `EtcdStore` (etcd, for several servers). The `conformance`
//! module holds the behaviour every implementation must show; an
//! implementation proves itself with `store_conformance_tests!`. Both exist
//! only with the `conformance` feature, which the crate's own tests (and an
//! implementation's) enable as a dev-dependency: the suite is compiled for
//! tests, never into the server.
//!
//! ```
//! use std::sync::Arc;
//! use vdc_store::{RedbStore, Store, StoreError, StoreExt, WatchEvent};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), StoreError> {
//! let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_memory().await?);
//! store.create_json("/hosts/h1", &3u32).await?;
//! let n = store
//!     .update_json("/hosts/h1", |n: u32| Ok::<_, StoreError>(n + 1))
//!     .await?;
//! assert_eq!(n, 4);
//! let mut watch = store.watch("/hosts/").await?;
//! store.delete("/hosts/h1").await?;
//! assert!(matches!(watch.recv().await, Some(Ok(WatchEvent::Delete { .. }))));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
pub mod format;
mod json;
mod redb_store;
mod redb_tables;
mod watch;

use std::time::Duration;

pub use error::StoreError;
pub use json::{StoreExt, UPDATE_ATTEMPTS};
pub use redb_store::{RedbStore, OPEN_WAIT};
pub use watch::{Watch, WatchSender, WATCH_BUFFER};

/// Identifier of a lease, chosen by the store in [`Store::grant_lease`].
pub type LeaseId = u64;

/// A key with its value and bookkeeping, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision at which this key was created (last created, if it was
    /// deleted and put again).
    pub create_revision: u64,
    /// Revision of the last change to this key.
    pub mod_revision: u64,
    /// Lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// A condition evaluated by [`Store::txn`] against the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals the given one; `0` means the key must
    /// be absent.
    Revision {
        /// Key to check.
        key: String,
        /// Expected modification revision, or 0 for "absent".
        mod_revision: u64,
    },
    /// The key exists and its value equals the given bytes.
    Value {
        /// Key to check.
        key: String,
        /// Expected value.
        value: Vec<u8>,
    },
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Exists(String),
}

/// A change applied by [`Store::txn`].
///
/// Within one branch a key may be put at most once and may not be both put
/// and deleted (etcd's rule); deletes may overlap each other. Breaking the
/// rule fails the transaction with [`StoreError::InvalidTxn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a key. A put without a lease detaches the key from
    /// any lease it had.
    Put {
        /// Key to write.
        key: String,
        /// New value.
        value: Vec<u8>,
        /// Lease to attach the key to; it must exist.
        lease: Option<LeaseId>,
    },
    /// Delete one key (nothing happens if it is absent).
    Delete(String),
    /// Delete every key starting with this string (plain string prefix).
    DeletePrefix(String),
}

/// Outcome of [`Store::txn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// True if every compare held and the success branch ran.
    pub succeeded: bool,
    /// Store revision after the transaction: the new revision if the chosen
    /// branch changed something, the unchanged current one otherwise.
    pub revision: u64,
}

/// A change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or modified; the new state.
    Put(KeyValue),
    /// A key was deleted (explicitly, by prefix, or by its lease ending).
    Delete {
        /// The deleted key.
        key: String,
        /// Revision of the deletion.
        mod_revision: u64,
    },
}

impl WatchEvent {
    /// Key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// Revision at which the change happened.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// The cluster state store. Object safe: share it as `Arc<dyn Store>`.
///
/// See the crate documentation for the revision, transaction, watch and
/// lease semantics every implementation follows; the `conformance` suite checks them.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Read one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Create or replace a key (without lease); returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError>;

    /// Delete a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Every key starting with `prefix` (plain string prefix, `""` = all),
    /// sorted by key bytes.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Atomically evaluate `compares` and apply `success` if all hold,
    /// `failure` otherwise. On error nothing is applied.
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult, StoreError>;

    /// Stream the changes to keys starting with `prefix`, in revision order,
    /// from now on (changes with a revision above [`Watch::start_revision`]).
    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError>;

    /// Stream the changes to keys starting with `prefix` that happened
    /// after revision `after`, then every later one: a watcher that saw
    /// everything up to `after` resumes without a gap or a repeat.
    ///
    /// [`StoreError::Compacted`] if the store no longer holds that history
    /// (the caller lists again and watches from the listed revision). The
    /// default, for stores that keep no history (the embedded one), resumes
    /// only from the current revision.
    async fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        let watch = self.watch(prefix).await?;
        if watch.start_revision() == after {
            Ok(watch)
        } else {
            Err(StoreError::Compacted {
                requested: after,
                available: watch.start_revision(),
            })
        }
    }

    /// Create a lease that expires `ttl` after its grant or last keep-alive.
    /// Implementations may round the TTL up to their granularity.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Restart the lease's TTL; [`StoreError::LeaseNotFound`] if it expired
    /// or never existed.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// End a lease now, deleting its keys (watchers see deletes).
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Create or replace a key attached to `lease`; returns the new revision.
    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<u64, StoreError>;

    /// The current store revision.
    async fn revision(&self) -> Result<u64, StoreError>;
}

/// Check etcd's rule for the ops of one transaction branch: no key put
/// twice, no key both put and deleted (directly or through a prefix).
/// Public for store implementations.
pub fn check_ops_disjoint(ops: &[Op]) -> Result<(), StoreError> {
    let mut puts: Vec<&str> = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, .. } => {
                if key.is_empty() {
                    return Err(StoreError::InvalidKey);
                }
                if puts.contains(&key.as_str()) {
                    return Err(StoreError::InvalidTxn(key.clone()));
                }
                puts.push(key);
            }
            Op::Delete(key) if key.is_empty() => return Err(StoreError::InvalidKey),
            Op::Delete(_) | Op::DeletePrefix(_) => {}
        }
    }
    for op in ops {
        let hit = match op {
            Op::Delete(key) => puts.iter().find(|p| **p == key.as_str()),
            Op::DeletePrefix(prefix) => puts.iter().find(|p| p.starts_with(prefix.as_str())),
            Op::Put { .. } => None,
        };
        if let Some(key) = hit {
            return Err(StoreError::InvalidTxn((*key).to_string()));
        }
    }
    Ok(())
}
