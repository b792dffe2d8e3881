//! Every kind of bad input gets a 4xx with a `{code, message}` body that says
//! what was wrong, and nothing is left half-created.
//!
//! The server runs in-process on an embedded store; one host reports in the
//! way an agent does (no VM is started here: the end-to-end tests in the
//! `vdc` crate do that on real guests).

use std::sync::Arc;

use serde_json::json;
use vdc_api::{router, AppState};
use vdc_client::{Client, ClientError};
use vdc_store::RedbStore;
use vdc_types::agent::{DatastoreReport, HostReport};
use vdc_types::api::{CreateVmRequest, DiskRequest};
use vdc_types::{Accelerator, ErrorCode, Network};

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
    let report = HostReport {
        switches: vec![],
        name: "host-1".into(),
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
        datastores: vec![DatastoreReport {
            name: "shared".into(),
            path: "/srv/shared".into(),
            shared: true,
            capacity_bytes: 1 << 40,
            free_bytes: 1 << 39,
            cache_mode: Default::default(),
            cache_reason: None,
        }],
        vms: vec![],
        agent_started_ms: 1,
    };
    let credential = client.add_host("host-1").await.unwrap().credential;
    let r = reqwest::Client::new()
        .post(format!("{url}/api/v1/agent/report"))
        .bearer_auth(credential)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (url, client, dir)
}

fn api_code(r: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Api(e)) => {
            assert!(!e.message.is_empty());
            (e.code, e.message)
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn vm(name: &str) -> CreateVmRequest {
    CreateVmRequest {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_vm_requests_are_refused_and_leave_nothing() {
    let (_url, c, _d) = server().await;

    let (code, msg) = api_code(c.get_vm("nope").await);
    assert_eq!(code, ErrorCode::NotFound);
    assert!(msg.contains("nope"), "{msg}");

    for bad in ["", "-x", "a b", "x/y", "ä", &"a".repeat(64)] {
        let (code, _) = api_code(c.create_vm(&vm(bad)).await);
        assert_eq!(code, ErrorCode::InvalidInput, "name {bad:?}");
    }

    let (code, msg) = api_code(
        c.create_vm(&CreateVmRequest {
            memory_mib: Some(0),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(msg.contains("memory"), "{msg}");
    let (code, _) = api_code(
        c.create_vm(&CreateVmRequest {
            cpus: Some(0),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::InvalidInput);
    let (code, _) = api_code(
        c.create_vm(&CreateVmRequest {
            cpus: Some(1000),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::InvalidInput);
    let (code, _) = api_code(
        c.create_vm(&CreateVmRequest {
            disk_gib: Some(0),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::InvalidInput);
    let (code, _) = api_code(
        c.create_vm(&CreateVmRequest {
            cpus: Some(64),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(
        code,
        ErrorCode::InsufficientCapacity,
        "more vCPUs than any host"
    );

    let (code, msg) = api_code(
        c.create_vm(&CreateVmRequest {
            memory_mib: Some(1 << 30),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::InsufficientCapacity);
    assert!(msg.contains("more than any host"), "{msg}");

    for path in ["/etc/passwd.qcow2", "../escape.qcow2", "a/../../b.qcow2"] {
        let req = CreateVmRequest {
            disks: vec![DiskRequest {
                size_gib: 1,
                datastore: None,
                path: Some(path.into()),
            }],
            ..vm("a")
        };
        let (code, msg) = api_code(c.create_vm(&req).await);
        assert_eq!(code, ErrorCode::InvalidInput, "{path}");
        assert!(msg.contains("outside datastore"), "{msg}");
    }

    let (code, _) = api_code(
        c.create_vm(&CreateVmRequest {
            template: Some("missing".into()),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::NotFound);
    let (code, _) = api_code(
        c.create_vm(&CreateVmRequest {
            datastore: Some("missing".into()),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::NotFound);
    let (code, _) = api_code(
        c.create_vm(&CreateVmRequest {
            network: Some("missing".into()),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::NotFound);
    let (code, _) = api_code(
        c.create_vm(&CreateVmRequest {
            host: Some("missing".into()),
            ..vm("a")
        })
        .await,
    );
    assert_eq!(code, ErrorCode::NotFound);

    let (code, _) = api_code(c.vm_action("nope", "start", json!({})).await);
    assert_eq!(code, ErrorCode::NotFound);
    let (code, _) = api_code(c.delete_vm("nope").await);
    assert_eq!(code, ErrorCode::NotFound);
    let (code, _) = api_code(c.get_task("no-such-task").await);
    assert_eq!(code, ErrorCode::NotFound);

    assert!(
        c.list_vms().await.unwrap().is_empty(),
        "a refused request left a VM behind"
    );
    assert!(
        c.list_tasks().await.unwrap().is_empty(),
        "a refused request started a task"
    );
}

#[tokio::test]
async fn malformed_bodies_get_json_errors() {
    let (url, _c, _d) = server().await;
    let http = reqwest::Client::new();
    let cases: Vec<(&str, &str)> = vec![
        ("{not json", "not valid JSON"),
        ("{\"name\": 5}", "wrong field"),
        ("{\"name\": \"a\", \"colour\": \"red\"}", "wrong field"),
        ("[]", "wrong field"),
    ];
    for (body, want) in cases {
        let r = http
            .post(format!("{url}/api/v1/vms"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: vdc_types::ApiError = r.json().await.expect("JSON error body");
        assert_eq!(e.code, ErrorCode::InvalidInput);
        assert!(e.message.contains(want), "{body}: {}", e.message);
    }
    let r = http
        .post(format!("{url}/api/v1/vms/x/start"))
        .bearer_auth(TOKEN)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{url}/api/v1/vms"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: vdc_types::ApiError = r.json().await.unwrap();
    assert_eq!(e.code, ErrorCode::Unauthorized);
    let r = http.get(format!("{url}/api/v1/vms")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{url}/api/v1/no/such/path"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let _: vdc_types::ApiError = r.json().await.unwrap();
    let r = http
        .get(format!("{url}/api/v1/events?topics=vm.x*"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{url}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert!(doc["paths"]["/api/v1/vms"].is_object());
}

#[tokio::test]
async fn networks_are_validated() {
    let (_url, c, _d) = server().await;
    let good = Network {
        name: "lab".into(),
        bridge: "vmbr0".into(),
        subnet: "10.77.9.0/24".into(),
        gateway: None,
        pool_start: "10.77.9.100".into(),
        pool_end: "10.77.9.199".into(),
        ..Default::default()
    };
    c.create_network(&good).await.unwrap();
    let (code, msg) = api_code(c.create_network(&good).await);
    assert_eq!(code, ErrorCode::AlreadyExists);
    assert!(msg.contains("already exists"));
    let bad = [
        Network {
            name: "bad name".into(),
            ..good.clone()
        },
        Network {
            name: "n2".into(),
            bridge: "this-bridge-name-is-too-long".into(),
            ..good.clone()
        },
        Network {
            name: "n2".into(),
            subnet: "10.77.9.1/24".into(),
            ..good.clone()
        },
        Network {
            name: "n2".into(),
            subnet: "banana".into(),
            ..good.clone()
        },
        Network {
            name: "n2".into(),
            pool_start: "10.77.10.1".into(),
            ..good.clone()
        },
        Network {
            name: "n2".into(),
            pool_start: "10.77.9.200".into(),
            ..good.clone()
        },
        Network {
            name: "n2".into(),
            gateway: Some("1.2.3.4".into()),
            ..good.clone()
        },
    ];
    for n in bad {
        let (code, _) = api_code(c.create_network(&n).await);
        assert_eq!(code, ErrorCode::InvalidInput, "{n:?}");
    }
    assert_eq!(c.list_networks().await.unwrap().len(), 1);
}

#[tokio::test]
async fn events_stream_filters_topics() {
    use futures::StreamExt;
    let (_url, c, _d) = server().await;
    let stream = c.events(&["network.*".to_string()]).await.unwrap();
    let mut stream = Box::pin(stream);
    let n = Network {
        name: "ev".into(),
        bridge: "vmbr0".into(),
        subnet: "10.77.8.0/24".into(),
        gateway: None,
        pool_start: "10.77.8.10".into(),
        pool_end: "10.77.8.20".into(),
        ..Default::default()
    };
    c.create_network(&n).await.unwrap();
    let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("valid event");
    assert_eq!(ev.topic, "network.created");
    assert_eq!(ev.object, "ev");
    let hist = c.list_hosts().await.unwrap();
    assert_eq!(hist.len(), 1);
}

#[tokio::test]
async fn console_requests_are_validated() {
    let (url, c, _d) = server().await;
    let http = reqwest::Client::new();
    let input = |body: String| {
        http.post(format!("{url}/api/v1/vms/nope/console/input"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let too_long = json!({ "data": "x".repeat(4097) }).to_string();
    for (body, want) in [
        (too_long.as_str(), "at most 4096 bytes"),
        (r#"{"data": ""}"#, "empty"),
        (r#"{"data": 5}"#, "wrong field"),
        (r#"{"text": "ls"}"#, "wrong field"),
        ("{oops", "not valid JSON"),
    ] {
        let r = input(body.to_string()).await.unwrap();
        assert_eq!(r.status(), 400, "{body:.40}");
        let e: vdc_types::ApiError = r.json().await.expect("JSON error body");
        assert_eq!(e.code, ErrorCode::InvalidInput);
        assert!(e.message.contains(want), "{body:.40}: {}", e.message);
    }
    // Far over the body limit: a JSON 413, not a dropped connection.
    let huge = json!({ "data": "x".repeat(200_000) }).to_string();
    let r = input(huge).await.unwrap();
    assert_eq!(r.status(), 413);
    let e: vdc_types::ApiError = r.json().await.expect("JSON error body");
    assert_eq!(e.code, ErrorCode::PayloadTooLarge);
    // Valid input to a VM that does not exist.
    let (code, msg) = api_code(c.console_input("nope", "ls\n").await);
    assert_eq!(code, ErrorCode::NotFound);
    assert!(msg.contains("nope"), "{msg}");
    let (code, _) = api_code(c.console_from("nope", 0).await);
    assert_eq!(code, ErrorCode::NotFound);

    for query in [
        "bytes=10&offset=0",
        "bytes=2000000",
        "offset=-1",
        "offset=x",
        "colour=red",
    ] {
        let r = http
            .get(format!("{url}/api/v1/vms/nope/console?{query}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let e: vdc_types::ApiError = r.json().await.expect("JSON error body");
        assert_eq!(e.code, ErrorCode::InvalidInput, "{query}");
    }

    let doc: serde_json::Value = http
        .get(format!("{url}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/v1/vms/{name}/console/input"]["post"].is_object());
    assert!(doc["components"]["schemas"]["ConsoleInputRequest"].is_object());
    // A task's journal is part of the documented task.
    for schema in [
        "TaskJournal",
        "TaskParams",
        "TaskStep",
        "Step",
        "JobKind",
        "JobState",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Task"]["properties"]["journal"].is_object());
}

#[tokio::test]
async fn query_tokens_are_url_decoded_and_streams_resume() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let token = "t0k3n+with/odd=chars-0123456789";
    let store = RedbStore::open(dir.path().join("state.redb"))
        .await
        .unwrap();
    let app = router(AppState::open(Arc::new(store), token).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let encoded = "t0k3n%2Bwith%2Fodd%3Dchars-0123456789";
    let r = http
        .get(format!("{url}/api/v1/vms?access_token={encoded}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{url}/api/v1/vms?access_token=t0k3n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Two events, then a stream resumed after the first gets the second.
    let c = Client::new(&url, Some(token.into()));
    for (name, sub) in [("n1", 7), ("n2", 6)] {
        c.create_network(&Network {
            name: name.into(),
            bridge: "vmbr0".into(),
            subnet: format!("10.77.{sub}.0/24"),
            gateway: None,
            pool_start: format!("10.77.{sub}.10"),
            pool_end: format!("10.77.{sub}.20"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let hist: Vec<vdc_types::Event> = http
        .get(format!("{url}/api/v1/events?topics=network.*"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hist.len(), 2);
    let r = http
        .get(format!("{url}/api/v1/events/stream?topics=network.*"))
        .bearer_auth(token)
        .header("Last-Event-ID", hist[0].seq.to_string())
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("\"n2\"") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the missed event within 10 s")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !text.contains("\"n1\""),
        "an event before Last-Event-ID was replayed: {text}"
    );
}

/// The served OpenAPI document states the rules the server enforces: the
/// name pattern and lengths on every name field, ranges, the bearer token
/// with 401 on every operation but the public ones, and the 400 a bad body
/// gets. (scripts/schemathesis.sh checks the whole document against the
/// server.)
#[tokio::test]
async fn openapi_states_the_enforced_rules() {
    let (url, _c, _dir) = server().await;
    let doc: serde_json::Value = reqwest::get(format!("{url}/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("CreateVmRequest", "name"),
        ("CreateVmRequest", "template"),
        ("CreateVmRequest", "datastore"),
        ("CreateVmRequest", "network"),
        ("CreateVmRequest", "host"),
        ("CreateTemplateRequest", "name"),
        ("CreateTemplateRequest", "datastore"),
        ("Network", "name"),
        ("HostReport", "name"),
    ] {
        let f = &schemas[schema]["properties"][field];
        assert_eq!(
            f["pattern"],
            vdc_types::names::NAME_PATTERN,
            "{schema}.{field}: {f}"
        );
        assert_eq!(
            f["maxLength"],
            vdc_types::names::MAX_NAME_LEN,
            "{schema}.{field}"
        );
        assert_eq!(f["minLength"], 1, "{schema}.{field}");
    }
    assert_eq!(
        schemas["DiskRequest"]["properties"]["path"]["pattern"],
        vdc_types::api::DISK_PATH_PATTERN
    );
    let cpus = &schemas["CreateVmRequest"]["properties"]["cpus"];
    assert_eq!(
        (cpus["minimum"].clone(), cpus["maximum"].clone()),
        (json!(1), json!(64))
    );
    assert_eq!(
        schemas["CreateTemplateRequest"]["properties"]["format"]["oneOf"][1]["$ref"],
        "#/components/schemas/ImageFormat",
        "{}",
        schemas["CreateTemplateRequest"]["properties"]["format"]
    );
    assert_eq!(
        schemas["Vm"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| *f == "machine_type" || *f == "cpu_model")
            .count(),
        2
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let public = path == "/api/v1/version";
            assert_eq!(
                op["responses"].get("401").is_some(),
                !public,
                "{method} {path}: 401"
            );
            assert_eq!(op["security"].is_array(), !public, "{method} {path}");
            if op.get("requestBody").is_some() {
                assert!(
                    op["responses"].get("400").is_some(),
                    "{method} {path} takes a body and can answer 400"
                );
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["token"]["scheme"] == "bearer");
}

/// The power actions are the lifecycle's `VmAction`s: an unknown name or
/// delete by POST is a 400 that lists the actions, the modelled ones not
/// built yet are refused clearly, and the VM's lifecycle is documented.
#[tokio::test]
async fn vm_actions_are_the_lifecycles_and_documented() {
    let (url, c, _d) = server().await;
    let (code, msg) = api_code(c.vm_action("web", "reboot", json!({})).await);
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(msg.contains("unknown action 'reboot'"), "{msg}");
    assert!(msg.contains("start, stop, shutdown"), "{msg}");
    let (code, msg) = api_code(c.vm_action("web", "delete", json!({})).await);
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(msg.contains("DELETE"), "{msg}");
    for modelled in ["failover", "snapshot"] {
        let (code, msg) = api_code(c.vm_action("web", modelled, json!({})).await);
        assert_eq!(code, ErrorCode::InvalidInput, "{modelled}");
        assert!(msg.contains("not available yet"), "{msg}");
    }
    assert!(c.list_tasks().await.unwrap().is_empty());

    let doc: serde_json::Value = reqwest::get(format!("{url}/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    for field in ["owner", "target", "operation", "actions"] {
        assert!(
            schemas["Vm"]["properties"][field].is_object(),
            "Vm.{field} is not documented"
        );
    }
    for schema in ["VmAction", "VmOperation", "InFlight"] {
        assert!(schemas[schema].is_object(), "{schema} is not documented");
    }
    let action = &doc["paths"]["/api/v1/vms/{name}/{action}"]["post"]["responses"];
    for status in ["202", "400", "404", "409", "503"] {
        assert!(action[status].is_object(), "status {status} undocumented");
    }
}
