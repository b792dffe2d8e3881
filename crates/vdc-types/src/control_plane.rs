//! The control plane as the API shows it: which servers run, which one
//! leads (runs the controllers), on which store (`GET
//! /api/v1/cluster/control-plane`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// What a server is doing in the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerRole {
    /// Runs the controllers (tasks, placement, HA, schedules).
    Leader,
    /// Serves the API and the event stream; forwards the rest to the leader.
    Follower,
}

/// One `vdc server` of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ControlPlaneMember {
    /// The server's id (unique per process).
    pub id: String,
    /// Where its API answers.
    pub url: String,
    /// Its role now.
    pub role: ServerRole,
    /// When it started.
    pub started_ms: UnixMillis,
}

/// The leader as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ControlPlaneLeader {
    /// The leading server's id.
    pub id: String,
    /// Where its API answers.
    pub url: String,
    /// When it took the role.
    pub since_ms: UnixMillis,
}

/// `GET /api/v1/cluster/control-plane`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ControlPlaneStatus {
    /// Kind of cluster store: `redb` (embedded, one server) or `etcd`.
    pub store: String,
    /// The store's current revision.
    pub revision: u64,
    /// Who leads (none while an election runs).
    pub leader: Option<ControlPlaneLeader>,
    /// The servers alive now, by id.
    pub members: Vec<ControlPlaneMember>,
    /// The id of the server that answered.
    pub served_by: String,
}
