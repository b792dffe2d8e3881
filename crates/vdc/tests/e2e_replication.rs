//! Sites, replication and recovery on real guests across two sites.
//!
//! 1. two installations (site `a`, site `b`) paired by the lab: each lists
//!    the other as reachable, without the token; pairing again is refused;
//!    killing site `b` makes site `a` see it unreachable.
//! 2. a running guest at site `a` writes data and is replicated to site
//!    `b` (first a full copy as a task, then only the changed blocks); a
//!    test recovery at site `b` boots a linked clone of the latest point,
//!    and its guest reads what was written before that point. A dropped
//!    link raises the alarm and the catch-up point ships only what changed.
//!    The CLI and the web page (Chromium) show both sides; the page
//!    recovers a replica, takes a point and disables the replication.
//! 3. a guest counting every 100 ms is replicated with an RPO of 10 s; a
//!    point killed half-way (its NBD server dies) is never listed; after
//!    site `a` is killed, a failover at site `b` reads a count within the
//!    RPO of the last one seen at site `a`.

use std::time::Duration;

use vdc_client::Client;
use vdc_test_infra::webdriver::{Browser, WebDriverError};
use vdc_test_infra::{wait_until, wait_until_async, wait_vm, TestLab, TwoSiteLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::replication::{EnableReplicationRequest, RecoverMode, RecoverRequest};
use vdc_types::{ErrorCode, Task, TaskState, Vm, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);

async fn run_task(c: &Client, t: Task) -> Task {
    let done = c
        .wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .unwrap_or_else(|e| panic!("task {} {} failed: {e}", t.kind, t.target));
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    done
}

async fn ready(c: &Client, name: &str) -> Vm {
    wait_vm(c, name, |v| {
        v.state == VmPowerState::Running && v.guest.ready && v.guest.address.is_some()
    })
    .await
}

fn ask(lab: &TestLab, vm: &Vm, cmd: &str) -> String {
    let ip = vm.guest.address.clone().expect("address");
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request("host-1", &ip, &[cmd]).ok()
    });
    lines.get(1).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_pair_and_see_each_other() {
    let lab = TwoSiteLab::start(
        TestLab::builder(1)
            .template(false)
            .vdc_binary(env!("CARGO_BIN_EXE_vdc")),
        TestLab::builder(1)
            .template(false)
            .vdc_binary(env!("CARGO_BIN_EXE_vdc")),
    )
    .await;
    let (a, b) = (&lab.a.client, &lab.b.client);
    assert_eq!(a.local_site().await.expect("local a").name, "a");
    assert_eq!(b.local_site().await.expect("local b").name, "b");
    for (c, peer) in [(a, "b"), (b, "a")] {
        wait_until_async(Duration::from_secs(30), "the peer site answers", || async {
            c.get_site(peer)
                .await
                .ok()
                .filter(|s| s.reachable && s.rtt_ms.is_some())
        })
        .await;
        let raw = serde_json::to_string(&c.list_sites().await.expect("sites")).expect("json");
        assert!(!raw.contains("token") && !raw.contains("vdcs."), "{raw}");
    }
    let again = a
        .pair_site(&vdc_types::site::PairSiteRequest {
            url: lab.b.info.api_url.clone(),
            token: vdc_lab::read_token(&lab.b.info.token_file).expect("token"),
            name: None,
            local_url: Some(lab.a.info.api_url.clone()),
        })
        .await
        .expect_err("paired twice");
    assert!(
        matches!(&again, vdc_client::ClientError::Api(e) if e.code == ErrorCode::AlreadyExists),
        "{again}"
    );
    lab.kill_site("b");
    wait_until_async(
        Duration::from_secs(30),
        "site b seen unreachable",
        || async { a.get_site("b").await.ok().filter(|s| !s.reachable) },
    )
    .await;
    let events = a.event_history("site.*").await.expect("events");
    assert!(events.iter().any(|e| e.topic == "site.paired"));
    assert!(events.iter().any(|e| e.topic == "site.unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_replication_recovers_the_latest_point() {
    let lab = TwoSiteLab::start(
        TestLab::builder(1).vdc_binary(env!("CARGO_BIN_EXE_vdc")),
        TestLab::builder(1).vdc_binary(env!("CARGO_BIN_EXE_vdc")),
    )
    .await;
    let (a, b) = (&lab.a.client, &lab.b.client);
    let t = a
        .create_vm(&CreateVmRequest {
            name: "web".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create");
    run_task(a, t).await;
    let vm = ready(a, "web").await;
    assert_eq!(ask(&lab.a, &vm, "write k1 first-3141"), "ok");

    let enabled = a
        .enable_replication(&EnableReplicationRequest {
            vm: "web".into(),
            site: "b".into(),
            rpo_s: 30,
            mode: Default::default(),
            retain_last: 3,
            on_link_loss: Default::default(),
            quiesce_every_s: 0,
            datastore: None,
        })
        .await
        .expect("enable");
    assert_eq!(enabled.task.kind, "replication.initial_sync");
    run_task(a, enabled.task).await;
    let r = a.get_replication("web").await.expect("replication");
    assert_eq!(r.points, 1, "{r:?}");
    let full = r.bytes_sent;
    assert!(full > 0, "{r:?}");
    let replica = b.get_replica("web").await.expect("replica");
    assert_eq!(replica.source_site, "a");
    assert_eq!(replica.points.len(), 1, "{replica:?}");

    assert_eq!(ask(&lab.a, &vm, "write k1 second-2718"), "ok");
    let t = a.sync_replication("web", false).await.expect("sync");
    run_task(a, t).await;
    let r = a.get_replication("web").await.expect("replication");
    assert!(r.points >= 2, "{r:?}");
    assert!(
        r.last_point_bytes < full / 4,
        "an incremental point ships only the changes: {} of a first copy of {full}",
        r.last_point_bytes
    );
    let replica = b.get_replica("web").await.expect("replica");
    assert!(replica.points.len() >= 2, "{replica:?}");
    assert!(replica.applying.is_none() || replica.points.len() >= 2);

    let t = b
        .recover_replica(
            "web",
            &RecoverRequest {
                point: None,
                name: Some("web-test".into()),
                mode: RecoverMode::Test,
                network_map: [("lab".to_string(), "lab".to_string())].into(),
                ip: None,
                hostname: None,
                host: None,
                start: true,
            },
        )
        .await
        .expect("recover");
    run_task(b, t).await;
    let recovered = ready(b, "web-test").await;
    assert_eq!(ask(&lab.b, &recovered, "read k1"), "second-2718");
    let replica = b.get_replica("web").await.expect("replica");
    assert!(
        replica.pins.iter().any(|p| p.vm == "web-test"),
        "{replica:?}"
    );

    // A dropped link (site a's host loses its route to site b) raises the
    // alarm; when it returns, the next point carries only what changed.
    // Cut right after a point was applied: the next cycle starts a cycle
    // interval (10 s) later, so no transfer is in flight.
    let ns = lab.a.netns("host-1").to_string();
    let route = format!("{}/32", lab.b.info.gateway);
    let seen = a.get_replication("web").await.expect("replication").points;
    wait_until_async(Duration::from_secs(60), "the next point", || async {
        a.get_replication("web")
            .await
            .ok()
            .filter(|r| r.points > seen)
    })
    .await;
    vdc_lab::ip::ip_in(&ns, &["route", "del", &route]).expect("cut the link");
    wait_until_async(
        Duration::from_secs(120),
        "replication link down",
        || async {
            a.get_replication("web")
                .await
                .ok()
                .filter(|r| r.state == vdc_types::replication::ReplicationState::LinkDown)
        },
    )
    .await;
    let alarms = a.list_alarms().await.expect("alarms");
    assert!(
        alarms
            .iter()
            .any(|x| x.kind == "replication.link" && x.object == "web" && x.cleared_ms.is_none()),
        "{alarms:?}"
    );
    assert_eq!(ask(&lab.a, &vm, "write k2 while-down-1618"), "ok");
    vdc_lab::ip::ip_in(
        &ns,
        &["route", "replace", &route, "via", &lab.a.info.gateway],
    )
    .expect("heal the link");
    let up = wait_until_async(Duration::from_secs(120), "replication link up", || async {
        a.event_history("replication.link_up")
            .await
            .ok()
            .and_then(|v| v.into_iter().find(|e| e.object == "web"))
    })
    .await;
    let caught_up = up.data["bytes"].as_u64().expect("bytes");
    assert!(
        caught_up > 0 && caught_up < full / 4,
        "the catch-up point ships only what changed: {caught_up} of {full}"
    );
    let r = a.get_replication("web").await.expect("replication");
    assert!(!r.needs_full, "{r:?}");
    let alarms = a.list_alarms().await.expect("alarms");
    assert!(
        !alarms
            .iter()
            .any(|x| x.kind == "replication.link" && x.object == "web" && x.cleared_ms.is_none()),
        "{alarms:?}"
    );

    // The CLI shows both sides.
    let list = cli(&lab.a, &["replication", "list"]);
    assert!(list.contains("web") && list.contains(" b "), "{list}");
    let show = cli(&lab.b, &["replica", "show", "web"]);
    assert!(
        show.contains("web-test") && show.contains("crash"),
        "{show}"
    );
    let sites = cli(&lab.b, &["site", "list"]);
    assert!(sites.contains("yes"), "{sites}");

    web_page(&lab).await;
}

fn cli(lab: &TestLab, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(args)
        .env("VDC_URL", &lab.info.api_url)
        .env(
            "VDC_TOKEN",
            vdc_lab::read_token(&lab.info.token_file).expect("token"),
        )
        .output()
        .expect("vdc");
    assert!(
        out.status.success(),
        "vdc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn page<T>(step: &str, r: Result<T, WebDriverError>) -> T {
    r.unwrap_or_else(|e| panic!("{step}: {}", vdc_test_infra::error_chain(&e)))
}

async fn open(browser: &Browser, lab: &TestLab) {
    let token = vdc_lab::read_token(&lab.info.token_file).expect("token");
    page(
        "opening the page",
        browser
            .goto(&format!("{}/#token={}", lab.info.api_url, token))
            .await,
    );
}

/// The web page: site b lists the replica with its pinned point and
/// recovers it from the form; site a shows the replication, takes a point
/// from its sync button and disables it from its disable button.
async fn web_page(lab: &TwoSiteLab) {
    const PAGE: Duration = Duration::from_secs(60);
    let (a, b) = (&lab.a.client, &lab.b.client);
    let browser = page("starting headless Chromium", Browser::start().await);
    let cell = |r: &[String], i: usize| r.get(i).cloned().unwrap_or_default();
    open(&browser, &lab.b).await;
    page(
        "site a in the sites table",
        browser
            .wait_row("#sites tbody tr", PAGE, |r| {
                cell(r, 0) == "a" && cell(r, 2) == "yes"
            })
            .await,
    );
    page(
        "the replica with its pin",
        browser
            .wait_row("#replicas tbody tr", PAGE, |r| {
                cell(r, 0) == "web" && cell(r, 5).contains("web-test@")
            })
            .await,
    );
    page(
        "filling the recover form",
        browser
            .execute(
                "document.querySelector('#recover-replica').value = 'web'; document.querySelector('#recover-mode').value = 'test'; document.querySelector('#recover-name').value = 'web-web'; document.querySelector('#recover-map').value = 'lab=lab'; return 1;",
                vec![],
            )
            .await,
    );
    page(
        "recover",
        browser.click_css("#repl-recover button", PAGE).await,
    );
    let t = wait_until_async(TASK_TIMEOUT, "the create task of web-web", || async {
        b.list_tasks()
            .await
            .ok()?
            .into_iter()
            .find(|t| t.kind == "vm.create" && t.target == "web-web" && t.state.is_final())
    })
    .await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");

    open(&browser, &lab.a).await;
    page(
        "the replication row",
        browser
            .wait_row("#replications tbody tr", PAGE, |r| {
                cell(r, 0) == "web" && cell(r, 1) == "b" && cell(r, 2) == "ok"
            })
            .await,
    );
    let before = a.get_replication("web").await.expect("replication").points;
    page("sync", browser.click_css("[data-sync='web']", PAGE).await);
    wait_until_async(TASK_TIMEOUT, "a point from the sync button", || async {
        a.get_replication("web")
            .await
            .ok()
            .filter(|r| r.points > before)
    })
    .await;
    page(
        "disable",
        browser.click_css("[data-disable='web']", PAGE).await,
    );
    wait_until_async(TASK_TIMEOUT, "the replication disabled", || async {
        match a.get_replication("web").await {
            Err(vdc_client::ClientError::Api(e)) if e.code == ErrorCode::NotFound => Some(()),
            _ => None,
        }
    })
    .await;
    let replica = b.get_replica("web").await.expect("replica");
    assert_eq!(replica.state, vdc_types::replication::ReplicaState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failover_loses_at_most_the_rpo_and_never_uses_a_half_applied_point() {
    const RPO_S: u64 = 10;
    let lab = TwoSiteLab::start(
        TestLab::builder(1).vdc_binary(env!("CARGO_BIN_EXE_vdc")),
        TestLab::builder(1).vdc_binary(env!("CARGO_BIN_EXE_vdc")),
    )
    .await;
    let (a, b) = (&lab.a.client, &lab.b.client);
    let t = a
        .create_vm(&CreateVmRequest {
            name: "db".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create");
    run_task(a, t).await;
    let vm = ready(a, "db").await;
    // The guest appends a sequence number to a synced file every 100 ms.
    a.console_input(
        "db",
        "(i=0; while true; do i=$((i+1)); echo $i > /data/seq.t; mv /data/seq.t /data/seq; sync; sleep 0.1; done) >/dev/null 2>&1 &\n",
    )
    .await
    .expect("console");
    let seq = |lab: &TestLab, vm: &Vm| ask(lab, vm, "read seq").parse::<u64>().unwrap_or(0);
    wait_until(VM_WAIT_TIMEOUT, "the guest counts", || {
        (seq(&lab.a, &vm) > 3).then_some(())
    });

    let enabled = a
        .enable_replication(&EnableReplicationRequest {
            vm: "db".into(),
            site: "b".into(),
            rpo_s: RPO_S,
            mode: Default::default(),
            retain_last: 3,
            on_link_loss: Default::default(),
            quiesce_every_s: 0,
            datastore: None,
        })
        .await
        .expect("enable");
    run_task(a, enabled.task).await;

    // A point killed half-way (its NBD server at site b dies) is never
    // listed, and the next point makes up for it.
    a.console_input(
        "db",
        "dd if=/dev/urandom of=/data/big bs=1M count=48 2>/dev/null; sync\n",
    )
    .await
    .expect("console");
    let killed = wait_until_async(
        Duration::from_secs(120),
        "a point being applied",
        || async {
            let r = b.get_replica("db").await.ok()?;
            let id = r.applying?;
            let pids = vdc_lab::fail::processes_in_netns(lab.b.netns("host-1"));
            let nbd: Vec<u32> = pids
                .into_iter()
                .filter(|p| vdc_lab::process::cmdline(*p).is_some_and(|c| c.contains("qemu-nbd")))
                .collect();
            if nbd.is_empty() {
                return None;
            }
            for p in nbd {
                vdc_lab::process::ProcessHandle::of(p).kill();
            }
            Some(id)
        },
    )
    .await;
    let replica = wait_until_async(
        Duration::from_secs(120),
        "a point after the killed one",
        || async {
            b.get_replica("db")
                .await
                .ok()
                .filter(|r| r.points.last().is_some_and(|p| p.id > killed))
        },
    )
    .await;
    assert!(replica.points.iter().all(|p| p.id != killed), "{replica:?}");
    let dir = lab
        .b
        .info
        .datastores
        .iter()
        .find(|d| d.name == replica.datastore)
        .expect("datastore")
        .path
        .join(&replica.dir);
    let listed: Vec<String> = replica.points.iter().map(|p| p.file.clone()).collect();
    for e in std::fs::read_dir(&dir).expect("replica dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".qcow2") {
            assert!(
                listed.contains(&name) || replica.applying.is_some(),
                "{name} is neither listed nor being applied: {replica:?}"
            );
        }
    }

    // Let a few more points arrive, then lose site a.
    let before = a.get_replication("db").await.expect("replication").points;
    wait_until_async(Duration::from_secs(120), "two more points", || async {
        a.get_replication("db")
            .await
            .ok()
            .filter(|r| r.points >= before + 2)
    })
    .await;
    let last_written = seq(&lab.a, &vm);
    lab.kill_site("a");

    let t = b
        .recover_replica(
            "db",
            &RecoverRequest {
                point: None,
                name: None,
                mode: RecoverMode::Failover,
                network_map: [("lab".to_string(), "lab".to_string())].into(),
                ip: None,
                hostname: None,
                host: None,
                start: true,
            },
        )
        .await
        .expect("failover");
    run_task(b, t).await;
    let recovered_vm = ready(b, "db").await;
    let recovered = seq(&lab.b, &recovered_vm);
    let per_rpo = RPO_S * 10;
    assert!(
        recovered > 0 && recovered + per_rpo >= last_written,
        "recovered {recovered}, last written at least {last_written}: more than {RPO_S} s lost"
    );
    let replica = b.get_replica("db").await.expect("replica");
    assert_eq!(
        replica.state,
        vdc_types::replication::ReplicaState::FailedOver
    );
}
