//! The cluster state store on etcd (design §3): the [`Store`] trait over
//! etcd's v3 API, so several `vdc server`s share one state.
//!
//! Why a crate of its own: the etcd client brings gRPC (tonic, prost,
//! hyper's HTTP/2); the embedded store (`vdc_store::RedbStore`) and
//! everything built only on it do not pay for that. The `vdc` binary links
//! both and picks one with `vdc server --store`.
//!
//! How the model maps onto etcd (the `vdc_store` crate docs give the model):
//!
//! - **Keys** live under a namespace prefix (default [`DEFAULT_NAMESPACE`]),
//!   so one etcd can hold several clusters or test stores; the prefix is
//!   invisible to callers.
//! - **Revisions** are etcd's own: one per committed write, whatever the
//!   number of keys; etcd leaves the revision alone for a write that
//!   changes nothing, as the model says. They are cluster-wide, so two
//!   namespaces on one etcd share the counter.
//! - **Transactions** are etcd transactions. Compares: `Revision` is
//!   `mod_revision ==`, `Absent` is `create_revision == 0`, `Exists` is
//!   `create_revision > 0`, `Value` is `value ==` (false for an absent key).
//!   etcd refuses a transaction whose *either* branch overlaps keys, the
//!   model only the branch taken: an overlapping branch is checked here
//!   and sent empty, and [`StoreError::InvalidTxn`] is returned if etcd
//!   picked it (nothing was applied then).
//! - **Watches** are etcd watches started at an explicit revision and
//!   reopened from the last delivered revision when a stream breaks
//!   (`watch` module); [`Store::watch_from`] resumes from any revision
//!   etcd still holds and reports [`StoreError::Compacted`] otherwise.
//! - **Leases** are etcd leases; TTLs are rounded up to whole seconds (and
//!   etcd raises very short ones to its minimum, about 2 s). A keep-alive
//!   is one round trip on a new etcd keep-alive stream.
//!
//! etcd limits a transaction to `--max-txn-ops` operations (128 by default):
//! `vdc lab` and the tests start etcd with a higher limit
//! ([`MAX_TXN_OPS`]).

#![warn(missing_docs)]

mod convert;
#[cfg(feature = "test-etcd")]
pub mod test_etcd;
mod watch;

use std::time::Duration;

use etcd_client as etcd;
use tokio::sync::watch as signal;
use vdc_store::{
    check_ops_disjoint, Compare, KeyValue, LeaseId, Op, Store, StoreError, TxnResult, Watch,
};

use crate::convert::{as_i64, backend, is_lease_not_found, lease_of, revision, Namespace};

/// Namespace of the keys of a `vdc server` in etcd.
pub const DEFAULT_NAMESPACE: &str = "/vdc";

/// The `--max-txn-ops` etcd should run with for vdc.
pub const MAX_TXN_OPS: u32 = 10_000;

/// Largest answer to a list (10,000 VM records are about 7 MiB).
const MAX_LIST_BYTES: usize = 512 << 20;

/// How long to wait for an etcd endpoint to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for one etcd request (a member may be electing a leader).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Store`] on etcd. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: etcd::Client,
    /// The KV client for lists, whose answers may pass gRPC's 4 MiB default.
    lists: etcd::KvClient,
    namespace: Namespace,
    /// Dropped with the last clone: stops the watch tasks.
    shutdown: std::sync::Arc<signal::Sender<()>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Where an etcd store lives: endpoints and key namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `HOST:PORT` of each etcd member.
    pub endpoints: Vec<String>,
    /// Key namespace ([`DEFAULT_NAMESPACE`] unless the URL has a path).
    pub namespace: String,
}

/// A malformed `etcd://` URL.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid etcd URL {url:?}: {reason} (expected etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE])"
)]
pub struct BadEtcdUrl {
    url: String,
    reason: &'static str,
}

impl std::str::FromStr for EtcdUrl {
    type Err = BadEtcdUrl;

    /// Parse `etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]`.
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadEtcdUrl {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("it must start with etcd://"))?;
        let (hosts, namespace) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
            None => (rest, DEFAULT_NAMESPACE.to_string()),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| bad("a member has no port"))?;
            if name.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("a member is not HOST:PORT"));
            }
            endpoints.push(host.to_string());
        }
        Ok(EtcdUrl {
            endpoints,
            namespace,
        })
    }
}

impl EtcdStore {
    /// Connect to the etcd members of `url` and check that one answers.
    pub async fn connect(url: &EtcdUrl) -> Result<Self, StoreError> {
        Self::connect_namespace(&url.endpoints, &format!("{}/", url.namespace)).await
    }

    /// Connect to `endpoints` (`HOST:PORT`) with keys stored under the raw
    /// prefix `namespace` (`""` for none).
    pub async fn connect_namespace(
        endpoints: &[String],
        namespace: &str,
    ) -> Result<Self, StoreError> {
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = etcd::ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = etcd::Client::connect(&urls, Some(options))
            .await
            .map_err(backend)?;
        let (shutdown, _) = signal::channel(());
        let lists = client.kv_client().max_decoding_message_size(MAX_LIST_BYTES);
        let store = EtcdStore {
            lists,
            client,
            namespace: Namespace::new(namespace),
            shutdown: std::sync::Arc::new(shutdown),
        };
        store.revision().await?;
        Ok(store)
    }

    /// The underlying etcd client (for cluster status and the like).
    pub fn client(&self) -> etcd::Client {
        self.client.clone()
    }

    /// Forget history up to `revision` (etcd compaction); watches that
    /// would need it report [`StoreError::Compacted`].
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.client
            .clone()
            .compact(as_i64(revision), None)
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn start_watch(&self, prefix: &str, after: u64) -> Watch {
        let (tx, watch) = Watch::channel(after);
        let task = watch::WatchTask {
            source: watch::Source {
                client: self.client.clone(),
                namespace: self.namespace.clone(),
                prefix: prefix.to_string(),
                next: after + 1,
            },
            tx,
            shutdown: self.shutdown.subscribe(),
        };
        tokio::spawn(task.run());
        watch
    }

    /// The lease a failed transaction most likely named: the first leased
    /// put that etcd no longer knows.
    async fn missing_lease(&self, ops: &[&Op]) -> LeaseId {
        let leases: Vec<LeaseId> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { lease, .. } => *lease,
                _ => None,
            })
            .collect();
        for id in &leases {
            let ttl = self
                .client
                .clone()
                .lease_time_to_live(as_i64(*id), None)
                .await;
            let gone = match &ttl {
                Ok(r) => r.ttl() < 0,
                Err(e) => is_lease_not_found(e),
            };
            if gone {
                return *id;
            }
        }
        leases.first().copied().unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = read_retry(|| {
            let (mut client, key) = (self.client.clone(), self.namespace.key(key));
            async move { client.get(key, None).await }
        })
        .await
        .map_err(backend)?;
        response
            .kvs()
            .first()
            .map(|kv| self.namespace.kv(kv))
            .transpose()
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey);
        }
        let response = write_retry(|| {
            let (mut client, key, value) =
                (self.client.clone(), self.namespace.key(key), value.clone());
            async move { client.put(key, value, None).await }
        })
        .await
        .map_err(backend)?;
        Ok(header_revision(response.header()))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey);
        }
        let response = write_retry(|| {
            let (mut client, key) = (self.client.clone(), self.namespace.key(key));
            async move { client.delete(key, None).await }
        })
        .await
        .map_err(backend)?;
        Ok(response.deleted() > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let (start, end) = self.namespace.range(prefix);
        let response = read_retry(|| {
            let (mut lists, start, end) = (self.lists.clone(), start.clone(), end.clone());
            async move {
                lists
                    .get(start, Some(etcd::GetOptions::new().with_range(end)))
                    .await
            }
        })
        .await
        .map_err(backend)?;
        response
            .kvs()
            .iter()
            .map(|kv| self.namespace.kv(kv))
            .collect()
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult, StoreError> {
        // etcd checks both branches; the model only the one taken.
        let success_ok = check_ops_disjoint(&success);
        let failure_ok = check_ops_disjoint(&failure);
        let branch = |ops: &[Op], ok: bool| -> Vec<etcd::TxnOp> {
            if ok {
                ops.iter().map(|op| self.namespace.op(op)).collect()
            } else {
                Vec::new()
            }
        };
        let txn = etcd::Txn::new()
            .when(
                compares
                    .iter()
                    .map(|c| self.namespace.compare(c))
                    .collect::<Vec<_>>(),
            )
            .and_then(branch(&success, success_ok.is_ok()))
            .or_else(branch(&failure, failure_ok.is_ok()));
        let sent = write_retry(|| {
            let (mut client, txn) = (self.client.clone(), txn.clone());
            async move { client.txn(txn).await }
        })
        .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if is_lease_not_found(&e) => {
                let ops: Vec<&Op> = success.iter().chain(&failure).collect();
                return Err(StoreError::LeaseNotFound(self.missing_lease(&ops).await));
            }
            Err(e) => return Err(backend(e)),
        };
        let succeeded = response.succeeded();
        match (succeeded, success_ok, failure_ok) {
            (true, Err(e), _) | (false, _, Err(e)) => Err(e),
            _ => Ok(TxnResult {
                succeeded,
                revision: header_revision(response.header()),
            }),
        }
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        let now = self.revision().await?;
        Ok(self.start_watch(prefix, now))
    }

    async fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        Ok(self.start_watch(prefix, after))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidTtl);
        }
        let seconds = ttl.as_millis().div_ceil(1000);
        let seconds = i64::try_from(seconds).map_err(|_| StoreError::InvalidTtl)?;
        let response = self
            .client
            .clone()
            .lease_grant(seconds, None)
            .await
            .map_err(backend)?;
        lease_of(response.id()).ok_or_else(|| StoreError::backend("etcd granted lease 0"))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // Opening etcd's keep-alive stream sends one keep-alive and waits
        // for its answer: that is the whole keep-alive.
        match self.client.clone().lease_keep_alive(as_i64(lease)).await {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseNotFound(lease)),
            Err(e) => Err(backend(e)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.client.clone().lease_revoke(as_i64(lease)).await {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseNotFound(lease)),
            Err(e) => Err(backend(e)),
        }
    }

    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey);
        }
        let options = etcd::PutOptions::new().with_lease(as_i64(lease));
        match self
            .client
            .clone()
            .put(self.namespace.key(key), value, Some(options))
            .await
        {
            Ok(response) => Ok(header_revision(response.header())),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseNotFound(lease)),
            Err(e) => Err(backend(e)),
        }
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let response = read_retry(|| {
            let (mut client, key) = (self.client.clone(), self.namespace.key(""));
            async move {
                let options = etcd::GetOptions::new().with_count_only();
                client.get(key, Some(options)).await
            }
        })
        .await
        .map_err(backend)?;
        Ok(header_revision(response.header()))
    }
}

/// Attempts of a read whose member went away (the client's balancer then
/// sends the next attempt to another member).
const READ_ATTEMPTS: u32 = 4;

/// Runs a read again when the member it went to could not be reached:
/// reads change nothing, so a second attempt is always safe.
async fn read_retry<T, F, Fut>(read: F) -> Result<T, etcd::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd::Error>>,
{
    retry(read, convert::is_unreachable).await
}

/// Runs a write again only when it never left this process (no connection
/// to its member): one that broke off may have been applied.
async fn write_retry<T, F, Fut>(write: F) -> Result<T, etcd::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd::Error>>,
{
    retry(write, convert::never_sent).await
}

async fn retry<T, F, Fut>(call: F, again: fn(&etcd::Error) -> bool) -> Result<T, etcd::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd::Error>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < READ_ATTEMPTS && again(&e) => {
                tracing::debug!(error = %e, attempt, "etcd read failed; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250 * attempt as u64)).await;
            }
            r => return r,
        }
    }
}

fn header_revision(header: Option<&etcd::ResponseHeader>) -> u64 {
    header.map_or(0, |h| revision(h.revision()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_urls() {
        let url: EtcdUrl = "etcd://127.0.0.1:2379,10.0.0.2:2379"
            .parse()
            .expect("parse");
        assert_eq!(url.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(url.namespace, DEFAULT_NAMESPACE);
        let url: EtcdUrl = "etcd://h:1/prod/".parse().expect("parse");
        assert_eq!((url.endpoints.len(), url.namespace.as_str()), (1, "/prod"));
        for bad in ["redb:/x", "etcd://", "etcd://h", "etcd://h:x", "etcd://:1"] {
            assert!(bad.parse::<EtcdUrl>().is_err(), "{bad}");
        }
    }
}
