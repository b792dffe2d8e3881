//! Live migration on the agent's side: the destination receives
//! (`incoming`), the source sends (`outgoing`), each an agent job the
//! server starts and follows; the convergence policy (`policy`) is pure;
//! `tls` arms QEMU's TLS for the stream when the server asks for it.
//!
//! ```text
//!  destination (migrate_in job)           source (migrate_out job)
//!  ────────────────────────────           ────────────────────────
//!  taps, QEMU -incoming defer
//!  capabilities, migrate-incoming ──uri──► (server passes the uri)
//!  waiting for the stream                 capabilities, parameters, migrate
//!                                         pre-copy; policy: auto-converge,
//!                                           post-copy or higher limits
//!  MIGRATION completed: the guest runs ◄── vCPUs stopped, device state,
//!  at once (no server round trip);          completed; then the lease
//!  announce-self; waits until the lease     hand-over names the
//!  names it, a supervisor takes it ──────►  destination; the source's
//!                                           supervisor sees it taken and
//!                                           kills the old QEMU
//! ```
//!
//! Failure or cancel before the switchover: the destination's QEMU is
//! killed, its taps, slot and runtime directory removed; the source cancels
//! the stream (`migrate_cancel`) and keeps running.

mod incoming;
mod incoming_storage;
mod outgoing;
mod outgoing_storage;
pub mod policy;
mod tls;

pub(crate) use incoming_storage::INCOMING_STORAGE_MARK;

/// Capabilities set the same on both sides (`postcopy-ram` when allowed).
pub(crate) fn common_capabilities(allow_postcopy: bool) -> Vec<(&'static str, bool)> {
    vec![
        ("events", true),
        ("return-path", true),
        ("postcopy-ram", allow_postcopy),
    ]
}
