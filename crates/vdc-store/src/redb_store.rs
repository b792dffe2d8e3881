//! The embedded store: one redb file, in-process watches and leases.
//!
//! Why this shape: a single `vdc server` needs durable, transactional state
//! with no external service. redb gives crash-safe ACID transactions in one
//! file; revisions, watches and leases are layered on top here.
//!
//! How a write happens (puts, deletes, transactions, lease ends alike):
//!
//! 1. take the store mutex — writes are serialized, so revisions and watch
//!    events come out in one order;
//! 2. open a redb write transaction, evaluate the compares against it and
//!    pick a branch; check its ops (no overlapping keys, leases exist);
//! 3. apply the ops under revision `current + 1`, and if anything changed
//!    write that revision into `meta` and commit (fsync);
//! 4. still under the mutex, update the in-memory lease → keys index and push
//!    the events to every watcher whose prefix matches, without waiting: a
//!    watcher whose buffer is full is dropped ([`Watch`] explains).
//!
//! redb is synchronous, so every call runs on tokio's blocking pool and the
//! async runtime never waits on a disk flush.
//!
//! Leases live in memory only. A background task sleeps until the earliest
//! deadline and deletes the keys of every expired lease in one write. Leases
//! do not survive the process: [`RedbStore::open`] deletes every key that
//! was attached to a lease (one revision, no watcher can see it). This
//! differs from etcd, where leases are persisted and restarted with their
//! full TTL; for vdc the effect is the same — a restarted server waits for
//! its clients to re-register.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use redb::{Database, TableDefinition};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::format;
use crate::redb_tables::{apply_ops, holds, prepare, read_kv, scan_prefix};
use crate::{
    check_ops_disjoint, Compare, KeyValue, LeaseId, Op, Store, StoreError, TxnResult, Watch,
    WatchEvent, WatchSender,
};

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new(format::KV_TABLE);
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new(format::META_TABLE);

/// How long [`RedbStore::open`] waits for a file still held in this process.
pub const OPEN_WAIT: Duration = Duration::from_secs(2);

/// How long the expiry task sleeps when no lease exists.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

pub(crate) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::backend(e.into())
}

/// The embedded [`Store`]: a redb file (or memory), cheap to clone.
///
/// Must be opened and used inside a tokio runtime. The file is locked while
/// any clone is alive; drop them all before opening it again.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("revision", &self.inner.revision.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    /// Serializes writes; holds what must change together with a commit.
    state: Mutex<State>,
    /// Last committed revision (also in `meta`).
    revision: AtomicU64,
    /// Wakes the expiry task when a lease is granted.
    expiry_wakeup: Arc<Notify>,
    /// Dropped with the store, which stops the expiry task.
    _shutdown: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    leases: HashMap<LeaseId, Lease>,
    watchers: Vec<Watcher>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    tx: WatchSender,
}

/// A committed change to one key, before it becomes a watch event.
pub(crate) enum Change {
    Put {
        kv: KeyValue,
        old_lease: Option<LeaseId>,
    },
    Delete {
        key: String,
        old_lease: Option<LeaseId>,
    },
}

impl RedbStore {
    /// Open (or create) the store file at `path`.
    ///
    /// Checks the format version, and deletes the keys left attached to
    /// leases by the previous process (see the module docs).
    ///
    /// If the file is still held by a handle being dropped in this process,
    /// waits up to [`OPEN_WAIT`] for it to be released.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let deadline = Instant::now() + OPEN_WAIT;
        loop {
            let path = path.as_ref().to_path_buf();
            let opened = tokio::task::spawn_blocking(move || Database::create(path))
                .await
                .map_err(StoreError::Task)?;
            match opened {
                Ok(db) => return Self::start(db).await,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(db_err(e)),
            }
        }
    }

    /// A store kept in memory only, for tests and throwaway labs.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        Self::start(db).await
    }

    async fn start(db: Database) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
        let (db, revision) = tokio::task::spawn_blocking(move || {
            let revision = prepare(&db)?;
            Ok::<_, StoreError>((db, revision))
        })
        .await
        .map_err(StoreError::Task)??;
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let wakeup = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            db,
            state: Mutex::new(State::default()),
            revision: AtomicU64::new(revision),
            expiry_wakeup: wakeup.clone(),
            _shutdown: shutdown_tx,
        });
        runtime.spawn(expiry_loop(Arc::downgrade(&inner), wakeup, shutdown_rx));
        Ok(RedbStore { inner })
    }

    /// Run `f` on the blocking pool with the store.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(StoreError::Task)?
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves no half-done commit (redb aborts),
        // so the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Steps 2–4 of a write (module docs); the caller holds the lock.
    fn commit(
        &self,
        state: &mut State,
        compares: &[Compare],
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<(TxnResult, bool), StoreError> {
        let current = self.revision.load(Ordering::Acquire);
        let next = current + 1;
        let wtx = self.db.begin_write().map_err(db_err)?;
        let (succeeded, changes) = {
            let mut table = wtx.open_table(KV).map_err(db_err)?;
            let mut succeeded = true;
            for c in compares {
                succeeded &= holds(&table, c)?;
            }
            let ops = if succeeded { success } else { failure };
            check_ops_disjoint(&ops)?;
            for op in &ops {
                if let Op::Put {
                    lease: Some(id), ..
                } = op
                {
                    let now = Instant::now();
                    let alive = matches!(state.leases.get(id), Some(l) if l.deadline > now);
                    if !alive {
                        return Err(StoreError::LeaseNotFound(*id));
                    }
                }
            }
            (succeeded, apply_ops(&mut table, ops, next)?)
        };
        if changes.is_empty() {
            wtx.abort().map_err(db_err)?;
            let result = TxnResult {
                succeeded,
                revision: current,
            };
            return Ok((result, false));
        }
        wtx.open_table(META)
            .map_err(db_err)?
            .insert(format::META_REVISION, next)
            .map_err(db_err)?;
        wtx.commit().map_err(db_err)?;
        self.revision.store(next, Ordering::Release);
        state.publish(changes, next);
        let result = TxnResult {
            succeeded,
            revision: next,
        };
        Ok((result, true))
    }

    fn write(
        &self,
        compares: &[Compare],
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<(TxnResult, bool), StoreError> {
        let mut state = self.lock();
        self.commit(&mut state, compares, success, failure)
    }

    /// Remove leases from memory and delete their keys in one write.
    fn end_leases(&self, state: &mut State, ids: &[LeaseId]) -> Result<(), StoreError> {
        let mut ended = Vec::new();
        for id in ids {
            if let Some(lease) = state.leases.remove(id) {
                ended.push((*id, lease));
            }
        }
        let deletes = ended
            .iter()
            .flat_map(|(_, l)| l.keys.iter().cloned().map(Op::Delete))
            .collect();
        match self.commit(state, &[], deletes, vec![]) {
            Ok(_) => Ok(()),
            Err(e) => {
                // Keep the leases so a later attempt can delete their keys.
                state.leases.extend(ended);
                Err(e)
            }
        }
    }

    /// End every lease past its deadline.
    fn expire_due(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        let now = Instant::now();
        let due: Vec<LeaseId> = state
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        tracing::debug!(leases = due.len(), "leases expired");
        self.end_leases(&mut state, &due)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lock().leases.values().map(|l| l.deadline).min()
    }
}

impl State {
    /// Update the lease index and notify watchers after a commit.
    fn publish(&mut self, changes: Vec<Change>, revision: u64) {
        let mut events = Vec::with_capacity(changes.len());
        for change in changes {
            let (old_lease, new_lease, key, event) = match change {
                Change::Put { kv, old_lease } => {
                    (old_lease, kv.lease, kv.key.clone(), WatchEvent::Put(kv))
                }
                Change::Delete { key, old_lease } => {
                    let event = WatchEvent::Delete {
                        key: key.clone(),
                        mod_revision: revision,
                    };
                    (old_lease, None, key, event)
                }
            };
            if let Some(lease) = old_lease.and_then(|id| self.leases.get_mut(&id)) {
                lease.keys.remove(&key);
            }
            if let Some(lease) = new_lease.and_then(|id| self.leases.get_mut(&id)) {
                lease.keys.insert(key);
            }
            events.push(event);
        }
        self.watchers.retain(|w| {
            for event in events.iter().filter(|e| e.key().starts_with(&w.prefix)) {
                if !w.tx.send(event.clone()) {
                    if !w.tx.is_closed() {
                        tracing::warn!(prefix = %w.prefix, "watcher fell behind, dropped");
                    }
                    return false;
                }
            }
            true
        });
    }
}

/// Sleep until the earliest lease deadline, expire, repeat; stops with the
/// store.
async fn expiry_loop(inner: Weak<Inner>, wakeup: Arc<Notify>, mut shutdown: oneshot::Receiver<()>) {
    loop {
        let Some(store) = inner.upgrade() else { return };
        let next = tokio::task::spawn_blocking(move || store.next_deadline()).await;
        let deadline = match next {
            Ok(Some(deadline)) => deadline,
            Ok(None) => Instant::now() + IDLE_SLEEP,
            Err(e) => {
                tracing::error!(error = %e, "lease expiry task failed");
                return;
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = wakeup.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let Some(store) = inner.upgrade() else { return };
                match tokio::task::spawn_blocking(move || store.expire_due()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot delete keys of expired leases"),
                    Err(e) => tracing::error!(error = %e, "lease expiry task failed"),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let rtx = inner.db.begin_read().map_err(db_err)?;
            read_kv(&rtx.open_table(KV).map_err(db_err)?, &key)
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        let op = Op::Put {
            key: key.to_string(),
            value,
            lease: None,
        };
        let (res, _) = self
            .blocking(move |inner| inner.write(&[], vec![op], vec![]))
            .await?;
        Ok(res.revision)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let op = Op::Delete(key.to_string());
        let (_, changed) = self
            .blocking(move |inner| inner.write(&[], vec![op], vec![]))
            .await?;
        Ok(changed)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let rtx = inner.db.begin_read().map_err(db_err)?;
            scan_prefix(&rtx.open_table(KV).map_err(db_err)?, &prefix)
        })
        .await
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult, StoreError> {
        let (res, _) = self
            .blocking(move |inner| inner.write(&compares, success, failure))
            .await?;
        Ok(res)
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let mut state = inner.lock();
            let (tx, watch) = Watch::channel(inner.revision.load(Ordering::Acquire));
            state.watchers.retain(|w| !w.tx.is_closed());
            state.watchers.push(Watcher { prefix, tx });
            Ok(watch)
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidTtl);
        }
        let id = self
            .blocking(move |inner| {
                let mut state = inner.lock();
                let id = loop {
                    let id: LeaseId = rand::random();
                    if id != format::NO_LEASE && !state.leases.contains_key(&id) {
                        break id;
                    }
                };
                let lease = Lease {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                };
                state.leases.insert(id, lease);
                Ok(id)
            })
            .await?;
        self.inner.expiry_wakeup.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let mut state = inner.lock();
            let now = Instant::now();
            match state.leases.get_mut(&lease) {
                Some(l) if l.deadline > now => {
                    l.deadline = now + l.ttl;
                    Ok(())
                }
                _ => Err(StoreError::LeaseNotFound(lease)),
            }
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let mut state = inner.lock();
            if !state.leases.contains_key(&lease) {
                return Err(StoreError::LeaseNotFound(lease));
            }
            inner.end_leases(&mut state, &[lease])
        })
        .await
    }

    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        let op = Op::Put {
            key: key.to_string(),
            value,
            lease: Some(lease),
        };
        let (res, _) = self
            .blocking(move |inner| inner.write(&[], vec![op], vec![]))
            .await?;
        Ok(res.revision)
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.inner.revision.load(Ordering::Acquire))
    }
}
