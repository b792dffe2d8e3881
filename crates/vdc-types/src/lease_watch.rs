//! Lease watches (`PUT /agent/v1/lease-watches`): the server asks a
//! surviving host to start watching the leases of a suspect host's VMs as
//! soon as that host's reports stop, before it is judged failed, so that a
//! failover's start there waits only what is left of the lease's TTL.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The whole set of VM leases a host should watch; any other watch of that
/// host is dropped (an empty set drops them all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseWatchRequest {
    /// The VMs whose leases to watch.
    pub vms: Vec<LeaseWatchTarget>,
}

/// One VM whose lease to watch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct LeaseWatchTarget {
    /// VM id.
    pub id: String,
    /// VM name (for logs).
    pub name: String,
    /// Datastore of the VM's directory.
    pub datastore: String,
    /// The VM's directory, relative to the datastore.
    pub dir: String,
}

/// What a host has seen of one watched lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseWatchState {
    /// VM id.
    pub id: String,
    /// VM name.
    pub name: String,
    /// The host holding the lease, if one was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_host: Option<String>,
    /// Its generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// How long this host has seen it unchanged, milliseconds.
    pub unchanged_ms: u64,
}
