//! Virtual switches: defined once for the cluster, realized on every host
//! by its agent (the desired state rides on the answer to each report, so
//! a restarted agent or a rebooted host converges within a second), and
//! the port groups (networks) on them.
//!
//! Store keys: `/switches/{name}` ([`Switch`], versioned). Port groups stay
//! under `/networks/{name}` (version 2 names its switch; version 1 records
//! are migrated in place when the server opens, see
//! [`rules::migrate_network`]).

pub mod rules;

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::switch::{
    DesiredSwitch, HostRealization, HostSwitchState, RealizationState, Switch, SwitchView,
    SWITCH_VERSION,
};
use vdc_types::{ApiError, Network};

use crate::{store_err, Cluster};

fn switch_key(name: &str) -> String {
    format!("/switches/{name}")
}

impl Cluster {
    /// Every switch.
    pub async fn list_switches(&self) -> Result<Vec<Switch>, ApiError> {
        let all: Vec<Switch> = self.list_values("/switches/").await?;
        for s in &all {
            if s.version > SWITCH_VERSION {
                return Err(ApiError::internal(format!(
                    "switch '{}' has format version {}; this server reads up to {SWITCH_VERSION}",
                    s.name, s.version
                )));
            }
        }
        Ok(all)
    }

    /// One switch.
    pub async fn get_switch(&self, name: &str) -> Result<Switch, ApiError> {
        self.store
            .get_json(&switch_key(name))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("Switch", name))
    }

    /// Every switch with its port groups and each host's realization.
    pub async fn switch_views(&self) -> Result<Vec<SwitchView>, ApiError> {
        let switches = self.list_switches().await?;
        let networks = self.list_networks().await?;
        let live = self.live.read().await;
        let mut hosts: Vec<(&String, &crate::HostLive)> =
            live.iter().filter(|(_, l)| l.connected).collect();
        hosts.sort_by_key(|(n, _)| *n);
        Ok(switches
            .into_iter()
            .map(|s| {
                let port_groups = networks
                    .iter()
                    .filter(|n| n.switch.as_deref() == Some(s.name.as_str()))
                    .map(|n| n.name.clone())
                    .collect();
                let hosts = hosts
                    .iter()
                    .map(|(h, l)| HostRealization {
                        host: (*h).clone(),
                        state: host_state(&l.report.switches, &s),
                    })
                    .collect();
                SwitchView {
                    switch: s,
                    port_groups,
                    hosts,
                }
            })
            .collect())
    }

    /// One switch with its port groups and each host's realization.
    pub async fn switch_view(&self, name: &str) -> Result<SwitchView, ApiError> {
        self.get_switch(name).await?;
        self.switch_views()
            .await?
            .into_iter()
            .find(|v| v.switch.name == name)
            .ok_or_else(|| ApiError::not_found("Switch", name))
    }

    /// Creates a switch; every host realizes it within a report period.
    pub async fn create_switch(&self, s: Switch) -> Result<Switch, ApiError> {
        let s = rules::normalize_switch(s).map_err(ApiError::invalid)?;
        if self.get_switch(&s.name).await.is_ok() {
            return Err(ApiError::new(
                vdc_types::ErrorCode::AlreadyExists,
                format!("switch '{}' already exists; choose another name", s.name),
            ));
        }
        if let Some(other) = self
            .list_switches()
            .await?
            .into_iter()
            .find(|o| o.bridge == s.bridge)
        {
            return Err(ApiError::new(
                vdc_types::ErrorCode::AlreadyExists,
                format!(
                    "bridge '{}' already belongs to switch '{}'; choose another --bridge",
                    s.bridge, other.name
                ),
            ));
        }
        self.create_unique(
            &switch_key(&s.name),
            &s,
            format!("switch '{}' already exists; choose another name", s.name),
        )
        .await?;
        self.events
            .publish(
                "switch.created",
                &s.name,
                format!("switch {} created", s.name),
                json!({"bridge": s.bridge, "kind": s.kind, "uplinks": s.uplinks}),
            )
            .await;
        Ok(s)
    }

    /// Deletes a switch without port groups. Hosts keep the bridge until
    /// it is removed by hand (a running VM's tap might still hang on it).
    pub async fn delete_switch(&self, name: &str) -> Result<(), ApiError> {
        self.get_switch(name).await?;
        let pgs: Vec<Network> = self
            .list_networks()
            .await?
            .into_iter()
            .filter(|n| n.switch.as_deref() == Some(name))
            .collect();
        if !pgs.is_empty() {
            let names: Vec<&str> = pgs.iter().map(|n| n.name.as_str()).collect();
            let vms: Vec<String> = self
                .list_vms()
                .await?
                .into_iter()
                .filter(|v| {
                    v.nics
                        .iter()
                        .any(|nic| names.contains(&nic.network.as_str()))
                })
                .map(|v| v.name)
                .collect();
            let used = if vms.is_empty() {
                String::new()
            } else {
                format!(", used by VM(s) {}", vms.join(", "))
            };
            return Err(ApiError::invalid_state(format!(
                "switch '{name}' has port group(s) {}{used}; delete them first",
                names.join(", ")
            )));
        }
        self.store
            .delete(&switch_key(name))
            .await
            .map_err(store_err)?;
        self.events
            .publish(
                "switch.deleted",
                name,
                format!("switch {name} deleted"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// What every host must realize (the answer to each agent report).
    pub async fn desired_switches(&self) -> Result<Vec<DesiredSwitch>, ApiError> {
        let switches = self.list_switches().await?;
        let networks = self.list_networks().await?;
        Ok(rules::desired(&switches, &networks))
    }

    /// The `existing` switch of `bridge`, created if it does not exist.
    pub(crate) async fn ensure_existing_switch(&self, bridge: &str) -> Result<Switch, ApiError> {
        if let Some(s) = self
            .list_switches()
            .await?
            .into_iter()
            .find(|s| s.bridge == bridge)
        {
            return Ok(s);
        }
        let s = rules::existing_switch(bridge);
        match self.store.create_json(&switch_key(&s.name), &s).await {
            Ok(_) | Err(vdc_store::StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(store_err(e)),
        }
        self.get_switch(&s.name).await
    }

    /// Migrates version-1 networks in place into port groups of the
    /// `existing` switch of their bridge (run when the server opens).
    pub(crate) async fn migrate_networks(&self) -> Result<(), ApiError> {
        let all: Vec<(String, Network)> = self
            .store
            .list_json("/networks/")
            .await
            .map_err(store_err)?;
        for (key, n) in all {
            if n.version == vdc_types::switch::NETWORK_VERSION && n.switch.is_some() {
                continue;
            }
            let m = rules::migrate_network(n).map_err(ApiError::internal)?;
            let sw = m.switch.clone().unwrap_or_default();
            self.ensure_existing_switch(&m.bridge).await?;
            self.store.put_json(&key, &m).await.map_err(store_err)?;
            tracing::info!(network = %m.name, switch = %sw, "network migrated into a port group");
        }
        Ok(())
    }

    /// Publishes `switch.host_state` for each switch whose state on `host`
    /// changed since its previous report (not for a host's first report
    /// after a server start: nothing is known to have changed).
    pub(crate) async fn note_switch_states(
        &self,
        host: &str,
        before: Option<&[HostSwitchState]>,
        now: &[HostSwitchState],
    ) {
        let Some(before) = before else {
            return;
        };
        for s in now {
            let old = before.iter().find(|b| b.switch == s.switch);
            if old.map(|o| (o.state, &o.detail, &o.uplinks))
                == Some((s.state, &s.detail, &s.uplinks))
            {
                continue;
            }
            let word = match s.state {
                RealizationState::Present => "present",
                RealizationState::Missing => "missing",
                RealizationState::Drift => "in drift",
            };
            self.events
                .publish(
                    "switch.host_state",
                    &s.switch,
                    match &s.detail {
                        Some(d) => format!("switch {} {word} on host {host}: {d}", s.switch),
                        None => format!("switch {} {word} on host {host}", s.switch),
                    },
                    json!({"host": host, "state": s.state, "detail": s.detail, "uplinks": s.uplinks}),
                )
                .await;
        }
    }

    /// Names of the switches `host` realizes now (`None`: the host reports
    /// no switches — an older agent, or one that has not had the server's
    /// first answer yet: not checked).
    pub(crate) fn realized_switches(report: &vdc_types::agent::HostReport) -> Option<Vec<String>> {
        if report.switches.is_empty() {
            return None;
        }
        Some(
            report
                .switches
                .iter()
                .filter(|s| s.state == RealizationState::Present)
                .map(|s| s.switch.clone())
                .collect(),
        )
    }
}

/// Fills in what a host needs to attach `nic` to port group `net`: its
/// bridge (the VLAN's bridge), switch and VLAN (refreshed at every start, failover and
/// migration, so a changed port group takes effect there).
pub fn attach(nic: &mut vdc_types::NicSpec, net: &Network) {
    nic.bridge = Some(net.bridge.clone());
    nic.switch = net.switch.clone();
    nic.vlan = net.vlan;
    nic.shaping = net.shaping;
    nic.outbound_shaping = net.outbound_shaping;
    nic.security = net.security;
}

/// The switches of a VM's port groups, once each.
pub fn switches_of(config: &vdc_types::VmConfig) -> Vec<String> {
    let mut s: Vec<String> = config
        .nics
        .iter()
        .filter_map(|n| n.switch.clone())
        .collect();
    s.sort();
    s.dedup();
    s
}

/// `host`'s state of switch `s` (missing when it did not report it).
fn host_state(reported: &[HostSwitchState], s: &Switch) -> HostSwitchState {
    reported
        .iter()
        .find(|r| r.switch == s.name)
        .cloned()
        .unwrap_or_else(|| HostSwitchState {
            switch: s.name.clone(),
            bridge: s.bridge.clone(),
            state: RealizationState::Missing,
            detail: Some("not reported by the host yet".into()),
            uplinks: Vec::new(),
        })
}
