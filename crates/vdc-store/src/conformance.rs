//! The behaviour every [`Store`] implementation must show.
//!
//! Why a shared suite: the control plane is written against the trait, so
//! the embedded store and etcd must agree on revisions, transactions,
//! watches and leases, not just on signatures. Each check here is a public
//! async function that takes a **fresh, empty** store and panics (it is test
//! code) when the store misbehaves. Revisions are only compared with each
//! other, never with absolute numbers, and lease TTLs are at least one
//! second, so a server-backed store passes unchanged.
//!
//! How an implementation uses it:
//!
//! 1. write `async fn fresh() -> Arc<dyn Store>` returning a new empty store
//!    (for a shared server: a new key namespace);
//! 2. in a test file, `vdc_store::store_conformance_tests!(fresh);` — one
//!    `#[tokio::test]` per check;
//! 3. call [`persistence`] with a function that opens the *same* store again;
//! 4. feed random [`ModelOp`] sequences from [`model_ops`] to
//!    [`check_against_model`] (see the crate's `tests/model.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    check_ops_disjoint, Compare, KeyValue, Op, Store, StoreError, StoreExt, Watch, WatchEvent,
};

/// Longest wait for something the store must do by itself (deliver an
/// event, expire a lease).
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Generate one `#[tokio::test]` per conformance check for a store factory.
///
/// `$factory` is a path to an `async fn() -> Arc<dyn Store>` returning a
/// fresh, empty store. The persistence check needs a way to reopen a store;
/// call [`conformance::persistence`](crate::conformance::persistence)
/// yourself.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:path) => {
        $crate::store_conformance_tests!(@tests $factory;
            get_put_delete,
            revisions_are_monotonic,
            rejects_empty_key,
            list_by_prefix,
            txn_branches,
            txn_is_atomic,
            txn_rejects_overlapping_ops,
            concurrent_updates_lose_nothing,
            json_helpers,
            watch_sees_changes_under_prefix_in_order,
            watch_sees_txn_and_prefix_deletes,
            unread_watch_does_not_block_writers,
            lease_expiry_deletes_keys,
            keep_alive_extends_lease,
            revoke_deletes_keys,
            put_without_lease_detaches
        );
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: ::std::sync::Arc<dyn $crate::Store> = $factory().await;
                $crate::conformance::$name(store).await;
            }
        )*
    };
}

fn put_op(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_string(),
        value: value.to_vec(),
        lease: None,
    }
}

async fn must_get(store: &dyn Store, key: &str) -> KeyValue {
    match store.get(key).await {
        Ok(Some(kv)) => kv,
        other => panic!("get {key:?}: expected a value, got {other:?}"),
    }
}

async fn rev(store: &dyn Store) -> u64 {
    store.revision().await.expect("revision")
}

/// Next event of a watch, failing the test after [`DEADLINE`].
pub async fn next_event(watch: &mut Watch) -> WatchEvent {
    match tokio::time::timeout(DEADLINE, watch.recv()).await {
        Ok(Some(Ok(event))) => event,
        Ok(other) => panic!("watch ended or failed: {other:?}"),
        Err(_) => panic!("no watch event within {DEADLINE:?}"),
    }
}

/// Poll `probe` until it returns true, failing the test after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Get, put, overwrite, delete, and the revisions they leave.
pub async fn get_put_delete(store: Arc<dyn Store>) {
    let s = &*store;
    assert_eq!(s.get("k").await.expect("get"), None);
    let r1 = s.put("k", b"one".to_vec()).await.expect("put");
    let kv = must_get(s, "k").await;
    assert_eq!(
        kv,
        KeyValue {
            key: "k".into(),
            value: b"one".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            lease: None,
        }
    );
    let r2 = s.put("k", b"two".to_vec()).await.expect("put");
    assert!(r2 > r1);
    let kv = must_get(s, "k").await;
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"two"[..], r1, r2)
    );
    assert!(s.delete("k").await.expect("delete"));
    assert_eq!(s.get("k").await.expect("get"), None);
    let r3 = rev(s).await;
    assert!(r3 > r2, "a delete bumps the revision");
    assert!(!s.delete("k").await.expect("delete"));
    assert_eq!(rev(s).await, r3, "deleting an absent key changes nothing");
    let r4 = s.put("k", b"again".to_vec()).await.expect("put");
    let kv = must_get(s, "k").await;
    assert_eq!(
        (kv.create_revision, kv.mod_revision),
        (r4, r4),
        "re-created key"
    );
}

/// Every write returns a strictly larger revision, and `revision()` follows.
pub async fn revisions_are_monotonic(store: Arc<dyn Store>) {
    let mut last = rev(&*store).await;
    for i in 0..20u8 {
        let r = store
            .put(&format!("k{}", i % 3), vec![i])
            .await
            .expect("put");
        assert!(r > last, "revision {r} after {last}");
        assert_eq!(rev(&*store).await, r);
        last = r;
    }
}

/// Empty keys are refused everywhere they would be written.
pub async fn rejects_empty_key(store: Arc<dyn Store>) {
    assert!(matches!(
        store.put("", b"x".to_vec()).await,
        Err(StoreError::InvalidKey)
    ));
    let res = store.txn(vec![], vec![put_op("", b"x")], vec![]).await;
    assert!(matches!(res, Err(StoreError::InvalidKey)), "{res:?}");
    assert!(store.list("").await.expect("list").is_empty());
}

/// Listing is by plain string prefix, sorted by key.
pub async fn list_by_prefix(store: Arc<dyn Store>) {
    for key in ["a/bc", "b", "a/b/c", "a/a", "a/b", "a"] {
        store.put(key, key.as_bytes().to_vec()).await.expect("put");
    }
    let keys = |p: &'static str| {
        let store = store.clone();
        async move {
            let kvs = store.list(p).await.expect("list");
            for kv in &kvs {
                assert_eq!(kv.value, kv.key.as_bytes());
            }
            kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>()
        }
    };
    assert_eq!(keys("a/b/").await, ["a/b/c"]);
    assert_eq!(keys("a/b").await, ["a/b", "a/b/c", "a/bc"]);
    assert_eq!(keys("a/").await, ["a/a", "a/b", "a/b/c", "a/bc"]);
    assert_eq!(keys("").await, ["a", "a/a", "a/b", "a/b/c", "a/bc", "b"]);
    assert!(keys("zzz").await.is_empty());
    assert!(keys("a/b/c/").await.is_empty());
}

/// Each compare kind picks the right branch.
pub async fn txn_branches(store: Arc<dyn Store>) {
    let s = &*store;
    let r = s.put("x", b"1".to_vec()).await.expect("put");
    let cases: Vec<(Compare, bool)> = vec![
        (
            Compare::Revision {
                key: "x".into(),
                mod_revision: r,
            },
            true,
        ),
        (
            Compare::Revision {
                key: "x".into(),
                mod_revision: r + 1,
            },
            false,
        ),
        (
            Compare::Revision {
                key: "x".into(),
                mod_revision: 0,
            },
            false,
        ),
        (
            Compare::Revision {
                key: "nope".into(),
                mod_revision: 0,
            },
            true,
        ),
        (
            Compare::Value {
                key: "x".into(),
                value: b"1".to_vec(),
            },
            true,
        ),
        (
            Compare::Value {
                key: "x".into(),
                value: b"2".to_vec(),
            },
            false,
        ),
        (
            Compare::Value {
                key: "nope".into(),
                value: vec![],
            },
            false,
        ),
        (Compare::Exists("x".into()), true),
        (Compare::Exists("nope".into()), false),
        (Compare::Absent("nope".into()), true),
        (Compare::Absent("x".into()), false),
    ];
    for (i, (cmp, expected)) in cases.into_iter().enumerate() {
        let before = rev(s).await;
        let ok_key = format!("ok{i}");
        let ko_key = format!("ko{i}");
        let res = s
            .txn(
                vec![cmp.clone()],
                vec![put_op(&ok_key, b"")],
                vec![put_op(&ko_key, b"")],
            )
            .await
            .expect("txn");
        assert_eq!(res.succeeded, expected, "{cmp:?}");
        assert_eq!(res.revision, before + 1, "one revision per txn");
        assert_eq!(s.get(&ok_key).await.expect("get").is_some(), expected);
        assert_eq!(s.get(&ko_key).await.expect("get").is_some(), !expected);
    }
    // All compares must hold.
    let res = s
        .txn(
            vec![Compare::Exists("x".into()), Compare::Exists("nope".into())],
            vec![put_op("both", b"")],
            vec![],
        )
        .await
        .expect("txn");
    assert!(!res.succeeded);
    assert_eq!(
        res.revision,
        rev(s).await,
        "an empty branch changes nothing"
    );
    assert_eq!(s.get("both").await.expect("get"), None);
}

/// A branch is applied whole under one revision, or not at all.
pub async fn txn_is_atomic(store: Arc<dyn Store>) {
    let s = &*store;
    s.put("p/1", b"old".to_vec()).await.expect("put");
    s.put("p/2", b"old".to_vec()).await.expect("put");
    s.put("q", b"old".to_vec()).await.expect("put");
    let ops = vec![
        Op::DeletePrefix("p/".into()),
        put_op("n/1", b"new"),
        put_op("q", b"new"),
        put_op("n/2", b"new"),
    ];
    let res = s.txn(vec![], ops, vec![]).await.expect("txn");
    assert!(res.succeeded);
    assert!(s.list("p/").await.expect("list").is_empty());
    for key in ["n/1", "n/2", "q"] {
        let kv = must_get(s, key).await;
        assert_eq!(
            (kv.value.as_slice(), kv.mod_revision),
            (&b"new"[..], res.revision)
        );
    }
    // A failing op (unknown lease) leaves everything as it was.
    let before = rev(s).await;
    let ops = vec![
        put_op("n/1", b"newer"),
        Op::Delete("q".into()),
        Op::Put {
            key: "n/3".into(),
            value: vec![],
            lease: Some(0x5eed_dead_beef),
        },
    ];
    let err = s.txn(vec![], ops, vec![]).await;
    assert!(matches!(err, Err(StoreError::LeaseNotFound(_))), "{err:?}");
    assert_eq!(rev(s).await, before);
    assert_eq!(must_get(s, "n/1").await.value, b"new");
    assert!(s.get("q").await.expect("get").is_some());
    assert_eq!(s.get("n/3").await.expect("get"), None);
}

/// A branch may not put a key twice or put and delete it.
pub async fn txn_rejects_overlapping_ops(store: Arc<dyn Store>) {
    let s = &*store;
    let before = rev(s).await;
    let bad = [
        vec![put_op("a", b"1"), put_op("a", b"2")],
        vec![put_op("a", b"1"), Op::Delete("a".into())],
        vec![Op::DeletePrefix("a/".into()), put_op("a/b", b"1")],
    ];
    for ops in bad {
        let res = s.txn(vec![], ops.clone(), vec![]).await;
        assert!(
            matches!(res, Err(StoreError::InvalidTxn(_))),
            "{ops:?}: {res:?}"
        );
    }
    assert_eq!(rev(s).await, before);
    // Overlapping deletes are fine; so is a bad branch that is not taken.
    let ops = vec![Op::DeletePrefix("a/".into()), Op::Delete("a/b".into())];
    s.txn(vec![], ops, vec![put_op("a", b"1"), put_op("a", b"2")])
        .await
        .expect("txn");
}

/// Concurrent `update_json` increments on one key all land (CAS retries).
pub async fn concurrent_updates_lose_nothing(store: Arc<dyn Store>) {
    const TASKS: u64 = 8;
    const EACH: u64 = 10;
    store.create_json("counter", &0u64).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                store
                    .update_json("counter", |n: u64| Ok::<_, StoreError>(n + 1))
                    .await
                    .expect("update");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let total: Option<u64> = store.get_json("counter").await.expect("get");
    assert_eq!(total, Some(TASKS * EACH));
}

/// The JSON helpers round-trip and report their errors.
pub async fn json_helpers(store: Arc<dyn Store>) {
    let s = &*store;
    s.create_json("j/a", &vec![1, 2]).await.expect("create");
    let again = s.create_json("j/a", &vec![3]).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists(ref k)) if k == "j/a"),
        "{again:?}"
    );
    s.put_json("j/b", &vec![4]).await.expect("put");
    let all: Vec<(String, Vec<i32>)> = s.list_json("j/").await.expect("list");
    assert_eq!(all, [("j/a".into(), vec![1, 2]), ("j/b".into(), vec![4])]);
    let got: Option<Vec<i32>> = s.get_json("j/none").await.expect("get");
    assert_eq!(got, None);

    let updated = s
        .update_json("j/a", |mut v: Vec<i32>| {
            v.push(3);
            Ok::<_, StoreError>(v)
        })
        .await
        .expect("update");
    assert_eq!(updated, [1, 2, 3]);
    let got: Option<Vec<i32>> = s.get_json("j/a").await.expect("get");
    assert_eq!(got, Some(vec![1, 2, 3]));

    let missing = s
        .update_json("j/none", |v: Vec<i32>| Ok::<_, StoreError>(v))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    let before = must_get(s, "j/a").await;
    let refused = s
        .update_json("j/a", |_: Vec<i32>| Err(StoreError::InvalidTtl))
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidTtl)),
        "closure error passes through"
    );
    assert_eq!(
        must_get(s, "j/a").await,
        before,
        "a refused update writes nothing"
    );

    s.put("j/raw", b"not json".to_vec()).await.expect("put");
    let bad = s.get_json::<Vec<i32>>("j/raw").await;
    assert!(matches!(bad, Err(StoreError::Decode { .. })), "{bad:?}");
}

/// A watch sees puts and deletes under its prefix only, in order, from its
/// creation on.
pub async fn watch_sees_changes_under_prefix_in_order(store: Arc<dyn Store>) {
    let s = &*store;
    s.put("w/before", b"0".to_vec()).await.expect("put");
    let mut watch = s.watch("w/").await.expect("watch");
    assert_eq!(watch.start_revision(), rev(s).await);
    let r1 = s.put("w/a", b"1".to_vec()).await.expect("put");
    s.put("x/a", b"no".to_vec()).await.expect("put");
    s.put("w", b"no".to_vec()).await.expect("put");
    let r2 = s.put("w/b", b"2".to_vec()).await.expect("put");
    let r3 = s.put("w/a", b"3".to_vec()).await.expect("put");
    assert!(s.delete("w/b").await.expect("delete"));
    let r4 = rev(s).await;
    s.put("w/zz", b"end".to_vec()).await.expect("put");

    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut watch).await;
        let end = event.key() == "w/zz";
        seen.push(event);
        if end {
            break;
        }
    }
    let kv = |key: &str, value: &[u8], create, modr| {
        WatchEvent::Put(KeyValue {
            key: key.into(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: modr,
            lease: None,
        })
    };
    let expected = [
        kv("w/a", b"1", r1, r1),
        kv("w/b", b"2", r2, r2),
        kv("w/a", b"3", r1, r3),
        WatchEvent::Delete {
            key: "w/b".into(),
            mod_revision: r4,
        },
    ];
    assert_eq!(seen[..seen.len() - 1], expected[..]);
    assert!(seen.iter().all(|e| e.revision() > watch.start_revision()));
}

/// A transaction's changes reach watchers under one revision, one event per
/// key, and a prefix delete reports each key.
pub async fn watch_sees_txn_and_prefix_deletes(store: Arc<dyn Store>) {
    let s = &*store;
    s.put("t/1", b"".to_vec()).await.expect("put");
    s.put("t/2", b"".to_vec()).await.expect("put");
    let mut watch = s.watch("t/").await.expect("watch");
    let res = s
        .txn(
            vec![],
            vec![Op::DeletePrefix("t/".into()), put_op("t3", b"x")],
            vec![],
        )
        .await
        .expect("txn");
    let mut deleted = Vec::new();
    for _ in 0..2 {
        match next_event(&mut watch).await {
            WatchEvent::Delete { key, mod_revision } => {
                assert_eq!(mod_revision, res.revision);
                deleted.push(key);
            }
            other => panic!("expected a delete, got {other:?}"),
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["t/1", "t/2"]);
    // "t3" is outside "t/": the next event is the next change under "t/".
    let r = s.put("t/4", b"".to_vec()).await.expect("put");
    assert_eq!(next_event(&mut watch).await.revision(), r);
}

/// A watch nobody reads, or that was dropped, never slows writers down.
pub async fn unread_watch_does_not_block_writers(store: Arc<dyn Store>) {
    let _unread = store.watch("").await.expect("watch");
    let dropped = store.watch("").await.expect("watch");
    drop(dropped);
    let writes = async {
        for i in 0..300u32 {
            store.put("u", i.to_le_bytes().to_vec()).await.expect("put");
        }
    };
    tokio::time::timeout(DEADLINE, writes)
        .await
        .expect("writes blocked by a watcher");
}

/// Keys of a lease nobody keeps alive disappear, and watchers see it.
pub async fn lease_expiry_deletes_keys(store: Arc<dyn Store>) {
    let s = &*store;
    assert!(matches!(
        s.grant_lease(Duration::ZERO).await,
        Err(StoreError::InvalidTtl)
    ));
    let mut watch = s.watch("l/").await.expect("watch");
    // The unleased key first: with the TTL running from the grant, a slow
    // machine could otherwise see the expiry before this put.
    s.put("l/keep", b"".to_vec()).await.expect("put");
    let lease = s.grant_lease(Duration::from_secs(2)).await.expect("grant");
    s.put_with_lease("l/a", b"1".to_vec(), lease)
        .await
        .expect("put");
    assert!(matches!(next_event(&mut watch).await, WatchEvent::Put(kv) if kv.key == "l/keep"));
    match next_event(&mut watch).await {
        WatchEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.lease), ("l/a", Some(lease))),
        other => panic!("expected the leased put, got {other:?}"),
    }
    match next_event(&mut watch).await {
        WatchEvent::Delete { key, .. } => assert_eq!(key, "l/a"),
        other => panic!("expected the lease delete, got {other:?}"),
    }
    assert_eq!(s.get("l/a").await.expect("get"), None);
    assert!(s.get("l/keep").await.expect("get").is_some());
    let res = s.keep_alive(lease).await;
    assert!(
        matches!(res, Err(StoreError::LeaseNotFound(id)) if id == lease),
        "{res:?}"
    );
    let res = s.put_with_lease("l/b", vec![], lease).await;
    assert!(matches!(res, Err(StoreError::LeaseNotFound(_))), "{res:?}");
}

/// Keep-alives hold a lease past its TTL; stopping them lets it expire.
pub async fn keep_alive_extends_lease(store: Arc<dyn Store>) {
    let s = &*store;
    // Keep-alives go every 300 ms; the TTL leaves a loaded machine seconds
    // of slack between two of them.
    let ttl = Duration::from_secs(3);
    let lease = s.grant_lease(ttl).await.expect("grant");
    s.put_with_lease("k", b"".to_vec(), lease)
        .await
        .expect("put");
    let until = tokio::time::Instant::now() + ttl * 2;
    while tokio::time::Instant::now() < until {
        s.keep_alive(lease).await.expect("keep alive");
        assert!(
            s.get("k").await.expect("get").is_some(),
            "expired while kept alive"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until("the lease to expire", || async {
        s.get("k").await.expect("get").is_none()
    })
    .await;
    assert!(matches!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

/// Revoking deletes exactly the lease's keys at once.
pub async fn revoke_deletes_keys(store: Arc<dyn Store>) {
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(60)).await.expect("grant");
    let other = s.grant_lease(Duration::from_secs(60)).await.expect("grant");
    assert_ne!(lease, other);
    s.put_with_lease("r/a", b"".to_vec(), lease)
        .await
        .expect("put");
    s.put_with_lease("r/b", b"".to_vec(), lease)
        .await
        .expect("put");
    s.put_with_lease("r/c", b"".to_vec(), other)
        .await
        .expect("put");
    s.put("r/d", b"".to_vec()).await.expect("put");
    let mut watch = s.watch("r/").await.expect("watch");
    s.revoke_lease(lease).await.expect("revoke");
    let after = rev(s).await;
    let mut deleted = Vec::new();
    for _ in 0..2 {
        match next_event(&mut watch).await {
            WatchEvent::Delete { key, mod_revision } => {
                assert_eq!(mod_revision, after);
                deleted.push(key);
            }
            other => panic!("expected a delete, got {other:?}"),
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["r/a", "r/b"]);
    let left: Vec<String> = s
        .list("r/")
        .await
        .expect("list")
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, ["r/c", "r/d"]);
    assert!(matches!(
        s.revoke_lease(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    s.keep_alive(other).await.expect("other lease still alive");
    let empty = s.grant_lease(Duration::from_secs(60)).await.expect("grant");
    let before = rev(s).await;
    s.revoke_lease(empty).await.expect("revoke");
    assert_eq!(
        rev(s).await,
        before,
        "revoking a lease without keys changes nothing"
    );
}

/// A plain put detaches a key from its lease; a leased put moves it.
pub async fn put_without_lease_detaches(store: Arc<dyn Store>) {
    let s = &*store;
    let l1 = s.grant_lease(Duration::from_secs(60)).await.expect("grant");
    let l2 = s.grant_lease(Duration::from_secs(60)).await.expect("grant");
    s.put_with_lease("d/plain", b"".to_vec(), l1)
        .await
        .expect("put");
    s.put("d/plain", b"".to_vec()).await.expect("put");
    s.put_with_lease("d/moved", b"".to_vec(), l1)
        .await
        .expect("put");
    s.put_with_lease("d/moved", b"".to_vec(), l2)
        .await
        .expect("put");
    assert_eq!(must_get(s, "d/plain").await.lease, None);
    assert_eq!(must_get(s, "d/moved").await.lease, Some(l2));
    s.revoke_lease(l1).await.expect("revoke");
    assert!(s.get("d/plain").await.expect("get").is_some());
    assert!(s.get("d/moved").await.expect("get").is_some());
    s.revoke_lease(l2).await.expect("revoke");
    assert_eq!(s.get("d/moved").await.expect("get"), None);
}

/// Data and revision survive closing and reopening the store. `open` must
/// return the same store each time (same file, same server namespace); the
/// first call may return an empty one.
pub async fn persistence<F, Fut>(mut open: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let s = open().await;
    s.put("keep/a", b"1".to_vec()).await.expect("put");
    s.put("keep/b", b"2".to_vec()).await.expect("put");
    s.put("keep/a", b"3".to_vec()).await.expect("put");
    assert!(s.delete("keep/b").await.expect("delete"));
    let revision = rev(&*s).await;
    let a = must_get(&*s, "keep/a").await;
    drop(s);

    let s = open().await;
    assert_eq!(rev(&*s).await, revision);
    assert_eq!(must_get(&*s, "keep/a").await, a);
    assert_eq!(s.get("keep/b").await.expect("get"), None);
    assert!(s.put("keep/c", vec![]).await.expect("put") > revision);
}

/// One step of a random history checked by [`check_against_model`].
#[derive(Debug, Clone)]
pub enum ModelOp {
    /// [`Store::put`].
    Put(String, Vec<u8>),
    /// [`Store::delete`].
    Delete(String),
    /// [`Store::txn`] (leases are not modelled: use `lease: None`).
    Txn {
        /// Compares.
        compares: Vec<Compare>,
        /// Success branch.
        success: Vec<Op>,
        /// Failure branch.
        failure: Vec<Op>,
    },
}

/// The reference semantics: a sorted map and a revision counter.
#[derive(Debug, Default)]
struct Model {
    revision: u64,
    keys: BTreeMap<String, KeyValue>,
}

impl Model {
    fn holds(&self, c: &Compare) -> bool {
        match c {
            Compare::Revision { key, mod_revision } => {
                self.keys.get(key).map_or(0, |kv| kv.mod_revision) == *mod_revision
            }
            Compare::Value { key, value } => {
                self.keys.get(key).is_some_and(|kv| kv.value == *value)
            }
            Compare::Absent(key) => !self.keys.contains_key(key),
            Compare::Exists(key) => self.keys.contains_key(key),
        }
    }

    /// Apply a branch; `Ok(changed)`, or the error the store must return.
    fn apply(&mut self, ops: &[Op]) -> Result<bool, StoreError> {
        check_ops_disjoint(ops)?;
        let next = self.revision + 1;
        let mut changed = false;
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision = self.keys.get(key).map_or(next, |kv| kv.create_revision);
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: next,
                        lease: *lease,
                    };
                    self.keys.insert(key.clone(), kv);
                    changed = true;
                }
                Op::Delete(key) => changed |= self.keys.remove(key).is_some(),
                Op::DeletePrefix(prefix) => {
                    let before = self.keys.len();
                    self.keys.retain(|k, _| !k.starts_with(prefix.as_str()));
                    changed |= self.keys.len() != before;
                }
            }
        }
        if changed {
            self.revision = next;
        }
        Ok(changed)
    }
}

/// Run `ops` against the store and a [`BTreeMap`] model side by side; panic
/// at the first difference in a result or in the full key listing.
pub async fn check_against_model(store: &dyn Store, ops: Vec<ModelOp>) {
    let mut model = Model {
        revision: rev(store).await,
        keys: BTreeMap::new(),
    };
    for kv in store.list("").await.expect("list") {
        model.keys.insert(kv.key.clone(), kv);
    }
    for (step, op) in ops.into_iter().enumerate() {
        match &op {
            ModelOp::Put(key, value) => {
                let expected = model.apply(&[put_op(key, value)]).map(|_| model.revision);
                let got = store.put(key, value.clone()).await;
                same_outcome(step, &op, &got, &expected);
            }
            ModelOp::Delete(key) => {
                let expected = model.apply(&[Op::Delete(key.clone())]);
                let got = store.delete(key).await;
                same_outcome(step, &op, &got, &expected);
            }
            ModelOp::Txn {
                compares,
                success,
                failure,
            } => {
                let succeeded = compares.iter().all(|c| model.holds(c));
                let branch = if succeeded { success } else { failure };
                let expected = model.apply(branch).map(|_| crate::TxnResult {
                    succeeded,
                    revision: model.revision,
                });
                let got = store
                    .txn(compares.clone(), success.clone(), failure.clone())
                    .await;
                same_outcome(step, &op, &got, &expected);
            }
        }
        let listed = store.list("").await.expect("list");
        let modelled: Vec<KeyValue> = model.keys.values().cloned().collect();
        assert_eq!(listed, modelled, "step {step}: {op:?}: contents differ");
        assert_eq!(
            rev(store).await,
            model.revision,
            "step {step}: {op:?}: revision"
        );
    }
}

fn same_outcome<T: PartialEq + std::fmt::Debug>(
    step: usize,
    op: &ModelOp,
    got: &Result<T, StoreError>,
    expected: &Result<T, StoreError>,
) {
    match (got, expected) {
        (Ok(g), Ok(e)) => assert_eq!(g, e, "step {step}: {op:?}"),
        (Err(g), Err(e)) => assert_eq!(
            std::mem::discriminant(g),
            std::mem::discriminant(e),
            "step {step}: {op:?}: {g:?} vs {e:?}"
        ),
        _ => panic!("step {step}: {op:?}: store {got:?}, model {expected:?}"),
    }
}

/// The proptest strategy of random histories for [`check_against_model`]:
/// few, overlapping keys (siblings and prefixes, and the empty key) so that
/// histories collide, small values, compares of every kind.
pub fn model_ops() -> impl proptest::strategy::Strategy<Value = Vec<ModelOp>> {
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "a/b", "a/bc", "a/b/c", "b", ""]).prop_map(String::from)
    }
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..3, 0..3)
    }
    fn prefix() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "a/", "a/b", "a/b/", "b", "c", ""]).prop_map(String::from)
    }
    fn compare() -> impl Strategy<Value = Compare> {
        prop_oneof![
            (key(), 0u64..12).prop_map(|(key, r)| Compare::Revision {
                key,
                mod_revision: r
            }),
            (key(), value()).prop_map(|(key, value)| Compare::Value { key, value }),
            key().prop_map(Compare::Absent),
            key().prop_map(Compare::Exists),
        ]
    }
    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (key(), value()).prop_map(|(key, value)| Op::Put { key, value, lease: None }),
            2 => key().prop_map(Op::Delete),
            1 => prefix().prop_map(Op::DeletePrefix),
        ]
    }
    let model_op = prop_oneof![
        3 => (key(), value()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        2 => key().prop_map(ModelOp::Delete),
        3 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(op(), 0..4),
            prop::collection::vec(op(), 0..4),
        )
            .prop_map(|(compares, success, failure)| ModelOp::Txn { compares, success, failure }),
    ];
    prop::collection::vec(model_op, 1..40)
}
