//! Several `vdc server`s on one store: every one serves the API and the
//! event stream, one leader runs the controllers (issue 12).
//!
//! A server starts as a follower ([`Cluster::open_follower`]): it runs no
//! controller, its event bus mirrors the events the leader writes, and the
//! API forwards to the leader whatever it does not serve itself. It
//! registers as a member (`/control-plane/members/<id>`, on its own lease)
//! and campaigns ([`crate::leader::campaign`]). The winner:
//!
//! 1. fences every write of its store with the leader key's revision
//!    ([`crate::fence`]);
//! 2. continues the event numbering from the store and reads the tasks
//!    left unfinished;
//! 3. does what a starting single server does (releases orphaned VM
//!    operations, resumes or reconciles every unfinished journaled task),
//!    publishes `cluster.leader_changed` and starts the monitors (hosts,
//!    HA, backup schedules);
//! 4. keeps its lease alive. A keep-alive that fails, or a fenced write
//!    refused, means the role is lost: the process exits at once (as
//!    Kubernetes' controller managers do), which stops every controller
//!    with it; its supervisor starts it again as a follower.
//!
//! ```text
//!  start --> follower --campaign won--> leader --lease lost / write fenced--> exit
//!               ^                                                  |
//!               +------------- restarted by its supervisor --------+
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use vdc_store::{Store, StoreExt};
use vdc_types::control_plane::{
    ControlPlaneLeader, ControlPlaneMember, ControlPlaneStatus, ServerRole,
};
use vdc_types::{now_ms, ApiError, UnixMillis};

use crate::leader::{self, LeaderRecord};
use crate::{store_err, Cluster};

/// Prefix of the member records.
pub const MEMBERS_PREFIX: &str = "/control-plane/members/";

/// Version of [`MemberRecord`].
pub const MEMBER_VERSION: u32 = 1;

/// Exit status of a server that lost the role.
pub const LOST_LEADERSHIP_EXIT: i32 = 75;

/// A server alive in the control plane, on its own lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Format version ([`MEMBER_VERSION`]).
    pub version: u32,
    /// The server's id.
    pub id: String,
    /// Where its API answers.
    pub url: String,
    /// When it started.
    pub started_ms: UnixMillis,
}

/// This server's place in the control plane.
pub struct ControlPlane {
    /// This server's id.
    pub id: String,
    /// Where this server's API answers (given to the others for
    /// forwarding).
    pub url: String,
    /// Kind of store (`redb`, `etcd`).
    pub store_kind: String,
    started_ms: UnixMillis,
    leading: tokio::sync::watch::Sender<bool>,
    leader: tokio::sync::watch::Sender<Option<LeaderRecord>>,
}

impl ControlPlane {
    /// A server that has not led yet.
    pub fn new(id: &str, url: &str, store_kind: &str) -> ControlPlane {
        ControlPlane {
            id: id.to_string(),
            url: url.to_string(),
            store_kind: store_kind.to_string(),
            started_ms: now_ms(),
            leading: tokio::sync::watch::channel(false).0,
            leader: tokio::sync::watch::channel(None).0,
        }
    }

    /// Whether this server leads now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// The leader as last seen in the store.
    pub fn leader(&self) -> Option<LeaderRecord> {
        self.leader.borrow().clone()
    }

    /// Waits until the recorded leader changes or `timeout` passes.
    pub async fn leader_changed(&self, timeout: Duration) {
        let mut rx = self.leader.subscribe();
        rx.borrow_and_update();
        let _timed_out = tokio::time::timeout(timeout, rx.changed()).await;
    }

    pub(crate) fn set_leading(&self, record: LeaderRecord) {
        self.leader.send_replace(Some(record));
        self.leading.send_replace(true);
    }

    fn member(&self) -> MemberRecord {
        MemberRecord {
            version: MEMBER_VERSION,
            id: self.id.clone(),
            url: self.url.clone(),
            started_ms: self.started_ms,
        }
    }
}

impl Cluster {
    /// The control plane as this server sees it.
    pub async fn control_plane_status(&self) -> Result<ControlPlaneStatus, ApiError> {
        let cp = &self.control_plane;
        let raw = self.fenced.inner();
        let revision = raw.revision().await.map_err(store_err)?;
        let leader = if cp.store_kind == "redb" {
            Some(ControlPlaneLeader {
                id: cp.id.clone(),
                url: cp.url.clone(),
                since_ms: cp.started_ms,
            })
        } else {
            leader::current(raw.as_ref())
                .await
                .map_err(store_err)?
                .map(|r| ControlPlaneLeader {
                    id: r.id,
                    url: r.url,
                    since_ms: r.since_ms,
                })
        };
        let mut members: Vec<MemberRecord> = raw
            .list_json::<MemberRecord>(MEMBERS_PREFIX)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        if !members.iter().any(|m| m.id == cp.id) {
            members.push(cp.member());
        }
        let leader_id = leader.as_ref().map(|l| l.id.clone());
        Ok(ControlPlaneStatus {
            store: cp.store_kind.clone(),
            revision,
            members: members
                .into_iter()
                .map(|m| ControlPlaneMember {
                    role: if Some(&m.id) == leader_id.as_ref() {
                        ServerRole::Leader
                    } else {
                        ServerRole::Follower
                    },
                    id: m.id,
                    url: m.url,
                    started_ms: m.started_ms,
                })
                .collect(),
            leader,
            served_by: cp.id.clone(),
        })
    }

    /// Takes part in the election until the process ends: registers this
    /// server as a member, follows the leader key, campaigns, and on
    /// winning takes the lead ([`Cluster::take_lead`]) and keeps it. Exits
    /// the process when the role is lost.
    pub async fn run_control_plane(self: Arc<Self>, ttl: Duration) -> Result<(), ApiError> {
        let raw = self.fenced.inner().clone();
        let cp = self.control_plane.clone();
        tokio::spawn(self.clone().keep_member(ttl));
        self.spawn_leader_follow(raw.clone());
        let leadership = loop {
            match leader::campaign(raw.as_ref(), &cp.id, &cp.url, ttl).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        self.take_lead(&leadership).await?;
        let mut tick = tokio::time::interval(ttl / 4);
        let mut kept = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match leadership.keep(raw.as_ref()).await {
                        Ok(()) => kept = std::time::Instant::now(),
                        Err(e) => match keep_failed(&e, kept.elapsed(), ttl) {
                            KeepFailure::Lost => lost_leadership(&format!(
                                "the leader lease could not be kept: {e}"
                            )),
                            KeepFailure::Retry => tracing::warn!(
                                error = %e,
                                "the leader lease could not be kept; trying again"
                            ),
                        },
                    }
                }
                _ = self.fenced.lost() => lost_leadership("a write was fenced"),
            }
        }
    }

    /// Keeps this server's member record alive on its own lease,
    /// registering again when the lease lapsed (the store was out of reach
    /// longer than the TTL).
    async fn keep_member(self: Arc<Self>, ttl: Duration) {
        let raw = self.fenced.inner().clone();
        let key = format!("{MEMBERS_PREFIX}{}", self.control_plane.id);
        let mut lease = None;
        let mut tick = tokio::time::interval(ttl / 4);
        loop {
            tick.tick().await;
            match lease {
                Some(l) => {
                    if let Err(e) = raw.keep_alive(l).await {
                        tracing::warn!(error = %e, "member lease lost; registering again");
                        lease = None;
                    }
                }
                None => match raw.grant_lease(ttl).await {
                    Ok(l) => {
                        match raw
                            .put_json_with_lease(&key, &self.control_plane.member(), l)
                            .await
                        {
                            Ok(_) => lease = Some(l),
                            Err(e) => tracing::warn!(error = %e, "cannot register as a member"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register as a member"),
                },
            }
        }
    }

    /// Follows the leader key, for forwarding and the status.
    fn spawn_leader_follow(self: &Arc<Self>, raw: Arc<dyn Store>) {
        let cp = self.control_plane.clone();
        tokio::spawn(async move {
            loop {
                let watch = raw.watch(leader::LEADER_KEY).await;
                let current = leader::current(raw.as_ref()).await.ok().flatten();
                cp.leader.send_replace(current);
                let Ok(mut watch) = watch else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                while let Some(ev) = watch.recv().await {
                    if ev.is_err() {
                        break;
                    }
                    let current = leader::current(raw.as_ref()).await.ok().flatten();
                    cp.leader.send_replace(current);
                }
            }
        });
    }

    /// Becomes the leader: fences the store, continues events and tasks
    /// from the store, then starts what a starting server starts (see the
    /// module documentation). The monitors are started too.
    pub async fn take_lead(
        self: &Arc<Self>,
        leadership: &leader::Leadership,
    ) -> Result<(), ApiError> {
        let started = std::time::Instant::now();
        self.fenced.set_fence(leadership.fence());
        self.events.take_over().await.map_err(store_err)?;
        self.tasks.reload_unfinished().await.map_err(store_err)?;
        self.control_plane.set_leading(leadership.record.clone());
        self.lead().await?;
        // The controllers run from here on; the event below marks it.
        self.spawn_monitor();
        self.events
            .publish(
                "cluster.leader_changed",
                &leadership.record.id,
                format!(
                    "server {} ({}) leads the control plane",
                    leadership.record.id, leadership.record.url
                ),
                json!({
                    "leader": leadership.record.id,
                    "url": leadership.record.url,
                    "since_ms": leadership.record.since_ms,
                    "takeover_ms": started.elapsed().as_millis() as u64,
                }),
            )
            .await;
        Ok(())
    }
}

/// What a failed keep-alive of the leader lease means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepFailure {
    /// The role is (or may be) gone: stop now.
    Lost,
    /// A store member went away: try again (fenced writes keep a lapsed
    /// leader harmless meanwhile).
    Retry,
}

/// The rule: the lease is gone, or it may have lapsed (the last keep-alive
/// that worked is three quarters of the TTL old), means lost.
pub fn keep_failed(e: &vdc_store::StoreError, since_kept: Duration, ttl: Duration) -> KeepFailure {
    if matches!(e, vdc_store::StoreError::LeaseNotFound(_)) || since_kept >= ttl * 3 / 4 {
        KeepFailure::Lost
    } else {
        KeepFailure::Retry
    }
}

fn lost_leadership(why: &str) -> ! {
    tracing::error!(
        "{why}: this server no longer leads; exiting so that its controllers stop at once"
    );
    eprintln!("vdc server: {why}: no longer the leader; exiting");
    std::process::exit(LOST_LEADERSHIP_EXIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_store::StoreError;

    #[test]
    fn a_keep_alive_failure_is_lost_only_when_the_lease_may_be_gone() {
        let ttl = Duration::from_secs(4);
        let gone = StoreError::LeaseNotFound(7);
        let flaky = StoreError::backend("member unreachable");
        assert_eq!(keep_failed(&gone, Duration::ZERO, ttl), KeepFailure::Lost);
        assert_eq!(
            keep_failed(&flaky, Duration::from_secs(1), ttl),
            KeepFailure::Retry
        );
        assert_eq!(
            keep_failed(&flaky, Duration::from_secs(3), ttl),
            KeepFailure::Lost
        );
    }
}
