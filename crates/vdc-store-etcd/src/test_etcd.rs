//! A throwaway etcd for tests and benchmarks: one member on loopback, a
//! temporary data directory, free ports; killed when dropped (and when the
//! test process dies: the parent-death signal).
//!
//! etcd must be installed (Debian package `etcd-server`, installed by
//! `scripts/setup.sh`); without it [`TestEtcd::start`] fails saying so,
//! it never skips.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vdc_store::{KeyValue, LeaseId, Op, Store, StoreError, TxnResult, Watch};

use crate::{EtcdStore, MAX_TXN_OPS};

/// Longest wait for a fresh etcd to answer.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Why a test etcd did not start.
#[derive(Debug, thiserror::Error)]
pub enum TestEtcdError {
    /// The binary is missing.
    #[error("etcd not found in PATH: install the Debian package etcd-server (scripts/setup.sh)")]
    Missing,
    /// It could not be spawned or set up.
    #[error("cannot start etcd: {0}")]
    Io(#[from] std::io::Error),
    /// It did not answer in time.
    #[error("etcd did not answer within {START_DEADLINE:?}: {0}")]
    NotReady(StoreError),
}

/// A running single-member etcd; killed on drop.
#[derive(Debug)]
pub struct TestEtcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TestEtcd {
    /// Start etcd and wait until it serves requests.
    pub async fn start() -> Result<Self, TestEtcdError> {
        let mut last = None;
        // A port picked free may be taken before etcd binds it: try again.
        for _ in 0..3 {
            match Self::start_once().await {
                Ok(etcd) => return Ok(etcd),
                Err(TestEtcdError::NotReady(e)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(TestEtcdError::NotReady(
            last.unwrap_or(StoreError::NoRuntime),
        ))
    }

    async fn start_once() -> Result<Self, TestEtcdError> {
        let dir = tempfile::Builder::new().prefix("vdc-etcd-").tempdir()?;
        let client = free_port()?;
        let peer = free_port()?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new("etcd");
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg(format!("--max-txn-ops={MAX_TXN_OPS}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log"))?);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TestEtcdError::Missing)
            }
            Err(e) => return Err(e.into()),
        };
        let etcd = TestEtcd {
            child,
            endpoint: format!("127.0.0.1:{client}"),
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        loop {
            match etcd.store("/probe/").await {
                Ok(_) => return Ok(etcd),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(TestEtcdError::NotReady(e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `HOST:PORT` of the client endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A store on this etcd with keys under the raw prefix `namespace`.
    pub async fn store(&self, namespace: &str) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect_namespace(std::slice::from_ref(&self.endpoint), namespace).await
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            tracing::warn!(error = %e, "cannot kill test etcd");
        }
        if let Err(e) = self.child.wait() {
            tracing::warn!(error = %e, "cannot reap test etcd");
        }
    }
}

/// A store that keeps its own etcd running for as long as it lives: the
/// fresh store a conformance check needs.
#[derive(Debug)]
pub struct OwnedEtcdStore {
    store: EtcdStore,
    _etcd: Arc<TestEtcd>,
}

impl OwnedEtcdStore {
    /// Start an etcd and connect a store to it; panics (test code) with
    /// the reason if etcd cannot run.
    pub async fn start() -> Self {
        let etcd = TestEtcd::start().await.unwrap_or_else(|e| panic!("{e}"));
        let store = etcd.store("/test/").await.expect("connect to test etcd");
        OwnedEtcdStore {
            store,
            _etcd: Arc::new(etcd),
        }
    }

    /// The store itself.
    pub fn store(&self) -> &EtcdStore {
        &self.store
    }
}

#[async_trait::async_trait]
impl Store for OwnedEtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.store.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        self.store.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.store.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.store.list(prefix).await
    }
    async fn txn(
        &self,
        compares: Vec<vdc_store::Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult, StoreError> {
        self.store.txn(compares, success, failure).await
    }
    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.store.watch(prefix).await
    }
    async fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        self.store.watch_from(prefix, after).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.store.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.store.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.store.revoke_lease(lease).await
    }
    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        self.store.put_with_lease(key, value, lease).await
    }
    async fn revision(&self) -> Result<u64, StoreError> {
        self.store.revision().await
    }
}
