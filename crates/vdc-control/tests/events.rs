//! The event bus: numbering, replay from the stored history, live
//! subscribers and the bound on the history.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::memory_store;
use serde_json::json;
use vdc_control::events::HISTORY;
use vdc_control::EventBus;
use vdc_store::{RedbStore, Store};

#[tokio::test]
async fn sequence_numbers_increase_by_one_and_continue_after_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).await.expect("open"));
        let bus = EventBus::open(store).await.expect("bus");
        let seqs: Vec<u64> = [
            bus.publish("vm.created", "a", "VM a created", json!({"id": 1}))
                .await,
            bus.publish("vm.created", "b", "VM b created", json!({}))
                .await,
            bus.publish("host.connected", "h", "host h connected", json!(null))
                .await,
        ]
        .iter()
        .map(|e| e.seq)
        .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).await.expect("reopen"));
    let bus = EventBus::open(store).await.expect("bus");
    let e = bus
        .publish("vm.deleted", "a", "VM a deleted", json!({}))
        .await;
    assert_eq!(e.seq, 4, "numbering restarted after reopening");

    let h = bus.history(0, usize::MAX).await;
    let seqs: Vec<u64> = h.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(h[0].topic, "vm.created");
    assert_eq!(h[0].object, "a");
    assert_eq!(h[0].message, "VM a created");
    assert_eq!(h[0].data, json!({"id": 1}));
    assert!(h[0].time_ms > 0);
}

#[tokio::test]
async fn history_returns_the_events_after_a_sequence_number_oldest_first() {
    let bus = EventBus::open(memory_store().await).await.expect("bus");
    for i in 1..=10 {
        bus.publish("vm.state_changed", &format!("vm-{i}"), "changed", json!({}))
            .await;
    }
    let seqs = |v: Vec<vdc_types::Event>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(bus.history(7, 100).await), [8, 9, 10]);
    assert_eq!(seqs(bus.history(3, 2).await), [4, 5]);
    assert_eq!(seqs(bus.history(10, 100).await), Vec::<u64>::new());
    assert_eq!(seqs(bus.history(500, 100).await), Vec::<u64>::new());
    assert_eq!(bus.history(0, 100).await.len(), 10);
    assert_eq!(bus.history(0, 0).await.len(), 0);
    // Numbering is numeric, not textual: 10 sorts after 9.
    assert_eq!(bus.history(8, 100).await[1].object, "vm-10");
}

#[tokio::test]
async fn subscribers_receive_what_is_published_after_they_subscribe() {
    let bus = EventBus::open(memory_store().await).await.expect("bus");
    bus.publish("vm.created", "before", "earlier", json!({}))
        .await;
    let mut a = bus.subscribe();
    let mut b = bus.subscribe();
    let sent = bus
        .publish(
            "host.disconnected",
            "host-2",
            "host host-2 stopped reporting",
            json!({"x": 1}),
        )
        .await;
    for rx in [&mut a, &mut b] {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("event in time")
            .expect("bus open");
        assert_eq!(got, sent);
    }
    assert!(
        a.try_recv().is_err(),
        "the earlier event was not replayed live"
    );
}

#[tokio::test]
async fn the_history_is_bounded() {
    let bus = EventBus::open(memory_store().await).await.expect("bus");
    let extra = 7u64;
    let total = HISTORY as u64 + extra;
    for i in 0..total {
        bus.publish("test.tick", "t", format!("tick {i}"), json!(i))
            .await;
    }
    let h = bus.history(0, usize::MAX).await;
    assert_eq!(h.len(), HISTORY);
    assert_eq!(
        h.first().map(|e| e.seq),
        Some(extra + 1),
        "oldest events go first"
    );
    assert_eq!(h.last().map(|e| e.seq), Some(total));
    // Consecutive: nothing in the middle was dropped.
    assert!(h.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

#[tokio::test]
async fn the_bound_holds_across_reopening() {
    let store = memory_store().await;
    {
        let bus = EventBus::open(store.clone()).await.expect("bus");
        for i in 0..HISTORY as u64 {
            bus.publish("test.tick", "t", "tick", json!(i)).await;
        }
    }
    let bus = EventBus::open(store).await.expect("bus");
    for i in 0..3u64 {
        bus.publish("test.tock", "t", "tock", json!(i)).await;
    }
    let h = bus.history(0, usize::MAX).await;
    assert_eq!(h.len(), HISTORY);
    assert_eq!(h.first().map(|e| e.seq), Some(4));
    assert_eq!(h.last().map(|e| e.seq), Some(HISTORY as u64 + 3));
}
