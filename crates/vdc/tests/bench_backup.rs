//! `vdc bench backup --smoke`: vdc, restic and borg each back up the same
//! small disk image, back it up again after a change and restore it; every
//! restored image is byte for byte the changed one, and vdc's incremental
//! read only the changed chunk.

use std::process::Command;

#[test]
fn backup_bench_smoke_restores_identical_images_on_every_system() {
    let out = Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(["bench", "backup", "--smoke", "-o", "json"])
        .output()
        .expect("run vdc bench backup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the benchmark failed:\n{stderr}");
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON figures");
    assert_eq!(f["image_bytes"], 64 << 20, "{f}");
    assert_eq!(f["changed_regions"], 1, "{f}");
    let systems: Vec<&str> = f["systems"]
        .as_array()
        .expect("systems")
        .iter()
        .filter_map(|s| s["system"].as_str())
        .collect();
    assert_eq!(systems, ["vdc", "restic", "borg"], "{f}");
    for s in f["systems"].as_array().expect("systems") {
        assert_eq!(
            s["restored_ok"], true,
            "{} restored another image: {f}",
            s["system"]
        );
        for k in ["full_s", "incremental_s", "restore_s"] {
            assert!(s[k].as_f64().unwrap_or(0.0) > 0.0, "{k}: {f}");
        }
        assert!(s["store_bytes"].as_u64().unwrap_or(0) > 0, "{f}");
    }
    assert_eq!(
        f["systems"][0]["incremental_chunks_read"], 1,
        "vdc's incremental must read only the changed chunk: {f}"
    );
    assert!(f["ratios"]["full"].as_f64().is_some(), "{f}");
}
