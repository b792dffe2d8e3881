//! The cost of TLS on vdc's migration stream: the same guest migrated by
//! vdc with a plain stream (`vdc`) and with TLS (`vdc-tls`) in one run,
//! interleaved, and the medians divided (pure).

use std::fmt::Write;

use serde::Serialize;

use crate::report::{Summary, System, Workload};

/// vdc with TLS divided by vdc without, per workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsCost {
    /// The workload.
    pub workload: Workload,
    /// TLS/plain total time.
    pub total: Option<f64>,
    /// TLS/plain QEMU downtime.
    pub downtime: Option<f64>,
    /// TLS/plain longest gap seen by the poller.
    pub gap: Option<f64>,
    /// Runs that converged with TLS, of those tried.
    pub converged: (usize, usize),
}

/// The cost for every workload measured both ways.
pub fn tls_costs(summaries: &[Summary]) -> Vec<TlsCost> {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    summaries
        .iter()
        .filter(|s| s.system == System::VdcTls)
        .filter_map(|t| {
            let p = summaries
                .iter()
                .find(|s| s.system == System::Vdc && s.workload == t.workload)?;
            Some(TlsCost {
                workload: t.workload,
                total: div(t.total_ms, p.total_ms),
                downtime: div(t.downtime_ms, p.downtime_ms),
                gap: div(t.gap_ms, p.gap_ms),
                converged: (t.converged, t.runs),
            })
        })
        .collect()
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.2}"))
}

/// The Markdown table of the costs (empty when none).
pub fn render(costs: &[TlsCost]) -> String {
    if costs.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n| workload | total TLS/plain | downtime TLS/plain | gap TLS/plain | converged with TLS |\n|---|---|---|---|---|\n",
    );
    for c in costs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {}/{} |",
            c.workload,
            times(c.total),
            times(c.downtime),
            times(c.gap),
            c.converged.0,
            c.converged.1
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(system: System, total: f64, downtime: f64) -> Summary {
        Summary {
            system,
            workload: Workload::Idle,
            runs: 3,
            converged: 3,
            total_ms: Some(total),
            downtime_ms: Some(downtime),
            gap_ms: None,
        }
    }

    #[test]
    fn the_cost_divides_tls_by_plain_per_workload() {
        let s = [
            summary(System::Vdc, 400.0, 10.0),
            summary(System::VdcTls, 600.0, 15.0),
            summary(System::Libvirt, 900.0, 30.0),
        ];
        let c = tls_costs(&s);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].total, Some(1.5));
        assert_eq!(c[0].downtime, Some(1.5));
        assert_eq!(c[0].gap, None);
        let table = render(&c);
        assert!(
            table.contains("| idle | 1.50 | 1.50 | – | 3/3 |"),
            "{table}"
        );
        assert!(render(&tls_costs(&s[..1])).is_empty());
    }
}
