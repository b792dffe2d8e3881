//! The receiving end of a prefix watch, shared by every implementation.
//!
//! Why a bounded channel with a "lagged" flag: a writer must never wait for
//! a slow reader. Each watcher gets a buffer of [`WATCH_BUFFER`] events; when
//! it is full the store marks the watcher lagged and drops its sender. The
//! reader then drains what was buffered, receives one
//! [`StoreError::WatchLagged`] and the stream ends, telling it to list again
//! and start a new watch.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::{StoreError, WatchEvent};

/// Events a watcher may have pending before it is considered lagged.
pub const WATCH_BUFFER: usize = 4096;

type Item = Result<WatchEvent, StoreError>;

/// A stream of [`WatchEvent`]s for the keys under one prefix.
///
/// Ends (`None`) when the store is dropped; yields one `Err` before ending if
/// the watcher lagged or the implementation lost its source. Dropping the
/// `Watch` cancels it.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Item>,
    lagged: Arc<AtomicBool>,
    lag_reported: bool,
    start_revision: u64,
}

/// The sending end of a [`Watch`], held by a store implementation.
#[derive(Debug)]
pub struct WatchSender {
    tx: mpsc::Sender<Item>,
    lagged: Arc<AtomicBool>,
}

impl Watch {
    /// Create a watch channel whose events have revisions above
    /// `start_revision`. For store implementations.
    pub fn channel(start_revision: u64) -> (WatchSender, Watch) {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let sender = WatchSender {
            tx,
            lagged: lagged.clone(),
        };
        let watch = Watch {
            rx,
            lagged,
            lag_reported: false,
            start_revision,
        };
        (sender, watch)
    }

    /// Store revision when the watch started; every event is newer. Pair
    /// with a [`Store::list`](crate::Store::list) done after the watch was
    /// created and skip events not newer than the listed `mod_revision`.
    pub fn start_revision(&self) -> u64 {
        self.start_revision
    }

    /// Next event; `None` once the watch has ended.
    pub async fn recv(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        futures::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) if !self.lag_reported && self.lagged.load(Ordering::Acquire) => {
                self.lag_reported = true;
                Poll::Ready(Some(Err(StoreError::WatchLagged)))
            }
            other => other,
        }
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl WatchSender {
    /// Queue an event without waiting. Returns false if the watcher is gone
    /// or has just lagged; the caller must then drop this sender.
    pub fn send(&self, event: WatchEvent) -> bool {
        self.send_item(Ok(event))
    }

    /// Queue a terminal error (the caller drops the sender afterwards).
    pub fn fail(&self, error: StoreError) -> bool {
        self.send_item(Err(error))
    }

    /// Wait until the [`Watch`] is dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// True if the [`Watch`] was dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn send_item(&self, item: Item) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
