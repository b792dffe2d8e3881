//! A host report costs O(VMs of that host): with the per-host index built,
//! ingesting a report reads no VM record of other hosts (counted on a
//! store that counts its reads), and still folds the host's own VMs and
//! flags a VM it runs without owning it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, get_vm, memory_store, put_vm, report, runtime, TOKEN};
use vdc_control::Cluster;
use vdc_store::{Compare, KeyValue, LeaseId, Op, Store, StoreError, TxnResult, Watch};
use vdc_types::{GuestInfo, VmPowerState};

/// A store that counts the reads of VM records (gets of one, lists of all).
struct Counting {
    inner: Arc<dyn Store>,
    vm_reads: AtomicUsize,
    vm_lists: AtomicUsize,
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        if key.starts_with("/vms/") {
            self.vm_reads.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        if "/vms/".starts_with(prefix) || prefix.starts_with("/vms/") {
            self.vm_lists.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.list(prefix).await
    }
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult, StoreError> {
        self.inner.txn(compares, success, failure).await
    }
    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.inner.watch(prefix).await
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
        self.inner.put_with_lease(key, value, lease).await
    }
    async fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision().await
    }
}

const OTHER_VMS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_reads_only_the_records_of_its_host() {
    let counting = Arc::new(Counting {
        inner: memory_store().await,
        vm_reads: AtomicUsize::new(0),
        vm_lists: AtomicUsize::new(0),
    });
    let store: Arc<dyn Store> = counting.clone();
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    for i in 0..OTHER_VMS {
        let host = format!("other-{}", i % 50);
        put_vm(
            &store,
            &format!("o-{i}"),
            VmPowerState::Running,
            Some(&host),
        )
        .await;
    }
    for name in ["mine-1", "mine-2"] {
        put_vm(&store, name, VmPowerState::Running, Some("h1")).await;
    }
    let ready = || {
        let c = cluster.clone();
        async move {
            c.vm_index_ready()
                .then_some(())
                .ok_or_else(|| "index not built".to_string())
        }
    };
    eventually("the VM index", Duration::from_secs(15), ready).await;

    // h1 reports mine-1 stopped and forgets mine-2: both fold (through the
    // index, once it has seen them).
    let h1 = report(
        "h1",
        vec![runtime(
            "mine-1",
            VmPowerState::Stopped,
            GuestInfo::default(),
        )],
    );
    eventually("h1's VMs folded", Duration::from_secs(15), || {
        let (c, s, r) = (cluster.clone(), store.clone(), h1.clone());
        async move {
            c.ingest_report(r).await.map_err(|e| e.to_string())?;
            let one = get_vm(&s, "mine-1").await.map(|v| v.state);
            let two = get_vm(&s, "mine-2").await.map(|v| v.state);
            match (one, two) {
                (Some(VmPowerState::Stopped), Some(VmPowerState::Stopped)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // Steady state: a report that changes nothing reads no VM record.
    let reads = counting.vm_reads.load(Ordering::SeqCst);
    let lists = counting.vm_lists.load(Ordering::SeqCst);
    for _ in 0..10 {
        cluster.ingest_report(h1.clone()).await.expect("ingest");
    }
    assert_eq!(
        counting.vm_lists.load(Ordering::SeqCst),
        lists,
        "a report listed every VM"
    );
    assert_eq!(
        counting.vm_reads.load(Ordering::SeqCst),
        reads,
        "a report read VM records"
    );

    // A host running a VM it does not own is still flagged, and its
    // report changes nothing of the owner's record.
    let intruder = report(
        "h2",
        vec![runtime("o-7", VmPowerState::Running, GuestInfo::default())],
    );
    let mut events = cluster.events.subscribe();
    cluster.ingest_report(intruder).await.expect("ingest");
    let conflict = eventually("the conflict event", Duration::from_secs(15), || {
        let got = events.try_recv();
        async move {
            match got {
                Ok(e) if e.topic == "vm.ownership_conflict" => Ok(e),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(conflict.object, "o-7");
    let owner = get_vm(&store, "o-7").await.and_then(|v| v.owner);
    assert_eq!(owner.as_deref(), Some("other-7"));
}
