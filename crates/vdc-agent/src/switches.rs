//! Realizing the cluster's switches on this host.
//!
//! The server answers each report with the switches every host must have
//! ([`ReportAnswer`]); [`Switches::desire`] keeps the latest answer and
//! wakes [`run`], which realizes each switch (`vdc_net::switch::realize`)
//! when the desired set changed and every [`PERIOD`] otherwise, so a
//! restarted agent or a rebooted host recreates what is missing and
//! reports drift. VM taps are never touched: only bridges and uplinks.
//! The states go into the next report. Each pass also reconciles the
//! NICs' port rules (`port_rules`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use vdc_types::switch::{DesiredSwitch, HostSwitchState, ReportAnswer};

use crate::agent::Agent;

/// Reconcile period when nothing changed.
const PERIOD: Duration = Duration::from_secs(5);

/// Desired and realized switches of this host.
#[derive(Default)]
pub(crate) struct Switches {
    desired: Mutex<Option<Vec<DesiredSwitch>>>,
    states: Mutex<Vec<HostSwitchState>>,
    wake: Notify,
}

impl Switches {
    /// Takes the server's answer; wakes the reconciler when it changed.
    pub(crate) fn desire(&self, answer: ReportAnswer) {
        let mut d = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        if d.as_ref() != Some(&answer.switches) {
            *d = Some(answer.switches);
            self.wake.notify_one();
        }
    }

    /// Wakes the reconciler (a NIC came or went).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The states to report.
    pub(crate) fn states(&self) -> Vec<HostSwitchState> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Runs forever.
pub(crate) async fn run(agent: Arc<Agent>) {
    loop {
        let desired = agent
            .switches
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(desired) = desired {
            let mut states = Vec::with_capacity(desired.len());
            for d in &desired {
                let (state, repaired) = vdc_net::switch::realize(d).await;
                if !repaired.is_empty() {
                    tracing::info!(switch = %d.name, bridge = %d.bridge, steps = ?repaired, "switch realized");
                }
                states.push(state);
            }
            let changed = {
                let mut s = agent
                    .switches
                    .states
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let changed = *s != states;
                *s = states;
                changed
            };
            if changed {
                agent.changed.notify_one();
            }
        }
        agent.reconcile_port_rules().await;
        let _ = tokio::time::timeout(PERIOD, agent.switches.wake.notified()).await;
    }
}
