//! The store the control plane writes through: every write of a leader
//! carries the leader's fence (see [`crate::leader`]), so a server that
//! lost the role — paused past its lease, cut off from the store — cannot
//! change anything, whatever it still believes.
//!
//! A store without a fence (one server on the embedded store, or a server
//! that does not lead and so runs no controller) passes writes through.
//! Reads, watches and leases always pass through.
//!
//! A fenced write that fails its fence returns [`fenced_error`] and wakes
//! [`FencedStore::lost`]: the server stops its controllers at once.

use std::sync::Arc;
use std::time::Duration;

use vdc_store::{Compare, KeyValue, LeaseId, Op, Store, StoreError, TxnResult, Watch};

use crate::leader::LEADER_KEY;

/// A [`Store`] whose writes carry the leader's fence once one is set.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    fence: std::sync::RwLock<Option<Compare>>,
    lost: tokio::sync::Notify,
}

/// The error of a write refused because this server no longer leads.
pub fn fenced_error() -> StoreError {
    StoreError::backend("this server is no longer the control plane's leader")
}

impl FencedStore {
    /// Wraps `inner`, without a fence.
    pub fn new(inner: Arc<dyn Store>) -> FencedStore {
        FencedStore {
            inner,
            fence: std::sync::RwLock::new(None),
            lost: tokio::sync::Notify::new(),
        }
    }

    /// The store underneath (unfenced).
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// From now on every write carries `fence`.
    pub fn set_fence(&self, fence: Compare) {
        *self.fence.write().unwrap_or_else(|e| e.into_inner()) = Some(fence);
    }

    fn fence(&self) -> Option<Compare> {
        self.fence.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Completes when a fenced write found the role lost.
    pub async fn lost(&self) {
        self.lost.notified().await
    }

    /// Whether `fence` still holds (the leader key is the one it names).
    async fn fence_holds(&self, fence: &Compare) -> Result<bool, StoreError> {
        let Compare::Revision { mod_revision, .. } = fence else {
            return Ok(true);
        };
        let kv = self.inner.get(LEADER_KEY).await?;
        Ok(kv.is_some_and(|kv| kv.mod_revision == *mod_revision))
    }

    fn refuse(&self) -> StoreError {
        tracing::error!("a write was refused: this server no longer leads the control plane");
        self.lost.notify_waiters();
        self.lost.notify_one();
        fenced_error()
    }

    async fn fenced_op(&self, fence: Compare, op: Op) -> Result<u64, StoreError> {
        let r = self.inner.txn(vec![fence], vec![op], vec![]).await?;
        if r.succeeded {
            Ok(r.revision)
        } else {
            Err(self.refuse())
        }
    }
}

#[async_trait::async_trait]
impl Store for FencedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        match self.fence() {
            None => self.inner.put(key, value).await,
            Some(f) => {
                let op = Op::Put {
                    key: key.to_string(),
                    value,
                    lease: None,
                };
                self.fenced_op(f, op).await
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        match self.fence() {
            None => self.inner.delete(key).await,
            Some(f) => {
                let existed = self.inner.get(key).await?.is_some();
                self.fenced_op(f, Op::Delete(key.to_string())).await?;
                Ok(existed)
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn txn(
        &self,
        mut compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult, StoreError> {
        let Some(f) = self.fence() else {
            return self.inner.txn(compares, success, failure).await;
        };
        if !failure.is_empty() {
            return Err(StoreError::backend(
                "a leader's transaction cannot have a failure branch",
            ));
        }
        compares.push(f.clone());
        let r = self.inner.txn(compares, success, vec![]).await?;
        if !r.succeeded && !self.fence_holds(&f).await? {
            return Err(self.refuse());
        }
        Ok(r)
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.inner.watch(prefix).await
    }

    async fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        self.inner.watch_from(prefix, after).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }

    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        match self.fence() {
            None => self.inner.put_with_lease(key, value, lease).await,
            Some(f) => {
                let op = Op::Put {
                    key: key.to_string(),
                    value,
                    lease: Some(lease),
                };
                self.fenced_op(f, op).await
            }
        }
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision().await
    }
}
