//! VM monitoring: a running guest that sent heartbeats and then stopped
//! for longer than the timeout is hung; the agent resets it (QMP
//! `system_reset`), at most `max` times per window per VM. The reset count
//! and its reason go into the VM's report (`VmRuntime.monitor_resets`,
//! `monitor_reason`); the server publishes each new one as `ha.vm_reset`.
//!
//! The rule is pure ([`decide`]); times are this host's own clock (the
//! heartbeat's arrival time and now), never another host's.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use vdc_types::VmPowerState;

use crate::agent::Agent;

/// VM monitoring settings (`vdc agent --vm-monitor-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmMonitoring {
    /// Heartbeat silence after which a guest counts as hung.
    pub timeout: Duration,
    /// Most resets per VM within `window`.
    pub max_resets: u32,
    /// The window.
    pub window: Duration,
}

/// What the monitor sees of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Power state.
    pub state: VmPowerState,
    /// Arrival of its last heartbeat (ms, this host's clock), if any came.
    pub last_heartbeat_ms: Option<u64>,
    /// Its last reset by the monitor (ms), if any.
    pub last_reset_ms: Option<u64>,
    /// Resets by the monitor within the window.
    pub resets_in_window: u32,
}

/// The verdict on one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Healthy, not monitored, or waiting for its reboot.
    Fine,
    /// Hung: reset it.
    Reset {
        /// How long its heartbeat has been silent.
        silent_ms: u64,
    },
    /// Hung, but the reset budget of the window is spent.
    OutOfResets,
}

/// Decides on one VM at `now_ms` (pure).
pub(crate) fn decide(s: &Seen, now_ms: u64, m: &VmMonitoring) -> Verdict {
    if s.state != VmPowerState::Running {
        return Verdict::Fine;
    }
    let Some(hb) = s.last_heartbeat_ms else {
        return Verdict::Fine;
    };
    // After a reset, the guest gets a timeout from the reset to report
    // again (it reboots).
    let since = s.last_reset_ms.map_or(hb, |r| r.max(hb));
    let silent = now_ms.saturating_sub(since);
    if silent <= m.timeout.as_millis() as u64 {
        return Verdict::Fine;
    }
    if s.resets_in_window >= m.max_resets {
        return Verdict::OutOfResets;
    }
    Verdict::Reset {
        silent_ms: now_ms.saturating_sub(hb),
    }
}

/// Runs forever: every second, decides on each VM and resets hung ones.
pub(crate) async fn run(agent: Arc<Agent>, m: VmMonitoring) {
    let mut resets: HashMap<String, VecDeque<u64>> = HashMap::new();
    let mut told_out: HashMap<String, u64> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = vdc_types::now_ms();
        let slots: Vec<_> = agent.vms().values().cloned().collect();
        for slot in slots {
            let (state, hb) = {
                let inner = slot.inner();
                (inner.runtime.state, inner.runtime.guest.last_heartbeat_ms)
            };
            let past = resets.entry(slot.id.clone()).or_default();
            while past
                .front()
                .is_some_and(|t| now.saturating_sub(*t) > m.window.as_millis() as u64)
            {
                past.pop_front();
            }
            let seen = Seen {
                state,
                last_heartbeat_ms: hb,
                last_reset_ms: past.back().copied(),
                resets_in_window: past.len() as u32,
            };
            match decide(&seen, now, &m) {
                Verdict::Fine => {}
                Verdict::OutOfResets => {
                    if told_out.get(&slot.id) != past.back() {
                        tracing::warn!(vm = %slot.id, "guest heartbeat stopped but the VM was already reset {} times in the window; not resetting", past.len());
                        told_out.insert(slot.id.clone(), past.back().copied().unwrap_or(0));
                    }
                }
                Verdict::Reset { silent_ms } => {
                    past.push_back(now);
                    let reason = format!(
                        "no guest heartbeat for {silent_ms} ms (timeout {} ms): reset {} of at most {} per {} s",
                        m.timeout.as_millis(),
                        past.len(),
                        m.max_resets,
                        m.window.as_secs()
                    );
                    tracing::warn!(vm = %slot.id, %reason, "resetting a hung guest");
                    {
                        let mut inner = slot.inner();
                        inner.runtime.monitor_resets += 1;
                        inner.runtime.monitor_reason = Some(reason);
                    }
                    if let Err(e) = agent.reset(&slot.id).await {
                        tracing::error!(vm = %slot.id, error = %e, "cannot reset the hung guest");
                    }
                    agent.changed.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: VmMonitoring = VmMonitoring {
        timeout: Duration::from_secs(10),
        max_resets: 2,
        window: Duration::from_secs(3600),
    };

    fn seen(hb: Option<u64>, reset: Option<u64>, n: u32) -> Seen {
        Seen {
            state: VmPowerState::Running,
            last_heartbeat_ms: hb,
            last_reset_ms: reset,
            resets_in_window: n,
        }
    }

    #[test]
    fn a_silent_guest_is_reset_within_its_budget() {
        assert_eq!(decide(&seen(Some(0), None, 0), 10_000, &M), Verdict::Fine);
        assert_eq!(
            decide(&seen(Some(0), None, 0), 10_001, &M),
            Verdict::Reset { silent_ms: 10_001 }
        );
        // Just reset: it has a timeout to boot and report again.
        assert_eq!(
            decide(&seen(Some(0), Some(10_001), 1), 15_000, &M),
            Verdict::Fine
        );
        assert!(matches!(
            decide(&seen(Some(0), Some(10_001), 1), 20_002, &M),
            Verdict::Reset { .. }
        ));
        assert_eq!(
            decide(&seen(Some(0), Some(20_002), 2), 40_000, &M),
            Verdict::OutOfResets
        );
    }

    #[test]
    fn guests_without_heartbeats_or_not_running_are_not_monitored() {
        assert_eq!(decide(&seen(None, None, 0), 99_000, &M), Verdict::Fine);
        let mut s = seen(Some(0), None, 0);
        s.state = VmPowerState::Paused;
        assert_eq!(decide(&s, 99_000, &M), Verdict::Fine);
    }
}
