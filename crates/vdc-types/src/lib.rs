//! Domain and API types shared by the vdc server, agents and clients.
//!
//! Everything that crosses a process boundary (REST API, agent API, events,
//! records in the store, the VM configuration file on a datastore) is defined
//! here, so that server, agent and CLI cannot disagree on a field name.
//! Field names are part of the public API: renaming one is a breaking change.

pub mod agent;
pub mod api;
pub mod auth;
pub mod backup;
pub mod clone;
pub mod control_plane;
pub mod error;
pub mod event;
pub mod ha;
pub mod ha_group;
pub mod host;
pub mod job;
pub mod lease_watch;
pub mod lifecycle;
pub mod limits;
pub mod migration;
pub mod names;
pub mod nic;
pub mod ova;
pub mod replication;
pub mod site;
pub mod snapshot;
pub mod switch;
pub mod task;
pub mod transfer;
pub mod vm;

pub use error::{ApiError, ErrorCode};
pub use event::Event;
pub use host::{
    Accelerator, CpuBaseline, Datastore, DatastoreKind, DiskCacheMode, Host, HostCpuFit, HostState,
    MaintenanceState, Network,
};
pub use lifecycle::{InFlight, VmAction, VmOperation};
pub use task::{Step, Task, TaskJournal, TaskParams, TaskState, TaskStep};
pub use vm::{DiskSpec, GuestInfo, NicSpec, Vm, VmConfig, VmPowerState};

/// Milliseconds since the Unix epoch; the one time format of the API.
pub type UnixMillis = u64;

/// The current time in [`UnixMillis`].
pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// TCP port of the guest image's identity service (see `guest/README.md`).
pub const GUEST_SERVICE_PORT: u16 = 7777;

/// Name of the virtio-serial port the guest uses to report to the host.
pub const GUEST_CHANNEL_NAME: &str = "org.vdc.guest.0";
/// Name of the QEMU guest agent's virtio-serial port (the name every QEMU
/// guest agent looks for).
pub const GUEST_AGENT_CHANNEL_NAME: &str = "org.qemu.guest_agent.0";
