//! Recovery plans refuse bad input with a 4xx that says what to change,
//! and store nothing; operations on unknown plans or runs are 404 and an
//! unknown operation is 400. (Plans over real replicas, and their runs on
//! real guests, are in `crates/vdc/tests/e2e_dr.rs`.)

use std::sync::Arc;

use vdc_api::{router, AppState};
use vdc_client::{Client, ClientError};
use vdc_dr::plan::{NetworkMapping, PlanGroup, PlanVm, ReadyWait};
use vdc_dr::Plan;
use vdc_store::RedbStore;
use vdc_types::{ErrorCode, Network};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn server() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("state.redb"))
        .await
        .unwrap();
    let app = router(AppState::open(Arc::new(store), TOKEN).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (Client::new(&url, Some(TOKEN.into())), dir)
}

fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>, code: ErrorCode, words: &str) {
    match r {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.code, code, "{}", e.message);
            assert!(e.message.contains(words), "'{}' lacks '{words}'", e.message);
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn plan(groups: &[&[&str]]) -> Plan {
    Plan {
        version: 0,
        name: "p".into(),
        protected_site: "a".into(),
        recovery_site: String::new(),
        groups: groups
            .iter()
            .map(|g| PlanGroup {
                vms: g
                    .iter()
                    .map(|n| PlanVm {
                        name: n.to_string(),
                        wait: ReadyWait::default(),
                        ip: None,
                        hostname: None,
                    })
                    .collect(),
                pre_steps: vec![],
                post_steps: vec![],
            })
            .collect(),
        networks: vec![NetworkMapping {
            protected: "prod".into(),
            recovery: "dr".into(),
            test: None,
        }],
        pre_steps: vec![],
        post_steps: vec![],
        created_ms: 0,
        reprotects: 0,
        state: Default::default(),
        active_run: None,
        last_run: None,
    }
}

#[tokio::test]
async fn bad_plans_are_refused_and_nothing_is_stored() {
    let (c, _d) = server().await;
    c.create_network(&Network {
        name: "dr".into(),
        bridge: "vmbr0".into(),
        subnet: "10.77.9.0/24".into(),
        pool_start: "10.77.9.100".into(),
        pool_end: "10.77.9.199".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    refused(
        c.create_plan(&plan(&[&["web"]])).await,
        ErrorCode::InvalidInput,
        "VM 'web' has no replica at this site",
    );
    refused(
        c.create_plan(&plan(&[&["web"], &["web"]])).await,
        ErrorCode::InvalidInput,
        "listed twice",
    );
    refused(
        c.create_plan(&plan(&[&["web"], &[]])).await,
        ErrorCode::InvalidInput,
        "group 2 has no VM",
    );
    refused(
        c.create_plan(&plan(&[])).await,
        ErrorCode::InvalidInput,
        "at least one group",
    );
    let mut p = plan(&[&["web"]]);
    p.networks[0].recovery = "nowhere".into();
    refused(
        c.create_plan(&p).await,
        ErrorCode::InvalidInput,
        "recovery network 'nowhere' does not exist",
    );
    let mut p = plan(&[&["web"]]);
    p.protected_site = "default".into();
    refused(
        c.create_plan(&p).await,
        ErrorCode::InvalidInput,
        "is this site",
    );
    let mut p = plan(&[&["web"]]);
    p.name = "no way".into();
    refused(
        c.create_plan(&p).await,
        ErrorCode::InvalidInput,
        "plan name",
    );
    let mut p = plan(&[&["web"]]);
    p.groups[0].vms[0].ip = Some("10.0.0.1".into());
    refused(
        c.create_plan(&p).await,
        ErrorCode::InvalidInput,
        "A.B.C.D/N",
    );
    assert!(c.list_plans().await.unwrap().is_empty());

    refused(c.get_plan("nope").await, ErrorCode::NotFound, "nope");
    refused(c.delete_plan("nope").await, ErrorCode::NotFound, "nope");
    refused(
        c.run_plan("nope", "test").await,
        ErrorCode::NotFound,
        "nope",
    );
    refused(
        c.run_plan("nope", "explode").await,
        ErrorCode::InvalidInput,
        "unknown operation 'explode'",
    );
    assert!(c.list_dr_runs(None).await.unwrap().is_empty());
    refused(c.get_dr_run("r1").await, ErrorCode::NotFound, "r1");
    refused(c.continue_dr_run("r1").await, ErrorCode::NotFound, "r1");
}
