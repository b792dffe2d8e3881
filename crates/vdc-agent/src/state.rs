//! The power state machine of one VM as its host sees it.
//!
//! ```text
//!            Launch            Launched
//!  Stopped ──────────► Starting ───────► Running ◄──── Resumed ──── Paused
//!  Suspended ────┘        │ LaunchFailed    │  │ │ Paused ─────────────▲
//!                         ▼                 │  │ └ PowerdownRequested ─► ShuttingDown
//!                 (previous state)          │  └ SuspendStarted ─► Suspending
//!                                           │                        │ SuspendDone
//!                                           │                        ▼
//!       Exited{expected} ─► Stopped         │                    Suspended
//!       Exited{!expected} ─► Crashed ◄──────┘ (any state with a process)
//! ```
//!
//! A cancelled shutdown (`ShutdownCancelled`) takes `ShuttingDown` back to
//! `Running` (or `Paused` when the vCPUs were stopped).
//!
//! A guest reset keeps the VM running (it is a `RESET` event inside the same
//! QEMU process). An exit is "expected" when the administrator asked for
//! it (shutdown, power off) or the guest powered itself off (a `SHUTDOWN`
//! event with `guest: true`); any other exit is a crash. The transition
//! function is pure so that every edge is unit-tested.

use vdc_types::VmPowerState;

/// Something that happened to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The agent starts launching QEMU.
    Launch,
    /// QEMU runs the guest (fresh boot or resumed from a state file).
    Launched,
    /// Launching failed; the VM returns to `previous`.
    LaunchFailed {
        /// State before the launch (stopped or suspended).
        previous: VmPowerState,
    },
    /// vCPUs stopped (`STOP` event or a pause request).
    Paused,
    /// vCPUs run again (`RESUME` event or a resume request).
    Resumed,
    /// The guest rebooted (`RESET`).
    Reset,
    /// ACPI power button pressed (a shutdown request or `POWERDOWN`).
    PowerdownRequested,
    /// Suspend to the state file began.
    SuspendStarted,
    /// The state file is complete and QEMU is gone.
    SuspendDone,
    /// Suspending failed and QEMU still runs, with vCPUs `running` or not.
    SuspendFailed {
        /// Whether the vCPUs run.
        running: bool,
    },
    /// A shutdown was cancelled before the guest powered off; the vCPUs
    /// are `running` or not.
    ShutdownCancelled {
        /// Whether the vCPUs run.
        running: bool,
    },
    /// The QEMU process is gone.
    Exited {
        /// Asked for (shutdown, power off, guest power-off).
        expected: bool,
    },
}

/// The state after `input` in state `state`. Inputs that make no sense in
/// a state (a late `STOP` event after an exit, …) leave it unchanged.
pub fn next(state: VmPowerState, input: Input) -> VmPowerState {
    use Input as I;
    use VmPowerState as S;
    match (state, input) {
        (S::Stopped | S::Suspended | S::Crashed | S::Unknown, I::Launch) => S::Starting,
        (S::Starting, I::Launched) => S::Running,
        (S::Starting, I::LaunchFailed { previous }) => previous,
        (S::Running | S::ShuttingDown, I::Paused) => S::Paused,
        (S::Paused, I::Resumed) => S::Running,
        (S::Running | S::Paused, I::Reset) => S::Running,
        (S::Running | S::Paused, I::PowerdownRequested) => S::ShuttingDown,
        (S::Running | S::Paused, I::SuspendStarted) => S::Suspending,
        (S::Suspending, I::SuspendDone) => S::Suspended,
        (S::Suspending, I::SuspendFailed { running }) => {
            if running {
                S::Running
            } else {
                S::Paused
            }
        }
        (S::ShuttingDown, I::ShutdownCancelled { running }) => {
            if running {
                S::Running
            } else {
                S::Paused
            }
        }
        // While suspending, QEMU's exit is the normal end of it; the
        // suspend operation decides the final state.
        (S::Suspending, I::Exited { .. }) => S::Suspending,
        (s, I::Exited { expected }) if s.has_process() => {
            if expected {
                S::Stopped
            } else {
                S::Crashed
            }
        }
        (s, _) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Input as I;
    use VmPowerState as S;

    #[test]
    fn boot_pause_resume_shutdown() {
        let mut s = S::Stopped;
        for (input, want) in [
            (I::Launch, S::Starting),
            (I::Launched, S::Running),
            (I::Paused, S::Paused),
            (I::Resumed, S::Running),
            (I::Reset, S::Running),
            (I::PowerdownRequested, S::ShuttingDown),
            (I::Exited { expected: true }, S::Stopped),
        ] {
            s = next(s, input);
            assert_eq!(s, want, "after {input:?}");
        }
    }

    #[test]
    fn a_cancelled_shutdown_returns_to_the_run_state() {
        let s = next(S::Running, I::PowerdownRequested);
        assert_eq!(next(s, I::ShutdownCancelled { running: true }), S::Running);
        assert_eq!(next(s, I::ShutdownCancelled { running: false }), S::Paused);
        // Too late: the VM already stopped.
        assert_eq!(
            next(S::Stopped, I::ShutdownCancelled { running: true }),
            S::Stopped
        );
    }

    #[test]
    fn suspend_and_resume_from_state_file() {
        let s = next(S::Running, I::SuspendStarted);
        assert_eq!(s, S::Suspending);
        // QEMU exits at the end of the migration to file: still suspending.
        assert_eq!(next(s, I::Exited { expected: false }), S::Suspending);
        let s = next(s, I::SuspendDone);
        assert_eq!(s, S::Suspended);
        assert_eq!(next(s, I::Launch), S::Starting);
        assert_eq!(
            next(
                S::Starting,
                I::LaunchFailed {
                    previous: S::Suspended
                }
            ),
            S::Suspended
        );
        assert_eq!(
            next(S::Suspending, I::SuspendFailed { running: true }),
            S::Running
        );
        assert_eq!(
            next(S::Suspending, I::SuspendFailed { running: false }),
            S::Paused
        );
    }

    #[test]
    fn unexpected_exit_is_a_crash() {
        for s in [S::Running, S::Paused, S::Starting] {
            assert_eq!(next(s, I::Exited { expected: false }), S::Crashed, "{s}");
        }
        assert_eq!(
            next(S::ShuttingDown, I::Exited { expected: true }),
            S::Stopped
        );
        // Late events after the process is gone change nothing.
        for input in [
            I::Paused,
            I::Resumed,
            I::Reset,
            I::Exited { expected: false },
        ] {
            assert_eq!(next(S::Stopped, input), S::Stopped);
            assert_eq!(next(S::Crashed, input), S::Crashed);
        }
        assert_eq!(next(S::Crashed, I::Launch), S::Starting);
    }

    #[test]
    fn running_vm_cannot_be_launched_again() {
        assert_eq!(next(S::Running, I::Launch), S::Running);
        assert_eq!(next(S::Stopped, I::Launched), S::Stopped);
    }
}
