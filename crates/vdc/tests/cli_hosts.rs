//! `vdc host add` and `vdc host agents` against an in-process server (no
//! guest): adding a host writes its agent credential to a private file, the
//! credential is bound to that host, and the list shows whether its agent
//! joined.

use std::os::unix::fs::PermissionsExt;
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
async fn host_add_writes_a_private_credential_and_agents_lists_it() {
    let (url, dir) = server().await;
    let file = dir.path().join("host-9.credential");
    let file_arg = file.to_str().unwrap();
    let (code, out, err) = vdc(
        &url,
        &["host", "add", "host-9", "--credential-file", file_arg],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("host-9"), "{out}");
    let credential = std::fs::read_to_string(&file).unwrap();
    let credential = credential.trim();
    assert_eq!(
        vdc_types::auth::agent_credential_host(credential),
        Some("host-9")
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !out.contains(credential),
        "the credential is printed: {out}"
    );

    // Listed, not joined yet.
    let (code, out, _) = vdc(&url, &["host", "agents", "-o", "json"]).await;
    assert_eq!(code, Some(0));
    let agents: Vec<vdc_types::auth::HostJoin> = serde_json::from_str(&out).unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].host, "host-9");
    assert_eq!(agents[0].joined_ms, None);

    // The credential joins as host-9 and only as host-9.
    let http = reqwest::Client::new();
    let join = |host: &'static str| {
        http.post(format!("{url}/api/v1/agent/join"))
            .bearer_auth(credential)
            .json(&serde_json::json!({ "host": host }))
            .send()
    };
    assert_eq!(join("host-8").await.unwrap().status(), 403);
    assert_eq!(join("host-9").await.unwrap().status(), 200);
    let (_, out, _) = vdc(&url, &["host", "agents"]).await;
    assert!(out.contains("host-9") && !out.contains("not yet"), "{out}");

    // A second add is a conflict (exit 4); a bad name is bad input (exit 2).
    let (code, _, err) = vdc(&url, &["host", "add", "host-9"]).await;
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("already"), "{err}");
    let (code, _, _) = vdc(&url, &["host", "add", "bad name"]).await;
    assert_eq!(code, Some(2));

    // Replacing the credential: the old one stops working, the new one joins.
    let (code, out, err) = vdc(
        &url,
        &[
            "host",
            "add",
            "host-9",
            "--replace",
            "--credential-file",
            file_arg,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let renewed = std::fs::read_to_string(&file).unwrap();
    let renewed = renewed.trim().to_string();
    assert_ne!(renewed, credential);
    assert_eq!(join("host-9").await.unwrap().status(), 401);
    let r = http
        .post(format!("{url}/api/v1/agent/join"))
        .bearer_auth(&renewed)
        .json(&serde_json::json!({ "host": "host-9" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
