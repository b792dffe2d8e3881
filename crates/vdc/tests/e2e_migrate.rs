//! End-to-end tests of live migration on real guests in a 3-host lab: what
//! the guest shows across a move (same boot, its counter going on, a TCP
//! connection from a third host kept open), what the task reports, and
//! that a failed or cancelled migration leaves the guest where it was.

use std::time::Duration;

use futures::StreamExt;
use vdc_client::{Client, ClientError};
use vdc_test_infra::{wait_until_async, wait_vm, GuestSession, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrateRequest;
use vdc_types::{ErrorCode, Task, TaskState, Vm, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);

async fn create(lab: &TestLab, name: &str, host: &str, memory_mib: u64) -> Vm {
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(memory_mib),
            host: Some(host.into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("creating {name} failed: {e}");
    }
    wait_vm(c, name, |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await
}

fn to(host: &str) -> MigrateRequest {
    MigrateRequest {
        to: Some(host.into()),
        ..Default::default()
    }
}

async fn migrate(c: &Client, name: &str, req: &MigrateRequest) -> Task {
    let t = c
        .migrate_vm(name, req)
        .await
        .unwrap_or_else(|e| panic!("migrate {name}: {e}"));
    assert_eq!(t.kind, "vm.migrate");
    match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        Ok(t) => t,
        Err(e) => panic!("migrating {name} failed: {e}"),
    }
}

/// `(hostname, boot_id, counter)` from the guest's service, asked from
/// `from_host`'s namespace.
fn identity(lab: &TestLab, from_host: &str, addr: &str) -> (String, String, u64) {
    let lines = vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(from_host, addr, &[]).ok()
    });
    parse_identity(lines.first().expect("a greeting line"))
}

fn parse_identity(line: &str) -> (String, String, u64) {
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "unexpected greeting {line:?}");
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

/// The runtime directory of VM `id` on `host`.
fn run_dir(lab: &TestLab, host: &str, id: &str) -> std::path::PathBuf {
    let h = lab
        .info
        .hosts
        .iter()
        .find(|h| h.name == host)
        .expect("a lab host");
    h.state_dir.join("vms").join(id)
}

/// Whether a QEMU of VM `id` runs on `host` (per its pidfile).
fn qemu_runs(lab: &TestLab, host: &str, id: &str) -> bool {
    let pidfile = run_dir(lab, host, id).join("qemu.pid");
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_migration_keeps_the_guest_its_counter_and_a_connection() {
    let lab = TestLab::start(3).await;
    let c = &lab.client;
    let vm = create(&lab, "mig-1", "host-1", 128).await;
    let ip = addr(&vm);
    let (hostname, boot, n0) = identity(&lab, "host-3", &ip);
    assert_eq!(hostname, "mig-1");

    // A connection from the third host, held open across the moves.
    let session = GuestSession::open(
        lab.netns("host-3"),
        &ip,
        vdc_types::GUEST_SERVICE_PORT,
        Duration::from_secs(30),
    )
    .expect("a connection to the guest");
    let (_, b, n1) = parse_identity(session.greeting());
    assert_eq!(b, boot);
    assert!(n1 >= n0);

    let mut migrated = Box::pin(
        c.events(&["vm.migrated".to_string()])
            .await
            .expect("event stream"),
    );

    let t = migrate(c, "mig-1", &to("host-2")).await;
    let report = t.migration.expect("the task reports the migration");
    let outcome = report.outcome.expect("and how it ended");
    assert_eq!(
        (report.source.as_str(), report.target.as_str()),
        ("host-1", "host-2")
    );
    assert!(outcome.total_ms > 0, "{outcome:?}");
    assert!(
        !report.policy_steps.is_empty(),
        "the policy steps are reported"
    );
    let p = report.progress.expect("progress figures");
    assert!(p.bytes_total > 0 && p.bytes_sent > 0, "{p:?}");

    let ev = tokio::time::timeout(Duration::from_secs(30), migrated.next())
        .await
        .expect("a vm.migrated event")
        .expect("stream open")
        .expect("an event");
    assert_eq!(ev.topic, "vm.migrated");
    assert_eq!(ev.data["target"], "host-2");
    assert_eq!(ev.data["downtime_ms"], outcome.downtime_ms);

    let v = c.get_vm("mig-1").await.unwrap();
    assert_eq!(v.owner.as_deref(), Some("host-2"));
    assert_eq!(v.state, VmPowerState::Running);
    assert!(v.operation.is_none(), "{v:?}");

    // The same connection answers, same boot, the counter went on.
    let n2 = counter_beyond(&session, &boot, n1, "the move");

    // The old QEMU is gone from the source.
    vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the old QEMU to end", || {
        (!qemu_runs(&lab, "host-1", &vm.id)).then_some(())
    });

    // Back with the CLI, placement choosing (any host but host-2).
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(["vm", "migrate", "mig-1"])
        .env_remove("VDC_TOKEN")
        .env("VDC_URL", &lab.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .output()
        .expect("run vdc vm migrate");
    let said = String::from_utf8_lossy(&cli.stdout).to_string();
    assert!(
        cli.status.success(),
        "vdc vm migrate failed: {said}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(said.contains("moved from host-2 to host-"), "{said}");
    assert!(said.contains("downtime"), "{said}");
    let back = c.get_vm("mig-1").await.unwrap().owner.expect("an owner");
    assert_ne!(back, "host-2");
    let v = c.get_vm("mig-1").await.unwrap();
    assert_eq!(v.owner.as_deref(), Some(back.as_str()));
    counter_beyond(&session, &boot, n2, "two moves");
    let (_, b, _) = identity(&lab, "host-3", &ip);
    assert_eq!(b, boot);
}

/// Asks on the open `session` until the guest's counter is past `past`
/// (the guest's service reads its counter file, which it rewrites in
/// place: a read can catch it empty and answer 0), every answer from the
/// same boot. Returns the counter.
fn counter_beyond(session: &GuestSession, boot: &str, past: u64, after: &str) -> u64 {
    vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the counter to go on", || {
        let line = session
            .ask("again")
            .unwrap_or_else(|e| panic!("the connection did not survive {after}: {e}"));
        let (_, b, n) = parse_identity(&line);
        assert_eq!(b, boot, "same boot after {after}");
        (n > past).then_some(n)
    })
}

/// Refusals change nothing: the VM stays where it is, with no operation.
async fn assert_refused(c: &Client, name: &str, req: &MigrateRequest, code: ErrorCode, says: &str) {
    let e = c
        .migrate_vm(name, req)
        .await
        .expect_err("the migration is refused");
    match &e {
        ClientError::Api(error) => {
            assert_eq!(error.code, code, "{e}");
            assert!(error.message.contains(says), "{}", error.message);
        }
        other => panic!("unexpected error {other}"),
    }
    let v = c.get_vm(name).await.unwrap();
    assert!(v.operation.is_none(), "{v:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_or_broken_migration_leaves_the_guest_on_the_source() {
    let lab = TestLab::start(3).await;
    let c = &lab.client;
    let vm = create(&lab, "mig-2", "host-1", 256).await;
    let ip = addr(&vm);
    let (_, boot, _) = identity(&lab, "host-3", &ip);

    // Refusals first (nothing moves): unknown host, same host, a host
    // without room, a stopped VM.
    assert_refused(c, "mig-2", &to("nowhere"), ErrorCode::NotFound, "nowhere").await;
    assert_refused(
        c,
        "mig-2",
        &to("host-1"),
        ErrorCode::InvalidInput,
        "already runs on host 'host-1'",
    )
    .await;

    // A guest dirtying its memory flat out keeps the stream busy.
    dirty_memory(c, "mig-2").await;
    // A slow stream (4 MiB/s for ~100 MiB of used memory): still sending
    // when the cancel or the kill comes, whatever the machine's speed.
    let no_postcopy = MigrateRequest {
        to: Some("host-2".into()),
        allow_postcopy: Some(false),
        bandwidth_mib_s: Some(4),
        ..Default::default()
    };

    // Cancel while it streams.
    let t = c.migrate_vm("mig-2", &no_postcopy).await.expect("accepted");
    wait_streaming(c, &t.id).await;
    c.cancel_task(&t.id).await.expect("cancel");
    let end = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await;
    let end = match end {
        Err(ClientError::TaskFailed(t)) => *t,
        other => panic!("the cancelled migration ended {other:?}"),
    };
    assert_eq!(end.state, TaskState::Cancelled, "{:?}", end.error);
    still_on_the_source(&lab, &vm, &ip, &boot).await;

    // The destination's QEMU killed while it receives.
    let t = c.migrate_vm("mig-2", &no_postcopy).await.expect("accepted");
    wait_streaming(c, &t.id).await;
    kill_incoming_qemu(&lab, "host-2", &vm.id);
    let end = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await;
    match end {
        Err(ClientError::TaskFailed(t)) => assert_eq!(t.state, TaskState::Failed),
        other => panic!("the broken migration ended {other:?}"),
    }
    still_on_the_source(&lab, &vm, &ip, &boot).await;

    // With the guest still dirtying memory faster than a 16 MiB/s stream
    // carries it, pre-copy cannot converge: the policy switches to
    // post-copy and the task reports the steps it took.
    let slow = MigrateRequest {
        to: Some("host-2".into()),
        bandwidth_mib_s: Some(16),
        ..Default::default()
    };
    let t = migrate(c, "mig-2", &slow).await;
    let report = t.migration.expect("report");
    assert!(
        report
            .policy_steps
            .iter()
            .any(|s| s.contains("post-copy started")),
        "policy steps: {:?}",
        report.policy_steps
    );
    assert!(report.outcome.expect("outcome").postcopy);
    let v = c.get_vm("mig-2").await.unwrap();
    assert_eq!(v.owner.as_deref(), Some("host-2"));
    let (_, b, _) = identity(&lab, "host-3", &ip);
    assert_eq!(b, boot);
    eprintln!("policy steps under load: {:?}", report.policy_steps);
}

/// Starts a loop in the guest's shell that rewrites 48 MiB of memory with
/// non-zero data as fast as it can.
async fn dirty_memory(c: &Client, name: &str) {
    c.console_input(
        name,
        "mkdir -p /dev/shm && mount -t tmpfs -o size=120m tmpfs /dev/shm; dd if=/dev/urandom of=/dev/shm/src bs=1M count=48 2>/dev/null; (while true; do cp /dev/shm/src /dev/shm/dst; done) &\n",
    )
    .await
    .expect("console input");
    // The copy loop runs once the source file exists.
    wait_until_async(VM_WAIT_TIMEOUT, "the dirtying loop", || async {
        let tail = c.console(name, 4096).await.ok()?;
        tail.contains("while true").then_some(())
    })
    .await;
}

/// Waits until the migration task shows memory being sent.
async fn wait_streaming(c: &Client, id: &str) {
    wait_until_async(VM_WAIT_TIMEOUT, "the migration to stream", || async {
        let t = c.get_task(id).await.ok()?;
        assert!(!t.state.is_final(), "the migration ended early: {t:?}");
        eprintln!(
            "migration task: {:?} {:?} {:?}",
            t.state,
            t.stage,
            t.migration.as_ref().and_then(|m| m.progress.as_ref())
        );
        let p = t.migration?.progress?;
        (p.bytes_sent > 0).then_some(())
    })
    .await;
}

/// SIGKILLs the QEMU of VM `id` on `host` (the lab's namespaces share the
/// machine's processes).
fn kill_incoming_qemu(lab: &TestLab, host: &str, id: &str) {
    let pidfile = run_dir(lab, host, id).join("qemu.pid");
    let pid: i32 = vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the incoming QEMU's pid", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    // SAFETY: a plain kill(2) of a process id read from QEMU's pidfile.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill {pid}");
}

async fn still_on_the_source(lab: &TestLab, vm: &Vm, ip: &str, boot: &str) {
    let c = &lab.client;
    let v = wait_vm(c, &vm.name, |v| v.operation.is_none()).await;
    assert_eq!(v.owner.as_deref(), Some("host-1"));
    assert_eq!(v.state, VmPowerState::Running);
    let (_, b, _) = identity(lab, "host-3", ip);
    assert_eq!(b, boot, "the same guest runs on");
    // Nothing left on the destination: no QEMU, no runtime directory.
    vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the destination to be clean", || {
        let gone = !qemu_runs(lab, "host-2", &vm.id) && !run_dir(lab, "host-2", &vm.id).exists();
        gone.then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_limit_a_migration_waits_its_turn() {
    // The server reads its limits from its flags or environment; the lab
    // starts it with this process's environment.
    std::env::set_var("VDC_MIGRATIONS_PER_CLUSTER", "2");
    let lab = TestLab::start(3).await;
    std::env::remove_var("VDC_MIGRATIONS_PER_CLUSTER");
    let c = &lab.client;
    let moves = [
        ("lim-1", "host-1", "host-2"),
        ("lim-2", "host-2", "host-3"),
        ("lim-3", "host-3", "host-1"),
    ];
    for (name, from, _) in moves {
        create(&lab, name, from, 128).await;
    }
    // Slow streams, so that the first two are still running when the
    // third is asked.
    let mut tasks = Vec::new();
    for (name, _, dest) in moves {
        let req = MigrateRequest {
            to: Some(dest.into()),
            bandwidth_mib_s: Some(8),
            ..Default::default()
        };
        tasks.push(c.migrate_vm(name, &req).await.expect("accepted"));
    }
    // The wait is seen on the event stream (kept in its history, so a
    // short wait under load is not missed by polling), and on the task.
    let queued = wait_until_async(VM_WAIT_TIMEOUT, "the third migration to wait", || async {
        let events = c.event_history("vm.migration_queued").await.ok()?;
        events
            .into_iter()
            .find(|e| e.data["task"].as_str() == Some(tasks[2].id.as_str()))
    })
    .await;
    assert_eq!(queued.object, "lim-3", "{queued:?}");
    assert!(
        queued.message.contains("waiting for a migration slot"),
        "{queued:?}"
    );
    assert_eq!(queued.data["per_cluster"], 2, "{queued:?}");
    let others = c
        .event_history("vm.migration_queued")
        .await
        .expect("events");
    assert!(
        others.iter().all(|e| e.object == "lim-3"),
        "only the third migration waits: {others:?}"
    );
    // All three complete; the third only after one of the first two.
    let mut ended = Vec::new();
    for t in &tasks {
        match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
            Ok(t) => ended.push(t),
            Err(e) => panic!("migration failed: {e}"),
        }
    }
    let first_end = ended[..2]
        .iter()
        .filter_map(|t| t.finished_ms)
        .min()
        .expect("finish times");
    let third_sent = ended[2].journal.as_ref().expect("journal").steps[0].at_ms;
    assert!(
        third_sent >= first_end,
        "the third began ({third_sent}) before a slot freed ({first_end})"
    );
    for (name, _, dest) in moves {
        let v = c.get_vm(name).await.unwrap();
        assert_eq!(v.owner.as_deref(), Some(dest), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_destination_agent_or_server_leaves_the_guest_on_the_source() {
    let lab = TestLab::start(3).await;
    let c = &lab.client;
    let vm = create(&lab, "mig-3", "host-1", 256).await;
    let ip = addr(&vm);
    let (_, boot, _) = identity(&lab, "host-3", &ip);
    dirty_memory(c, "mig-3").await;
    // A slow stream of a guest that keeps dirtying: still sending when the
    // fault comes.
    let slow = MigrateRequest {
        to: Some("host-2".into()),
        allow_postcopy: Some(false),
        bandwidth_mib_s: Some(4),
        ..Default::default()
    };

    // The destination's agent dies while it receives.
    let t = c.migrate_vm("mig-3", &slow).await.expect("accepted");
    wait_streaming(c, &t.id).await;
    lab.kill_agent("host-2");
    match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        Err(ClientError::TaskFailed(t)) => assert_eq!(t.state, TaskState::Failed),
        other => panic!("the migration to a lost agent ended {other:?}"),
    }
    vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the incoming QEMU to end", || {
        (!qemu_runs(&lab, "host-2", &vm.id)).then_some(())
    });
    lab.restart_agent("host-2");
    still_on_the_source(&lab, &vm, &ip, &boot).await;

    // The server is killed and restarted while it streams: the restarted
    // server ends the migration with one owner.
    let t = c.migrate_vm("mig-3", &slow).await.expect("accepted");
    wait_streaming(c, &t.id).await;
    lab.kill_server();
    lab.restart_server();
    wait_until_async(VM_WAIT_TIMEOUT, "the restarted server", || async {
        c.version().await.ok()
    })
    .await;
    let end = wait_until_async(TASK_TIMEOUT, "the migration to end", || async {
        c.get_task(&t.id).await.ok().filter(|t| t.state.is_final())
    })
    .await;
    assert_eq!(end.state, TaskState::Failed, "{end:?}");
    still_on_the_source(&lab, &vm, &ip, &boot).await;
}
