//! Fencing on real guests: the VM lease is held by a supervisor process
//! beside QEMU, so a frozen or killed agent leaves its VMs running and
//! leased, a foreign lease is respected, a stale one is taken only after
//! its TTL, and a VM whose lease cannot be renewed (a frozen datastore)
//! stops before anyone else could take it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vdc_client::Client;
use vdc_test_infra::fencing::{pid_killed, pid_running, read_lease, read_pid, LoopDatastore};
use vdc_test_infra::{wait_until, wait_until_async, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::{ErrorCode, Vm, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);
/// The agents' default lease TTL.
const TTL: Duration = Duration::from_secs(3);
/// Longest wait for a few lease renewals on a loaded machine.
const RENEW_WAIT: Duration = Duration::from_secs(60);

async fn lab(hosts: usize) -> TestLab {
    TestLab::builder(hosts)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await
}

async fn create(lab: &TestLab, name: &str, datastore: Option<&str>, start: bool) -> Vm {
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(160),
            host: Some("host-1".into()),
            datastore: datastore.map(str::to_string),
            start,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("create {name} failed: {e}");
    }
    if start {
        wait_vm(c, name, |v| {
            v.state == VmPowerState::Running && v.guest.ready
        })
        .await
    } else {
        c.get_vm(name).await.expect("VM record")
    }
}

/// `(boot_id, counter)` as the guest's service answers from host `from`.
fn identity(lab: &TestLab, from: &str, vm: &Vm) -> (String, u64) {
    let addr = vm
        .guest
        .address
        .clone()
        .expect("the guest reports its address");
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(from, &addr, &[]).ok()
    });
    let parts: Vec<String> = lines[0].split_whitespace().map(str::to_string).collect();
    (parts[1].clone(), parts[2].parse().expect("a counter"))
}

/// Waits until the lease of `vm_dir` is held by `host` with a generation
/// at least `at_least`; returns that generation.
fn wait_lease(vm_dir: &Path, host: &str, at_least: u64) -> u64 {
    wait_until(
        RENEW_WAIT,
        &format!("a lease of {host} at generation {at_least}"),
        || {
            read_lease(vm_dir)
                .filter(|l| l.host == host && l.generation >= at_least)
                .map(|l| l.generation)
        },
    )
}

/// Asks `host`'s agent directly to start the VM of `vm_dir` (bypassing the
/// server's bookkeeping); returns the status and error body.
async fn agent_start(lab: &TestLab, host: &str, vm_dir: &Path) -> (u16, vdc_types::ApiError) {
    let config: vdc_types::VmConfig =
        serde_json::from_slice(&std::fs::read(vm_dir.join("vm.json")).unwrap()).unwrap();
    let url = lab.client.get_host(host).await.unwrap().agent_url;
    let http = reqwest::Client::new();
    // The agent API takes only the server's credential, which a join with
    // the host's own agent credential returns.
    let state_dir = lab.agent_state_dir(host);
    let agent_credential = std::fs::read_to_string(state_dir.join("credential")).unwrap();
    let joined: vdc_types::auth::JoinResponse = http
        .post(format!("{}/api/v1/agent/join", lab.info.api_url))
        .bearer_auth(agent_credential.trim())
        .json(&json!({ "host": host }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(format!("{url}/agent/v1/vms/{}/start", config.id))
        .bearer_auth(&joined.server_credential)
        .json(&vdc_types::agent::AgentStartRequest { config })
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    let err = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}"));
    (status, err)
}

fn run_dir(lab: &TestLab, vm: &Vm) -> PathBuf {
    lab.agent_state_dir("host-1").join("vms").join(&vm.id)
}

async fn action(c: &Client, name: &str, act: &str) -> Result<(), String> {
    let t = c
        .vm_action(name, act, json!({}))
        .await
        .map_err(|e| e.to_string())?;
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_or_killed_agent_leaves_vms_running_and_leased() {
    let lab = lab(2).await;
    let c = &lab.client;
    let vm = create(&lab, "fz-1", None, true).await;
    let vm_dir = lab.datastore_path("shared").join("fz-1");
    let (boot, _) = identity(&lab, "host-2", &vm);
    let supervisor = read_pid(&run_dir(&lab, &vm).join("supervisor.pid")).expect("a supervisor");
    let qemu = vm_pid(&lab, &vm);

    // Frozen agent: the supervisor keeps renewing, the guest keeps running.
    let frozen = lab.freeze_agent("host-1");
    let g0 = wait_lease(&vm_dir, "host-1", 1);
    wait_lease(&vm_dir, "host-1", g0 + 3);
    assert_eq!(identity(&lab, "host-2", &vm).0, boot);
    wait_vm(c, "fz-1", |v| v.state == VmPowerState::Unknown).await;
    // Nothing runs twice: host-2 sees the lease renewing and refuses.
    let (status, e) = agent_start(&lab, "host-2", &vm_dir).await;
    assert_eq!((status, e.code), (409, ErrorCode::Locked), "{}", e.message);
    assert!(e.message.contains("host-1"), "{}", e.message);
    assert!(pid_running(qemu), "QEMU runs on");
    frozen.thaw();
    wait_vm(c, "fz-1", |v| {
        v.state == VmPowerState::Running && v.owner.as_deref() == Some("host-1") && v.guest.ready
    })
    .await;
    assert_eq!(identity(&lab, "host-2", &vm).0, boot);

    // Killed agent: the same; a new agent re-attaches to QEMU and to the
    // same supervisor.
    lab.kill_agent("host-1");
    let g1 = wait_lease(&vm_dir, "host-1", 1);
    wait_lease(&vm_dir, "host-1", g1 + 2);
    assert_eq!(identity(&lab, "host-2", &vm).0, boot);
    lab.restart_agent("host-1");
    wait_vm(c, "fz-1", |v| {
        v.state == VmPowerState::Running && v.owner.as_deref() == Some("host-1") && v.guest.ready
    })
    .await;
    assert_eq!(identity(&lab, "host-2", &vm).0, boot);
    assert_eq!(
        read_pid(&run_dir(&lab, &vm).join("supervisor.pid")),
        Some(supervisor),
        "the supervisor was replaced"
    );
    assert!(pid_running(supervisor) && pid_running(qemu));

    // A supervisor that dies is replaced at once; the VM keeps running and
    // leased.
    vdc_test_infra::fencing::signal(supervisor, nix::sys::signal::Signal::SIGKILL);
    let supervisor = wait_until(RENEW_WAIT, "a new supervisor", || {
        read_pid(&run_dir(&lab, &vm).join("supervisor.pid"))
            .filter(|p| *p != supervisor && pid_running(*p))
    });
    let g2 = wait_lease(&vm_dir, "host-1", 1);
    wait_lease(&vm_dir, "host-1", g2 + 2);
    assert!(pid_running(qemu));
    assert_eq!(identity(&lab, "host-2", &vm).0, boot);

    // A power-off releases the lease and ends the supervisor. (On a loaded
    // machine a late report can show the VM `unknown` for a moment, which
    // refuses the stop: ask again once the host reports.)
    wait_until_async(VM_WAIT_TIMEOUT, "the stop to be accepted", || async {
        match action(c, "fz-1", "stop").await {
            Ok(()) => Some(()),
            Err(e) if e.contains("stopped reporting") => None,
            Err(e) => panic!("stop: {e}"),
        }
    })
    .await;
    assert_eq!(read_lease(&vm_dir), None, "lease released");
    wait_until(VM_WAIT_TIMEOUT, "the supervisor to exit", || {
        (!pid_running(supervisor)).then_some(())
    });
}

/// The supervisor's `fence.json` in a VM's runtime directory, once written.
fn fence_record(run_dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(run_dir.join("fence.json")).ok()?).ok()
}

fn vm_pid(lab: &TestLab, vm: &Vm) -> u32 {
    read_pid(&run_dir(lab, vm).join("qemu.pid")).expect("a QEMU pid")
}

/// Writes a version 2 lease of `host` at `generation` the way a holder
/// does (temporary file, rename).
fn plant_lease(vm_dir: &Path, host: &str, generation: u64) {
    let tmp = vm_dir.join("vm.lock.planted.tmp");
    let body = json!({
        "version": 2, "host": host, "holder": "planted", "generation": generation,
        "ttl_ms": TTL.as_millis() as u64, "renewed_ms": vdc_types::now_ms(),
    });
    std::fs::write(&tmp, body.to_string()).unwrap();
    std::fs::rename(&tmp, vm_dir.join("vm.lock")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_leases_are_respected_live_stale_and_after_a_takeover() {
    let lab = lab(1).await;
    let c = &lab.client;
    let vm = create(&lab, "pl-1", None, false).await;
    let vm_dir = lab.datastore_path("shared").join("pl-1");

    // Another host's lease, renewed: the start is refused, nothing runs.
    let renewing = Arc::new(AtomicBool::new(true));
    let renewer = {
        let (renewing, vm_dir) = (renewing.clone(), vm_dir.clone());
        std::thread::spawn(move || {
            let mut g = 100;
            while renewing.load(Ordering::SeqCst) {
                plant_lease(&vm_dir, "host-9", g);
                g += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let (status, e) = agent_start(&lab, "host-1", &vm_dir).await;
    assert_eq!((status, e.code), (409, ErrorCode::Locked), "{}", e.message);
    assert!(e.message.contains("host-9"), "{}", e.message);
    assert_eq!(e.details.as_ref().unwrap()["holder_host"], "host-9");
    let err = action(c, "pl-1", "start").await.expect_err("start refused");
    assert!(err.contains("host-9"), "{err}");
    let run = run_dir(&lab, &vm);
    assert!(
        read_pid(&run.join("qemu.pid")).map_or(true, |p| !pid_running(p)),
        "a QEMU was started"
    );
    assert_eq!(c.get_vm("pl-1").await.unwrap().state, VmPowerState::Stopped);
    assert_eq!(read_lease(&vm_dir).unwrap().host, "host-9");

    // The holder stops renewing: the lease is stale only once it stayed
    // unchanged for a TTL; then host-1 takes it and the VM runs.
    renewing.store(false, Ordering::SeqCst);
    renewer.join().unwrap();
    let last = read_lease(&vm_dir).unwrap();
    let began = Instant::now();
    action(c, "pl-1", "start")
        .await
        .expect("start after the TTL");
    assert!(
        began.elapsed() > TTL,
        "a lease unchanged for only {:?} was taken",
        began.elapsed()
    );
    let lease = read_lease(&vm_dir).unwrap();
    assert_eq!(lease.host, "host-1");
    assert!(lease.generation > last.generation);
    let vm = wait_vm(c, "pl-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    identity(&lab, "host-1", &vm);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_that_cannot_renew_its_lease_stops_before_the_ttl() {
    let lab = lab(1).await;
    let c = &lab.client;
    let local = lab.datastore_path("local-host-1");
    let agent = lab.agent_pid("host-1").expect("an agent");
    let mut ds = LoopDatastore::mount_over(&local, 512, agent);
    let vm = create(&lab, "st-1", Some("local-host-1"), true).await;
    let vm_dir = ds.seen(&local.join("st-1"));
    let run = run_dir(&lab, &vm);
    let qemu = vm_pid(&lab, &vm);
    identity(&lab, "host-1", &vm);

    let mut events = Box::pin(
        c.events(&["vm.fenced".to_string()])
            .await
            .expect("event stream"),
    );
    // Watch the lease as a contender would, noting when its last
    // generation was first seen; then stall the datastore.
    let mut last = wait_lease(&vm_dir, "host-1", 1);
    let mut seen_at = Instant::now();
    ds.freeze();
    let deadline = Instant::now() + RENEW_WAIT;
    let killed_at = loop {
        let now = Instant::now();
        if let Some(l) = read_lease(&vm_dir) {
            if l.generation != last {
                last = l.generation;
                seen_at = now;
            }
        }
        if pid_killed(qemu) {
            break now;
        }
        assert!(now < deadline, "QEMU still runs on a frozen datastore");
        std::thread::sleep(Duration::from_millis(50));
    };
    // A contender may take the lease only after seeing it unchanged for a
    // TTL: QEMU was stopped before that.
    assert!(
        killed_at < seen_at + TTL,
        "QEMU stopped {:?} after the lease last changed (TTL {TTL:?})",
        killed_at - seen_at
    );
    // The supervisor records why right after the kill.
    let fence = wait_until(VM_WAIT_TIMEOUT, "fence.json", || fence_record(&run));
    assert_eq!(fence["kind"], "fenced", "{fence}");
    let lease = read_lease(&vm_dir).unwrap();
    assert_eq!((lease.host.as_str(), lease.generation), ("host-1", last));

    ds.thaw();
    wait_until(VM_WAIT_TIMEOUT, "QEMU to exit", || {
        (!pid_running(qemu)).then_some(())
    });
    let vm = wait_vm(c, "st-1", |v| v.state == VmPowerState::Crashed).await;
    let reason = vm.fenced.expect("the server shows why the VM stopped");
    assert!(reason.contains("lease"), "{reason}");
    // The event stream says so too.
    let event = tokio::time::timeout(VM_WAIT_TIMEOUT, async {
        use futures::StreamExt;
        while let Some(e) = events.next().await {
            let e = e.expect("an event");
            if e.object == "st-1" {
                return e;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("a vm.fenced event");
    assert!(
        event.data["reason"]
            .as_str()
            .is_some_and(|f| f.contains("lease")),
        "{event:?}"
    );
    // The fenced lease is left for its TTL to run out, never released.
    assert_eq!(
        read_lease(&vm_dir).map(|l| l.host).as_deref(),
        Some("host-1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handed_over_lease_is_taken_at_once_by_the_successor_only() {
    let lab = lab(2).await;
    let c = &lab.client;
    let vm = create(&lab, "ho-1", None, true).await;
    let vm_dir = lab.datastore_path("shared").join("ho-1");
    let run = run_dir(&lab, &vm);
    let qemu = vm_pid(&lab, &vm);
    let (boot, _) = identity(&lab, "host-2", &vm);
    // A hand-over is for a VM whose vCPUs are stopped (a switchover).
    action(c, "ho-1", "pause").await.expect("pause");

    let status = vdc_supervisor::client::hand_over(&run, "host-2", Duration::from_secs(30))
        .await
        .expect("hand-over accepted");
    assert_eq!(status.successor.as_deref(), Some("host-2"));
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm_dir.join("vm.lock")).unwrap()).unwrap();
    assert_eq!(lock["successor"], "host-2", "{lock}");
    assert_eq!(lock["host"], "host-1", "{lock}");

    // The successor takes it without watching it for a TTL. (Its supervisor
    // is started here as the agent would; both "hosts" share this machine,
    // where QEMU's image lock would refuse a second QEMU until the first is
    // gone: a migration's incoming QEMU does not take it.)
    // Its runtime directory: beside host-2's agent's own (not under `vms/`).
    let successor_dir = lab.agent_state_dir("host-2").join("successor");

    let successor = vdc_supervisor::client::start(&vdc_supervisor::client::Launch {
        program: env!("CARGO_BIN_EXE_vdc").into(),
        host: "host-2".into(),
        vm_id: vm.id.clone(),
        vm_dir: vm_dir.clone(),
        run_dir: successor_dir,
        timing: vdc_disk::LeaseTiming::default(),
        qemu_pid: None,
        lease_seen: None,
    })
    .await
    .expect("the successor's supervisor");
    // The successor took the lease by hand-over; it may have renewed it
    // since (a newer generation, still its own).
    let vdc_supervisor::Hello::Leased {
        generation,
        took_over,
    } = successor.hello.clone()
    else {
        panic!("the successor holds no lease: {:?}", successor.hello);
    };
    assert_eq!(took_over.as_deref(), Some("handed_over"));
    let lease = read_lease(&vm_dir).unwrap();
    assert!(
        lease.generation >= generation,
        "{lease:?} after {generation}"
    );
    assert_eq!(read_lease(&vm_dir).unwrap().host, "host-2");
    // The old QEMU is stopped: the VM is the successor's now.
    wait_until(VM_WAIT_TIMEOUT, "host-1's QEMU to stop", || {
        (!pid_running(qemu)).then_some(())
    });
    let fence = wait_until(VM_WAIT_TIMEOUT, "fence.json", || fence_record(&run));
    assert_eq!(fence["kind"], "handed_over", "{fence}");
    let stopped = wait_vm(c, "ho-1", |v| v.state == VmPowerState::Stopped).await;
    assert!(
        stopped
            .fenced
            .as_deref()
            .is_some_and(|f| f.contains("host-2")),
        "{:?}",
        stopped.fenced
    );
    // The successor runs it (here: the agent of host-2 starts it afresh).
    successor.abort().await;
    let t = c
        .vm_action("ho-1", "start", json!({ "host": "host-2" }))
        .await
        .expect("start accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("started on host-2");
    let vm = wait_vm(c, "ho-1", |v| {
        v.state == VmPowerState::Running && v.owner.as_deref() == Some("host-2") && v.guest.ready
    })
    .await;
    assert_eq!(read_lease(&vm_dir).unwrap().host, "host-2");
    // Not a migration: the successor booted the VM afresh.
    assert_ne!(identity(&lab, "host-1", &vm).0, boot);
}
