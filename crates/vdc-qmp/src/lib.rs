//! An async client for the QEMU Machine Protocol (QMP).
//!
//! QMP is a line-oriented JSON protocol on a unix socket. The QMP crates on
//! crates.io are stale, so vdc carries this small one. It does only what the
//! protocol needs and leaves the meaning of the commands to its callers.
//!
//! # How a session runs
//!
//! 1. [`Qmp::connect`] opens the socket and reads the greeting
//!    (`{"QMP": {"version": ..}}`), which tells the QEMU version.
//! 2. It sends `qmp_capabilities` to leave capabilities-negotiation mode;
//!    only then does QEMU accept commands and send events.
//! 3. A reader task takes the read half of the socket. Every reply carries
//!    the `id` its command was sent with; the reader looks the id up in a
//!    map of pending calls and hands the reply to the waiting caller through
//!    a oneshot channel, so any number of tasks may call
//!    [`Qmp::execute`] at once.
//! 4. Lines with an `event` member are asynchronous events (`STOP`,
//!    `RESUME`, `SHUTDOWN`, `MIGRATION`, …). The reader publishes them on a
//!    broadcast channel ([`Qmp::subscribe`]) in the order they arrive, so an
//!    event QEMU emits before a reply is seen by subscribers before the
//!    caller of that command gets its answer.
//! 5. When the socket closes (QEMU exited, or the connection broke), every
//!    pending call fails with [`QmpError::Disconnected`] and
//!    [`Qmp::closed`] resolves.

#![warn(missing_docs)]

mod client;
mod error;
mod types;

pub use client::{Qmp, DEFAULT_TIMEOUT, MAX_MESSAGE};
pub use error::QmpError;
pub use types::{MigrationInfo, MigrationRamStats, QmpEvent, QmpVersion, StatusInfo};
