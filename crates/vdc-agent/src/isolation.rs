//! Isolation response: a host whose server has been silent for a while
//! and whose isolation address does not answer either is cut off; it then
//! applies each running VM's isolation response (keep running, shut down,
//! power off). Stopping a VM releases its lease (its supervisor exits
//! cleanly), so the server — which sees the host isolated, its datastore
//! heartbeat going on — can restart it elsewhere.
//!
//! The address "answers" when a TCP connection to it gets any answer: an
//! accepted connection or a refusal (RST) both prove the path works; a
//! timeout or an unreachable network do not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdc_types::ha::IsolationResponse;
use vdc_types::VmPowerState;

use crate::agent::Agent;
use crate::config::Isolation;

/// Port tried on the isolation address (discard; any answer counts).
const PROBE_PORT: u16 = 9;
/// How long a probe waits for an answer.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// How long a shut-down guest has before it is powered off.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// What to do with one VM once the host is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Nothing.
    Keep,
    /// Shut the guest down.
    Shutdown,
    /// Power it off.
    PowerOff,
}

/// The act for a VM in `state` with `response` (pure).
pub(crate) fn act_for(state: VmPowerState, response: IsolationResponse) -> Act {
    if !state.has_process() {
        return Act::Keep;
    }
    match response {
        IsolationResponse::KeepRunning => Act::Keep,
        IsolationResponse::Shutdown => Act::Shutdown,
        IsolationResponse::PowerOff => Act::PowerOff,
    }
}

/// Whether the isolation address answers.
async fn address_answers(addr: std::net::IpAddr) -> bool {
    let target = std::net::SocketAddr::new(addr, PROBE_PORT);
    match tokio::time::timeout(PROBE_WAIT, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Err(_) => false,
    }
}

/// Watches the reporter's last success (`last_ok`: ms after `epoch`) and
/// applies the isolation responses once per outage. Runs forever.
pub(crate) async fn run(
    agent: Arc<Agent>,
    iso: Isolation,
    epoch: Instant,
    last_ok: Arc<AtomicU64>,
) {
    let mut responded = false;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let silent = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last_ok.load(Ordering::Relaxed)));
        if silent <= iso.after {
            responded = false;
            continue;
        }
        if responded || address_answers(iso.address).await {
            continue;
        }
        responded = true;
        tracing::warn!(silent_ms = silent.as_millis() as u64, address = %iso.address, "the server and the isolation address do not answer: this host is isolated; applying the VMs' isolation responses");
        let slots: Vec<_> = agent.vms().values().cloned().collect();
        for slot in slots {
            let (state, response) = {
                let inner = slot.inner();
                (inner.runtime.state, inner.config.ha.isolation_response)
            };
            let act = act_for(state, response);
            if act == Act::Keep {
                continue;
            }
            let agent = agent.clone();
            let id = slot.id.clone();
            tokio::spawn(async move {
                let r = match act {
                    Act::Shutdown => agent.shutdown(&id, SHUTDOWN_TIMEOUT).await,
                    _ => agent.power_off(&id).await,
                };
                match r {
                    Ok(_) => {
                        tracing::warn!(vm = %id, ?act, "isolation response applied; the VM's lease is released")
                    }
                    Err(e) => {
                        tracing::error!(vm = %id, ?act, error = %e, "cannot apply the isolation response")
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_vms_with_a_stopping_response_are_stopped() {
        use IsolationResponse as R;
        use VmPowerState as S;
        assert_eq!(act_for(S::Running, R::KeepRunning), Act::Keep);
        assert_eq!(act_for(S::Running, R::PowerOff), Act::PowerOff);
        assert_eq!(act_for(S::Paused, R::Shutdown), Act::Shutdown);
        assert_eq!(act_for(S::Stopped, R::PowerOff), Act::Keep);
        assert_eq!(act_for(S::Suspended, R::Shutdown), Act::Keep);
    }

    #[tokio::test]
    async fn a_refused_connection_counts_as_an_answer() {
        // Nothing listens on the discard port of the loopback here: the
        // kernel refuses, which proves the path.
        assert!(address_answers("127.0.0.1".parse().unwrap()).await);
    }
}
