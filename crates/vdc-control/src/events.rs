//! The event bus: every event is numbered, kept in the store (a bounded
//! history) and broadcast to live subscribers (the SSE stream, webhooks).
//!
//! Event numbers are global to the control plane: only the leader
//! publishes, through its fenced store, continuing the numbering it finds
//! there when it takes the lead ([`EventBus::take_over`]). A follower's bus
//! mirrors the events the leader writes ([`EventBus::follow`]), so that a
//! subscriber of any server sees the same events under the same numbers,
//! and resumes on another server with `after` without a gap or a repeat.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{broadcast, Mutex};
use vdc_store::{Store, StoreExt};
use vdc_types::{now_ms, Event};

const PREFIX: &str = "/events/";
/// Events kept in the history.
pub const HISTORY: usize = 2000;

/// Publishes and replays events.
pub struct EventBus {
    store: Arc<dyn Store>,
    tx: broadcast::Sender<Event>,
    state: Mutex<BusState>,
}

struct BusState {
    next_seq: u64,
    keys: VecDeque<String>,
    /// Highest number broadcast to subscribers.
    last_sent: u64,
    /// The mirror of a follower's bus, stopped when it takes the lead.
    follower: Option<tokio::task::AbortHandle>,
}

fn key(seq: u64) -> String {
    format!("{PREFIX}{seq:016}")
}

impl EventBus {
    /// Opens the bus, continuing the numbering of the stored history.
    pub async fn open(store: Arc<dyn Store>) -> Result<EventBus, vdc_store::StoreError> {
        let existing = store.list(PREFIX).await?;
        let keys: VecDeque<String> = existing.iter().map(|kv| kv.key.clone()).collect();
        let next_seq = existing
            .last()
            .and_then(|kv| kv.key[PREFIX.len()..].parse::<u64>().ok())
            .map(|s| s + 1)
            .unwrap_or(1);
        let (tx, _) = broadcast::channel(1024);
        Ok(EventBus {
            store,
            tx,
            state: Mutex::new(BusState {
                next_seq,
                keys,
                last_sent: next_seq - 1,
                follower: None,
            }),
        })
    }

    /// Mirrors the events another server (the leader) writes to the store
    /// to this bus's subscribers, until [`EventBus::take_over`].
    pub async fn follow(self: Arc<Self>) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                match me.store.watch(PREFIX).await {
                    Ok(mut watch) => {
                        // Events written before the watch began.
                        me.catch_up().await;
                        while let Some(ev) = watch.recv().await {
                            match ev {
                                Ok(vdc_store::WatchEvent::Put(kv)) => {
                                    if let Ok(ev) = serde_json::from_slice::<Event>(&kv.value) {
                                        me.mirror(ev).await;
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::debug!(error = %e, "event watch ended");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot watch the events"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        self.state.lock().await.follower = Some(task.abort_handle());
    }

    async fn mirror(&self, ev: Event) {
        let mut st = self.state.lock().await;
        if ev.seq > st.last_sent {
            st.last_sent = ev.seq;
            st.next_seq = st.next_seq.max(ev.seq + 1);
            let _no_subscriber = self.tx.send(ev);
        }
    }

    /// Broadcasts the stored events this bus has not sent yet.
    async fn catch_up(&self) {
        let after = self.state.lock().await.last_sent;
        for ev in self.history(after, usize::MAX).await {
            self.mirror(ev).await;
        }
    }

    /// This server takes the lead: stops mirroring, sends what the old
    /// leader wrote and was not mirrored yet, and continues the numbering
    /// from the store.
    pub async fn take_over(&self) -> Result<(), vdc_store::StoreError> {
        if let Some(task) = self.state.lock().await.follower.take() {
            task.abort();
        }
        self.catch_up().await;
        let existing = self.store.list(PREFIX).await?;
        let mut st = self.state.lock().await;
        st.keys = existing.iter().map(|kv| kv.key.clone()).collect();
        let stored_next = existing
            .last()
            .and_then(|kv| kv.key[PREFIX.len()..].parse::<u64>().ok())
            .map(|s| s + 1)
            .unwrap_or(1);
        st.next_seq = st.next_seq.max(stored_next);
        Ok(())
    }

    /// Publishes an event: stored, then sent to subscribers (an event the
    /// store refused is logged and not sent).
    pub async fn publish(
        &self,
        topic: &str,
        object: &str,
        message: impl Into<String>,
        data: serde_json::Value,
    ) -> Event {
        let mut st = self.state.lock().await;
        let ev = Event {
            seq: st.next_seq,
            time_ms: now_ms(),
            topic: topic.to_string(),
            object: object.to_string(),
            message: message.into(),
            data,
        };
        let k = key(ev.seq);
        if let Err(e) = self.store.put_json(&k, &ev).await {
            // Not stored, not sent: an event is what the store holds, so
            // that its number means the same on every server (a deposed
            // leader's refused write must not reach any subscriber).
            tracing::warn!(error = %e, topic = %ev.topic, "cannot record event; not sent");
            return ev;
        }
        st.next_seq += 1;
        st.keys.push_back(k);
        while st.keys.len() > HISTORY {
            if let Some(old) = st.keys.pop_front() {
                let _ = self.store.delete(&old).await;
            }
        }
        tracing::info!(topic = %ev.topic, object = %ev.object, "{}", ev.message);
        st.last_sent = st.last_sent.max(ev.seq);
        let _ = self.tx.send(ev.clone());
        ev
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Stored events with `seq > after`, oldest first, at most `limit`.
    pub async fn history(&self, after: u64, limit: usize) -> Vec<Event> {
        let all: Vec<(String, Event)> = self.store.list_json(PREFIX).await.unwrap_or_default();
        all.into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.seq > after)
            .take(limit)
            .collect()
    }
}
