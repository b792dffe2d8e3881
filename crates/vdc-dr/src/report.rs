//! The readable report of a run (`vdc plan report RUN`): what ran, when,
//! how it ended, the measured RTO and each VM's RPO.

use std::fmt::Write;

use crate::run::{Run, StepOutcome};

fn secs(ms: u64) -> String {
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

fn word(o: StepOutcome) -> &'static str {
    match o {
        StepOutcome::Pending => "pending",
        StepOutcome::Running => "running",
        StepOutcome::Ok => "ok",
        StepOutcome::Failed => "FAILED",
        StepOutcome::Skipped => "skipped",
    }
}

/// The run as text: a header, the steps with their offsets from the start
/// and durations, the VMs with their points and RPOs, and the errors.
pub fn text(run: &Run) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "DR run {} — plan {}, {} from site {} to site {}",
        run.id,
        run.plan,
        run.operation.word(),
        run.protected_site,
        run.recovery_site
    );
    let state = serde_json::to_value(run.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = writeln!(s, "state: {state}");
    if let Some(f) = run.finished_ms {
        let _ = writeln!(s, "duration: {}", secs(f.saturating_sub(run.started_ms)));
    }
    match run.rto_ms {
        Some(r) => {
            let _ = writeln!(s, "RTO (start to last VM ready): {}", secs(r));
        }
        None => {
            let _ = writeln!(s, "RTO: not measured (no VM ready)");
        }
    }
    if let Some(p) = &run.prompt {
        let _ = writeln!(s, "waiting at prompt: {p} (vdc plan continue {})", run.id);
    }
    let _ = writeln!(s, "\nsteps:");
    for st in &run.steps {
        let at = st
            .started_ms
            .map(|t| format!("+{}", secs(t.saturating_sub(run.started_ms))))
            .unwrap_or_default();
        let took = match (st.started_ms, st.finished_ms) {
            (Some(a), Some(b)) => secs(b.saturating_sub(a)),
            _ => String::new(),
        };
        let _ = write!(
            s,
            "  {:<8} {:>12} {:>11}  {}",
            word(st.outcome),
            at,
            took,
            st.name
        );
        if let Some(d) = &st.detail {
            let _ = write!(s, " — {d}");
        }
        s.push('\n');
    }
    if !run.vms.is_empty() {
        let _ = writeln!(s, "\nVMs:");
        for v in &run.vms {
            let _ = writeln!(
                s,
                "  group {} {} → {}: point {} RPO {} ready {}",
                v.group,
                v.vm,
                v.recovered_as,
                v.point.as_deref().unwrap_or("-"),
                v.rpo_ms.map(secs).unwrap_or_else(|| "-".into()),
                v.ready_ms
                    .map(|t| format!("+{}", secs(t.saturating_sub(run.started_ms))))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    if !run.errors.is_empty() {
        let _ = writeln!(s, "\nerrors:");
        for e in &run.errors {
            let _ = writeln!(s, "  {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Operation, RunState, StepRecord, VmOutcome, RUN_VERSION};

    #[test]
    fn the_report_names_steps_rto_and_rpo() {
        let run = Run {
            version: RUN_VERSION,
            id: "r1".into(),
            plan: "p".into(),
            task: "t".into(),
            operation: Operation::Failover,
            state: RunState::Succeeded,
            protected_site: "a".into(),
            recovery_site: "b".into(),
            started_ms: 10_000,
            finished_ms: Some(25_000),
            steps: vec![StepRecord {
                name: "recover group 1".into(),
                group: Some(1),
                vm: None,
                outcome: StepOutcome::Ok,
                started_ms: Some(10_100),
                finished_ms: Some(12_000),
                detail: None,
            }],
            vms: vec![VmOutcome {
                vm: "db".into(),
                recovered_as: "db".into(),
                group: 1,
                point: Some("p7".into()),
                point_ms: Some(7_500),
                rpo_ms: Some(2_500),
                ready_ms: Some(20_000),
            }],
            rto_ms: Some(10_000),
            prompt: None,
            errors: vec![],
        };
        let t = text(&run);
        assert!(t.contains("RTO (start to last VM ready): 10.000 s"), "{t}");
        assert!(t.contains("RPO 2.500 s"), "{t}");
        assert!(t.contains("recover group 1"), "{t}");
        assert!(t.contains("state: succeeded"), "{t}");
    }
}
