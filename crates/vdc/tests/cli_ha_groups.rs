//! `vdc ha group …` and `vdc alarm …` against an in-process server (no
//! guest): groups listed in restart order, a cycle refused with the cycle
//! named and a non-zero exit, a delete, the (empty) alarm list.

use std::sync::Arc;

use vdc_api::{router, AppState};
use vdc_store::RedbStore;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn server() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("state.redb"))
        .await
        .unwrap();
    let app = router(AppState::open(Arc::new(store), TOKEN).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, dir)
}

/// `vdc ARGS` against `url` with the user token: (exit code, stdout, stderr).
async fn vdc(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(args)
        .env("VDC_URL", url)
        .env("VDC_TOKEN", TOKEN)
        .env_remove("VDC_TOKEN_FILE")
        .output()
        .await
        .expect("run vdc");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn groups_and_alarms_from_the_cli() {
    let (url, _dir) = server().await;
    let (code, out, err) = vdc(&url, &["ha", "group", "create", "db"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = vdc(
        &url,
        &[
            "ha",
            "group",
            "create",
            "app",
            "--after",
            "db",
            "--ready-timeout",
            "30",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("30s"), "{out}");
    let (code, out, _) = vdc(&url, &["ha", "group", "list"]).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ORDER"), "{out}");
    assert!(
        lines[1].contains("db") && lines[1].trim_start().starts_with('0'),
        "{out}"
    );
    assert!(
        lines[2].contains("app") && lines[2].trim_start().starts_with('1'),
        "{out}"
    );
    // A cycle: refused, named, non-zero exit.
    let (code, out, err) = vdc(&url, &["ha", "group", "update", "db", "--after", "app"]).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(err.contains("db → app → db"), "{err}");
    let (code, _, err) = vdc(&url, &["ha", "group", "delete", "db"]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("app start after"), "{err}");
    let (code, out, err) = vdc(&url, &["ha", "group", "delete", "app"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = vdc(&url, &["-o", "json", "ha", "group", "list"]).await;
    assert_eq!(code, Some(0));
    let groups: Vec<vdc_types::ha_group::HaGroup> = serde_json::from_str(&out).unwrap();
    assert_eq!(groups.len(), 1);
    let (code, out, err) = vdc(&url, &["alarm", "list"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("SEVERITY"), "{out}");
    let (code, _, err) = vdc(
        &url,
        &["vm", "update", "x", "--ha-group", "g", "--no-ha-group"],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("cannot be used with"), "{err}");
}
