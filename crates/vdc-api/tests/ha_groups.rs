//! HA order groups and alarms through the API: what is refused and why
//! (unknown group, a cycle named, bad names and timeouts), the restart
//! order's ranks, and a VM's group (no guest is started here: the chaos
//! suite in the `vdc` crate does that).

use std::sync::Arc;

use vdc_api::{router, AppState};
use vdc_client::{Client, ClientError};
use vdc_store::RedbStore;
use vdc_types::api::CreateVmRequest;
use vdc_types::ha::UpdateVmRequest;
use vdc_types::ha_group::CreateHaGroupRequest;
use vdc_types::ErrorCode;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn server() -> (String, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("state.redb"))
        .await
        .unwrap();
    let app = router(AppState::open(Arc::new(store), TOKEN).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Client::new(&url, Some(TOKEN.into()));
    (url, client, dir)
}

fn api_code(r: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Api(e)) => (e.code, e.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn group(name: &str, after: &[&str]) -> CreateHaGroupRequest {
    CreateHaGroupRequest {
        name: name.into(),
        after: after.iter().map(|s| s.to_string()).collect(),
        ready_timeout_s: None,
    }
}

#[tokio::test]
async fn groups_are_validated_and_a_cycle_is_named() {
    let (url, c, _dir) = server().await;
    let db = c.create_ha_group(&group("db", &[])).await.unwrap();
    assert_eq!(db.ready_timeout_s, 120, "the default readiness timeout");
    let mut app = group("app", &["db"]);
    app.ready_timeout_s = Some(30);
    c.create_ha_group(&app).await.unwrap();
    c.create_ha_group(&group("web", &["app"])).await.unwrap();
    let groups = c.list_ha_groups().await.unwrap();
    let order: Vec<(&str, u32)> = groups.iter().map(|g| (g.name.as_str(), g.rank)).collect();
    assert_eq!(order, [("db", 0), ("app", 1), ("web", 2)]);

    // An unknown group in `after`.
    let (code, msg) = api_code(c.create_ha_group(&group("x", &["nope"])).await);
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(msg.contains("'nope', which is not a group"), "{msg}");
    // A cycle, named.
    let (code, msg) = api_code(c.update_ha_group(&group("db", &["web"])).await);
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(
        msg.contains("cycle: db → web → app → db"),
        "the cycle is named: {msg}"
    );
    let (_, msg) = api_code(c.create_ha_group(&group("self", &["self"])).await);
    assert!(msg.contains("cycle: self → self"), "{msg}");
    // Nothing of the refused changes stayed.
    let after: Vec<String> = c
        .list_ha_groups()
        .await
        .unwrap()
        .iter()
        .map(|g| g.name.clone())
        .collect();
    assert_eq!(after, ["db", "app", "web"]);
    // Names and timeouts.
    let (code, msg) = api_code(c.create_ha_group(&group("bad name", &[])).await);
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(msg.contains("group name"), "{msg}");
    let mut zero = group("z", &[]);
    zero.ready_timeout_s = Some(0);
    let (_, msg) = api_code(c.create_ha_group(&zero).await);
    assert!(msg.contains("ready_timeout_s must be between 1"), "{msg}");
    let (code, _) = api_code(c.create_ha_group(&group("db", &[])).await);
    assert_eq!(code, ErrorCode::AlreadyExists);
    // A group another starts after is not deleted; the last one is.
    let (code, msg) = api_code(c.delete_ha_group("db").await);
    assert_eq!(code, ErrorCode::InvalidState);
    assert!(msg.contains("app start after"), "{msg}");
    c.delete_ha_group("web").await.unwrap();
    let (code, _) = api_code(c.delete_ha_group("web").await);
    assert_eq!(code, ErrorCode::NotFound);

    // A VM may only join a group that exists.
    let (code, msg) = api_code(
        c.create_vm(&CreateVmRequest {
            name: "v".into(),
            ha_group: Some("nope".into()),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(msg.contains("no HA group 'nope'"), "{msg}");
    let (code, _) = api_code(
        c.update_vm(
            "missing",
            &UpdateVmRequest {
                ha_group: Some(Some("db".into())),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(code, ErrorCode::NotFound);
    // `null` is accepted as "leave the group" in a PATCH body.
    let r = reqwest::Client::new()
        .patch(format!("{url}/api/v1/vms/missing"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"ha_group": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "parsed, then the VM is not found");

    // Alarms: none yet; an unknown one is not found.
    assert!(c.list_alarms().await.unwrap().is_empty());
    let (code, _) = api_code(c.ack_alarm("0000-none").await);
    assert_eq!(code, ErrorCode::NotFound);
}
