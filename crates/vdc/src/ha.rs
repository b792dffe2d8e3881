//! `vdc ha status`: the HA settings, the failover capacity and each host's
//! HA state with the ages of its two heartbeats.

use vdc_types::ha::HaStatus;

use crate::commands::{out, out_json, word, Ctx};
use crate::error::CliError;
use crate::format::{mib, Table};

/// `vdc ha status`.
pub(crate) async fn ha_status(ctx: &Ctx) -> Result<(), CliError> {
    let st = ctx.client.ha_status().await?;
    if ctx.json() {
        return out_json(&st);
    }
    let raised = ctx
        .client
        .list_alarms()
        .await?
        .iter()
        .filter(|a| a.cleared_ms.is_none())
        .count();
    let groups = ctx.client.list_ha_groups().await?.len();
    out(&format!(
        "{}\norder groups: {groups} (vdc ha group list); alarms raised: {raised} (vdc alarm list)\n",
        ha_text(&st)
    ))
}

/// `vdc ha set --tolerate-host-failures N`.
pub(crate) async fn ha_set(ctx: &Ctx, tolerate: u32) -> Result<(), CliError> {
    let p = ctx
        .client
        .set_ha_policy(&vdc_types::ha::SetHaPolicyRequest {
            tolerate_host_failures: tolerate,
        })
        .await?;
    if ctx.json() {
        return out_json(&p);
    }
    out(&format!(
        "admission control: tolerate {} host failure(s)\n",
        p.tolerate_host_failures
    ))
}

fn age(ms: Option<u64>) -> String {
    ms.map(|m| format!("{:.1}s", m as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// The status as text: settings, then a table of hosts.
pub fn ha_text(st: &HaStatus) -> String {
    let mut s = format!(
        "restarts: {}\nnetwork timeout: {} ms\ndatastore timeout: {} ms\nadmission control: tolerate {} host failure(s) ({})\nfailures tolerated now: {} (protected VMs: {})\nfailover capacity: {}\n\n",
        if st.enabled { "enabled" } else { "disabled" },
        st.network_timeout_ms,
        st.datastore_timeout_ms,
        st.tolerate_host_failures,
        if st.tolerate_host_failures == 0 { "off" } else { "on" },
        st.tolerated_failures_now,
        mib(st.protected_mib),
        mib(st.failover_capacity_mib)
    );
    let mut t = Table::new(&[
        "HOST",
        "HA-STATE",
        "NETWORK-HB",
        "DATASTORE-HB",
        "FREE",
        "LEASES-WATCHED-BY",
    ]);
    for h in &st.hosts {
        t.row(vec![
            h.name.clone(),
            word(&h.state),
            age(h.network_heartbeat_age_ms),
            age(h.datastore_heartbeat_age_ms),
            mib(h.memory_free_mib),
            if h.lease_watchers.is_empty() {
                "-".into()
            } else {
                h.lease_watchers.join(",")
            },
        ]);
    }
    s.push_str(&t.render());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::ha::{HaHost, HaHostState};

    #[test]
    fn the_status_shows_each_host_and_both_heartbeat_ages() {
        let st = HaStatus {
            enabled: true,
            network_timeout_ms: 2500,
            datastore_timeout_ms: 2500,
            failover_capacity_mib: 2048,
            tolerate_host_failures: 1,
            tolerated_failures_now: 2,
            protected_mib: 256,
            hosts: vec![HaHost {
                name: "host-2".into(),
                state: HaHostState::IsolatedOrPartitioned,
                network_heartbeat_age_ms: Some(7300),
                datastore_heartbeat_age_ms: Some(400),
                memory_free_mib: 0,
                lease_watchers: vec!["host-1".into(), "host-3".into()],
            }],
        };
        let text = ha_text(&st);
        assert!(text.contains("network timeout: 2500 ms"), "{text}");
        assert!(text.contains("tolerate 1 host failure(s) (on)"), "{text}");
        assert!(text.contains("isolated_or_partitioned"), "{text}");
        assert!(text.contains("7.3s") && text.contains("0.4s"), "{text}");
        assert!(
            text.contains("LEASES-WATCHED-BY") && text.contains("host-1,host-3"),
            "{text}"
        );
    }
}
