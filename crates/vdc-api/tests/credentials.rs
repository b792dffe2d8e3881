//! Trust boundaries: users, agents and the server each hold their own
//! credential, and each may do only its own part.
//!
//! The server runs in-process on an embedded store; a real agent (no VM)
//! joins it to show that the agent API takes nothing but the server's
//! credential.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vdc_api::{router, AppState};
use vdc_client::{Client, ClientError};
use vdc_store::RedbStore;
use vdc_types::agent::HostReport;
use vdc_types::auth::JoinResponse;
use vdc_types::{Accelerator, ApiError, ErrorCode};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(60);

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

fn report(host: &str) -> HostReport {
    HostReport {
        switches: vec![],
        name: host.into(),
        address: "127.0.0.1".into(),
        agent_url: "http://127.0.0.1:9".into(),
        migration_address: None,
        qemu_models: None,
        tls: None,
        accelerator: Accelerator::Tcg,
        qemu_version: "10.0.2".into(),
        cpus: 2,
        memory_mib: 4096,
        memory_free_mib: 3000,
        cpu_percent: 1.0,
        datastores: vec![],
        vms: vec![],
        agent_started_ms: 1,
    }
}

/// Status and error body of a call.
async fn refused(r: reqwest::Response) -> (u16, ApiError) {
    let status = r.status().as_u16();
    let e: ApiError = r.json().await.expect("a JSON error body");
    assert!(!e.message.is_empty());
    (status, e)
}

#[tokio::test]
async fn agents_and_users_keep_to_their_own_routes() {
    let (url, c, _d) = server().await;
    let http = reqwest::Client::new();
    let a = c.add_host("host-a").await.unwrap();
    let b = c.add_host("host-b").await.unwrap();
    assert_ne!(a.credential, b.credential);
    match c.add_host("host-a").await {
        Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::AlreadyExists),
        other => panic!("adding a host twice: {other:?}"),
    }

    // An agent credential cannot call user endpoints.
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/vms"),
        (reqwest::Method::GET, "/api/v1/hosts"),
        (reqwest::Method::POST, "/api/v1/hosts"),
        (reqwest::Method::DELETE, "/api/v1/vms/x"),
    ] {
        let r = http
            .request(method.clone(), format!("{url}{path}"))
            .bearer_auth(&a.credential)
            .json(&serde_json::json!({"name": "host-z"}))
            .send()
            .await
            .unwrap();
        let (status, e) = refused(r).await;
        assert_eq!(
            (status, e.code),
            (403, ErrorCode::Forbidden),
            "{method} {path}"
        );
        assert!(e.message.contains("user token"), "{}", e.message);
    }

    // Agent A reporting for host B: 403, and host B is not recorded.
    let r = http
        .post(format!("{url}/api/v1/agent/report"))
        .bearer_auth(&a.credential)
        .json(&report("host-b"))
        .send()
        .await
        .unwrap();
    let (status, e) = refused(r).await;
    assert_eq!((status, e.code), (403, ErrorCode::Forbidden));
    assert!(
        e.message.contains("'host-a'") && e.message.contains("'host-b'"),
        "{}",
        e.message
    );
    match c.get_host("host-b").await {
        Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::NotFound),
        other => panic!("host-b after a refused report: {other:?}"),
    }

    // A user token cannot post a report.
    let r = http
        .post(format!("{url}/api/v1/agent/report"))
        .bearer_auth(TOKEN)
        .json(&report("host-a"))
        .send()
        .await
        .unwrap();
    let (status, e) = refused(r).await;
    assert_eq!((status, e.code), (403, ErrorCode::Forbidden));
    assert!(c.list_hosts().await.unwrap().is_empty());

    // A forged credential naming a real host is unknown.
    let forged = vdc_types::auth::agent_credential("host-a", "00000000000000000000000000000000");
    let r = http
        .post(format!("{url}/api/v1/agent/report"))
        .bearer_auth(&forged)
        .json(&report("host-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused(r).await.0, 401);

    // The agent's own report is taken.
    let r = http
        .post(format!("{url}/api/v1/agent/report"))
        .bearer_auth(&a.credential)
        .json(&report("host-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hosts = c.list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].name, "host-a");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let (url, c, _d) = server().await;
    let a = c.add_host("host-a").await.unwrap();
    let http = reqwest::Client::new();
    let big = format!(
        "{{\"name\": \"{}\"}}",
        "x".repeat(vdc_api::API_BODY_MAX + 1)
    );
    for (path, secret) in [
        ("/api/v1/vms", TOKEN),
        ("/api/v1/vms/x/start", TOKEN),
        ("/api/v1/agent/report", a.credential.as_str()),
    ] {
        let r = http
            .post(format!("{url}{path}"))
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        let (status, e) = refused(r).await;
        assert_eq!(
            (status, e.code),
            (413, ErrorCode::PayloadTooLarge),
            "{path}"
        );
    }
}

#[tokio::test]
async fn openapi_names_both_security_schemes() {
    let (url, _c, _d) = server().await;
    let doc: serde_json::Value = reqwest::get(format!("{url}/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["token"]["scheme"], "bearer");
    assert_eq!(schemes["agent_credential"]["scheme"], "bearer");
    assert!(doc["paths"]["/api/v1/agent/report"]["post"]["security"]
        .to_string()
        .contains("agent_credential"));
    assert!(doc["paths"]["/api/v1/hosts"]["post"].is_object());
}

/// A real agent joins the server; its API then takes the server's
/// credential and nothing else (no user token, no agent credential).
#[tokio::test]
async fn agent_joins_and_its_api_takes_only_the_server_credential() {
    let (url, c, _d) = server().await;
    let added = c.add_host("host-1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let datastore = dir.path().join("shared");
    std::fs::create_dir_all(&datastore).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = vdc_agent::AgentConfig {
        name: "host-1".into(),
        address: "127.0.0.1".into(),
        migration_address: "127.0.0.1".into(),
        listen: addr,
        server_url: url.clone(),
        credential: added.credential.clone(),
        server_credential: None,
        state_dir: dir.path().join("state"),
        datastores: vec![vdc_agent::DatastoreConfig {
            name: "shared".into(),
            path: datastore,
            shared: true,
        }],
        accel: Some(Accelerator::Tcg),
        bridge_for_network: Default::default(),
        import_dirs: vec![],
        isolation: None,
        vm_monitoring: None,
        supervision: Default::default(),
    };
    tokio::spawn(async move {
        if let Err(e) = vdc_agent::run_with_listener(config, listener).await {
            eprintln!("agent failed: {e}");
        }
    });

    // It joins and reports: the host connects and shows as joined.
    let deadline = Instant::now() + WAIT;
    loop {
        let joined = c
            .list_agents()
            .await
            .unwrap()
            .iter()
            .any(|a| a.host == "host-1" && a.joined_ms.is_some());
        let connected = c
            .list_hosts()
            .await
            .unwrap()
            .iter()
            .any(|h| h.name == "host-1");
        if joined && connected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not join and report"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let http = reqwest::Client::new();
    let events: Vec<vdc_types::Event> = http
        .get(format!("{url}/api/v1/events?topics=host.joined"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.object == "host-1"), "{events:?}");

    // The server credential, as the agent learned it at join.
    let join: JoinResponse = http
        .post(format!("{url}/api/v1/agent/join"))
        .bearer_auth(&added.credential)
        .json(&serde_json::json!({"host": "host-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_url = format!("http://{addr}/agent/v1/vms");
    for wrong in [TOKEN, added.credential.as_str(), "not-a-credential"] {
        let r = http
            .get(&agent_url)
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        let (status, e) = refused(r).await;
        assert_eq!((status, e.code), (401, ErrorCode::Unauthorized), "{wrong}");
    }
    let r = http.get(&agent_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(&agent_url)
        .bearer_auth(&join.server_credential)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The agent caps request bodies too.
    let r = http
        .post(format!("http://{addr}/agent/v1/vms/x/start"))
        .bearer_auth(&join.server_credential)
        .header("content-type", "application/json")
        .body(format!("{{\"config\": \"{}\"}}", "x".repeat(2 << 20)))
        .send()
        .await
        .unwrap();
    let (status, e) = refused(r).await;
    assert_eq!((status, e.code), (413, ErrorCode::PayloadTooLarge));
}
