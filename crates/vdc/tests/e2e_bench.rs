//! `vdc bench migrate --smoke` on real guests: one idle live migration of
//! vdc in a lab of the benchmark's own, measured both ways (QEMU's figures
//! on the task, the longest gap a poller on a third host saw).

use std::process::Command;

#[test]
fn bench_migrate_smoke_measures_one_live_migration() {
    let id = vdc_test_infra::reserve_test_lab_id().expect("a lab id");
    let work = tempfile::tempdir().expect("a work dir");
    let out = Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args([
            "bench",
            "migrate",
            "--smoke",
            "-o",
            "json",
            "--lab-id",
            id.id(),
        ])
        .arg("--image")
        .arg(vdc_test_infra::guest_image())
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .expect("run vdc bench migrate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vdc bench migrate failed:\n{stderr}");
    let figures: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON figures on stdout");
    let runs = figures["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{figures}");
    let run = &runs[0];
    assert_eq!(run["system"], "vdc", "{run}");
    assert_eq!(run["workload"], "idle", "{run}");
    assert_eq!(run["converged"], true, "{run}\n{stderr}");
    // Figures that mean something: a downtime and a gap, each shorter than
    // the whole migration's bound (the timeout).
    for key in ["total_ms", "downtime_ms", "gap_ms"] {
        let v = run[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in {run}"));
        assert!((0.0..60_000.0).contains(&v), "{key} = {v}");
    }
    assert_eq!(figures["summaries"][0]["converged"], 1, "{figures}");
}
