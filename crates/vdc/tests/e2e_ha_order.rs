//! HA restart order and deferred restarts on real guests: an "app" group
//! that starts after a "db" group restarts only once the db guest reported
//! ready, even across a server restart in the middle; a VM that no
//! surviving host can run raises an alarm and restarts (clearing it) as
//! soon as room appears. Throughout, the invariant checker watches every
//! QEMU of the lab.

use std::time::Duration;

use vdc_test_infra::ha::Fault;
use vdc_test_infra::{wait_until_async, wait_vm_timeout, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::ha::{HaPriority, IsolationResponse, UpdateVmRequest};
use vdc_types::ha_group::CreateHaGroupRequest;
use vdc_types::{ErrorCode, Event, Vm, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest wait for a failover (detection, lease expiry, boot) on a loaded
/// machine.
const FAILOVER_WAIT: Duration = Duration::from_secs(240);
/// Longest wait for an event.
const EVENT_WAIT: Duration = Duration::from_secs(90);

async fn lab(hosts: usize) -> TestLab {
    TestLab::builder(hosts)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await
}

/// Creates VM `name` on `host` in HA group `group`, started, and waits
/// until its guest is ready.
async fn create(
    lab: &TestLab,
    name: &str,
    host: &str,
    group: Option<&str>,
    priority: HaPriority,
) -> Vm {
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            host: Some(host.into()),
            start: true,
            ha_priority: Some(priority),
            ha_group: group.map(str::to_string),
            ..Default::default()
        })
        .await
        .expect("create accepted");
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("create {name} failed: {e}");
    }
    wait_vm_timeout(c, name, VM_WAIT_TIMEOUT, |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await
}

/// The events of the topics so far (oldest first).
async fn events(lab: &TestLab) -> Vec<Event> {
    lab.client
        .event_history("ha.*,vm.*,alarm.*")
        .await
        .expect("event history")
}

/// Waits for an event with `topic` on `object` matching `pred`.
async fn wait_event(
    lab: &TestLab,
    topic: &str,
    object: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    wait_until_async(
        EVENT_WAIT,
        &format!("event {topic} on {object}"),
        || async {
            events(lab)
                .await
                .into_iter()
                .find(|e| e.topic == topic && e.object == object && pred(e))
        },
    )
    .await
}

/// Waits until `vm` runs on a host other than `not_on` with its guest ready.
async fn wait_moved(lab: &TestLab, vm: &str, not_on: &str) -> Vm {
    wait_vm_timeout(&lab.client, vm, FAILOVER_WAIT, |v| {
        v.state == VmPowerState::Running
            && v.owner.as_deref().is_some_and(|o| o != not_on)
            && v.operation.is_none()
            && v.guest.ready
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_group_restarts_only_once_the_db_guest_is_ready_even_across_a_server_restart() {
    let lab = lab(2).await;
    let checker = lab.invariant_checker();
    let c = &lab.client;
    // db (a long readiness timeout: app waits for readiness, not the
    // timeout), app after db.
    c.create_ha_group(&CreateHaGroupRequest {
        name: "db".into(),
        after: vec![],
        ready_timeout_s: Some(600),
    })
    .await
    .unwrap();
    c.create_ha_group(&CreateHaGroupRequest {
        name: "app".into(),
        after: vec!["db".into()],
        ready_timeout_s: None,
    })
    .await
    .unwrap();
    // The app VM has the higher priority: only its group holds it back.
    create(&lab, "og-db", "host-1", Some("db"), HaPriority::Low).await;
    let app = create(&lab, "og-app", "host-1", None, HaPriority::High).await;
    assert_eq!(app.ha.group, None);
    let joined = c
        .update_vm(
            "og-app",
            &UpdateVmRequest {
                ha_group: Some(Some("app".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(joined.ha.group.as_deref(), Some("app"));
    let groups = c.list_ha_groups().await.unwrap();
    let order: Vec<(&str, u32, Vec<String>)> = groups
        .iter()
        .map(|g| (g.name.as_str(), g.rank, g.vms.clone()))
        .collect();
    assert_eq!(
        order,
        [
            ("db", 0, vec!["og-db".to_string()]),
            ("app", 1, vec!["og-app".to_string()])
        ]
    );
    // A group with VMs is not deleted.
    let err = c.delete_ha_group("db").await.expect_err("refused");
    let vdc_client::ClientError::Api(api) = err else {
        panic!("an API error: {err}");
    };
    assert_eq!(api.code, ErrorCode::InvalidState);
    assert!(api.message.contains("og-db"), "{}", api.message);
    checker.check();

    lab.fail_host("host-1", Fault::Kill);
    // app waits for db, which is being restarted; the server dies then and
    // comes back: the order resumes from the store.
    let waiting = wait_event(&lab, "ha.restart_waiting", "og-app", |_| true).await;
    assert_eq!(waiting.data["waiting_for_groups"][0], "db", "{waiting:?}");
    lab.kill_server();
    lab.restart_server();
    let db = wait_moved(&lab, "og-db", "host-1").await;
    let app = wait_moved(&lab, "og-app", "host-1").await;
    checker.check();
    assert_eq!(db.owner.as_deref(), Some("host-2"));
    assert_eq!(app.owner.as_deref(), Some("host-2"));

    // The order, from the server's event history: db's failover, db's guest
    // ready on host-2, then (only then) app's failover and its QEMU running.
    let history = events(&lab).await;
    let seq = |what: &str, pred: &dyn Fn(&Event) -> bool| {
        history
            .iter()
            .find(|e| pred(e))
            .map(|e| e.seq)
            .unwrap_or_else(|| panic!("{what}: {history:#?}"))
    };
    let db_failover = seq("db's failover", &|e| {
        e.topic == "ha.failover_started" && e.object == "og-db"
    });
    let db_ready = history
        .iter()
        .filter(|e| e.topic == "vm.guest_ready" && e.object == "og-db" && e.seq > db_failover)
        .map(|e| e.seq)
        .next()
        .unwrap_or_else(|| panic!("db's guest ready after its restart: {history:#?}"));
    let app_failover = seq("app's failover", &|e| {
        e.topic == "ha.failover_started" && e.object == "og-app"
    });
    let app_running = history
        .iter()
        .filter(|e| {
            e.topic == "vm.state_changed"
                && e.object == "og-app"
                && e.seq > app_failover
                && e.data["to"] == "running"
        })
        .map(|e| e.seq)
        .next()
        .unwrap_or_else(|| panic!("app running after its failover: {history:#?}"));
    assert!(
        db_ready < app_failover && app_failover < app_running,
        "db ready #{db_ready}, app failover #{app_failover}, app running #{app_running}: {history:#?}"
    );
    // No dependency timed out, each VM restarted once, nothing twice.
    assert!(
        !history.iter().any(|e| e.topic == "ha.dependency_timeout"),
        "{history:#?}"
    );
    for vm in ["og-db", "og-app"] {
        let n = history
            .iter()
            .filter(|e| e.topic == "ha.vm_restarted" && e.object == vm)
            .count();
        assert_eq!(n, 1, "{vm} restarted once: {history:#?}");
        assert_eq!(
            lab.running_qemus().get(vm),
            Some(&vec!["host-2".to_string()])
        );
    }
    checker.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_no_room_raises_an_alarm_and_runs_when_room_appears() {
    let lab = lab(2).await;
    let checker = lab.invariant_checker();
    let c = &lab.client;
    create(&lab, "nr-vm", "host-1", None, HaPriority::Medium).await;
    // HA settings reach the running VM's host at once.
    let updated = c
        .update_vm(
            "nr-vm",
            &UpdateVmRequest {
                isolation_response: Some(IsolationResponse::PowerOff),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.ha.isolation_response, IsolationResponse::PowerOff);
    let event = wait_event(&lab, "vm.updated", "nr-vm", |_| true).await;
    assert_eq!(event.data["applied_on"], "host-1", "{event:?}");
    // Its host rewrote vm.json on the datastore (it holds the lease).
    let on_disk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lab.datastore_path("shared").join("nr-vm/vm.json")).expect("vm.json"),
    )
    .expect("vm.json is JSON");
    assert_eq!(
        on_disk["ha"]["isolation_response"], "power_off",
        "{on_disk}"
    );
    // The only other host is in maintenance: no room for a restart.
    let t = c.enter_maintenance("host-2").await.unwrap();
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("host-2 in maintenance");
    lab.fail_host("host-1", Fault::Kill);
    let deferred = wait_event(&lab, "ha.restart_deferred", "nr-vm", |_| true).await;
    assert!(
        deferred.data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("out of maintenance")),
        "{deferred:?}"
    );
    let alarm = wait_until_async(EVENT_WAIT, "the alarm", || async {
        c.list_alarms()
            .await
            .ok()?
            .into_iter()
            .find(|a| a.object == "nr-vm" && a.cleared_ms.is_none())
    })
    .await;
    assert_eq!(alarm.kind, "ha.restart_deferred");
    assert!(
        alarm.reason.contains("as soon as room appears"),
        "{alarm:?}"
    );
    let acked = c.ack_alarm(&alarm.id).await.unwrap();
    assert!(acked.acknowledged && acked.cleared_ms.is_none());
    // Room appears: the VM restarts on host-2 and the alarm clears.
    c.exit_maintenance("host-2").await.unwrap();
    let moved = wait_moved(&lab, "nr-vm", "host-1").await;
    assert_eq!(moved.owner.as_deref(), Some("host-2"));
    let cleared = wait_until_async(EVENT_WAIT, "the alarm cleared", || async {
        c.list_alarms()
            .await
            .ok()?
            .into_iter()
            .find(|a| a.id == alarm.id && a.cleared_ms.is_some())
    })
    .await;
    assert!(
        cleared
            .cleared_reason
            .as_deref()
            .is_some_and(|r| r.contains("runs again")),
        "{cleared:?}"
    );
    wait_event(&lab, "ha.restart_retry", "nr-vm", |_| true).await;
    wait_event(&lab, "alarm.cleared", "nr-vm", |_| true).await;
    // One alarm for the whole wait, however many ticks it took.
    let raised = events(&lab)
        .await
        .iter()
        .filter(|e| e.topic == "alarm.raised" && e.object == "nr-vm")
        .count();
    assert_eq!(raised, 1);
    checker.check();
}
