//! The etcd store against the shared conformance suite, each check on a
//! fresh etcd started for it, plus what only etcd has: resuming a watch
//! from a revision, compaction reported, watches surviving a member
//! restart.

use std::sync::Arc;

use vdc_store::conformance::{self, next_event};
use vdc_store::{Store, StoreError, WatchEvent};
use vdc_store_etcd::test_etcd::{OwnedEtcdStore, TestEtcd};

async fn fresh() -> Arc<dyn Store> {
    Arc::new(OwnedEtcdStore::start().await)
}

vdc_store::store_conformance_tests!(fresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_across_reconnect() {
    let etcd = TestEtcd::start().await.expect("etcd");
    conformance::persistence(|| {
        let store = etcd.store("/persist/");
        async move { Arc::new(store.await.expect("connect")) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_revision_and_reports_compaction() {
    let etcd = OwnedEtcdStore::start().await;
    let s = etcd.store();
    let r1 = s.put("w/a", b"1".to_vec()).await.expect("put");
    let r2 = s.put("w/b", b"2".to_vec()).await.expect("put");
    s.put("x/other", b"".to_vec()).await.expect("put");
    assert!(s.delete("w/a").await.expect("delete"));
    let r4 = s.revision().await.expect("revision");

    // From r1: the events after it, in order, then the live ones.
    let mut watch = s.watch_from("w/", r1).await.expect("watch");
    assert_eq!(watch.start_revision(), r1);
    match next_event(&mut watch).await {
        WatchEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.mod_revision), ("w/b", r2)),
        other => panic!("expected w/b, got {other:?}"),
    }
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete {
            key: "w/a".into(),
            mod_revision: r4
        }
    );
    let r5 = s.put("w/c", b"3".to_vec()).await.expect("put");
    assert_eq!(next_event(&mut watch).await.revision(), r5);

    // History up to r4 compacted: resuming before it is refused.
    s.compact(r4).await.expect("compact");
    let mut old = s.watch_from("w/", r1).await.expect("watch");
    match tokio::time::timeout(conformance::DEADLINE, old.recv()).await {
        Ok(Some(Err(StoreError::Compacted {
            requested,
            available,
        }))) => assert_eq!((requested, available), (r1, r4)),
        other => panic!("expected a compaction error, got {other:?}"),
    }
    // From the compaction point on, it works again.
    let mut fresh = s.watch_from("w/", r4).await.expect("watch");
    assert_eq!(next_event(&mut fresh).await.revision(), r5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_resumes_only_from_now() {
    let store = vdc_store::RedbStore::open_in_memory().await.expect("open");
    let r1 = store.put("a", vec![]).await.expect("put");
    let r2 = store.put("a", vec![]).await.expect("put");
    assert!(store.watch_from("", r2).await.is_ok());
    let res = store.watch_from("", r1).await;
    assert!(
        matches!(res, Err(StoreError::Compacted { requested, available }) if requested == r1 && available == r2),
        "{res:?}"
    );
}
