//! The agent driven through its HTTP API against a real QEMU guest (TCG, no
//! NICs): provision from a template, start, pause/resume, suspend and
//! resume with the same boot, agent "kill -9" and re-attach, the lock
//! refusing a second host, graceful shutdown and destroy; plus the error
//! bodies of bad requests.
//!
//! The server is a tiny axum app in the test that records the reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use vdc_agent::{AgentConfig, DatastoreConfig};
use vdc_types::agent::{HostReport, VmRuntime};
use vdc_types::{Accelerator, ApiError, DiskSpec, ErrorCode, VmConfig, VmPowerState};

/// The server credential the fake server hands over at join.
const TOKEN: &str = "test-server-credential";

/// The agent credential of `host` in these tests.
fn credential(host: &str) -> String {
    vdc_types::auth::agent_credential(host, "test")
}
const MIB: u64 = 1 << 20;
/// Longest wait for something the next agent report shows (reports go out
/// every few seconds; a loaded machine stretches that).
const REPORT_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for a guest to boot (or come back) under TCG on a loaded
/// machine.
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// Reports received by the fake server, latest per host.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<HashMap<String, HostReport>>>);

impl Reports {
    fn latest(&self, host: &str) -> Option<HostReport> {
        self.0.lock().unwrap().get(host).cloned()
    }
    fn vm(&self, host: &str, id: &str) -> Option<VmRuntime> {
        self.latest(host)?.vms.into_iter().find(|v| v.id == id)
    }
}

async fn start_server() -> (String, Reports) {
    let reports = Reports::default();
    async fn report(
        State(r): State<Reports>,
        headers: HeaderMap,
        Json(rep): Json<HostReport>,
    ) -> axum::http::StatusCode {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {}", credential(&rep.name))) {
            return axum::http::StatusCode::UNAUTHORIZED;
        }
        r.0.lock().unwrap().insert(rep.name.clone(), rep);
        axum::http::StatusCode::NO_CONTENT
    }
    async fn join(
        headers: HeaderMap,
        Json(req): Json<vdc_types::auth::JoinRequest>,
    ) -> Result<Json<vdc_types::auth::JoinResponse>, axum::http::StatusCode> {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {}", credential(&req.host))) {
            return Err(axum::http::StatusCode::UNAUTHORIZED);
        }
        Ok(Json(vdc_types::auth::JoinResponse {
            server_credential: TOKEN.into(),
            tls: None,
        }))
    }
    let app = Router::new()
        .route("/api/v1/agent/report", post(report))
        .route("/api/v1/agent/join", post(join))
        .with_state(reports.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), reports)
}

/// An agent on its own runtime, so that the test can drop it as abruptly as
/// `kill -9` would (no destructor of the agent runs).
struct TestAgent {
    rt: Option<tokio::runtime::Runtime>,
    url: String,
}

impl TestAgent {
    fn start(name: &str, state_dir: &Path, datastore: &Path, server: &str) -> TestAgent {
        TestAgent::start_importing(name, state_dir, datastore, server, &[])
    }

    /// An agent that may import images from `import_dirs`.
    fn start_importing(
        name: &str,
        state_dir: &Path,
        datastore: &Path,
        server: &str,
        import_dirs: &[PathBuf],
    ) -> TestAgent {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = std_listener.local_addr().unwrap();
        let config = AgentConfig {
            name: name.into(),
            address: "127.0.0.1".into(),
            migration_address: "127.0.0.1".into(),
            listen: addr,
            server_url: server.into(),
            credential: credential(name),
            server_credential: None,
            state_dir: state_dir.into(),
            datastores: vec![DatastoreConfig {
                name: "shared".into(),
                path: datastore.into(),
                shared: true,
            }],
            accel: Some(Accelerator::Tcg),
            bridge_for_network: Default::default(),
            import_dirs: import_dirs.to_vec(),
            isolation: None,
            vm_monitoring: None,
            supervision: Default::default(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            if let Err(e) = vdc_agent::run_with_listener(config, listener).await {
                eprintln!("agent failed: {e}");
            }
        });
        TestAgent {
            rt: Some(rt),
            url: format!("http://{addr}"),
        }
    }

    /// Drops the agent's runtime: every task of the agent vanishes at once.
    fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Kills the QEMU of the test VM if the test fails half-way.
struct QemuGuard(Vec<PathBuf>);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        for pidfile in &self.0 {
            if let Some(pid) = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, url).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("agent reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> T {
        let (status, v) = self.call(method, url.clone(), body).await;
        assert!((200..300).contains(&status), "{url}: {status} {v}");
        serde_json::from_value(v).unwrap()
    }
}

async fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_agent_up(url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http
            .get(format!("{url}/agent/v1/host"))
            .bearer_auth(TOKEN)
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent at {url} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn guest_image() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-guest-image.sh");
    let out = std::process::Command::new(&script)
        .output()
        .expect("run build-guest-image.sh");
    assert!(
        out.status.success(),
        "guest image build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("image path").trim())
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_lifecycle_through_the_agent_api() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let image = guest_image();
    let root = tempfile::tempdir().unwrap();
    let ds = root.path().join("ds");
    std::fs::create_dir(&ds).unwrap();
    let (server, reports) = start_server().await;
    let c = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(180))
            .build()
            .unwrap(),
    };
    use reqwest::Method as M;

    let image_dir = image.parent().unwrap().to_path_buf();
    let agent = TestAgent::start_importing(
        "host-a",
        &root.path().join("sa"),
        &ds,
        &server,
        &[image_dir],
    );
    let a = agent.url.clone();
    wait_agent_up(&a).await;
    wait_until("a first report", REPORT_WAIT, || reports.latest("host-a")).await;

    // --- bad requests --------------------------------------------------
    let r = c
        .http
        .get(format!("{a}/agent/v1/vms"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let e: ApiError = r.json().await.unwrap();
    assert_eq!(e.code, ErrorCode::Unauthorized);
    let r = c
        .http
        .get(format!("{a}/agent/v1/vms"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let r = c
        .http
        .put(format!("{a}/agent/v1/vms/x"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: ApiError = r.json().await.unwrap();
    assert_eq!(e.code, ErrorCode::InvalidInput);

    let (status, v) = c
        .call(M::POST, format!("{a}/agent/v1/vms/no-such-vm/pause"), None)
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        serde_json::from_value::<ApiError>(v).unwrap().code,
        ErrorCode::NotFound
    );

    // --- template ------------------------------------------------------
    let imported: Value = c
        .ok(
            M::POST,
            format!("{a}/agent/v1/images/import"),
            Some(json!({"source": image, "datastore": "shared", "path": "templates/guest.qcow2"})),
        )
        .await;
    let template_size = imported["size_bytes"].as_u64().unwrap();
    assert!(template_size > 0);
    assert!(ds.join("templates/guest.qcow2").is_file());

    // --- provision -----------------------------------------------------
    let id = uuid::Uuid::new_v4().to_string();
    let config = VmConfig {
        version: vdc_types::vm::VM_CONFIG_VERSION,
        id: id.clone(),
        name: "t1".into(),
        cpus: 1,
        memory_mib: 256,
        datastore: "shared".into(),
        dir: "t1".into(),
        disks: vec![DiskSpec {
            name: "disk0".into(),
            datastore: "shared".into(),
            path: "t1/disk0.qcow2".into(),
            size_bytes: template_size + 64 * MIB,
        }],
        nics: vec![],
        hostname: "t1".into(),
        template: Some("guest".into()),
        linked_clone: false,
        created_ms: vdc_types::now_ms(),
        machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
        cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        ha: Default::default(),
        guest_agent: false,
        hotplug_ports: 0,
    };
    let mut escaping = config.clone();
    escaping.disks[0].path = "../escape.qcow2".into();
    let (status, v) = c
        .call(
            M::PUT,
            format!("{a}/agent/v1/vms/{id}"),
            Some(json!({"config": escaping, "boot_source": {"type": "blank"}})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(!root.path().join("escape.qcow2").exists());
    assert!(
        !ds.join("t1").exists(),
        "a refused provision leaves nothing"
    );

    let rt: VmRuntime = c
        .ok(
            M::PUT,
            format!("{a}/agent/v1/vms/{id}"),
            Some(json!({"config": config, "boot_source": {"type": "template", "datastore": "shared", "path": "templates/guest.qcow2", "linked": true}})),
        )
        .await;
    assert_eq!(rt.state, VmPowerState::Stopped);
    assert!(ds.join("t1/vm.json").is_file());
    let disk_info = vdc_disk::qemu_img::info(
        &ds.join("t1/disk0.qcow2"),
        vdc_types::api::ImageFormat::Qcow2,
    )
    .await
    .unwrap();
    assert_eq!(disk_info.virtual_size, template_size + 64 * MIB);
    assert!(disk_info
        .backing_file
        .unwrap()
        .ends_with("templates/guest.qcow2"));

    let pidfiles = vec![
        root.path().join("sa/vms").join(&id).join("qemu.pid"),
        root.path().join("sb/vms").join(&id).join("qemu.pid"),
    ];
    let _guard = QemuGuard(pidfiles);

    // --- a failed start leaves nothing behind -------------------------
    let mut with_nic = config.clone();
    with_nic.nics.push(vdc_types::NicSpec {
        network: "lab".into(),
        mac: "52:54:00:12:34:56".into(),
        ip: Some("10.99.0.10/24".into()),
        dhcp: false,
        gateway: None,
        bridge: Some("vdcnobridge0".into()),
        ..Default::default()
    });
    let (status, v) = c
        .call(
            M::POST,
            format!("{a}/agent/v1/vms/{id}/start"),
            Some(json!({ "config": with_nic })),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("vdcnobridge0"),
        "{v}"
    );
    assert!(
        !ds.join("t1/vm.lock").exists(),
        "lease released after a failed start"
    );
    let vms: Vec<VmRuntime> = c.ok(M::GET, format!("{a}/agent/v1/vms"), None).await;
    assert_eq!(
        vms.iter().find(|v| v.id == id).unwrap().state,
        VmPowerState::Stopped
    );

    // --- console input needs a process; bad input is refused ----------
    let input_url = format!("{a}/agent/v1/vms/{id}/console/input");
    let (status, v) = c
        .call(M::POST, input_url.clone(), Some(json!({ "data": "ls\n" })))
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "invalid_state", "{v}");
    assert!(v["message"].as_str().unwrap().contains("start it"), "{v}");
    for bad in [
        json!({ "data": "x".repeat(4097) }),
        json!({ "data": "" }),
        json!({ "text": "ls" }),
        json!(42),
    ] {
        let (status, v) = c.call(M::POST, input_url.clone(), Some(bad)).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["code"], "invalid_input", "{v}");
    }

    // --- start, guest ready --------------------------------------------
    let start_body = json!({ "config": config });
    let rt: VmRuntime = c
        .ok(
            M::POST,
            format!("{a}/agent/v1/vms/{id}/start"),
            Some(start_body.clone()),
        )
        .await;
    assert_eq!(rt.state, VmPowerState::Running);
    let pid = rt.pid.expect("pid of a running VM");
    assert!(ds.join("t1/vm.lock").is_file());
    // QEMU runs the VM's pinned machine type and named CPU model, with
    // direct I/O on this datastore (the test directory takes O_DIRECT),
    // as the datastore's report says.
    let cmdline: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let arg = |flag: &str| {
        cmdline
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(arg("-machine"), [vdc_types::vm::DEFAULT_MACHINE_TYPE]);
    assert_eq!(arg("-cpu"), [vdc_types::vm::DEFAULT_CPU_MODEL]);
    let ds_report = reports.latest("host-a").unwrap().datastores;
    assert_eq!(ds_report[0].cache_mode, vdc_types::DiskCacheMode::None);
    for node in arg("-blockdev") {
        let node: Value = serde_json::from_str(&node).unwrap();
        assert_eq!(node["cache"]["direct"], true, "{node}");
    }
    let boot_id = wait_until("the guest's heartbeat in a report", BOOT_WAIT, || {
        reports
            .vm("host-a", &id)
            .filter(|v| v.state == VmPowerState::Running && v.guest.ready)
            .and_then(|v| v.guest.boot_id)
    })
    .await;
    assert_eq!(
        reports.vm("host-a", &id).unwrap().guest.hostname.as_deref(),
        Some("t1")
    );
    wait_until("stats", REPORT_WAIT, || {
        reports
            .vm("host-a", &id)
            .and_then(|v| v.stats)
            .filter(|s| s.rss_bytes > 0)
    })
    .await;
    let console = c
        .http
        .get(format!("{a}/agent/v1/vms/{id}/console?bytes=65536"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let end: u64 = console.headers()["x-console-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(console.text().await.unwrap().contains("VDC-GUEST-READY"));

    // --- console input: the guest's root shell runs it -----------------
    let (status, v) = c
        .call(
            M::POST,
            input_url.clone(),
            Some(json!({ "data": "echo agent-$((20+22))\n" })),
        )
        .await;
    assert_eq!(status, 204, "{v}");
    let mut seen = String::new();
    let mut offset = end;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("agent-42") {
        assert!(
            std::time::Instant::now() < deadline,
            "the console never showed the command's output; after offset {end}:\n{seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = c
            .http
            .get(format!("{a}/agent/v1/vms/{id}/console?offset={offset}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let next: u64 = resp.headers()["x-console-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let chunk = resp.text().await.unwrap();
        assert_eq!(next, offset + chunk.len() as u64, "offsets are contiguous");
        offset = next;
        seen.push_str(&chunk);
    }
    assert!(
        seen.contains("echo agent-$((20+22))"),
        "echoed input: {seen}"
    );

    // --- pause / resume ------------------------------------------------
    let rt: VmRuntime = c
        .ok(M::POST, format!("{a}/agent/v1/vms/{id}/pause"), None)
        .await;
    assert_eq!(rt.state, VmPowerState::Paused);
    wait_until("paused in a report", REPORT_WAIT, || {
        reports
            .vm("host-a", &id)
            .filter(|v| v.state == VmPowerState::Paused)
    })
    .await;
    let rt: VmRuntime = c
        .ok(M::POST, format!("{a}/agent/v1/vms/{id}/resume"), None)
        .await;
    assert_eq!(rt.state, VmPowerState::Running);

    // --- suspend, resume from the state file ---------------------------
    let rt: VmRuntime = c
        .ok(M::POST, format!("{a}/agent/v1/vms/{id}/suspend"), None)
        .await;
    assert_eq!(rt.state, VmPowerState::Suspended);
    assert!(rt.pid.is_none());
    assert!(ds.join("t1/suspend.state").is_file());
    assert!(
        !ds.join("t1/vm.lock").exists(),
        "a suspended VM holds no lease"
    );
    assert!(!pid_alive(pid));
    wait_until("suspended in a report", REPORT_WAIT, || {
        reports
            .vm("host-a", &id)
            .filter(|v| v.state == VmPowerState::Suspended)
    })
    .await;

    let resumed_at = vdc_types::now_ms();
    let rt: VmRuntime = c
        .ok(
            M::POST,
            format!("{a}/agent/v1/vms/{id}/start"),
            Some(start_body.clone()),
        )
        .await;
    assert_eq!(rt.state, VmPowerState::Running);
    let pid = rt.pid.unwrap();
    assert!(
        !ds.join("t1/suspend.state").exists(),
        "state file removed after the resume"
    );
    let info = wait_until("a heartbeat after the resume", BOOT_WAIT, || {
        reports
            .vm("host-a", &id)
            .map(|v| v.guest)
            .filter(|g| g.last_heartbeat_ms.is_some_and(|t| t > resumed_at))
    })
    .await;
    assert_eq!(
        info.boot_id.as_deref(),
        Some(boot_id.as_str()),
        "the guest did not reboot"
    );

    // --- agent killed, a new one re-attaches ---------------------------
    let first_started = reports.latest("host-a").unwrap().agent_started_ms;
    agent.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pid_alive(pid), "killing the agent must not stop the VM");
    let agent = TestAgent::start("host-a", &root.path().join("sa"), &ds, &server);
    let a = agent.url.clone();
    wait_agent_up(&a).await;
    let vms: Vec<VmRuntime> = c.ok(M::GET, format!("{a}/agent/v1/vms"), None).await;
    let vm = vms
        .iter()
        .find(|v| v.id == id)
        .expect("VM known after restart");
    assert_eq!(vm.state, VmPowerState::Running);
    assert_eq!(vm.pid, Some(pid));
    wait_until(
        "a report of the new agent with the guest alive",
        REPORT_WAIT,
        || {
            let r = reports.latest("host-a")?;
            let v = r.vms.iter().find(|v| v.id == id)?;
            (r.agent_started_ms != first_started
                && v.guest.ready
                && v.guest.boot_id.as_deref() == Some(boot_id.as_str()))
            .then_some(())
        },
    )
    .await;

    // --- another host is refused by the lock ---------------------------
    let other = TestAgent::start("host-b", &root.path().join("sb"), &ds, &server);
    wait_agent_up(&other.url).await;
    let (status, v) = c
        .call(
            M::POST,
            format!("{}/agent/v1/vms/{id}/start", other.url),
            Some(start_body.clone()),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    let e: ApiError = serde_json::from_value(v).unwrap();
    assert_eq!(e.code, ErrorCode::Locked);
    assert!(e.message.contains("host-a"), "{}", e.message);
    assert!(pid_alive(pid));
    let vms: Vec<VmRuntime> = c
        .ok(M::GET, format!("{}/agent/v1/vms", other.url), None)
        .await;
    assert!(
        vms.is_empty(),
        "the refused host does not adopt the VM: {vms:?}"
    );
    other.kill();

    // --- graceful shutdown, destroy ------------------------------------
    let (status, v) = c
        .call(
            M::DELETE,
            format!("{a}/agent/v1/vms/{id}"),
            Some(json!({"config": config})),
        )
        .await;
    assert_eq!(status, 409, "a running VM cannot be destroyed: {v}");
    let rt: VmRuntime = c
        .ok(
            M::POST,
            format!("{a}/agent/v1/vms/{id}/shutdown"),
            Some(json!({"timeout_s": 60})),
        )
        .await;
    assert_eq!(rt.state, VmPowerState::Stopped);
    assert!(!pid_alive(pid));
    assert!(!ds.join("t1/vm.lock").exists());
    wait_until("stopped in a report", REPORT_WAIT, || {
        reports
            .vm("host-a", &id)
            .filter(|v| v.state == VmPowerState::Stopped)
    })
    .await;

    // --- QEMU killed behind the agent's back: crashed ------------------
    let rt: VmRuntime = c
        .ok(
            M::POST,
            format!("{a}/agent/v1/vms/{id}/start"),
            Some(start_body.clone()),
        )
        .await;
    let pid = rt.pid.unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("crashed in a report", REPORT_WAIT, || {
        reports
            .vm("host-a", &id)
            .filter(|v| v.state == VmPowerState::Crashed)
    })
    .await;
    assert!(
        !ds.join("t1/vm.lock").exists(),
        "a crashed VM's lease is released"
    );

    let (status, v) = c
        .call(
            M::DELETE,
            format!("{a}/agent/v1/vms/{id}"),
            Some(json!({"config": config})),
        )
        .await;
    assert_eq!(status, 204, "{v}");
    assert!(!ds.join("t1").exists());
    assert!(
        ds.join("templates/guest.qcow2").is_file(),
        "the template stays"
    );
    let (status, _) = c
        .call(
            M::DELETE,
            format!("{a}/agent/v1/vms/{id}"),
            Some(json!({"config": config})),
        )
        .await;
    assert_eq!(status, 404);
    agent.kill();
}

fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Image import reads only from the import directory and the datastores,
/// refuses images that would read a host file (a qcow2 backed by it, a raw
/// file holding such a qcow2 header, a link leading out), and destroy
/// removes nothing outside the VM's directory. Images made with the real
/// qemu-img; no guest is booted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_import_and_destroy_stay_inside_allowed_places() {
    let root = tempfile::tempdir().unwrap();
    let root_path = std::fs::canonicalize(root.path()).unwrap();
    let ds = root_path.join("ds");
    let import = root_path.join("import");
    let elsewhere = root_path.join("elsewhere");
    for d in [&ds, &import, &elsewhere] {
        std::fs::create_dir(d).unwrap();
    }
    let secret = elsewhere.join("shadow");
    std::fs::write(&secret, "root:SECRET-HASH:19000:0:99999:7:::\n".repeat(64)).unwrap();
    let (server, _reports) = start_server().await;
    let agent = TestAgent::start_importing(
        "host-i",
        &root_path.join("state"),
        &ds,
        &server,
        std::slice::from_ref(&import),
    );
    let a = agent.url.clone();
    wait_agent_up(&a).await;
    let c = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    };
    use reqwest::Method as M;
    let import_call = |source: &Path, format: Option<&str>, dest: &str| {
        let mut body = json!({"source": source, "datastore": "shared", "path": dest});
        if let Some(f) = format {
            body["format"] = json!(f);
        }
        c.call(M::POST, format!("{a}/agent/v1/images/import"), Some(body))
    };
    let refused = |status: u16, v: Value, what: &str| -> String {
        assert_eq!(status, 400, "{what}: {v}");
        let e: ApiError = serde_json::from_value(v).unwrap();
        assert_eq!(e.code, ErrorCode::InvalidInput, "{what}");
        e.message
    };

    // A qcow2 whose backing file is a host file: refused, nothing written.
    let evil = import.join("evil.img");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        secret.to_str().unwrap(),
        "-F",
        "raw",
        evil.to_str().unwrap(),
        "1M",
    ]);
    let (status, v) = import_call(&evil, None, "templates/evil.qcow2").await;
    let msg = refused(status, v, "qcow2 backed by a host file");
    assert!(
        msg.contains("backing file") && msg.contains(secret.to_str().unwrap()),
        "{msg}"
    );
    assert!(!ds.join("templates/evil.qcow2").exists());

    // The same bytes given as raw: a raw file holding a qcow2 header.
    let (status, v) = import_call(&evil, Some("raw"), "templates/evil.qcow2").await;
    let msg = refused(status, v, "raw file holding a qcow2 header");
    assert!(msg.contains("qcow2 image header"), "{msg}");
    assert!(!ds.join("templates/evil.qcow2").exists());

    // A plain image outside the import directory and the datastores.
    let outside = elsewhere.join("plain.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        outside.to_str().unwrap(),
        "1M",
    ]);
    let (status, v) = import_call(&outside, None, "templates/outside.qcow2").await;
    let msg = refused(status, v, "a path outside the allowed places");
    assert!(msg.contains("not inside an import directory"), "{msg}");
    let (status, v) = import_call(&secret, Some("raw"), "templates/shadow.qcow2").await;
    refused(status, v, "a host file outside the allowed places");

    // A symbolic link in the import directory leading out: resolved first.
    std::os::unix::fs::symlink(&secret, import.join("link.img")).unwrap();
    let (status, v) = import_call(&import.join("link.img"), Some("raw"), "templates/l.qcow2").await;
    let msg = refused(status, v, "a link leading out of the import directory");
    assert!(msg.contains("not inside an import directory"), "{msg}");
    assert!(!ds.join("templates/l.qcow2").exists());

    // A clean raw image in the import directory is imported as raw.
    let good = import.join("good.img");
    std::fs::write(&good, vec![0u8; 4 * MIB as usize]).unwrap();
    let (status, v) = import_call(&good, Some("raw"), "templates/good.qcow2").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["format"], "raw");
    assert_eq!(v["size_bytes"], 4 * MIB);
    let (status, v) = import_call(&good, Some("qcow2"), "templates/good2.qcow2").await;
    let msg = refused(status, v, "a raw image given as qcow2");
    assert!(msg.contains("holds a raw image"), "{msg}");

    // Destroy removes the VM's directory but not a disk kept elsewhere.
    let id = uuid::Uuid::new_v4().to_string();
    let config = VmConfig {
        version: vdc_types::vm::VM_CONFIG_VERSION,
        id: id.clone(),
        name: "d1".into(),
        cpus: 1,
        memory_mib: 128,
        datastore: "shared".into(),
        dir: "d1".into(),
        disks: vec![
            DiskSpec {
                name: "disk0".into(),
                datastore: "shared".into(),
                path: "d1/disk0.qcow2".into(),
                size_bytes: 8 * MIB,
            },
            DiskSpec {
                name: "data".into(),
                datastore: "shared".into(),
                path: "keep/data.qcow2".into(),
                size_bytes: 8 * MIB,
            },
        ],
        nics: vec![],
        hostname: "d1".into(),
        template: None,
        linked_clone: false,
        created_ms: vdc_types::now_ms(),
        machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
        cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        ha: Default::default(),
        guest_agent: false,
        hotplug_ports: 0,
    };
    let _: VmRuntime = c
        .ok(
            M::PUT,
            format!("{a}/agent/v1/vms/{id}"),
            Some(json!({"config": config, "boot_source": {"type": "blank"}})),
        )
        .await;
    assert!(ds.join("d1/disk0.qcow2").is_file());
    assert!(ds.join("keep/data.qcow2").is_file());
    // A machine type this host's QEMU does not offer: refused before any
    // process or lease exists.
    let mut old_machine = config.clone();
    old_machine.machine_type = "pc-q35-1.0".into();
    let (status, v) = c
        .call(
            M::POST,
            format!("{a}/agent/v1/vms/{id}/start"),
            Some(json!({ "config": old_machine })),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    let e: ApiError = serde_json::from_value(v).unwrap();
    assert!(
        e.message.contains("no machine type 'pc-q35-1.0'"),
        "{}",
        e.message
    );
    assert!(!ds.join("d1/vm.lock").exists());
    // Without a readable vm.json the agent still removes only the VM's
    // directory.
    std::fs::remove_file(ds.join("d1/vm.json")).unwrap();
    let (status, v) = c
        .call(
            M::DELETE,
            format!("{a}/agent/v1/vms/{id}"),
            Some(json!({"config": config})),
        )
        .await;
    assert_eq!(status, 204, "{v}");
    assert!(!ds.join("d1").exists());
    assert!(
        ds.join("keep/data.qcow2").is_file(),
        "a disk outside the VM directory is left in place"
    );
    assert!(secret.is_file());
    agent.kill();
}
