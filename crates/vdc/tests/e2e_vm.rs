//! End-to-end tests on real guests: a lab of hosts (network namespaces, an
//! agent in each, the server), VMs booted under QEMU, and checks of what the
//! guest itself reports over the network.

use std::time::Duration;

use serde_json::json;
use vdc_client::Client;
use vdc_test_infra::{wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::{Vm, VmAction, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);

async fn run_task(c: &Client, t: vdc_types::Task) {
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("task {} {} failed: {e}", t.kind, t.target);
    }
}

async fn create(lab: &TestLab, name: &str, host: &str) -> Vm {
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(160),
            host: Some(host.into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    run_task(c, t).await;
    wait_vm(c, name, |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await
}

async fn action(c: &Client, name: &str, act: VmAction) {
    let t = c
        .vm_action(name, act, json!({}))
        .await
        .unwrap_or_else(|e| panic!("{act} {name}: {e}"));
    run_task(c, t).await;
}

/// `(hostname, boot_id, counter)` as the guest's service answers it, asked
/// from inside another host's network namespace.
fn identity(lab: &TestLab, from_host: &str, addr: &str) -> (String, String, u64) {
    let lines = vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(from_host, addr, &[]).ok()
    });
    let first = lines.first().expect("a greeting line");
    let parts: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "unexpected greeting {first:?}");
    (
        parts[0].to_string(),
        parts[1].to_string(),
        parts[2].parse().expect("a numeric counter"),
    )
}

fn addr(vm: &Vm) -> String {
    vm.guest
        .address
        .clone()
        .expect("the guest reports its address")
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_lifecycle_on_a_real_guest() {
    let lab = TestLab::start(2).await;
    let c = &lab.client;
    let vm = create(&lab, "web-1", "host-1").await;
    assert_eq!(vm.owner.as_deref(), Some("host-1"));
    let ip = addr(&vm);
    assert_eq!(
        Some(ip.clone()),
        vm.nics[0]
            .ip
            .as_ref()
            .map(|i| i.split('/').next().unwrap().to_string())
    );

    // The ready marker on the serial console.
    let console = c.console("web-1", 65536).await.unwrap();
    assert!(console.contains("VDC-GUEST-READY"), "console:\n{console}");

    // Reach the guest from the other host's namespace.
    let (hostname, boot1, n1) = identity(&lab, "host-2", &ip);
    assert_eq!(hostname, "web-1");

    // Data written in the guest.
    let out = lab
        .guest_request("host-2", &ip, &["write note hello-from-test"])
        .unwrap();
    assert_eq!(out.get(1).map(String::as_str), Some("ok"), "{out:?}");

    // Pause and resume: same boot, the counter goes on.
    action(c, "web-1", VmAction::Pause).await;
    let v = c.get_vm("web-1").await.unwrap();
    assert_eq!(v.state, VmPowerState::Paused);
    assert!(
        v.operation.is_none(),
        "the operation outlived its task: {v:?}"
    );
    assert!(
        v.actions.contains(&VmAction::Resume) && !v.actions.contains(&VmAction::Pause),
        "{:?}",
        v.actions
    );
    // The lifecycle refuses what the state does not allow, and says why.
    let err = c
        .vm_action("web-1", VmAction::Pause, json!({}))
        .await
        .expect_err("a paused VM cannot be paused");
    assert!(err.to_string().contains("it must be running"), "{err}");
    action(c, "web-1", VmAction::Resume).await;
    let (_, boot2, n2) = identity(&lab, "host-2", &ip);
    assert_eq!(boot2, boot1, "pause/resume rebooted the guest");
    assert!(n2 >= n1, "counter went back: {n1} -> {n2}");

    // Suspend to disk and resume: same boot, the counter goes on.
    action(c, "web-1", VmAction::Suspend).await;
    let v = c.get_vm("web-1").await.unwrap();
    assert_eq!(v.state, VmPowerState::Suspended);
    let shared = lab
        .info
        .datastores
        .iter()
        .find(|d| d.kind == "shared")
        .unwrap();
    assert!(
        shared.path.join("web-1/suspend.state").is_file(),
        "no state file in the VM directory"
    );
    // Reports from its host must not bring back a guest that no longer runs.
    for _ in 0..4 {
        let v = c.get_vm("web-1").await.unwrap();
        assert_eq!(v.state, VmPowerState::Suspended);
        assert!(!v.guest.ready, "a suspended VM shows a ready guest");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    action(c, "web-1", VmAction::Resume).await;
    let v = wait_vm(c, "web-1", |v| v.state == VmPowerState::Running).await;
    assert_eq!(
        v.owner.as_deref(),
        Some("host-1"),
        "resumed on another host than it was suspended on"
    );
    assert!(
        !shared.path.join("web-1/suspend.state").exists(),
        "the used state file was left behind"
    );
    let (_, boot3, n3) = identity(&lab, "host-2", &ip);
    assert_eq!(boot3, boot1, "suspend/resume rebooted the guest");
    assert!(n3 >= n2, "counter went back: {n2} -> {n3}");

    // Graceful shutdown, start again: a new boot, and the data is there.
    let t = c
        .vm_action("web-1", "shutdown", json!({"timeout_s": 60}))
        .await
        .unwrap();
    run_task(c, t).await;
    assert_eq!(
        c.get_vm("web-1").await.unwrap().state,
        VmPowerState::Stopped
    );
    // Start it on the other host this time (shared datastore).
    let t = c
        .vm_action("web-1", "start", json!({"host": "host-2"}))
        .await
        .unwrap();
    run_task(c, t).await;
    let vm = wait_vm(c, "web-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    assert_eq!(vm.owner.as_deref(), Some("host-2"));
    let (_, boot4, _) = identity(&lab, "host-1", &addr(&vm));
    assert_ne!(boot4, boot1, "a stop/start must boot the guest anew");
    // Host 1 still remembers the VM as stopped: its reports must not flip
    // the state the cluster shows (several report rounds).
    for _ in 0..8 {
        let v = c.get_vm("web-1").await.unwrap();
        assert_eq!(
            (v.state, v.owner.as_deref()),
            (VmPowerState::Running, Some("host-2"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = lab
        .guest_request("host-1", &addr(&vm), &["read note"])
        .unwrap();
    assert_eq!(
        out.get(1).map(String::as_str),
        Some("hello-from-test"),
        "{out:?}"
    );

    // Reset keeps it running; power off stops; delete removes it.
    action(c, "web-1", VmAction::Reset).await;
    wait_vm(c, "web-1", |v| v.state == VmPowerState::Running).await;
    action(c, "web-1", VmAction::Stop).await;
    assert_eq!(
        c.get_vm("web-1").await.unwrap().state,
        VmPowerState::Stopped
    );
    let t = c.delete_vm("web-1").await.unwrap();
    run_task(c, t).await;
    assert!(c.get_vm("web-1").await.is_err());
    let shared = lab
        .info
        .datastores
        .iter()
        .find(|d| d.kind == "shared")
        .unwrap();
    assert!(
        !shared.path.join("web-1").exists(),
        "delete left the VM directory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_crash_keeps_vms_and_locks_hold() {
    let lab = TestLab::start(2).await;
    let c = &lab.client;
    let vm = create(&lab, "db-1", "host-1").await;
    let ip = addr(&vm);
    let (_, boot1, _) = identity(&lab, "host-2", &ip);

    // Host 2 must not be able to start a VM host 1 holds, even when asked
    // directly (the datastore lock, not only the server's bookkeeping).
    let shared = lab
        .info
        .datastores
        .iter()
        .find(|d| d.kind == "shared")
        .unwrap();
    let config: vdc_types::VmConfig =
        serde_json::from_slice(&std::fs::read(shared.path.join("db-1/vm.json")).unwrap()).unwrap();
    let host2 = c.get_host("host-2").await.unwrap();
    let http = reqwest::Client::new();
    let start_url = format!("{}/agent/v1/vms/{}/start", host2.agent_url, config.id);
    let start = vdc_types::agent::AgentStartRequest { config };
    // The agent API takes only the server's credential: the user token is
    // refused; the credential comes from a join with host 2's own.
    let token = std::fs::read_to_string(&lab.info.token_file).unwrap();
    let r = http
        .post(&start_url)
        .bearer_auth(token.trim())
        .json(&start)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let host2_dir = &lab
        .info
        .hosts
        .iter()
        .find(|h| h.name == "host-2")
        .unwrap()
        .state_dir;
    let agent_credential = std::fs::read_to_string(host2_dir.join("credential")).unwrap();
    let joined: vdc_types::auth::JoinResponse = http
        .post(format!("{}/api/v1/agent/join", lab.info.api_url))
        .bearer_auth(agent_credential.trim())
        .json(&json!({"host": "host-2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(&start_url)
        .bearer_auth(&joined.server_credential)
        .json(&start)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let e: vdc_types::ApiError = r.json().await.unwrap();
    assert_eq!(e.code, vdc_types::ErrorCode::Locked);
    assert!(e.message.contains("host-1"), "{}", e.message);
    // Through the API too.
    let err = c
        .vm_action("db-1", "start", json!({"host": "host-2"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("running"), "{err}");

    // kill -9 the agent of host 1: the VM keeps running.
    lab.kill_agent("host-1");
    let (_, boot2, _) = identity(&lab, "host-2", &ip);
    assert_eq!(boot2, boot1, "the guest restarted when its agent died");
    wait_vm(c, "db-1", |v| v.state == VmPowerState::Unknown).await;

    // A new agent re-attaches and manages the VM again.
    lab.restart_agent("host-1");
    wait_vm(c, "db-1", |v| {
        v.state == VmPowerState::Running && v.owner.as_deref() == Some("host-1")
    })
    .await;
    let (_, boot3, _) = identity(&lab, "host-2", &ip);
    assert_eq!(boot3, boot1);
    // The control plane dies and comes back: the VM keeps running and the
    // new server learns its state from the agents' reports.
    lab.kill_server();
    let (_, boot_s, _) = identity(&lab, "host-2", &ip);
    assert_eq!(boot_s, boot1, "the guest restarted when the server died");
    lab.restart_server();
    vdc_test_infra::wait_until_async(VM_WAIT_TIMEOUT, "the restarted server", || async {
        c.list_hosts().await.ok().filter(|h| {
            h.len() == 2 && h.iter().all(|h| h.state == vdc_types::HostState::Connected)
        })
    })
    .await;
    wait_vm(c, "db-1", |v| {
        v.state == VmPowerState::Running && v.owner.as_deref() == Some("host-1")
    })
    .await;
    action(c, "db-1", VmAction::Pause).await;
    action(c, "db-1", VmAction::Resume).await;
    action(c, "db-1", VmAction::Stop).await;
    assert_eq!(c.get_vm("db-1").await.unwrap().state, VmPowerState::Stopped);
    assert!(
        lab.guest_request("host-2", &ip, &[]).is_err(),
        "the guest still answers after power-off"
    );
}
