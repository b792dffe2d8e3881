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
    out(&ha_text(&st))
}

fn age(ms: Option<u64>) -> String {
    ms.map(|m| format!("{:.1}s", m as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// The status as text: settings, then a table of hosts.
pub fn ha_text(st: &HaStatus) -> String {
    let mut s = format!(
        "restarts: {}\nnetwork timeout: {} ms\ndatastore timeout: {} ms\nfailover capacity: {}\n\n",
        if st.enabled { "enabled" } else { "disabled" },
        st.network_timeout_ms,
        st.datastore_timeout_ms,
        mib(st.failover_capacity_mib)
    );
    let mut t = Table::new(&["HOST", "HA-STATE", "NETWORK-HB", "DATASTORE-HB", "FREE"]);
    for h in &st.hosts {
        t.row(vec![
            h.name.clone(),
            word(&h.state),
            age(h.network_heartbeat_age_ms),
            age(h.datastore_heartbeat_age_ms),
            mib(h.memory_free_mib),
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
            hosts: vec![HaHost {
                name: "host-2".into(),
                state: HaHostState::IsolatedOrPartitioned,
                network_heartbeat_age_ms: Some(7300),
                datastore_heartbeat_age_ms: Some(400),
                memory_free_mib: 0,
            }],
        };
        let text = ha_text(&st);
        assert!(text.contains("network timeout: 2500 ms"), "{text}");
        assert!(text.contains("isolated_or_partitioned"), "{text}");
        assert!(text.contains("7.3s") && text.contains("0.4s"), "{text}");
    }
}
