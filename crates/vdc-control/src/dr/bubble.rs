//! A test run's isolated network ("bubble"): a switch without uplinks
//! ([`vdc_dr::plan::bubble_switch`]) and, for each mapped network, a port
//! group on it with the recovery network's subnet and pool, so the test
//! clones keep their production addresses and reach only each other.
//! Cleanup removes the port groups, then the switch.

use vdc_dr::plan::{bubble_switch, test_network};
use vdc_dr::Plan;
use vdc_types::switch::{RealizationState, Switch, SwitchKind};
use vdc_types::{ApiError, ErrorCode, Network};

use crate::Cluster;

/// Longest wait for the hosts to realize the bubble's switch.
const REALIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Cluster {
    /// Creates the bubble of `plan` (what exists already is kept).
    pub(super) async fn build_bubble(&self, plan: &Plan) -> Result<String, ApiError> {
        let (sw, bridge) = bubble_switch(&plan.name);
        if self.get_switch(&sw).await.is_err() {
            self.create_switch(Switch {
                version: 0,
                name: sw.clone(),
                bridge,
                kind: SwitchKind::default(),
                uplinks: vec![],
            })
            .await?;
        }
        let mut made = Vec::new();
        for m in &plan.networks {
            let name = test_network(&plan.name, m);
            if self.get_network(&name).await.is_ok() {
                continue;
            }
            let rec = self.get_network(&m.recovery).await?;
            self.create_network(Network {
                name: name.clone(),
                bridge: String::new(),
                subnet: rec.subnet,
                gateway: rec.gateway,
                pool_start: rec.pool_start,
                pool_end: rec.pool_end,
                version: 0,
                switch: Some(sw.clone()),
                vlan: None,
                shaping: None,
                outbound_shaping: None,
                security: None,
            })
            .await?;
            made.push(name);
        }
        // The clones are placed only on hosts that realize the switch:
        // wait until every connected host has it (agents report every
        // second and realize it from the answer).
        let deadline = tokio::time::Instant::now() + REALIZE_WAIT;
        loop {
            let v = self.switch_view(&sw).await?;
            if !v.hosts.is_empty()
                && v.hosts
                    .iter()
                    .all(|h| h.state.state == RealizationState::Present)
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    format!(
                        "the hosts did not realize switch {sw} within {} s; see `vdc switch show {sw}`",
                        REALIZE_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        Ok(format!(
            "isolated switch {sw} with port group(s) {}, realized on every host",
            made.join(", ")
        ))
    }

    /// Removes the bubble of `plan` (what is gone already is fine).
    pub(super) async fn remove_bubble(&self, plan: &Plan) -> Result<String, ApiError> {
        let (sw, _) = bubble_switch(&plan.name);
        let mut gone = Vec::new();
        for m in &plan.networks {
            let name = test_network(&plan.name, m);
            match self.delete_network(&name).await {
                Ok(()) => gone.push(name),
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        match self.delete_switch(&sw).await {
            Ok(()) => gone.push(sw),
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(if gone.is_empty() {
            "nothing left to remove".into()
        } else {
            format!("removed {}", gone.join(", "))
        })
    }
}
