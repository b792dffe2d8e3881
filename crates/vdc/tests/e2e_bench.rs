//! The benchmarks' smoke runs on real guests, each in a lab of the
//! benchmark's own: `vdc bench migrate --smoke`, one idle live migration of
//! vdc measured both ways (QEMU's figures on the task, the longest gap a
//! poller on a third host saw); `vdc bench ha --smoke`, one host kill and
//! its VM's restart (about 30 s).

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

/// `vdc bench ha --smoke` on a real guest: one host kill in a lab of the
/// benchmark's own, the VM's restart timed from the server's events.
#[test]
fn bench_ha_smoke_times_one_restart() {
    let id = vdc_test_infra::reserve_test_lab_id().expect("a lab id");
    let work = tempfile::tempdir().expect("a work dir");
    let out = Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(["bench", "ha", "--smoke", "-o", "json", "--lab-id", id.id()])
        .arg("--image")
        .arg(vdc_test_infra::guest_image())
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .expect("run vdc bench ha");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vdc bench ha failed:\n{stderr}");
    let figures: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON figures on stdout");
    let trials = figures["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 1, "{figures}");
    let t = &trials[0];
    assert_eq!(t["victim"], "host-1", "{t}");
    let ms = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {v}\n{stderr}"))
    };
    let restarts = t["restarts"].as_array().expect("restarts");
    assert_eq!(restarts.len(), 1, "{t}");
    let r = &restarts[0];
    // The order of what happened, each within the run's bound (--timeout):
    // suspected, then declared failed, then QEMU running, then the guest
    // ready.
    let (suspect, detection) = (ms(t, "suspect_ms"), ms(t, "detection_ms"));
    let (running, ready) = (ms(r, "running_ms"), ms(r, "ready_ms"));
    assert!(suspect <= detection, "{t}");
    assert!(detection <= running, "{t}");
    assert!(running <= ready && ready < 240_000, "{t}");
    let rows = figures["summary"].as_array().expect("summary");
    assert!(
        rows.iter()
            .any(|row| row["measure"] == "host declared failed (detection)" && row["n"] == 1),
        "{figures}"
    );
}
