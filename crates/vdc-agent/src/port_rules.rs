//! The security policy and outbound shaping of the NICs running here,
//! enforced on their taps (`vdc_net::ports`): recomputed from the VMs'
//! configurations by the switch reconciler at every pass, applied when it
//! changed or when the table went missing (a host reboot, an administrator's
//! `nft flush ruleset`). A start, a hot plug or an incoming migration wakes
//! the reconciler at once ([`Agent::ports_changed`]).

use std::sync::Mutex;

use vdc_net::ports::PortPolicy;

use crate::agent::Agent;

/// The last ruleset applied (`None`: none yet).
#[derive(Default)]
pub(crate) struct PortRules {
    applied: Mutex<Option<String>>,
}

impl Agent {
    /// The policies of every NIC whose tap exists here.
    fn port_policies(&self) -> Vec<PortPolicy> {
        let slots: Vec<_> = self.vms().values().cloned().collect();
        let mut out = Vec::new();
        for slot in slots {
            let inner = slot.inner();
            let config = &inner.config;
            for (i, nic) in config.nics.iter().enumerate() {
                let tap = crate::power::nic_tap(&config.id, &config.nics, i);
                if !inner.taps.contains(&tap) {
                    continue;
                }
                out.push(PortPolicy {
                    tap,
                    mac: nic.mac.clone(),
                    forged_transmits: nic.security.is_none_or(|s| s.forged_transmits),
                    outbound: nic.outbound_shaping,
                });
            }
        }
        out.sort_by(|a, b| a.tap.cmp(&b.tap));
        out
    }

    /// Applies the port rules when they changed or went missing.
    pub(crate) async fn reconcile_port_rules(&self) {
        let policies = self.port_policies();
        let script = vdc_net::ports::ruleset(&policies);
        let last = self
            .port_rules
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let needed = policies.iter().any(|p| p.restricts());
        let fresh = match &last {
            Some(l) if *l == script => !needed || vdc_net::ports::present().await,
            Some(_) => false,
            // Nothing applied yet and nothing to apply: leave nft alone
            // (a host without nftables runs VMs without policies).
            None => !needed,
        };
        if fresh {
            return;
        }
        match vdc_net::ports::apply(&script).await {
            Ok(()) => {
                tracing::info!(
                    ports = policies.iter().filter(|p| p.restricts()).count(),
                    "port rules applied"
                );
                *self
                    .port_rules
                    .applied
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(script);
            }
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "cannot apply the port rules (security policy, outbound shaping)");
            }
        }
    }

    /// A NIC came or went: reconcile the port rules now.
    pub(crate) fn ports_changed(&self) {
        self.switches.wake();
    }
}
