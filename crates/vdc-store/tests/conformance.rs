//! The embedded store against the shared conformance suite, in memory and
//! on a file, plus the behaviour only the redb store has (leases ending at
//! reopen, format check, lagging watchers).

use std::sync::Arc;
use std::time::Duration;

use vdc_store::{conformance, RedbStore, Store, StoreError, WatchEvent, WATCH_BUFFER};

async fn in_memory() -> Arc<dyn Store> {
    Arc::new(RedbStore::open_in_memory().await.expect("open in memory"))
}

async fn on_file() -> Arc<dyn Store> {
    // The directory goes away at once; the open file lives on until the
    // store is dropped.
    let dir = tempfile::tempdir().expect("tempdir");
    Arc::new(
        RedbStore::open(dir.path().join("state.redb"))
            .await
            .expect("open file"),
    )
}

mod memory {
    use super::*;
    vdc_store::store_conformance_tests!(in_memory);
}

mod file {
    use super::*;
    vdc_store::store_conformance_tests!(on_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    conformance::persistence(|| {
        let path = path.clone();
        async move { Arc::new(RedbStore::open(path).await.expect("open")) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_keys_are_gone_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let store = RedbStore::open(&path).await.expect("open");
    let lease = store
        .grant_lease(Duration::from_secs(600))
        .await
        .expect("grant");
    store
        .put_with_lease("leased", b"x".to_vec(), lease)
        .await
        .expect("put");
    store.put("plain", b"y".to_vec()).await.expect("put");
    let before = store.revision().await.expect("revision");
    drop(store);

    let store = RedbStore::open(&path).await.expect("reopen");
    assert_eq!(store.get("leased").await.expect("get"), None);
    assert!(store.get("plain").await.expect("get").is_some());
    assert_eq!(store.revision().await.expect("revision"), before + 1);
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

#[tokio::test]
async fn refuses_unknown_format_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    drop(RedbStore::open(&path).await.expect("create"));
    {
        let db = redb::Database::create(&path).expect("raw open");
        let wtx = db.begin_write().expect("write");
        {
            let meta: redb::TableDefinition<&str, u64> =
                redb::TableDefinition::new(vdc_store::format::META_TABLE);
            let mut t = wtx.open_table(meta).expect("meta");
            t.insert(vdc_store::format::META_FORMAT_VERSION, 99)
                .expect("insert");
        }
        wtx.commit().expect("commit");
    }
    let res = RedbStore::open(&path).await;
    assert!(
        matches!(
            res,
            Err(StoreError::UnsupportedFormat {
                found: 99,
                expected: 1
            })
        ),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_is_closed_with_an_error() {
    let store = RedbStore::open_in_memory().await.expect("open");
    let mut lagging = store.watch("").await.expect("watch");
    let total = WATCH_BUFFER + 10;
    let ops = (0..total)
        .map(|i| vdc_store::Op::Put {
            key: format!("k{i:05}"),
            value: vec![],
            lease: None,
        })
        .collect();
    // One transaction overflows the buffer at once.
    store.txn(vec![], ops, vec![]).await.expect("txn");
    let mut events = 0;
    let end = loop {
        match lagging.recv().await {
            Some(Ok(WatchEvent::Put(_))) => events += 1,
            other => break other,
        }
    };
    assert_eq!(events, WATCH_BUFFER);
    assert!(matches!(end, Some(Err(StoreError::WatchLagged))), "{end:?}");
    assert!(lagging.recv().await.is_none());
    // Writers and new watchers carry on.
    let mut fresh = store.watch("").await.expect("watch");
    let r = store.put("after", vec![]).await.expect("put");
    assert_eq!(
        fresh.recv().await.expect("event").expect("ok").revision(),
        r
    );
}

#[tokio::test]
async fn watch_ends_when_the_store_is_dropped() {
    let store = RedbStore::open_in_memory().await.expect("open");
    let mut watch = store.watch("").await.expect("watch");
    drop(store);
    let end = tokio::time::timeout(conformance::DEADLINE, watch.recv()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
}
