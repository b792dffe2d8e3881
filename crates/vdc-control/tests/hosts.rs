//! Agent reports → cluster state: hosts and datastores appear, VM records
//! follow what their host reports, and a host that stops reporting is
//! marked disconnected with its running VMs `unknown`.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, get_vm, memory_store, put_vm, report, runtime, TOKEN};
use vdc_control::{Cluster, HOST_TIMEOUT};
use vdc_store::StoreExt;
use vdc_types::{
    now_ms, DatastoreKind, ErrorCode, Event, GuestInfo, HostState, TaskState, VmPowerState,
};

const WAIT: Duration = Duration::from_secs(30);

fn topics(events: &[Event], topic: &str, object: &str) -> usize {
    events
        .iter()
        .filter(|e| e.topic == topic && e.object == object)
        .count()
}

#[tokio::test]
async fn a_report_makes_the_host_and_its_datastores_appear() {
    let cluster = Cluster::open(memory_store().await, TOKEN.into())
        .await
        .expect("open");
    assert!(cluster.list_hosts().await.expect("hosts").is_empty());

    cluster
        .ingest_report(report("host-1", vec![]))
        .await
        .expect("ingest");
    cluster
        .ingest_report(report("host-1", vec![]))
        .await
        .expect("ingest");

    let hosts = cluster.list_hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1);
    let h = &hosts[0];
    assert_eq!(h.name, "host-1");
    assert_eq!(h.state, HostState::Connected);
    assert_eq!(h.agent_url, "http://127.0.0.1:9", "trailing slash trimmed");
    assert_eq!((h.cpus, h.memory_mib, h.memory_free_mib), (2, 4096, 3000));
    assert_eq!(h.qemu_version, "10.0.2");
    assert_eq!(h.vm_count, 0);
    assert_eq!(h.datastores, ["shared", "local-host-1"]);
    assert_eq!(cluster.get_host("host-1").await.expect("get"), *h);
    assert_eq!(
        cluster.get_host("host-9").await.expect_err("unknown").code,
        ErrorCode::NotFound
    );

    let mut ds = cluster.list_datastores().await.expect("datastores");
    ds.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0].name, "local-host-1");
    assert_eq!(
        ds[0].kind,
        DatastoreKind::Local {
            host: "host-1".into()
        }
    );
    assert_eq!(ds[0].path, "/srv/vdc/host-1");
    assert_eq!(ds[1].name, "shared");
    assert_eq!(ds[1].kind, DatastoreKind::Shared);
    assert_eq!((ds[1].capacity_bytes, ds[1].free_bytes), (1 << 40, 1 << 39));

    // A later report's free space is what the API shows.
    let mut r = report("host-1", vec![]);
    r.datastores[0].free_bytes = 12345;
    cluster.ingest_report(r).await.expect("ingest");
    assert_eq!(
        cluster
            .get_datastore("shared")
            .await
            .expect("get")
            .free_bytes,
        12345
    );

    let h = cluster.events.history(0, usize::MAX).await;
    assert_eq!(
        topics(&h, "host.connected", "host-1"),
        1,
        "connected once: {h:?}"
    );
}

#[tokio::test]
async fn a_report_with_a_bad_host_name_is_refused_and_records_nothing() {
    let cluster = Cluster::open(memory_store().await, TOKEN.into())
        .await
        .expect("open");
    for bad in ["", "../etc", "a b", "-x"] {
        let err = cluster
            .ingest_report(report(bad, vec![]))
            .await
            .expect_err("bad name");
        assert_eq!(err.code, ErrorCode::InvalidInput, "{bad:?}");
    }
    assert!(cluster.list_hosts().await.expect("hosts").is_empty());
    assert!(cluster.list_datastores().await.expect("ds").is_empty());
}

#[tokio::test]
async fn vm_records_follow_what_their_host_reports() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Stopped, Some("host-1")).await;
    put_vm(&store, "gone", VmPowerState::Running, Some("host-1")).await;
    put_vm(&store, "parked", VmPowerState::Suspended, Some("host-1")).await;
    put_vm(&store, "elsewhere", VmPowerState::Running, Some("host-2")).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");

    let guest = GuestInfo {
        ready: true,
        hostname: Some("web".into()),
        address: Some("10.77.0.100".into()),
        boot_id: Some("b-1".into()),
        last_heartbeat_ms: Some(now_ms()),
    };
    cluster
        .ingest_report(report(
            "host-1",
            vec![runtime("web", VmPowerState::Running, guest.clone())],
        ))
        .await
        .expect("ingest");

    let web = cluster.get_vm("web").await.expect("web");
    assert_eq!(web.state, VmPowerState::Running);
    assert_eq!(web.owner.as_deref(), Some("host-1"));
    assert!(web.guest.ready);
    assert_eq!(web.guest.address.as_deref(), Some("10.77.0.100"));
    assert_eq!(
        web.guest.last_heartbeat_ms, guest.last_heartbeat_ms,
        "live heartbeat shown"
    );
    let stored = get_vm(&store, "web").await.expect("record");
    assert_eq!(
        stored.guest.last_heartbeat_ms, None,
        "heartbeat time not persisted"
    );
    assert_eq!(cluster.get_host("host-1").await.expect("host").vm_count, 1);

    let gone = get_vm(&store, "gone").await.expect("record");
    assert_eq!(
        gone.state,
        VmPowerState::Stopped,
        "host does not run it any more"
    );
    assert_eq!(
        get_vm(&store, "parked").await.expect("record").state,
        VmPowerState::Suspended,
        "a suspended VM has no process to report"
    );
    assert_eq!(
        get_vm(&store, "elsewhere").await.expect("record").state,
        VmPowerState::Running,
        "another host's VM is not touched by this host's report"
    );

    let h = cluster.events.history(0, usize::MAX).await;
    let changed: Vec<&Event> = h
        .iter()
        .filter(|e| e.topic == "vm.state_changed" && e.object == "web")
        .collect();
    assert_eq!(changed.len(), 1, "{h:?}");
    assert_eq!(changed[0].data["from"], "stopped");
    assert_eq!(changed[0].data["to"], "running");
    assert_eq!(changed[0].data["host"], "host-1");
    assert_eq!(topics(&h, "vm.guest_ready", "web"), 1);
    assert_eq!(topics(&h, "vm.state_changed", "gone"), 1);
    assert_eq!(topics(&h, "vm.state_changed", "parked"), 0);

    // The same report again changes nothing and publishes nothing.
    let before = cluster.events.history(0, usize::MAX).await.len();
    cluster
        .ingest_report(report(
            "host-1",
            vec![runtime("web", VmPowerState::Running, guest.clone())],
        ))
        .await
        .expect("ingest");
    assert_eq!(cluster.events.history(0, usize::MAX).await.len(), before);

    // The guest paused by someone on the host: the record follows.
    cluster
        .ingest_report(report(
            "host-1",
            vec![runtime("web", VmPowerState::Paused, guest)],
        ))
        .await
        .expect("ingest");
    assert_eq!(
        cluster.get_vm("web").await.expect("web").state,
        VmPowerState::Paused
    );
}

#[tokio::test]
async fn a_silent_host_is_disconnected_and_its_running_vms_become_unknown() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Stopped, Some("host-1")).await;
    put_vm(&store, "parked", VmPowerState::Suspended, Some("host-1")).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    // No HA restarts: this test is about what an unknown VM refuses, and an
    // HA failover begun meanwhile on a slow machine would make them "busy".
    cluster.configure_ha(vdc_control::ha::HaSettings {
        enabled: false,
        ..Default::default()
    });
    let _monitor = cluster.spawn_monitor();
    let mut sub = cluster.events.subscribe();

    let vms = || vec![runtime("web", VmPowerState::Running, GuestInfo::default())];
    // Taken before the last report of host-1 is folded in, so that the
    // server's own "last seen" is not earlier than this: the time from here
    // to the disconnection is at least what the server waited.
    let last_report = Instant::now();
    let last_report_ms = now_ms();
    cluster
        .ingest_report(report("host-1", vms()))
        .await
        .expect("ingest");
    cluster
        .ingest_report(report("host-2", vec![]))
        .await
        .expect("ingest");
    assert_eq!(
        cluster.get_vm("web").await.expect("web").state,
        VmPowerState::Running
    );

    // host-2 keeps reporting; host-1 goes silent.
    let keep_alive = {
        let c = cluster.clone();
        tokio::spawn(async move {
            loop {
                let _ = c.ingest_report(report("host-2", vec![])).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let host = eventually(
        "host-1 to be disconnected and web unknown",
        HOST_TIMEOUT + WAIT,
        || async {
            let h = cluster
                .get_host("host-1")
                .await
                .map_err(|e| e.to_string())?;
            let vm = cluster.get_vm("web").await.map_err(|e| e.to_string())?;
            if h.state == HostState::Disconnected && vm.state == VmPowerState::Unknown {
                Ok(h)
            } else {
                Err(format!("host {:?}, vm {}", h.state, vm.state))
            }
        },
    )
    .await;
    // Declared by the HA manager's network heartbeat timeout or, later, by
    // the report monitor's HOST_TIMEOUT: never before the first of them.
    let earliest = HOST_TIMEOUT.min(vdc_sched::ha::DEFAULT_NETWORK_TIMEOUT);
    assert!(
        last_report.elapsed() >= earliest,
        "disconnected after {:?}, before {earliest:?}",
        last_report.elapsed()
    );
    assert_eq!(host.state, HostState::Disconnected);
    let web = cluster.get_vm("web").await.expect("web");
    assert_eq!(
        web.owner.as_deref(),
        Some("host-1"),
        "the VM keeps its last host"
    );
    assert_eq!(
        get_vm(&store, "parked").await.expect("record").state,
        VmPowerState::Suspended,
        "a VM without a process is not made unknown"
    );
    assert_eq!(
        cluster.get_host("host-2").await.expect("host-2").state,
        HostState::Connected
    );

    // Operations on the unknown VM say why they can't run.
    let err = cluster
        .vm_action("web", vdc_types::VmAction::Stop, None)
        .await
        .expect_err("host is gone");
    assert_eq!(err.code, ErrorCode::HostUnavailable);
    let err = cluster
        .start_vm("web", None)
        .await
        .expect_err("may still run on its silent host");
    assert_eq!(err.code, ErrorCode::HostUnavailable);
    assert!(err.message.contains("host-1"), "{}", err.message);

    let seen: Vec<Event> = {
        let mut v = Vec::new();
        while let Ok(e) = sub.try_recv() {
            v.push(e);
        }
        v
    };
    assert_eq!(topics(&seen, "host.disconnected", "host-1"), 1, "{seen:?}");
    assert_eq!(topics(&seen, "host.disconnected", "host-2"), 0, "{seen:?}");
    let unknown = seen
        .iter()
        .find(|e| e.topic == "vm.state_changed" && e.object == "web" && e.data["to"] == "unknown")
        .expect("vm.state_changed to unknown published");
    assert_eq!(unknown.data["from"], "running");
    assert!(last_report_ms <= unknown.time_ms);

    // The agent comes back (its QEMU kept running): connected, VM running.
    let mut back = report("host-1", vms());
    back.agent_started_ms = 2_000;
    cluster.ingest_report(back).await.expect("ingest");
    assert_eq!(
        cluster.get_host("host-1").await.expect("host").state,
        HostState::Connected
    );
    assert_eq!(
        cluster.get_vm("web").await.expect("web").state,
        VmPowerState::Running
    );
    let h = cluster.events.history(0, usize::MAX).await;
    assert_eq!(topics(&h, "host.connected", "host-1"), 2);
    keep_alive.abort();
}

#[tokio::test]
async fn a_host_that_comes_back_without_the_vm_shows_it_stopped() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Unknown, Some("host-1")).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    cluster
        .ingest_report(report("host-1", vec![]))
        .await
        .expect("ingest");
    assert_eq!(
        cluster.get_vm("web").await.expect("web").state,
        VmPowerState::Stopped
    );
}

/// The disconnected host's `last_seen_ms` must say when it was last heard
/// from, not "now".
#[tokio::test]
async fn a_disconnected_host_shows_when_it_was_last_seen() {
    let cluster = Cluster::open(memory_store().await, TOKEN.into())
        .await
        .expect("open");
    let _monitor = cluster.spawn_monitor();
    cluster
        .ingest_report(report("host-1", vec![]))
        .await
        .expect("ingest");
    let reported_ms = now_ms();
    let h = eventually("host-1 to be disconnected", HOST_TIMEOUT + WAIT, || async {
        let h = cluster
            .get_host("host-1")
            .await
            .map_err(|e| e.to_string())?;
        (h.state == HostState::Disconnected)
            .then_some(h.clone())
            .ok_or(format!("{h:?}"))
    })
    .await;
    assert!(
        h.last_seen_ms <= reported_ms + 1_000,
        "last seen {} ms after the last report",
        h.last_seen_ms.saturating_sub(reported_ms)
    );
}

/// Starting a VM whose host reports are fine but whose agent does not
/// answer fails the task, and puts the VM back to stopped.
///
/// The agent's port accepts the call and holds it until the test closes it
/// (the agent dies): the first start is surely still running when the
/// second one is tried, however slowly the machine runs.
#[tokio::test]
async fn a_start_whose_agent_does_not_answer_fails_and_leaves_the_vm_stopped() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Stopped, None).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut r = report("host-1", vec![]);
    r.agent_url = format!("http://{}", agent.local_addr().expect("addr"));
    cluster.ingest_report(r).await.expect("ingest");
    let t = cluster.start_vm("web", None).await.expect("start accepted");
    let (call, _) = tokio::time::timeout(WAIT, agent.accept())
        .await
        .expect("the start task calls the agent in time")
        .expect("accept");
    let err = cluster
        .start_vm("web", None)
        .await
        .expect_err("second start while the first runs");
    assert_eq!(err.code, ErrorCode::InvalidState);
    // The agent dies without answering.
    drop(call);
    drop(agent);
    let done = eventually("the start task to end", WAIT, || async {
        let t = cluster.tasks.get(&t.id).await.map_err(|e| e.to_string())?;
        t.state
            .is_final()
            .then_some(t.clone())
            .ok_or(format!("{t:?}"))
    })
    .await;
    assert_eq!(done.state, TaskState::Failed);
    assert_eq!(done.error.expect("error").code, ErrorCode::HostUnavailable);
    let web = cluster.get_vm("web").await.expect("web");
    assert_eq!(web.state, VmPowerState::Stopped);
    let h = cluster.events.history(0, usize::MAX).await;
    assert_eq!(topics(&h, "vm.started", "web"), 0);
}

#[tokio::test]
async fn a_stale_report_does_not_undo_a_newer_state() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Paused, Some("host-1")).await;
    let mut rec = get_vm(&store, "web").await.expect("record");
    rec.since_ms = 1_000;
    store.put_json("/vms/web", &rec).await.expect("write");
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");

    // A report taken before the pause (state since 900) arrives late.
    let mut old = runtime("web", VmPowerState::Running, GuestInfo::default());
    old.since_ms = 900;
    cluster
        .ingest_report(report("host-1", vec![old]))
        .await
        .expect("ingest");
    let rec = get_vm(&store, "web").await.expect("record");
    assert_eq!(rec.state, VmPowerState::Paused, "a stale report won");

    // A newer one (resumed at 1100) is taken.
    let mut new = runtime("web", VmPowerState::Running, GuestInfo::default());
    new.since_ms = 1_100;
    cluster
        .ingest_report(report("host-1", vec![new]))
        .await
        .expect("ingest");
    let rec = get_vm(&store, "web").await.expect("record");
    assert_eq!((rec.state, rec.since_ms), (VmPowerState::Running, 1_100));
}

#[tokio::test]
async fn a_host_reporting_a_process_for_a_vm_it_does_not_own_is_a_conflict_not_obeyed() {
    let store = memory_store().await;
    put_vm(&store, "web", VmPowerState::Stopped, Some("host-2")).await;
    put_vm(&store, "orphan", VmPowerState::Stopped, None).await;
    let cluster = Cluster::open(store.clone(), TOKEN.into())
        .await
        .expect("open");
    let before = get_vm(&store, "web").await.expect("record");
    let claim = || {
        report(
            "host-1",
            vec![
                runtime("web", VmPowerState::Running, GuestInfo::default()),
                runtime("orphan", VmPowerState::Running, GuestInfo::default()),
            ],
        )
    };
    for _ in 0..3 {
        cluster.ingest_report(claim()).await.expect("ingest");
    }
    assert_eq!(
        get_vm(&store, "web").await.expect("record"),
        before,
        "a non-owner's report changed the record"
    );
    let orphan = cluster.get_vm("orphan").await.expect("orphan");
    assert_eq!(
        (orphan.state, orphan.owner.as_deref()),
        (VmPowerState::Stopped, None)
    );
    let h = cluster.events.history(0, usize::MAX).await;
    let conflicts: Vec<&Event> = h
        .iter()
        .filter(|e| e.topic == "vm.ownership_conflict" && e.object == "web")
        .collect();
    assert_eq!(conflicts.len(), 1, "published once while it lasts: {h:?}");
    assert_eq!(conflicts[0].data["host"], "host-1");
    assert_eq!(conflicts[0].data["owner"], "host-2");
    assert_eq!(topics(&h, "vm.ownership_conflict", "orphan"), 1, "{h:?}");
    assert_eq!(topics(&h, "vm.state_changed", "web"), 0, "{h:?}");

    // The owner speaks; host-1 stops claiming, and a new claim is a new
    // conflict.
    cluster
        .ingest_report(report(
            "host-2",
            vec![runtime("web", VmPowerState::Running, GuestInfo::default())],
        ))
        .await
        .expect("ingest");
    let web = cluster.get_vm("web").await.expect("web");
    assert_eq!(
        (web.state, web.owner.as_deref()),
        (VmPowerState::Running, Some("host-2"))
    );
    cluster
        .ingest_report(report("host-1", vec![]))
        .await
        .expect("ingest");
    cluster.ingest_report(claim()).await.expect("ingest");
    let h = cluster.events.history(0, usize::MAX).await;
    assert_eq!(topics(&h, "vm.ownership_conflict", "web"), 2, "{h:?}");
    assert_eq!(
        cluster.get_vm("web").await.expect("web").owner.as_deref(),
        Some("host-2")
    );
}
