//! Live migration on the agent's side: the destination receives
//! (`incoming`), the source sends (`outgoing`), each an agent job the
//! server starts and follows; the convergence policy (`policy`) is pure.
//!
//! ```text
//!  destination (migrate_in job)           source (migrate_out job)
//!  ────────────────────────────           ────────────────────────
//!  taps, QEMU -incoming defer
//!  capabilities, migrate-incoming ──uri──► (server passes the uri)
//!  waiting for the stream                 capabilities, parameters, migrate
//!                                         pre-copy; policy: auto-converge,
//!                                           post-copy or higher limits
//!                                         pre-switchover (vCPUs stopped):
//!                                           lease hand-over names the
//!                                           destination, migrate-continue
//!  MIGRATION completed: the guest runs ◄── device state, completed
//!  at once (no server round trip);
//!  announce-self; a supervisor takes
//!  the lease handed over ────────────────► the source's supervisor sees it
//!                                           and kills the old QEMU
//! ```
//!
//! Failure or cancel before the switchover: the destination's QEMU is
//! killed, its taps, slot and runtime directory removed; the source cancels
//! the stream (`migrate_cancel`), withdraws a hand-over and keeps running.

mod incoming;
mod outgoing;
pub mod policy;

/// Capabilities set the same on both sides (`postcopy-ram` when allowed).
pub(crate) fn common_capabilities(allow_postcopy: bool) -> Vec<(&'static str, bool)> {
    vec![
        ("events", true),
        ("return-path", true),
        ("postcopy-ram", allow_postcopy),
    ]
}
