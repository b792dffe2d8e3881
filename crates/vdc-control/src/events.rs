//! The event bus: every event is numbered, kept in the store (a bounded
//! history) and broadcast to live subscribers (the SSE stream, webhooks).

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
            state: Mutex::new(BusState { next_seq, keys }),
        })
    }

    /// Publishes an event.
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
        st.next_seq += 1;
        let k = key(ev.seq);
        if let Err(e) = self.store.put_json(&k, &ev).await {
            tracing::warn!(error = %e, "cannot record event");
        } else {
            st.keys.push_back(k);
        }
        while st.keys.len() > HISTORY {
            if let Some(old) = st.keys.pop_front() {
                let _ = self.store.delete(&old).await;
            }
        }
        tracing::info!(topic = %ev.topic, object = %ev.object, "{}", ev.message);
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
