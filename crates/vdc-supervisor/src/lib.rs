//! `vdc vm-supervisor`: one small process per running VM, beside its QEMU,
//! that holds the VM's lease and fences QEMU when it cannot keep it.
//!
//! Why a process of its own: the lease must be renewed for as long as QEMU
//! runs, and QEMU must stop before anyone else may take the lease. If the
//! agent did it, an agent crash or freeze (SIGSTOP, a hung datastore call,
//! an upgrade) would either stop every VM or let their leases lapse while
//! they run. Container runtimes keep a shim per container for the same
//! reason. The agent starts the supervisor in its own session (like QEMU)
//! and finds it again by its pidfile after a restart.
//!
//! # Life of a supervisor
//! ```text
//!  spawned ──acquire lease──► Hello::Leased ──"qemu PID" on stdin──► Supervising
//!     │   (rules of vdc_disk::lock::rule;         │ EOF / launch timeout: release, exit
//!     │    may watch a stale lease for a TTL)     │
//!     └──► Hello::Locked / Failed, exit           ▼
//!  Supervising: renew every `renew_every` (lease I/O on its own thread)
//!     ├─ QEMU exits ─────────────────────────────► release the lease, exit
//!     ├─ deadline passes (last good renewal + TTL − margin), or the lease
//!     │  was taken ──► SIGKILL QEMU, write fence.json ──► (QEMU gone) exit,
//!     │                                                  lease left to expire
//!     └─ hand-over to a successor (control socket): renewals stop; the
//!        successor takes the lease at once (QEMU is killed when it does)
//! ```
//! With `--qemu-pid` (re-attaching to a QEMU whose supervisor died) the
//! supervisor starts in Supervising; if another host holds the lease (the
//! VM was taken over meanwhile) or it cannot take the lease, QEMU is
//! fenced at once.
//!
//! # Files in the VM's runtime directory (local to the host)
//! - `supervisor.pid`: its pid, to find it again.
//! - `sup.sock`: the control socket ([`ControlRequest`], one JSON
//!   line each way).
//! - `supervisor.log`: its log (the agent points stderr there).
//! - `fence.json`: [`FenceRecord`], why QEMU was stopped.
//!
//! # Modules
//! - [`client`]: the agent's side (spawn, attach, abort, find, control).
//! - `run`: the process itself; `control`: its stdin and control socket;
//!   `reaction`: what it does about each lease operation's outcome (pure).

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vdc_disk::LeaseTiming;

pub mod client;
mod control;
mod reaction;
mod run;

pub use run::run;

/// Subcommand name of the supervisor in the `vdc` binary.
pub const SUBCOMMAND: &str = "vm-supervisor";
/// Pidfile of the supervisor in the runtime directory.
pub const PID_FILE: &str = "supervisor.pid";
/// Control socket in the runtime directory.
pub const SOCKET_FILE: &str = "sup.sock";
/// Log of the supervisor in the runtime directory.
pub const LOG_FILE: &str = "supervisor.log";
/// Why QEMU was fenced, in the runtime directory.
pub const FENCE_FILE: &str = "fence.json";
/// Version of [`FenceRecord`].
pub const FENCE_VERSION: u32 = 1;
/// Longest line accepted on the control socket and the hello pipe.
pub const MAX_LINE: usize = 64 * 1024;

/// Flags of `vdc vm-supervisor` (hidden; the agent starts it).
#[derive(Debug, Clone, clap::Args)]
pub struct SupervisorArgs {
    /// Host name (the lease's holder host).
    #[arg(long)]
    pub host: String,
    /// VM id.
    #[arg(long)]
    pub vm_id: String,
    /// VM directory on its datastore (holds `vm.lock`).
    #[arg(long)]
    pub vm_dir: PathBuf,
    /// The VM's runtime directory on this host.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Lease TTL, milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub lease_ttl_ms: u64,
    /// Lease renewal interval, milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub lease_renew_ms: u64,
    /// Safety margin before the TTL at which QEMU is fenced, milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub lease_margin_ms: u64,
    /// Supervise this already running QEMU (re-attach) instead of waiting
    /// for `qemu PID` on stdin.
    #[arg(long)]
    pub qemu_pid: Option<u32>,
    /// How long to wait for the QEMU pid on stdin, seconds.
    #[arg(long, default_value_t = 180)]
    pub launch_timeout_s: u64,
    /// The lease as the agent already watched it (JSON of
    /// [`vdc_disk::lock::Seen`], on this host's monotonic clock): if it is
    /// still that state, the watch for a stale lease counts from then.
    #[arg(long)]
    pub lease_seen: Option<String>,
}

impl SupervisorArgs {
    /// The lease timing the flags give.
    pub fn timing(&self) -> LeaseTiming {
        LeaseTiming {
            ttl: Duration::from_millis(self.lease_ttl_ms),
            renew_every: Duration::from_millis(self.lease_renew_ms),
            margin: Duration::from_millis(self.lease_margin_ms),
        }
    }

    /// The earlier observation of the lease given with `--lease-seen`.
    pub fn lease_seen(&self) -> Result<Option<vdc_disk::lock::Seen>, SupervisorError> {
        self.lease_seen
            .as_deref()
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| SupervisorError::Config(format!("--lease-seen: {e}")))
            })
            .transpose()
    }
}

/// The supervisor's first (and only) line on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Hello {
    /// The lease is held.
    Leased {
        /// Its generation.
        generation: u64,
        /// How another host's lease was taken (`handed_over`, `stale`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        took_over: Option<String>,
    },
    /// Another host holds the lease and renews it.
    Locked {
        /// That host.
        holder_host: String,
        /// Generation seen last.
        generation: u64,
    },
    /// The lease could not be taken for another reason.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// What ended a VM's QEMU, by its supervisor's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceKind {
    /// The lease could not be renewed in time, or was taken: QEMU was
    /// killed so the VM never runs twice.
    Fenced,
    /// The successor named in a hand-over took the lease.
    HandedOver,
}

/// `fence.json`: why the supervisor stopped QEMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// Format version, [`FENCE_VERSION`].
    pub version: u32,
    /// What happened.
    pub kind: FenceKind,
    /// Why, for people.
    pub reason: String,
    /// When (Unix ms, this host's wall clock).
    pub at_ms: u64,
    /// Last lease generation this host wrote.
    pub generation: u64,
}

impl FenceRecord {
    /// Reads `fence.json` of a runtime directory (`None` if absent or not
    /// readable by this version).
    pub fn read(run_dir: &Path) -> Option<FenceRecord> {
        let bytes = std::fs::read(run_dir.join(FENCE_FILE)).ok()?;
        let rec: FenceRecord = serde_json::from_slice(&bytes).ok()?;
        (rec.version <= FENCE_VERSION).then_some(rec)
    }

    /// Removes `fence.json` of a runtime directory (before a new start).
    pub fn clear(run_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(run_dir.join(FENCE_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum ControlRequest {
    /// The lease and the supervisor's state.
    Status,
    /// Name `successor` in the lease and stop renewing: it may take the
    /// lease at once. The holder still fences at its deadline.
    HandOver {
        /// The host the VM moves to.
        successor: String,
    },
    /// Withdraw a hand-over (renew without a successor), if the lease is
    /// still ours.
    CancelHandOver,
}

/// The answer on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum ControlReply {
    /// The supervisor's state.
    Status(SupervisorStatus),
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// What a supervisor reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// Host name.
    pub host: String,
    /// Lease generation last written.
    pub generation: u64,
    /// Successor named, if handing over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// QEMU pid, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_pid: Option<u32>,
    /// Why QEMU was fenced, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
    /// Milliseconds left before the holder's fence deadline.
    pub deadline_in_ms: u64,
}

/// Why the supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Flags out of range.
    #[error("invalid supervisor flags: {0}")]
    Config(String),
    /// A file of the runtime directory cannot be written or read.
    #[error("cannot use {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor process cannot be started.
    #[error("cannot start the VM supervisor {program}")]
    Spawn {
        /// Program.
        program: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor said nothing, or nonsense, before its deadline.
    #[error("the VM supervisor gave no valid answer: {0}")]
    Protocol(String),
    /// The lease could not be taken or released.
    #[error("lease of the VM")]
    Lease(#[source] vdc_disk::DiskError),
    /// The supervisor refused a control request.
    #[error("the VM supervisor refused: {0}")]
    Refused(String),
}

impl SupervisorError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SupervisorError::Io { path, source }
    }
}

/// Writes `body` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines() {
        let h = Hello::Locked {
            holder_host: "h2".into(),
            generation: 3,
        };
        let line = serde_json::to_string(&h).unwrap();
        assert_eq!(
            line,
            r#"{"result":"locked","holder_host":"h2","generation":3}"#
        );
        assert_eq!(serde_json::from_str::<Hello>(&line).unwrap(), h);
        let r: ControlRequest =
            serde_json::from_str(r#"{"op":"hand_over","successor":"h3"}"#).unwrap();
        assert_eq!(
            r,
            ControlRequest::HandOver {
                successor: "h3".into()
            }
        );
    }

    #[test]
    fn fence_records_round_trip_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(FenceRecord::read(dir.path()), None);
        let rec = FenceRecord {
            version: FENCE_VERSION,
            kind: FenceKind::Fenced,
            reason: "lease not renewed".into(),
            at_ms: 1,
            generation: 9,
        };
        write_atomic(
            &dir.path().join(FENCE_FILE),
            &serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        assert_eq!(FenceRecord::read(dir.path()), Some(rec));
        FenceRecord::clear(dir.path()).unwrap();
        FenceRecord::clear(dir.path()).unwrap();
        assert_eq!(FenceRecord::read(dir.path()), None);
    }
}
