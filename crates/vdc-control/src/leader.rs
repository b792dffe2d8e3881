//! Leader election over the cluster store, with fencing: the building
//! block for several `vdc server`s on one etcd (issue 12). **Not wired into
//! the server yet**: today one server runs the controllers.
//!
//! How it works:
//!
//! 1. a server grants a lease (its TTL is how long a dead leader holds
//!    the role) and, in one transaction, creates [`LEADER_KEY`] with that
//!    lease *if the key is absent*; the winner's [`Leadership`] remembers
//!    the revision the key was created at;
//! 2. the leader keeps its lease alive ([`Leadership::keep`], well within
//!    the TTL); a keep-alive that fails means the role is lost: stop every
//!    leader-only activity at once;
//! 3. every leader-only write carries [`Leadership::fence`] among its
//!    compares: the leader key is still the one this leader created. A
//!    leader that lost its lease (paused, partitioned) and wakes up cannot
//!    write: its compare fails, whatever it believes;
//! 4. the others wait for the key to disappear (lease expired or the
//!    leader resigned: [`Leadership::resign`]) and campaign again.
//!
//! ```text
//!  follower --key absent, txn won--> leader --keep-alive failed / resign--> follower
//!     ^  |                               |
//!     |  +--key present: watch it--+     +-- every leader-only write: compare fence()
//!     +------- key deleted --------+
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vdc_store::{Compare, LeaseId, Op, Store, StoreError, StoreExt, WatchEvent};
use vdc_types::{now_ms, UnixMillis};

/// The key the leader holds, attached to its lease.
pub const LEADER_KEY: &str = "/leader";

/// Version of [`LeaderRecord`].
pub const LEADER_VERSION: u32 = 1;

/// Who leads, as stored at [`LEADER_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// Format version ([`LEADER_VERSION`]).
    pub version: u32,
    /// The server's id (unique per process).
    pub id: String,
    /// Where its API answers (for forwarding).
    pub url: String,
    /// When it took the role.
    pub since_ms: UnixMillis,
}

/// The role held: proof for fenced writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// The lease the leader key is attached to.
    pub lease: LeaseId,
    /// Revision at which this leader created the key.
    pub revision: u64,
    /// What the key says.
    pub record: LeaderRecord,
}

/// The outcome of one attempt to lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// This server leads.
    Won(Leadership),
    /// Another one does (its record, when readable).
    Lost(Option<LeaderRecord>),
}

impl Leadership {
    /// The compare a leader-only write adds: the leader key is still the
    /// one this leader created.
    pub fn fence(&self) -> Compare {
        Compare::Revision {
            key: LEADER_KEY.to_string(),
            mod_revision: self.revision,
        }
    }

    /// Keep the role: one keep-alive of its lease. An error means the role
    /// is (or may be) lost.
    pub async fn keep(&self, store: &dyn Store) -> Result<(), StoreError> {
        store.keep_alive(self.lease).await
    }

    /// Give the role up now (the others see the key go).
    pub async fn resign(self, store: &dyn Store) -> Result<(), StoreError> {
        store.revoke_lease(self.lease).await
    }
}

/// The current leader, if any.
pub async fn current(store: &dyn Store) -> Result<Option<LeaderRecord>, StoreError> {
    store.get_json(LEADER_KEY).await
}

/// One attempt to lead with a role that lasts `ttl` past the last
/// keep-alive.
pub async fn try_lead(
    store: &dyn Store,
    id: &str,
    url: &str,
    ttl: Duration,
) -> Result<Campaign, StoreError> {
    let record = LeaderRecord {
        version: LEADER_VERSION,
        id: id.to_string(),
        url: url.to_string(),
        since_ms: now_ms(),
    };
    let value = serde_json::to_vec(&record).map_err(|source| StoreError::Encode {
        key: LEADER_KEY.to_string(),
        source,
    })?;
    let lease = store.grant_lease(ttl).await?;
    let put = Op::Put {
        key: LEADER_KEY.to_string(),
        value,
        lease: Some(lease),
    };
    let res = store
        .txn(
            vec![Compare::Absent(LEADER_KEY.to_string())],
            vec![put],
            vec![],
        )
        .await;
    match res {
        Ok(r) if r.succeeded => Ok(Campaign::Won(Leadership {
            lease,
            revision: r.revision,
            record,
        })),
        other => {
            if let Err(e) = store.revoke_lease(lease).await {
                tracing::debug!(error = %e, "cannot revoke the unused campaign lease");
            }
            other?;
            Ok(Campaign::Lost(current(store).await.ok().flatten()))
        }
    }
}

/// Lead: try, and while another server leads, wait for its key to go and
/// try again. Returns once this server leads.
pub async fn campaign(
    store: &dyn Store,
    id: &str,
    url: &str,
    ttl: Duration,
) -> Result<Leadership, StoreError> {
    loop {
        // Watch before trying: a delete between the attempt and the wait
        // is not missed.
        let mut watch = store.watch(LEADER_KEY).await?;
        if let Campaign::Won(l) = try_lead(store, id, url, ttl).await? {
            return Ok(l);
        }
        loop {
            match watch.recv().await {
                Some(Ok(WatchEvent::Delete { key, .. })) if key == LEADER_KEY => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "leader watch ended; trying again");
                    break;
                }
                None => return Err(StoreError::backend("the store closed the leader watch")),
            }
        }
    }
}
