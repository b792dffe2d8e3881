//! The lab: a whole vdc cluster on one Linux machine (`vdc lab up`).
//!
//! Why: every feature of vdc (HA, live migration, maintenance mode) needs
//! several hosts. The lab makes them out of network namespaces: each host is
//! a namespace with its own address and virtual switch (`vmbr0`), joined to
//! the others and to the root namespace by a lab bridge, running its own
//! `vdc agent`; the `vdc server` runs in the root namespace. Cutting a
//! host's veth, killing its agent or its QEMU processes is how tests inject
//! faults.
//!
//! Layout of the crate:
//! - [`plan`]: pure naming and addressing rules (unit-tested);
//! - [`ip`], [`net`]: the network, through the `ip` command;
//!   [`migration_net`]: the optional migration network;
//! - [`process`]: detached processes, liveness, termination;
//! - [`state`]: the versioned state file and the status view;
//! - [`lifecycle`]: `up`, `status`, `down`;
//! - [`fail`]: `fail HOST --kill|--isolate|--heal` (fault rehearsal);
//! - [`control_plane`]: `--control-plane N` (etcd members and servers);
//! - [`cli`]: the `vdc lab` subcommand.
//!
//! Everything needs root.

#![warn(missing_docs)]

pub mod cli;
pub mod control_plane;
pub mod error;
pub mod fail;
pub mod ip;
pub mod lifecycle;
pub mod migration_net;
pub mod net;
pub mod plan;
pub mod process;
pub mod sites;
pub mod state;
pub mod teardown;

pub use cli::{run, LabArgs, LabCommand};
pub use error::LabError;
pub use lifecycle::{client, read_token, status, up, LabSpec};
pub use state::{HostStatus, LabInfo, ServerStatus};
pub use teardown::{down, down_blocking};
