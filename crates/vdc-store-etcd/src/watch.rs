//! Prefix watches on etcd: one background task per [`Watch`].
//!
//! How a watch runs:
//!
//! 1. the task opens an etcd watch on the prefix's range starting at
//!    `next` (the revision after the last one delivered), so the first
//!    stream and every later one continue exactly where the caller is;
//! 2. each event is converted and pushed to the [`WatchSender`] without
//!    waiting (a full buffer ends the watch as lagged, as with every store);
//!    `next` moves past it;
//! 3. if the stream breaks (the etcd member died, the connection dropped),
//!    the task opens a new one from `next` through the client's other
//!    endpoints: no gap, no repeat;
//! 4. if etcd answers that `next` was compacted away, the task sends
//!    [`StoreError::Compacted`] and ends: the caller lists again and
//!    watches from the listed revision;
//! 5. the task ends when the [`Watch`] is dropped or the store is dropped.

use std::time::Duration;

use etcd_client as etcd;
use tokio::sync::watch as signal;
use vdc_store::{StoreError, WatchEvent, WatchSender};

use crate::convert::{as_i64, revision, Namespace};

/// Pause before reopening a broken watch stream.
const RETRY: Duration = Duration::from_millis(250);

/// What the watch task needs.
pub(crate) struct WatchTask {
    pub source: Source,
    pub tx: WatchSender,
    /// Changes (to an error) when the store is dropped.
    pub shutdown: signal::Receiver<()>,
}

/// Where the events come from, and how far they were delivered.
pub(crate) struct Source {
    pub client: etcd::Client,
    pub namespace: Namespace,
    pub prefix: String,
    /// First revision not yet delivered.
    pub next: u64,
}

/// How one stream ended.
enum End {
    /// Stop the task (watch or store dropped, terminal error sent).
    Stop,
    /// Open a new stream from `next`.
    Reopen,
}

impl WatchTask {
    /// Run until the watch or the store is dropped.
    pub(crate) async fn run(self) {
        let WatchTask {
            mut source,
            tx,
            mut shutdown,
        } = self;
        loop {
            let end = tokio::select! {
                end = source.stream(&tx) => end,
                _ = shutdown.changed() => End::Stop,
                _ = tx.closed() => End::Stop,
            };
            match end {
                End::Stop => return,
                End::Reopen => {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

impl Source {
    /// Open one etcd watch stream from `next` and forward its events.
    async fn stream(&mut self, tx: &WatchSender) -> End {
        let (start, end) = self.namespace.range(&self.prefix);
        let options = etcd::WatchOptions::new()
            .with_range(end)
            .with_start_revision(as_i64(self.next));
        let mut stream = match self.client.watch(start, Some(options)).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(prefix = %self.prefix, error = %e, "cannot open etcd watch, retrying");
                return End::Reopen;
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, "etcd watch stream ended, reopening");
                    return End::Reopen;
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "etcd watch stream failed, reopening");
                    return End::Reopen;
                }
            };
            if response.compact_revision() > 0 {
                let available = revision(response.compact_revision());
                tx.fail(StoreError::Compacted {
                    requested: self.next.saturating_sub(1),
                    available,
                });
                return End::Stop;
            }
            if response.canceled() {
                tracing::warn!(prefix = %self.prefix, reason = response.cancel_reason(), "etcd canceled the watch, reopening");
                return End::Reopen;
            }
            for event in response.events() {
                let item = self.event(event);
                let delivered = match item {
                    Ok(event) => {
                        let at = event.revision();
                        let sent = tx.send(event);
                        self.next = at + 1;
                        sent
                    }
                    Err(e) => {
                        tx.fail(e);
                        false
                    }
                };
                if !delivered {
                    if !tx.is_closed() {
                        tracing::warn!(prefix = %self.prefix, "watcher fell behind, dropped");
                    }
                    return End::Stop;
                }
            }
        }
    }

    fn event(&self, event: &etcd::Event) -> Result<WatchEvent, StoreError> {
        let kv = event.kv().ok_or_else(|| StoreError::Corrupt {
            key: self.prefix.clone(),
        })?;
        Ok(match event.event_type() {
            etcd::EventType::Put => WatchEvent::Put(self.namespace.kv(kv)?),
            etcd::EventType::Delete => WatchEvent::Delete {
                key: self.namespace.strip(kv.key())?,
                mod_revision: revision(kv.mod_revision()),
            },
        })
    }
}
