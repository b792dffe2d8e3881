//! Pure figures of a migration benchmark: one [`Run`] per migration, their
//! medians per workload and system, the ratios vdc/libvirt, and the tables
//! printed at the end (Markdown, so they paste into docs/benchmarks.md).
//!
//! Nothing here does I/O; the numbers come from QEMU (through vdc's task or
//! libvirt's `domjobinfo`) and from the poller ([`longest_gap`]).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// What the guest does while it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Nothing but the guest's own services.
    Idle,
    /// `vdc-dirty` at this many MiB/s.
    Rate(u32),
    /// `vdc-dirty` as fast as the vCPU goes.
    FlatOut,
}

impl Workload {
    /// The guest service command that starts it (`dirty ...`), on a buffer
    /// of `buffer_mib` MiB.
    pub fn command(self, buffer_mib: u32) -> String {
        match self {
            Workload::Idle => "dirty stop".to_string(),
            Workload::Rate(r) => format!("dirty {r} {buffer_mib}"),
            Workload::FlatOut => format!("dirty max {buffer_mib}"),
        }
    }

    /// Parses `idle`, `max` or a rate in MiB/s (`100`).
    pub fn parse(s: &str) -> Option<Workload> {
        match s {
            "idle" => Some(Workload::Idle),
            "max" | "flat-out" => Some(Workload::FlatOut),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|r| (1..=99_999).contains(r))
                .map(Workload::Rate),
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workload::Idle => write!(f, "idle"),
            Workload::Rate(r) => write!(f, "dirtying {r} MiB/s"),
            Workload::FlatOut => write!(f, "dirtying flat out"),
        }
    }
}

/// The system that migrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// `vdc vm migrate` (a plain stream).
    Vdc,
    /// `vdc vm migrate --tls`: the same guest, the stream over TLS.
    VdcTls,
    /// `virsh migrate --live` with libvirt's defaults.
    Libvirt,
    /// Two bare QEMU processes over QMP with chosen settings: a reference,
    /// not a peer.
    Qemu,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Vdc => "vdc",
            System::VdcTls => "vdc (TLS)",
            System::Libvirt => "libvirt",
            System::Qemu => "bare QEMU",
        })
    }
}

/// One live migration as measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Who migrated.
    pub system: System,
    /// What the guest did.
    pub workload: Workload,
    /// The guest's dirty rate just before the move, MiB/s, as its
    /// dirtying program measured it (none when idle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_mib_s: Option<f64>,
    /// Whether the migration completed (converged) with the guest running
    /// on the destination under the same boot id.
    pub converged: bool,
    /// Total time as QEMU reports it, ms.
    pub total_ms: Option<f64>,
    /// Downtime as QEMU reports it, ms.
    pub downtime_ms: Option<f64>,
    /// Longest gap between two answers of the guest's UDP service seen by
    /// a client on a third host polling every few ms, ms.
    pub gap_ms: Option<f64>,
    /// When the longest gap began, ms after the migration was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_at_ms: Option<f64>,
    /// The policy steps vdc's migration took (auto-converge, post-copy…).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_steps: Vec<String>,
    /// Why it did not converge or was not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The number `key=N` in a line of `key=value` words (the guest's `dirty`
/// answer).
pub fn stat(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The longest interval between two consecutive answers, given the times
/// the answers arrived (in order, relative to any origin). `None` with
/// fewer than two answers.
pub fn longest_gap(answers: &[Duration]) -> Option<Duration> {
    answers.windows(2).map(|w| w[1].saturating_sub(w[0])).max()
}

/// Where the longest gap between consecutive answers begins: the arrival
/// time of the answer before it. `None` with fewer than two answers.
pub fn longest_gap_start(answers: &[Duration]) -> Option<Duration> {
    answers
        .windows(2)
        .max_by_key(|w| w[1].saturating_sub(w[0]))
        .map(|w| w[0])
}

/// Medians of one system under one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Who migrated.
    pub system: System,
    /// What the guest did.
    pub workload: Workload,
    /// Migrations tried.
    pub runs: usize,
    /// Migrations that converged.
    pub converged: usize,
    /// Median total time (converged runs), ms.
    pub total_ms: Option<f64>,
    /// Median QEMU downtime, ms.
    pub downtime_ms: Option<f64>,
    /// Median longest gap seen by the poller, ms.
    pub gap_ms: Option<f64>,
}

/// One [`Summary`] per (workload, system) present in `runs`, in the order
/// they first appear.
pub fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut keys: Vec<(Workload, System)> = Vec::new();
    for r in runs {
        if !keys.contains(&(r.workload, r.system)) {
            keys.push((r.workload, r.system));
        }
    }
    keys.into_iter()
        .map(|(workload, system)| {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.workload == workload && r.system == system)
                .collect();
            let ok: Vec<&&Run> = mine.iter().filter(|r| r.converged).collect();
            let pick = |f: fn(&Run) -> Option<f64>| {
                median(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            Summary {
                system,
                workload,
                runs: mine.len(),
                converged: ok.len(),
                total_ms: pick(|r| r.total_ms),
                downtime_ms: pick(|r| r.downtime_ms),
                gap_ms: pick(|r| r.gap_ms),
            }
        })
        .collect()
}

/// vdc's medians divided by libvirt's, per workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// The workload.
    pub workload: Workload,
    /// vdc/libvirt total time.
    pub total: Option<f64>,
    /// vdc/libvirt QEMU downtime.
    pub downtime: Option<f64>,
    /// vdc/libvirt longest gap.
    pub gap: Option<f64>,
    /// Whether vdc met the goal: downtime (both measures) at most half of
    /// libvirt's, total time no worse, every run converged.
    pub goal_met: bool,
}

/// The ratios for every workload measured on both systems.
pub fn ratios(summaries: &[Summary]) -> Vec<Ratio> {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut out = Vec::new();
    for v in summaries.iter().filter(|s| s.system == System::Vdc) {
        let Some(l) = summaries
            .iter()
            .find(|s| s.system == System::Libvirt && s.workload == v.workload)
        else {
            continue;
        };
        let total = div(v.total_ms, l.total_ms);
        let downtime = div(v.downtime_ms, l.downtime_ms);
        let gap = div(v.gap_ms, l.gap_ms);
        let goal_met = v.runs > 0
            && v.converged == v.runs
            && downtime.is_some_and(|r| r <= 0.5)
            && gap.is_some_and(|r| r <= 0.5)
            && total.is_some_and(|r| r <= 1.0);
        out.push(Ratio {
            workload: v.workload,
            total,
            downtime,
            gap,
            goal_met,
        });
    }
    out
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.0} ms"))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.2}"))
}

/// The Markdown tables of a benchmark: medians, then ratios.
pub fn render(summaries: &[Summary], ratios: &[Ratio]) -> String {
    let mut s = String::new();
    s += "| workload | system | converged | total (median) | downtime, QEMU (median) | longest gap, poller (median) |\n";
    s += "|---|---|---|---|---|---|\n";
    for m in summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} | {} | {} | {} |",
            m.workload,
            m.system,
            m.converged,
            m.runs,
            ms(m.total_ms),
            ms(m.downtime_ms),
            ms(m.gap_ms)
        );
    }
    if !ratios.is_empty() {
        s += "\n| workload | total vdc/libvirt | downtime vdc/libvirt | gap vdc/libvirt | goal met |\n";
        s += "|---|---|---|---|---|\n";
        for r in ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.workload,
                times(r.total),
                times(r.downtime),
                times(r.gap),
                if r.goal_met { "yes" } else { "no" }
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: System, workload: Workload, t: f64, d: f64, g: f64) -> Run {
        Run {
            system,
            workload,
            dirty_mib_s: None,
            converged: true,
            total_ms: Some(t),
            downtime_ms: Some(d),
            gap_ms: Some(g),
            gap_at_ms: None,
            policy_steps: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn stats_are_read_from_the_guests_answer() {
        let a = "dirty running rate=max buffer_mib=64 pages=123 mib=0 mib_s=812.5 elapsed_ms=9";
        assert_eq!(stat(a, "mib_s"), Some(812.5));
        assert_eq!(stat(a, "mib"), Some(0.0));
        assert_eq!(stat("dirty stopped", "mib_s"), None);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn longest_gap_is_the_widest_interval_between_answers() {
        let at = |ms: u64| Duration::from_millis(ms);
        assert_eq!(
            longest_gap(&[at(0), at(2), at(4), at(90), at(92)]),
            Some(at(86))
        );
        assert_eq!(longest_gap(&[at(5)]), None);
        assert_eq!(
            longest_gap_start(&[at(0), at(2), at(4), at(90), at(92)]),
            Some(at(4))
        );
    }

    #[test]
    fn workloads_parse_and_name_their_guest_command() {
        assert_eq!(Workload::parse("idle"), Some(Workload::Idle));
        assert_eq!(Workload::parse("100"), Some(Workload::Rate(100)));
        assert_eq!(Workload::parse("max"), Some(Workload::FlatOut));
        assert_eq!(Workload::parse("0"), None);
        assert_eq!(Workload::parse("fast"), None);
        assert_eq!(Workload::Rate(100).command(64), "dirty 100 64");
        assert_eq!(Workload::FlatOut.command(64), "dirty max 64");
        assert_eq!(Workload::Idle.command(64), "dirty stop");
    }

    #[test]
    fn summaries_take_medians_of_converged_runs_and_ratios_judge_the_goal() {
        let w = Workload::Rate(100);
        let mut runs = vec![
            run(System::Libvirt, w, 900.0, 48.0, 60.0),
            run(System::Libvirt, w, 850.0, 40.0, 50.0),
            run(System::Libvirt, w, 870.0, 50.0, 70.0),
            run(System::Vdc, w, 800.0, 20.0, 25.0),
            run(System::Vdc, w, 700.0, 10.0, 20.0),
            run(System::Vdc, w, 750.0, 24.0, 30.0),
        ];
        let s = summarize(&runs);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].system, System::Libvirt);
        assert_eq!(s[0].downtime_ms, Some(48.0));
        assert_eq!(s[1].total_ms, Some(750.0));
        let r = ratios(&s);
        assert_eq!(r.len(), 1);
        assert!((r[0].downtime.unwrap() - 20.0 / 48.0).abs() < 1e-9);
        assert!(r[0].goal_met, "{r:?}");
        // One run that did not converge: the goal is missed, medians skip it.
        runs.push(Run {
            converged: false,
            total_ms: None,
            downtime_ms: None,
            gap_ms: None,
            error: Some("cancelled after 60 s".into()),
            ..run(System::Vdc, w, 0.0, 0.0, 0.0)
        });
        let s = summarize(&runs);
        assert_eq!((s[1].runs, s[1].converged), (4, 3));
        assert_eq!(s[1].total_ms, Some(750.0));
        assert!(!ratios(&s)[0].goal_met);
        let table = render(&s, &ratios(&s));
        assert!(
            table.contains("| dirtying 100 MiB/s | vdc | 3/4 | 750 ms | 20 ms | 25 ms |"),
            "{table}"
        );
        assert!(
            table.contains("| dirtying 100 MiB/s | 0.86 | 0.42 | 0.42 | no |"),
            "{table}"
        );
    }
}
