//! High availability on real guests (the chaos suite): a killed host's VMs
//! run again elsewhere with their data; an isolated host, a link blip or a
//! frozen agent restart nothing; a server killed in the middle of a
//! failover finishes it after its restart. Throughout, an invariant checker
//! watches every QEMU of the lab and fails the test if a VM ever runs on
//! two hosts at once with its vCPUs running.

use std::time::{Duration, Instant};

use vdc_test_infra::fencing::read_lease;
use vdc_test_infra::ha::Fault;
use vdc_test_infra::{wait_until, wait_until_async, wait_vm_timeout, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::ha::{
    HaHostState, HaPriority, IsolationResponse, SetHaPolicyRequest, UpdateVmRequest,
};
use vdc_types::{Event, TaskState, Vm, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest wait for a failover (detection, lease expiry, boot) on a loaded
/// machine.
const FAILOVER_WAIT: Duration = Duration::from_secs(180);
/// Longest wait for a host's HA state or an event.
const STATE_WAIT: Duration = Duration::from_secs(60);

async fn lab(hosts: usize) -> TestLab {
    TestLab::builder(hosts)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await
}

/// Creates VM `name` on `host`, started, and waits until its guest is ready.
async fn create(lab: &TestLab, name: &str, host: &str) -> Vm {
    create_with(lab, name, host, None, None).await
}

async fn create_with(
    lab: &TestLab,
    name: &str,
    host: &str,
    priority: Option<HaPriority>,
    isolation: Option<IsolationResponse>,
) -> Vm {
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            host: Some(host.into()),
            start: true,
            ha_priority: priority,
            isolation_response: isolation,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("create {name} failed: {e}");
    }
    wait_vm_timeout(c, name, VM_WAIT_TIMEOUT, |v| {
        v.state == VmPowerState::Running && v.guest.ready && v.guest.address.is_some()
    })
    .await
}

/// Sends `lines` to the guest of `vm` from inside `host`'s namespace,
/// retrying until it answers.
fn ask(lab: &TestLab, host: &str, vm: &Vm, lines: &[&str]) -> Vec<String> {
    let addr = vm.guest.address.clone().expect("guest address");
    wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(host, &addr, lines).ok()
    })
}

/// The HA events so far.
async fn ha_events(lab: &TestLab) -> Vec<Event> {
    lab.client
        .event_history("ha.*")
        .await
        .expect("event history")
}

/// Waits for an HA event on `object` with `topic` matching `pred`.
async fn wait_event(
    lab: &TestLab,
    topic: &str,
    object: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    wait_until_async(
        STATE_WAIT,
        &format!("event {topic} on {object}"),
        || async {
            ha_events(lab)
                .await
                .into_iter()
                .find(|e| e.topic == topic && e.object == object && pred(e))
        },
    )
    .await
}

/// Waits until `host`'s HA state is `state`.
async fn wait_ha_state(lab: &TestLab, host: &str, state: HaHostState) {
    wait_until_async(STATE_WAIT, &format!("{host} to be {state}"), || async {
        let st = lab.client.ha_status().await.ok()?;
        st.hosts
            .iter()
            .find(|h| h.name == host && h.state == state)
            .map(|_| ())
    })
    .await
}

/// Waits until `vm`'s lease has been renewed by `host` `n` more times: the
/// time a TTL-based take-over would have needed has passed while it held.
fn wait_renewals(lab: &TestLab, vm: &str, host: &str, n: u64) {
    let dir = lab.datastore_path("shared").join(vm);
    let first = wait_until(STATE_WAIT, "the VM's lease", || {
        read_lease(&dir)
            .filter(|l| l.host == host)
            .map(|l| l.generation)
    });
    wait_until(
        STATE_WAIT,
        &format!("{n} renewals of {vm}'s lease by {host}"),
        || read_lease(&dir).filter(|l| l.host == host && l.generation >= first + n),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_s_vms_run_elsewhere_with_their_data_high_priority_first() {
    let lab = lab(3).await;
    let checker = lab.invariant_checker();
    // Restart order: "ha-b" high (set at create), "ha-a" low (updated).
    let a = create(&lab, "ha-a", "host-1").await;
    let b = create_with(&lab, "ha-b", "host-1", Some(HaPriority::High), None).await;
    let updated = lab
        .client
        .update_vm(
            "ha-a",
            &UpdateVmRequest {
                ha_priority: Some(HaPriority::Low),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.ha.priority, HaPriority::Low);
    assert_eq!(b.ha.priority, HaPriority::High);
    for vm in [&a, &b] {
        let answer = ask(
            &lab,
            "host-1",
            vm,
            &[&format!("write note written-by-{}", vm.name)],
        );
        assert_eq!(answer.last().map(String::as_str), Some("ok"), "{answer:?}");
    }
    checker.check();

    let killed = Instant::now();
    let said = lab.fail_host("host-1", Fault::Kill);
    eprintln!("{said}");
    for vm in [&a, &b] {
        let moved = wait_vm_timeout(&lab.client, &vm.name, FAILOVER_WAIT, |v| {
            v.state == VmPowerState::Running
                && v.owner.as_deref().is_some_and(|o| o != "host-1")
                && v.operation.is_none()
                && v.guest.ready
        })
        .await;
        checker.check();
        let host = moved.owner.clone().unwrap();
        eprintln!(
            "{} ready on {host} {:?} after the kill",
            vm.name,
            killed.elapsed()
        );
        let answer = ask(&lab, &host, &moved, &["read note"]);
        assert_eq!(
            answer.last().map(String::as_str),
            Some(format!("written-by-{}", vm.name).as_str()),
            "{answer:?}"
        );
        wait_event(&lab, "ha.vm_restarted", &vm.name, |e| {
            e.data["from"] == "host-1"
        })
        .await;
    }
    let failed = wait_event(&lab, "ha.host_state_changed", "host-1", |e| {
        e.data["to"] == "failed"
    })
    .await;
    // Before the verdict, host-1's late reports made it suspect and the
    // surviving hosts began watching its VMs' leases; each restarted QEMU
    // was prepared with its vCPUs stopped (-S) while the rest of the TTL
    // ran out, then continued (its guest answered above).
    let suspect = wait_event(&lab, "ha.lease_watch", "host-1", |e| {
        e.data["suspect"] == true
    })
    .await;
    assert!(suspect.seq < failed.seq, "{suspect:?} {failed:?}");
    for vm in [&a, &b] {
        let lines = lab.qemu_command_lines(&vm.name);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].1.iter().any(|a| a == "-S"), "{lines:?}");
    }
    assert!(
        failed.data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no datastore heartbeat")),
        "{failed:?}"
    );
    let tasks = lab.client.list_tasks().await.unwrap();
    for vm in [&a, &b] {
        let ok = tasks
            .iter()
            .filter(|t| {
                t.kind == "vm.failover" && t.target == vm.name && t.state == TaskState::Succeeded
            })
            .count();
        assert_eq!(ok, 1, "one successful failover of {}", vm.name);
    }
    // High first: the low-priority VM's failover began after the
    // high-priority one had restarted.
    let events = ha_events(&lab).await;
    let seq = |topic: &str, vm: &str| {
        events
            .iter()
            .find(|e| e.topic == topic && e.object == vm)
            .map(|e| e.seq)
            .unwrap_or_else(|| panic!("{topic} of {vm}: {events:#?}"))
    };
    assert!(
        seq("ha.vm_restarted", "ha-b") < seq("ha.failover_started", "ha-a"),
        "{events:#?}"
    );
    // Each VM runs once, on a surviving host.
    let running = lab.running_qemus();
    for vm in [&a, &b] {
        assert_eq!(running.get(&vm.name).map(Vec::len), Some(1), "{running:?}");
    }
    let st = lab.client.ha_status().await.unwrap();
    let h1 = st.hosts.iter().find(|h| h.name == "host-1").unwrap();
    assert_eq!(h1.state, HaHostState::Failed, "{st:?}");
    assert!(h1
        .network_heartbeat_age_ms
        .is_some_and(|a| a > st.network_timeout_ms));
    checker.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_host_or_a_link_blip_restarts_nothing() {
    let lab = lab(2).await;
    let checker = lab.invariant_checker();
    let vm = create(&lab, "ha-iso", "host-1").await;
    let (boot, _) = identity(&lab, "host-1", &vm);

    // Isolated, its datastore reachable: keep running (the default).
    lab.fail_host("host-1", Fault::Isolate);
    wait_ha_state(&lab, "host-1", HaHostState::IsolatedOrPartitioned).await;
    // Long enough for a take-over by TTL: the lease is renewed again and
    // again by host-1 meanwhile.
    wait_renewals(&lab, "ha-iso", "host-1", 6);
    let (boot_after, _) = identity(&lab, "host-1", &vm);
    assert_eq!(boot_after, boot, "the guest kept running on host-1");
    let st = lab.client.ha_status().await.unwrap();
    assert_eq!(
        st.hosts
            .iter()
            .find(|h| h.name == "host-1")
            .map(|h| h.state),
        Some(HaHostState::IsolatedOrPartitioned),
        "{st:?}"
    );
    checker.check();
    lab.fail_host("host-1", Fault::Heal);
    wait_ha_state(&lab, "host-1", HaHostState::Connected).await;
    let back = wait_vm_timeout(&lab.client, "ha-iso", STATE_WAIT, |v| {
        v.state == VmPowerState::Running && v.owner.as_deref() == Some("host-1")
    })
    .await;
    assert_eq!(identity(&lab, "host-1", &back).0, boot);

    // A 2-second link blip: host-1's reports are late long enough for
    // host-2 to begin watching its VM's lease; when they resume, the watch
    // is dropped and nothing restarts.
    let before = ha_events(&lab).await.last().map_or(0, |e| e.seq);
    lab.fail_host("host-1", Fault::Isolate);
    std::thread::sleep(Duration::from_secs(2));
    lab.fail_host("host-1", Fault::Heal);
    wait_ha_state(&lab, "host-1", HaHostState::Connected).await;
    let watched = wait_event(&lab, "ha.lease_watch", "host-1", |e| {
        e.seq > before && e.data["suspect"] == true
    })
    .await;
    assert_eq!(
        watched.data["watchers"]["host-2"],
        serde_json::json!(["ha-iso"]),
        "{watched:?}"
    );
    wait_event(&lab, "ha.lease_watch", "host-1", |e| {
        e.seq > watched.seq && e.data["suspect"] == false
    })
    .await;
    wait_renewals(&lab, "ha-iso", "host-1", 4);
    let events = ha_events(&lab).await;
    assert!(
        !events
            .iter()
            .any(|e| e.topic.starts_with("ha.failover") || e.topic == "ha.vm_restarted"),
        "no failover: {events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.topic == "ha.host_state_changed" && e.data["to"] == "failed"),
        "host-1 was never judged failed: {events:#?}"
    );
    assert_eq!(identity(&lab, "host-1", &back).0, boot);
    checker.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_host_powers_off_its_vm_before_it_restarts_elsewhere() {
    let lab = lab(2).await;
    let checker = lab.invariant_checker();
    let vm = create_with(
        &lab,
        "ha-poweroff",
        "host-1",
        None,
        Some(IsolationResponse::PowerOff),
    )
    .await;
    assert_eq!(vm.ha.isolation_response, IsolationResponse::PowerOff);
    let (boot, _) = identity(&lab, "host-1", &vm);

    lab.fail_host("host-1", Fault::Isolate);
    wait_ha_state(&lab, "host-1", HaHostState::IsolatedOrPartitioned).await;
    let moved = wait_vm_timeout(&lab.client, "ha-poweroff", FAILOVER_WAIT, |v| {
        v.state == VmPowerState::Running
            && v.owner.as_deref() == Some("host-2")
            && v.operation.is_none()
            && v.guest.ready
    })
    .await;
    checker.check();
    let (boot_after, _) = identity(&lab, "host-2", &moved);
    assert_ne!(boot_after, boot, "a new boot on host-2");
    assert_eq!(
        lab.running_qemus().get("ha-poweroff"),
        Some(&vec!["host-2".to_string()])
    );
    lab.fail_host("host-1", Fault::Heal);
    wait_ha_state(&lab, "host-1", HaHostState::Connected).await;
    checker.check();
}

/// `(boot id, counter)` as the guest answers from `host`'s namespace.
fn identity(lab: &TestLab, host: &str, vm: &Vm) -> (String, u64) {
    let lines = ask(lab, host, vm, &[]);
    let parts: Vec<&str> = lines[0].split_whitespace().collect();
    (parts[1].to_string(), parts[2].parse().expect("a counter"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_keeps_its_vms_and_takes_over_when_continued() {
    let lab = lab(2).await;
    let checker = lab.invariant_checker();
    let vm = create(&lab, "ha-frozen", "host-1").await;
    let (boot, _) = identity(&lab, "host-1", &vm);

    let frozen = lab.freeze_agent("host-1");
    // Both of its heartbeats stop (the agent writes both): failed. A
    // failover is tried and refused: the VM's supervisor still renews.
    wait_ha_state(&lab, "host-1", HaHostState::Failed).await;
    let refused = wait_event(&lab, "ha.failover_failed", "ha-frozen", |_| true).await;
    eprintln!("{}", refused.message);
    wait_renewals(&lab, "ha-frozen", "host-1", 4);
    assert_eq!(
        identity(&lab, "host-1", &vm).0,
        boot,
        "still the same guest"
    );
    assert_eq!(
        lab.running_qemus().get("ha-frozen"),
        Some(&vec!["host-1".to_string()])
    );
    checker.check();

    frozen.thaw();
    wait_ha_state(&lab, "host-1", HaHostState::Connected).await;
    let back = wait_vm_timeout(&lab.client, "ha-frozen", STATE_WAIT, |v| {
        v.state == VmPowerState::Running
            && v.owner.as_deref() == Some("host-1")
            && v.operation.is_none()
    })
    .await;
    assert_eq!(identity(&lab, "host-1", &back).0, boot);
    let restarted = ha_events(&lab)
        .await
        .into_iter()
        .filter(|e| e.topic == "ha.vm_restarted")
        .count();
    assert_eq!(restarted, 0, "nothing restarted");
    checker.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_failover_finishes_it_after_its_restart() {
    let lab = lab(2).await;
    let checker = lab.invariant_checker();
    let vm = create(&lab, "ha-durable", "host-1").await;
    let answer = ask(&lab, "host-1", &vm, &["write note before-the-crash"]);
    assert_eq!(answer.last().map(String::as_str), Some("ok"));

    lab.fail_host("host-1", Fault::Kill);
    // The failover starts (it waits a TTL for host-1's lease): the server
    // dies in the middle.
    wait_event(&lab, "ha.failover_started", "ha-durable", |_| true).await;
    lab.kill_server();
    lab.restart_server();
    let moved = wait_vm_timeout(&lab.client, "ha-durable", FAILOVER_WAIT, |v| {
        v.state == VmPowerState::Running
            && v.owner.as_deref() == Some("host-2")
            && v.operation.is_none()
            && v.guest.ready
    })
    .await;
    checker.check();
    let answer = ask(&lab, "host-2", &moved, &["read note"]);
    assert_eq!(answer.last().map(String::as_str), Some("before-the-crash"));
    let tasks = lab.client.list_tasks().await.unwrap();
    let failovers: Vec<_> = tasks
        .iter()
        .filter(|t| t.kind == "vm.failover" && t.target == "ha-durable")
        .collect();
    let resumed = failovers
        .iter()
        .find(|t| {
            t.journal.as_ref().is_some_and(|j| {
                j.steps()
                    .any(|s| matches!(s, vdc_types::Step::Resumed { .. }))
            })
        })
        .unwrap_or_else(|| panic!("a resumed failover task: {failovers:#?}"));
    assert_eq!(resumed.state, TaskState::Succeeded, "{resumed:#?}");
    // Nothing twice: one QEMU, one boot.
    assert_eq!(
        lab.running_qemus().get("ha-durable"),
        Some(&vec!["host-2".to_string()])
    );
    let restarted = ha_events(&lab)
        .await
        .into_iter()
        .filter(|e| e.topic == "ha.vm_restarted" && e.object == "ha-durable")
        .count();
    assert_eq!(restarted, 1);
    checker.check();
}

/// The web page's HA panel (policy, each host's state and heartbeat ages)
/// and the per-VM priority selector, in a real headless Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_ha_states_and_sets_a_priority_in_chromium() {
    use vdc_test_infra::webdriver::Browser;
    const PAGE: Duration = Duration::from_secs(60);
    let lab = lab(2).await;
    // A VM that is not started: its row and priority need no guest.
    let t = lab
        .client
        .create_vm(&CreateVmRequest {
            name: "ha-web".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            ..Default::default()
        })
        .await
        .expect("create accepted");
    lab.client
        .wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("created");
    let browser = Browser::start().await.unwrap_or_else(|e| {
        panic!(
            "starting headless Chromium: {}",
            vdc_test_infra::error_chain(&e)
        )
    });
    let token = std::fs::read_to_string(&lab.info.token_file).unwrap();
    step(
        "opening the page",
        browser
            .goto(&format!("{}/#token={}", lab.info.api_url, token.trim()))
            .await,
    );
    let policy = step(
        "the HA policy",
        browser
            .wait_text("#hapolicy", PAGE, |t| t.contains("network timeout"))
            .await,
    );
    assert!(policy.contains("restarts enabled"), "{policy}");
    for host in ["host-1", "host-2"] {
        let row = step(
            "a connected host in the HA table",
            browser
                .wait_row("#ha tbody tr", PAGE, |r| {
                    r[0] == host
                        && r[1] == "connected"
                        && r[2].ends_with(" s")
                        && r[3].ends_with(" s")
                })
                .await,
        );
        eprintln!("{row:?}");
    }
    // The priority selector: the API shows the change.
    step(
        "choosing priority high",
        browser
            .click_css(
                r#"select.ha-priority[data-vm="ha-web"] option:nth-child(1)"#,
                PAGE,
            )
            .await,
    );
    wait_until_async(PAGE, "priority high through the API", || async {
        let v = lab.client.get_vm("ha-web").await.ok()?;
        (v.ha.priority == HaPriority::High).then_some(())
    })
    .await;
    // A killed host shows as failed.
    lab.fail_host("host-2", Fault::Kill);
    step(
        "host-2 failed in the HA table",
        browser
            .wait_row("#ha tbody tr", PAGE, |r| {
                r[0] == "host-2" && r[1] == "failed"
            })
            .await,
    );
}

/// The value of a browser step, or a panic naming the step and the cause.
fn step<T>(what: &str, r: Result<T, vdc_test_infra::webdriver::WebDriverError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {}", vdc_test_infra::error_chain(&e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_refuses_a_power_on_saying_by_how_much() {
    let lab = lab(2).await;
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: "ha-adm".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("created");
    // Two hosts, two failures tolerated: no host would be left.
    let p = c
        .set_ha_policy(&SetHaPolicyRequest {
            tolerate_host_failures: 2,
        })
        .await
        .unwrap();
    assert_eq!(p.tolerate_host_failures, 2);
    let err = c
        .vm_action("ha-adm", "start", serde_json::json!({}))
        .await
        .expect_err("refused");
    let vdc_client::ClientError::Api(api) = err else {
        panic!("an API error: {err}");
    };
    assert_eq!(
        api.code,
        vdc_types::ErrorCode::InsufficientCapacity,
        "{api:?}"
    );
    assert!(
        api.message.contains("too little failover capacity") && api.message.contains("MiB short"),
        "{}",
        api.message
    );
    // A create that would start is refused the same way; one that does not
    // start is not.
    let err = c
        .create_vm(&CreateVmRequest {
            name: "ha-adm2".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            start: true,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("MiB short"), "{err}");
    wait_event(&lab, "ha.admission_refused", "ha-adm", |_| true).await;
    let st = c.ha_status().await.unwrap();
    assert_eq!(st.tolerate_host_failures, 2);
    assert_eq!(
        st.tolerated_failures_now, 2,
        "nothing protected runs: {st:?}"
    );
    // Out-of-range policies are refused with their range.
    let err = c
        .set_ha_policy(&SetHaPolicyRequest {
            tolerate_host_failures: 64,
        })
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("between 0 and 63"), "{err}");
    // Turned off, the start is accepted.
    c.set_ha_policy(&SetHaPolicyRequest {
        tolerate_host_failures: 0,
    })
    .await
    .unwrap();
    let vm = c.get_vm("ha-adm").await.unwrap();
    assert!(vm.actions.contains(&vdc_types::VmAction::Start));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_guest_is_reset() {
    let lab = lab(1).await;
    let vm = create(&lab, "ha-hung", "host-1").await;
    let (boot, _) = identity(&lab, "host-1", &vm);
    // The guest's heartbeat writer stops (the rest of the guest runs on).
    lab.client
        .console_input(
            "ha-hung",
            "kill -STOP $(ps | grep '[e]tc/vdc/heartbeat' | awk '{print $1}')\n",
        )
        .await
        .expect("console input");
    let reset = wait_until_async(Duration::from_secs(180), "ha.vm_reset", || async {
        ha_events(&lab)
            .await
            .into_iter()
            .find(|e| e.topic == "ha.vm_reset" && e.object == "ha-hung")
    })
    .await;
    assert!(
        reset.data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no guest heartbeat")),
        "{reset:?}"
    );
    // It boots again: a new boot id, heartbeats flowing.
    let back = wait_vm_timeout(&lab.client, "ha-hung", Duration::from_secs(180), |v| {
        v.state == VmPowerState::Running
            && v.guest.ready
            && v.guest.boot_id.as_deref() != Some(boot.as_str())
    })
    .await;
    assert_ne!(identity(&lab, "host-1", &back).0, boot);
}
