//! The QEMU driver: one VM is one QEMU process.
//!
//! - [`host`]: which QEMU binary and version, which accelerator
//!   ([`detect_accelerator`]).
//! - [`spec`]: what to run ([`MachineSpec`]), where its files live
//!   ([`VmPaths`]) and the resulting command line ([`command_line`], pure).
//! - [`vm`]: a running QEMU ([`Vm`]): launch detached from the caller,
//!   re-attach after an agent restart, power operations, suspend to a file
//!   and resume from it. Power state is announced by QMP events
//!   ([`Vm::events`]).
//! - [`guest`]: the guest channel, heartbeats from the guest image
//!   ([`GuestChannel`], [`spawn_guest_channel`]).
//! - [`qga`]: the QEMU guest agent channel: quiesce ([`qga::freeze`],
//!   [`qga::thaw`]) and a new identity for a guest.
//! - [`snapshot`]: external qcow2 overlays taken, merged and reverted,
//!   memory state to and from a file.
//! - [`hotplug`]: NICs plugged into and unplugged from a running VM.
//! - [`process`]: watching and signalling a process by pidfd (QEMU, and
//!   the VM supervisor beside it).
//! - [`tail_file`]: the end of the serial console log.

#![warn(missing_docs)]

mod error;
pub mod fleece;
pub mod guest;
pub mod host;
pub mod hotplug;
mod log;
pub mod mirror;
pub mod nbd;
pub mod process;
pub mod qga;
pub mod replicate;
pub mod snapshot;
pub mod spec;
pub mod vm;

pub use error::QemuError;
pub use guest::{parse_heartbeat, spawn_guest_channel, GuestChannel, Heartbeat};
pub use host::{
    choose_accelerator, detect_accelerator, qemu_binary, qemu_models, qemu_version, QemuModels,
};
pub use log::tail_file;
pub use mirror::{MirrorError, MirrorProgress};
pub use nbd::NbdMirror;
pub use spec::{command_line, DriveSpec, Incoming, MachineSpec, NicDevice, VmPaths};
pub use vdc_qmp::{MigrationInfo, Qmp, QmpError, QmpEvent};
pub use vdc_types::Accelerator;
pub use vm::{running_pid, RunState, ShutdownOutcome, Vm};
