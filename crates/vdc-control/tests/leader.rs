//! Leader election with fencing, on the embedded store and on a real etcd:
//! one leader at a time; a leader that stops keeping its lease alive loses
//! the role within its TTL and another takes it; the old leader's fenced
//! writes are refused from then on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use vdc_control::leader::{self, Campaign};
use vdc_store::{Op, Store};
use vdc_store_etcd::test_etcd::OwnedEtcdStore;

const TTL: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(20);

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }
}

async fn election(store: Arc<dyn Store>) {
    let s = &*store;
    let a = match leader::try_lead(s, "a", "http://a", TTL)
        .await
        .expect("try")
    {
        Campaign::Won(l) => l,
        lost => panic!("the first server must lead: {lost:?}"),
    };
    match leader::try_lead(s, "b", "http://b", TTL)
        .await
        .expect("try")
    {
        Campaign::Lost(Some(r)) => assert_eq!((r.id.as_str(), r.url.as_str()), ("a", "http://a")),
        other => panic!("b must see a lead: {other:?}"),
    }
    assert_eq!(
        leader::current(s).await.expect("current").map(|r| r.id),
        Some("a".into())
    );
    let w = s
        .txn(vec![a.fence()], vec![put("/x", "by a")], vec![])
        .await
        .expect("txn");
    assert!(w.succeeded, "the leader's fenced write");
    a.keep(s).await.expect("keep");

    // a goes silent (no more keep-alives): b takes over within the TTL.
    let b_store = store.clone();
    let b = tokio::spawn(async move { leader::campaign(&*b_store, "b", "http://b", TTL).await });
    let b = tokio::time::timeout(DEADLINE, b)
        .await
        .expect("b leads within the deadline")
        .expect("task")
        .expect("campaign");
    assert_eq!(b.record.id, "b");
    assert!(b.revision > a.revision);
    assert_eq!(
        leader::current(s).await.expect("current").map(|r| r.id),
        Some("b".into())
    );

    // The old leader wakes up: its fenced write is refused, its keep-alive
    // fails; the new leader's write goes through.
    let w = s
        .txn(vec![a.fence()], vec![put("/x", "by old a")], vec![])
        .await
        .expect("txn");
    assert!(
        !w.succeeded,
        "a fenced write of a deposed leader went through"
    );
    assert!(a.keep(s).await.is_err());
    let w = s
        .txn(vec![b.fence()], vec![put("/x", "by b")], vec![])
        .await
        .expect("txn");
    assert!(w.succeeded);
    assert_eq!(s.get("/x").await.expect("get").expect("x").value, b"by b");

    // Resigning hands the role on at once.
    b.resign(s).await.expect("resign");
    match leader::try_lead(s, "c", "http://c", TTL)
        .await
        .expect("try")
    {
        Campaign::Won(l) => assert_eq!(l.record.id, "c"),
        lost => panic!("c must lead after b resigned: {lost:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_on_the_embedded_store() {
    election(common::memory_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_on_etcd() {
    election(Arc::new(OwnedEtcdStore::start().await)).await;
}

/// The store a leader's controllers write through: every write (put,
/// delete, compare-and-swap) of a deposed leader is refused and wakes
/// `lost()`; the new leader's go through; before a fence is set nothing is
/// changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_fenced_store_refuses_every_write() {
    use vdc_control::fence::FencedStore;
    let raw = common::memory_store().await;
    let old = Arc::new(FencedStore::new(raw.clone()));
    old.put("/y", b"unfenced".to_vec())
        .await
        .expect("no fence yet");
    let a = match leader::try_lead(&*raw, "a", "http://a", TTL)
        .await
        .expect("try")
    {
        Campaign::Won(l) => l,
        lost => panic!("a must lead: {lost:?}"),
    };
    old.set_fence(a.fence());
    old.put("/y", b"by a".to_vec()).await.expect("a's write");
    a.clone().resign(&*raw).await.expect("resign");
    let b = match leader::try_lead(&*raw, "b", "http://b", TTL)
        .await
        .expect("try")
    {
        Campaign::Won(l) => l,
        lost => panic!("b must lead: {lost:?}"),
    };
    let lost = {
        let old = old.clone();
        tokio::spawn(async move { old.lost().await })
    };
    assert!(old.put("/y", b"by old a".to_vec()).await.is_err());
    assert!(old.delete("/y").await.is_err());
    let cas = old
        .txn(
            vec![vdc_store::Compare::Exists("/y".into())],
            vec![put("/y", "cas by old a")],
            vec![],
        )
        .await;
    assert!(cas.is_err(), "{cas:?}");
    tokio::time::timeout(DEADLINE, lost)
        .await
        .expect("lost() wakes")
        .expect("task");
    let new = FencedStore::new(raw.clone());
    new.set_fence(b.fence());
    new.put("/y", b"by b".to_vec()).await.expect("b's write");
    assert_eq!(raw.get("/y").await.expect("get").expect("y").value, b"by b");
}
