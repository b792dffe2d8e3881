//! `vdc bench control-plane --smoke` on both stores: a real `vdc server`
//! carrying simulated hosts and VMs answers every show, list and report,
//! plans the failed host's restarts and has its memory measured.

use std::process::Command;

fn smoke(store: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args([
            "bench",
            "control-plane",
            "--smoke",
            "--store",
            store,
            "-o",
            "json",
        ])
        .output()
        .expect("run vdc bench control-plane");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the benchmark failed:\n{stderr}");
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON figures");
    assert_eq!(f["store"], store, "{f}");
    assert_eq!(
        (f["hosts"].as_u64(), f["vms"].as_u64()),
        (Some(20), Some(400))
    );
    for kind in ["show", "list", "report"] {
        let l = &f[kind];
        assert!(
            l["count"].as_u64().unwrap_or(0) > 0,
            "no {kind} answered: {f}"
        );
        assert_eq!(l["errors"], 0, "{kind} failed: {f}\n{stderr}");
        let (p50, p99) = (l["p50_ms"].as_f64(), l["p99_ms"].as_f64());
        assert!(
            matches!((p50, p99), (Some(a), Some(b)) if a > 0.0 && a <= b),
            "{f}"
        );
    }
    assert_eq!(f["ha_planned_vms"], 20, "{f}");
    assert!(f["server_rss_mib"].as_f64().unwrap_or(0.0) > 0.0, "{f}");
}

#[test]
fn control_plane_bench_smoke_on_the_embedded_store() {
    smoke("redb");
}

#[test]
fn control_plane_bench_smoke_on_etcd() {
    smoke("etcd");
}
