//! Lease watches: this host watches the leases of VMs another host may be
//! about to lose, before the server judges that host failed.
//!
//! Why: a stale lease may be taken only after it was seen unchanged for a
//! TTL on the taker's own clock (`vdc_disk::lock::rule`). If the watch
//! began only with the failover's start, a restart would cost detection
//! *plus* a TTL. The server asks surviving hosts to watch as soon as a
//! host's reports stop (`PUT /agent/v1/lease-watches`, the whole set each
//! time); the VM supervisor a failover start launches here then continues
//! this host's observation ([`vdc_disk::lock::Seen`], `--lease-seen`) and
//! waits only what is left of the TTL. A watch is only an observation: it
//! writes nothing, and a lease that changes simply restarts its count.
//!
//! Steps, every [`POLL`] while any watch exists: read every watched lease
//! (on the blocking pool, bounded), note for each the state read and when
//! this host first saw it (taken after the read returned, so the state was
//! written before).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use vdc_disk::lock::{monotonic_now, LeaseKey, Seen};
use vdc_disk::VmLock;
use vdc_types::lease_watch::{LeaseWatchRequest, LeaseWatchState, LeaseWatchTarget};
use vdc_types::ApiError;

use crate::agent::{blocking_lease_io, Agent};

/// How often watched leases are read.
const POLL: Duration = Duration::from_millis(250);

/// Most VMs one request may ask to watch.
pub(crate) const MAX_WATCHES: usize = 4096;

struct Entry {
    target: LeaseWatchTarget,
    vm_dir: PathBuf,
    /// The state read last and since when it was seen; `None` before the
    /// first read or when there is no lease.
    seen: Option<Seen>,
}

/// The watches of this host.
#[derive(Default)]
pub(crate) struct LeaseWatches {
    entries: Mutex<BTreeMap<String, Entry>>,
    wake: Notify,
}

impl LeaseWatches {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This host's observation of the lease of VM `id`, if it watches it.
    pub(crate) fn seen(&self, id: &str) -> Option<Seen> {
        self.lock().get(id).and_then(|e| e.seen.clone())
    }

    fn states(&self) -> Vec<LeaseWatchState> {
        let now = monotonic_now();
        self.lock()
            .values()
            .map(|e| LeaseWatchState {
                id: e.target.id.clone(),
                name: e.target.name.clone(),
                holder_host: e.seen.as_ref().map(|s| s.key.host.clone()),
                generation: e.seen.as_ref().map(|s| s.key.generation),
                unchanged_ms: e
                    .seen
                    .as_ref()
                    .map_or(0, |s| now.saturating_sub(s.since).as_millis() as u64),
            })
            .collect()
    }
}

impl Agent {
    /// `PUT /agent/v1/lease-watches`: watch exactly these VMs' leases
    /// (watches kept go on counting; others are dropped).
    pub(crate) fn set_lease_watches(
        &self,
        req: LeaseWatchRequest,
    ) -> Result<Vec<LeaseWatchState>, ApiError> {
        if req.vms.len() > MAX_WATCHES {
            return Err(ApiError::invalid(format!(
                "{} lease watches asked; at most {MAX_WATCHES}",
                req.vms.len()
            )));
        }
        let mut wanted = BTreeMap::new();
        for t in req.vms {
            let vm_dir = self.resolve(&t.datastore, &t.dir)?;
            wanted.insert(t.id.clone(), (t, vm_dir));
        }
        {
            let mut entries = self.lease_watches.lock();
            entries.retain(|id, _| wanted.contains_key(id));
            for (id, (target, vm_dir)) in wanted {
                let e = entries.entry(id).or_insert_with(|| {
                    tracing::info!(vm = %target.name, "watching the VM's lease");
                    Entry {
                        target: target.clone(),
                        vm_dir: vm_dir.clone(),
                        seen: None,
                    }
                });
                if e.vm_dir != vm_dir {
                    e.seen = None;
                }
                e.target = target;
                e.vm_dir = vm_dir;
            }
        }
        self.lease_watches.wake.notify_one();
        Ok(self.lease_watches.states())
    }
}

/// Reads the watched leases forever (see the module documentation).
pub(crate) async fn run(agent: Arc<Agent>) {
    loop {
        let dirs: Vec<(String, PathBuf)> = agent
            .lease_watches
            .lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.vm_dir.clone()))
            .collect();
        if dirs.is_empty() {
            agent.lease_watches.wake.notified().await;
            continue;
        }
        let read = blocking_lease_io(move || {
            Ok(dirs
                .into_iter()
                .map(|(id, dir)| {
                    let lease = VmLock::new(&dir).read();
                    (id, lease, monotonic_now())
                })
                .collect::<Vec<_>>())
        })
        .await;
        match read {
            Ok(seen) => {
                let mut entries = agent.lease_watches.lock();
                for (id, lease, at) in seen {
                    let Some(e) = entries.get_mut(&id) else {
                        continue;
                    };
                    match lease {
                        Ok(l) => {
                            let key = l.as_ref().map(LeaseKey::of);
                            if e.seen.as_ref().map(|s| &s.key) != key.as_ref() {
                                e.seen = key.map(|key| Seen { key, since: at });
                            }
                        }
                        Err(err) => {
                            tracing::warn!(vm = %e.target.name, error = %crate::error::chain(&err), "cannot read a watched lease");
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "reading the watched leases did not finish");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = agent.lease_watches.wake.notified() => {}
        }
    }
}
