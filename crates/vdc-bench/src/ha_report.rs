//! Figures of `vdc bench ha`, as pure functions of the server's events:
//! one trial's times from its events ([`trial_from_events`]), percentiles
//! over all trials ([`summarize`]) and the Markdown tables with the
//! anchors' published figures ([`render`]).
//!
//! Every time is counted from the moment the host was killed, on the same
//! wall clock as the server's event times (the lab runs on one machine).

use serde::Serialize;
use vdc_types::Event;

/// One VM's restart in one trial, milliseconds after the kill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restart {
    /// VM name.
    pub vm: String,
    /// Its failover task began (`ha.failover_started`).
    pub failover_started_ms: Option<u64>,
    /// Its QEMU runs on the other host (`vm.state_changed` → running).
    pub running_ms: u64,
    /// Its guest reports ready there (`vm.guest_ready`).
    pub ready_ms: u64,
}

/// One trial: a host killed, its VMs restarted elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trial {
    /// Trial number, from 1.
    pub trial: u32,
    /// The host killed.
    pub victim: String,
    /// Its reports were late and its VMs' leases began to be watched
    /// (`ha.lease_watch` with `suspect`), if that was seen.
    pub suspect_ms: Option<u64>,
    /// It was declared failed (`ha.host_state_changed` → failed).
    pub detection_ms: u64,
    /// Each VM's restart.
    pub restarts: Vec<Restart>,
}

/// Why a trial's events do not give its figures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissingEvent {
    /// No event says the host failed.
    #[error("no ha.host_state_changed event saying {0} failed")]
    Detection(String),
    /// No event says the VM ran again, or was ready.
    #[error("no {topic} event for VM {vm}")]
    Vm {
        /// The topic looked for.
        topic: &'static str,
        /// The VM.
        vm: String,
    },
}

/// The figures of trial `trial` (host `victim` killed at `killed_ms`, VMs
/// `vms`) from the events that followed the kill.
pub fn trial_from_events(
    trial: u32,
    victim: &str,
    killed_ms: u64,
    vms: &[String],
    events: &[Event],
) -> Result<Trial, MissingEvent> {
    let after = |e: &Event| e.time_ms.saturating_sub(killed_ms);
    let first = |topic: &str, object: &str, pred: &dyn Fn(&Event) -> bool| {
        events
            .iter()
            .find(|e| e.topic == topic && e.object == object && pred(e))
            .map(after)
    };
    let detection_ms = first("ha.host_state_changed", victim, &|e| {
        e.data["to"] == "failed"
    })
    .ok_or_else(|| MissingEvent::Detection(victim.to_string()))?;
    let suspect_ms = first("ha.lease_watch", victim, &|e| e.data["suspect"] == true);
    let restarts = vms
        .iter()
        .map(|vm| {
            let missing = |topic| MissingEvent::Vm {
                topic,
                vm: vm.clone(),
            };
            Ok(Restart {
                vm: vm.clone(),
                failover_started_ms: first("ha.failover_started", vm, &|_| true),
                running_ms: first("vm.state_changed", vm, &|e| e.data["to"] == "running")
                    .ok_or_else(|| missing("vm.state_changed"))?,
                ready_ms: first("vm.guest_ready", vm, &|_| true)
                    .ok_or_else(|| missing("vm.guest_ready"))?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Trial {
        trial,
        victim: victim.to_string(),
        suspect_ms,
        detection_ms,
        restarts,
    })
}

/// The `p`-th percentile of `values` by nearest rank (`None` if empty).
pub fn percentile(values: &[u64], p: u32) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = (p as usize * v.len()).div_ceil(100).max(1);
    v.get(rank - 1).copied()
}

/// p50 and p95 of one measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// What was measured.
    pub measure: String,
    /// Median, ms.
    pub p50_ms: Option<u64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<u64>,
    /// How many values.
    pub n: usize,
}

fn row(measure: &str, values: &[u64]) -> Row {
    Row {
        measure: measure.to_string(),
        p50_ms: percentile(values, 50),
        p95_ms: percentile(values, 95),
        n: values.len(),
    }
}

/// The measures over all trials: per host, suspicion and detection; per
/// VM, its failover's start, QEMU running, restart after detection
/// (running − detection) and guest ready.
pub fn summarize(trials: &[Trial]) -> Vec<Row> {
    let per_host =
        |f: &dyn Fn(&Trial) -> Option<u64>| trials.iter().filter_map(f).collect::<Vec<_>>();
    let per_vm = |f: &dyn Fn(&Trial, &Restart) -> Option<u64>| {
        trials
            .iter()
            .flat_map(|t| t.restarts.iter().filter_map(move |r| f(t, r)))
            .collect::<Vec<_>>()
    };
    vec![
        row(
            "host suspect: its VMs' leases watched",
            &per_host(&|t| t.suspect_ms),
        ),
        row(
            "host declared failed (detection)",
            &per_host(&|t| Some(t.detection_ms)),
        ),
        row(
            "failover task started",
            &per_vm(&|_, r| r.failover_started_ms),
        ),
        row(
            "VM's QEMU running on the other host",
            &per_vm(&|_, r| Some(r.running_ms)),
        ),
        row(
            "restart after detection (QEMU running − detection)",
            &per_vm(&|t, r| Some(r.running_ms.saturating_sub(t.detection_ms))),
        ),
        row(
            "guest ready on the other host",
            &per_vm(&|_, r| Some(r.ready_ms)),
        ),
    ]
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v} ms"))
}

fn secs(v: Option<u64>) -> String {
    v.map_or_else(
        || "—".to_string(),
        |v| format!("{:.1} s", v as f64 / 1000.0),
    )
}

/// The Markdown tables: the measures, then vdc beside the anchors.
pub fn render(rows: &[Row], trials: usize, vms: usize) -> String {
    let mut out = String::new();
    out.push_str("| measure (from the SIGKILL of the host) | p50 | p95 | n |\n|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.measure,
            ms(r.p50_ms),
            ms(r.p95_ms),
            r.n
        ));
    }
    let find = |m: &str| rows.iter().find(|r| r.measure.starts_with(m));
    let pair = |m: &str| {
        find(m).map_or_else(
            || "—".to_string(),
            |r| format!("{} / {}", secs(r.p50_ms), secs(r.p95_ms)),
        )
    };
    out.push_str(&format!(
        "\n{trials} trial(s) × {vms} VM(s); p50 / p95:\n\n\
         | system | host declared dead | VM running again |\n|---|---|---|\n\
         | vdc (this run) | {} | QEMU {}; guest ready {} |\n\
         | vSphere HA | ~15 s | after detection plus restart |\n\
         | Proxmox HA | fencing after 60 s | 2–3 minutes end to end as users report |\n\
         | Harvester | — | about 5 minutes |\n",
        pair("host declared failed"),
        pair("VM's QEMU running"),
        pair("guest ready"),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(seq: u64, time_ms: u64, topic: &str, object: &str, data: serde_json::Value) -> Event {
        Event {
            seq,
            time_ms,
            topic: topic.into(),
            object: object.into(),
            message: String::new(),
            data,
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 95), Some(7));
        let v: Vec<u64> = (1..=20).rev().collect();
        assert_eq!(percentile(&v, 50), Some(10));
        assert_eq!(percentile(&v, 95), Some(19));
        assert_eq!(percentile(&v, 100), Some(20));
        assert_eq!(percentile(&[3, 1, 2], 50), Some(2));
    }

    #[test]
    fn a_trial_s_times_come_from_the_first_matching_events() {
        let vms = vec!["a".to_string(), "b".to_string()];
        let events = vec![
            ev(1, 10_900, "ha.lease_watch", "h1", json!({"suspect": true})),
            ev(
                2,
                12_500,
                "ha.host_state_changed",
                "h2",
                json!({"to": "failed"}),
            ),
            ev(
                3,
                12_700,
                "ha.host_state_changed",
                "h1",
                json!({"to": "failed"}),
            ),
            ev(4, 12_800, "ha.failover_started", "a", json!({})),
            ev(
                5,
                12_900,
                "vm.state_changed",
                "a",
                json!({"to": "starting"}),
            ),
            ev(6, 13_800, "vm.state_changed", "a", json!({"to": "running"})),
            ev(7, 13_900, "vm.state_changed", "b", json!({"to": "running"})),
            ev(8, 14_000, "vm.state_changed", "a", json!({"to": "running"})),
            ev(9, 30_000, "vm.guest_ready", "a", json!({})),
            ev(10, 31_000, "vm.guest_ready", "b", json!({})),
        ];
        let t = trial_from_events(1, "h1", 10_000, &vms, &events).unwrap();
        assert_eq!(t.suspect_ms, Some(900));
        assert_eq!(t.detection_ms, 2700);
        assert_eq!(
            t.restarts[0],
            Restart {
                vm: "a".into(),
                failover_started_ms: Some(2800),
                running_ms: 3800,
                ready_ms: 20_000
            }
        );
        assert_eq!(t.restarts[1].failover_started_ms, None);
        assert_eq!(t.restarts[1].running_ms, 3900);
        // An event missing says which.
        assert_eq!(
            trial_from_events(1, "h1", 10_000, &vms, &events[..8]),
            Err(MissingEvent::Vm {
                topic: "vm.guest_ready",
                vm: "a".into()
            })
        );
        assert_eq!(
            trial_from_events(1, "h3", 10_000, &vms, &events),
            Err(MissingEvent::Detection("h3".into()))
        );

        let rows = summarize(&[t]);
        let get = |m: &str| rows.iter().find(|r| r.measure.starts_with(m)).unwrap();
        assert_eq!(get("host declared").p50_ms, Some(2700));
        assert_eq!(get("VM's QEMU").n, 2);
        assert_eq!(get("restart after detection").p95_ms, Some(1200));
        let md = render(&rows, 1, 2);
        assert!(
            md.contains("| host declared failed (detection) | 2700 ms | 2700 ms | 1 |"),
            "{md}"
        );
        assert!(md.contains("| vdc (this run) | 2.7 s / 2.7 s | QEMU 3.8 s / 3.9 s; guest ready 20.0 s / 21.0 s |"), "{md}");
        assert!(md.contains("| vSphere HA | ~15 s |"), "{md}");
    }
}
