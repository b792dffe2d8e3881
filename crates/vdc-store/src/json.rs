//! Typed JSON helpers on top of any [`Store`], the way the control plane
//! reads and writes its objects.
//!
//! `update_json` is the optimistic read-modify-write loop: read the value and
//! its `mod_revision`, apply the caller's change, write it back only if the
//! key's `mod_revision` is still the one read (a [`Compare::Revision`]), and
//! start over otherwise. The closure may therefore run more than once.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Compare, KeyValue, LeaseId, Op, Store, StoreError};

/// Attempts made by [`StoreExt::update_json`] before giving up with
/// [`StoreError::Conflict`].
pub const UPDATE_ATTEMPTS: u32 = 1000;

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(&kv.value).map_err(|source| StoreError::Decode {
        key: kv.key.clone(),
        source,
    })
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: key.to_string(),
        source,
    })
}

/// JSON helpers available on every [`Store`], including `Arc<dyn Store>`.
#[async_trait::async_trait]
pub trait StoreExt: Store {
    /// Read and decode a key; `None` if absent.
    async fn get_json<T: DeserializeOwned + Send>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(key).await? {
            Some(kv) => decode(&kv).map(Some),
            None => Ok(None),
        }
    }

    /// Encode and write a key (no lease); returns the new revision.
    async fn put_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<u64, StoreError> {
        self.put(key, encode(key, value)?).await
    }

    /// Encode and write a key attached to `lease`; returns the new revision.
    async fn put_json_with_lease<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        self.put_with_lease(key, encode(key, value)?, lease).await
    }

    /// Decode every value under `prefix`, sorted by key, as `(key, value)`.
    async fn list_json<T: DeserializeOwned + Send>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.list(prefix)
            .await?
            .into_iter()
            .map(|kv| decode(&kv).map(|v| (kv.key, v)))
            .collect()
    }

    /// Write a key only if it is absent; [`StoreError::AlreadyExists`]
    /// otherwise. Returns the new revision.
    async fn create_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<u64, StoreError> {
        let put = Op::Put {
            key: key.to_string(),
            value: encode(key, value)?,
            lease: None,
        };
        let res = self
            .txn(vec![Compare::Absent(key.to_string())], vec![put], vec![])
            .await?;
        if res.succeeded {
            Ok(res.revision)
        } else {
            Err(StoreError::AlreadyExists(key.to_string()))
        }
    }

    /// Read-modify-write with compare-and-swap retries: `change` gets the
    /// current value and returns the new one (or an error, which aborts the
    /// update). Returns the value written. The key must exist
    /// ([`StoreError::NotFound`] otherwise, converted into `E`). Keeps the
    /// key's lease.
    async fn update_json<T, E, F>(&self, key: &str, mut change: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        E: From<StoreError> + Send,
        F: FnMut(T) -> Result<T, E> + Send,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(kv) = self.get(key).await? else {
                return Err(StoreError::NotFound(key.to_string()).into());
            };
            let new = change(decode(&kv)?)?;
            let put = Op::Put {
                key: key.to_string(),
                value: encode(key, &new)?,
                lease: kv.lease,
            };
            let cmp = Compare::Revision {
                key: key.to_string(),
                mod_revision: kv.mod_revision,
            };
            if self.txn(vec![cmp], vec![put], vec![]).await?.succeeded {
                return Ok(new);
            }
            tokio::task::yield_now().await;
        }
        Err(StoreError::Conflict {
            key: key.to_string(),
            attempts: UPDATE_ATTEMPTS,
        }
        .into())
    }
}

impl<S: Store + ?Sized> StoreExt for S {}
