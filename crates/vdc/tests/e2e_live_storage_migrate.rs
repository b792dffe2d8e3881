//! Live migration with storage on real guests, in one 2-host lab whose
//! hosts each have a local datastore the other cannot see:
//!
//! 1. refusals change nothing: an unknown datastore, one the destination
//!    does not have, post-copy asked for together with a storage move;
//! 2. the destination's QEMU killed, the task cancelled, the destination's
//!    agent killed (then restarted), and the server killed and restarted,
//!    each while the disks are mirrored: the guest runs on at host-1 with its boot id, nothing is
//!    left on host-2 (no QEMU, no runtime directory, no VM directory or
//!    image);
//! 3. a guest writing a numbered sequence to its disk moves from host-1's
//!    `local-host-1` to host-2's `local-host-2` while it runs (through the
//!    CLI): same boot id, every write reads back, the record names host-2
//!    and `local-host-2`, the source datastore holds nothing of it, and
//!    `vm.migrated` carries the datastore.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vdc_client::{Client, ClientError};
use vdc_test_infra::{wait_until, wait_until_async, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrateRequest;
use vdc_types::{ErrorCode, TaskState, Vm, VmPowerState};

const TASK_TIMEOUT: Duration = Duration::from_secs(300);

fn addr(vm: &Vm) -> String {
    vm.guest.address.clone().expect("the guest's address")
}

/// The guest's boot id, as its service answers from host `from`.
fn boot_id(lab: &TestLab, from: &str, ip: &str) -> String {
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(from, ip, &[]).ok()
    });
    lines[0]
        .split_whitespace()
        .nth(1)
        .expect("a boot id")
        .to_string()
}

fn read(lab: &TestLab, from: &str, ip: &str, name: &str) -> String {
    let cmd = format!("read {name}");
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(from, ip, &[&cmd]).ok()
    });
    lines.get(1).cloned().unwrap_or_default()
}

fn run_dir(lab: &TestLab, host: &str, id: &str) -> std::path::PathBuf {
    let h = lab
        .info
        .hosts
        .iter()
        .find(|h| h.name == host)
        .expect("host");
    h.state_dir.join("vms").join(id)
}

fn qemu_pid(lab: &TestLab, host: &str, id: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(run_dir(lab, host, id).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

fn to_local2() -> MigrateRequest {
    MigrateRequest {
        to: Some("host-2".into()),
        datastore: Some("local-host-2".into()),
        ..Default::default()
    }
}

async fn refused(c: &Client, req: &MigrateRequest, code: ErrorCode, says: &str) {
    match c.migrate_vm("mover", req).await {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.code, code, "{e:?}");
            assert!(e.message.contains(says), "{}", e.message);
        }
        other => panic!("expected a refusal saying '{says}', got {other:?}"),
    }
}

/// The guest runs on host-1 with boot id `boot`; host-2 holds nothing of it.
async fn still_on_host1(lab: &TestLab, vm: &Vm, ip: &str, boot: &str) {
    let c = &lab.client;
    let v = wait_vm(c, &vm.name, |v| v.operation.is_none()).await;
    assert_eq!(v.owner.as_deref(), Some("host-1"));
    assert_eq!(v.state, VmPowerState::Running);
    assert_eq!(v.datastore, "local-host-1");
    assert_eq!(boot_id(lab, "host-2", ip), boot, "the same guest runs on");
    let dir2 = lab.datastore_path("local-host-2").join(&vm.name);
    wait_until(VM_WAIT_TIMEOUT, "host-2 to hold nothing of the VM", || {
        let clean = qemu_pid(lab, "host-2", &vm.id).is_none()
            && !run_dir(lab, "host-2", &vm.id).exists()
            && !dir2.exists();
        clean.then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn live_migration_with_storage_moves_a_writing_guest_and_undoes_cleanly() {
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let local1 = lab.datastore_path("local-host-1");
    let local2 = lab.datastore_path("local-host-2");
    let t = c
        .create_vm(&CreateVmRequest {
            name: "mover".into(),
            template: Some("debian-busybox".into()),
            memory_mib: Some(128),
            host: Some("host-1".into()),
            datastore: Some("local-host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("created");
    let vm = wait_vm(c, "mover", |v| {
        v.state == VmPowerState::Running && v.guest.ready && v.guest.address.is_some()
    })
    .await;
    let ip = addr(&vm);
    let boot = boot_id(&lab, "host-2", &ip);

    // 1. Refusals.
    let mut req = to_local2();
    req.datastore = Some("nowhere".into());
    refused(c, &req, ErrorCode::NotFound, "nowhere").await;
    req.datastore = Some("local-host-1".into());
    refused(
        c,
        &req,
        ErrorCode::InvalidInput,
        "not present on host 'host-2'",
    )
    .await;
    let mut req = to_local2();
    req.allow_postcopy = Some(true);
    refused(c, &req, ErrorCode::InvalidInput, "post-copy").await;
    let v = c.get_vm("mover").await.expect("VM");
    assert!(v.operation.is_none() && v.owner.as_deref() == Some("host-1"));

    // 2. The destination's QEMU killed while the disks are mirrored (the
    // background copy held to 2 MiB/s, so the kill comes mid-copy).
    let mut slow = to_local2();
    slow.bandwidth_mib_s = Some(2);
    let mirroring = |id: String| async move {
        wait_until_async(VM_WAIT_TIMEOUT, "the disks to be mirrored", || async {
            let t = c.get_task(&id).await.ok()?;
            assert!(!t.state.is_final(), "the migration ended early: {t:?}");
            let d = t.migration?.disks?;
            (d.bytes_mirrored > 0 && !d.ready).then_some(())
        })
        .await
    };
    let t = c.migrate_vm("mover", &slow).await.expect("accepted");
    mirroring(t.id.clone()).await;
    let pid = qemu_pid(&lab, "host-2", &vm.id).expect("the incoming QEMU");
    // SAFETY: a plain kill(2) of the pid in QEMU's pidfile.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        Err(ClientError::TaskFailed(t)) => assert_eq!(t.state, TaskState::Failed),
        other => panic!("the broken migration ended {other:?}"),
    }
    still_on_host1(&lab, &vm, &ip, &boot).await;

    // Cancelled while the disks are mirrored.
    let t = c.migrate_vm("mover", &slow).await.expect("accepted");
    mirroring(t.id.clone()).await;
    c.cancel_task(&t.id).await.expect("cancel");
    match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        Err(ClientError::TaskFailed(t)) => assert_eq!(t.state, TaskState::Cancelled),
        other => panic!("the cancelled migration ended {other:?}"),
    }
    still_on_host1(&lab, &vm, &ip, &boot).await;

    // The destination's agent killed while the disks are mirrored: the
    // server cancels the source's side; the restarted agent removes what
    // the move made on host-2.
    let t = c.migrate_vm("mover", &slow).await.expect("accepted");
    mirroring(t.id.clone()).await;
    lab.kill_agent("host-2");
    match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        Err(ClientError::TaskFailed(t)) => assert_eq!(t.state, TaskState::Failed),
        other => panic!("the migration without its destination ended {other:?}"),
    }
    lab.restart_agent("host-2");
    still_on_host1(&lab, &vm, &ip, &boot).await;
    wait_until_async(VM_WAIT_TIMEOUT, "host-2 to be connected again", || async {
        let h = c.get_host("host-2").await.ok()?;
        (h.state == vdc_types::HostState::Connected).then_some(())
    })
    .await;

    // The server killed and restarted while the disks are mirrored: the
    // restarted server asks the destination first, cancels both sides.
    let t = c.migrate_vm("mover", &slow).await.expect("accepted");
    mirroring(t.id.clone()).await;
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
    still_on_host1(&lab, &vm, &ip, &boot).await;
    wait_until_async(
        VM_WAIT_TIMEOUT,
        "host-2 reporting to the new server",
        || async {
            let h = c.get_host("host-2").await.ok()?;
            (h.state == vdc_types::HostState::Connected).then_some(())
        },
    )
    .await;

    // 3. The move, while the guest writes a numbered sequence to its disk.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, count) = (stop.clone(), count.clone());
        let (ip, netns) = (ip.clone(), lab.netns("host-2").to_string());
        std::thread::spawn(move || {
            let mut written = Vec::new();
            let (mut n, mut after) = (0u32, 0);
            while after < 3 {
                if stop.load(Ordering::SeqCst) {
                    after += 1;
                }
                let (k, v) = (format!("s{n}"), format!("seq-{n}"));
                let cmd = format!("write {k} {v}");
                if let Ok(lines) = vdc_test_infra::guest_request(
                    &netns,
                    &ip,
                    vdc_types::GUEST_SERVICE_PORT,
                    &[&cmd],
                ) {
                    if lines.get(1).map(String::as_str) == Some("ok") {
                        written.push((k, v));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
                n += 1;
                assert!(n < 100_000, "the writer never stopped");
            }
            written
        })
    };
    wait_until_async(VM_WAIT_TIMEOUT, "the guest's first writes", || {
        let n = count.load(Ordering::SeqCst);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vdc"));
    cmd.args([
        "vm",
        "migrate",
        "mover",
        "--to",
        "host-2",
        "--datastore",
        "local-host-2",
    ])
    .env("VDC_URL", &lab.info.api_url)
    .env("VDC_TOKEN_FILE", &lab.info.token_file)
    .env_remove("VDC_TOKEN")
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(TASK_TIMEOUT, cmd.output())
        .await
        .expect("vdc vm migrate in time")
        .expect("run vdc");
    assert!(
        out.status.success(),
        "vdc vm migrate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("writer");
    let during = count.load(Ordering::SeqCst);
    assert!(written.len() >= 5, "too few writes: {written:?}");
    eprintln!(
        "figure: {during} writes across the move; {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let moved = c.get_vm("mover").await.expect("VM");
    assert_eq!(moved.owner.as_deref(), Some("host-2"));
    assert_eq!(moved.state, VmPowerState::Running);
    assert_eq!(moved.datastore, "local-host-2");
    assert!(
        moved.disks.iter().all(|d| d.datastore == "local-host-2"),
        "{:?}",
        moved.disks
    );
    assert!(moved.operation.is_none());
    assert_eq!(boot_id(&lab, "host-1", &ip), boot, "the guest restarted");
    for (k, v) in &written {
        assert_eq!(&read(&lab, "host-1", &ip, k), v, "write {k} lost");
    }
    assert!(local2.join("mover/disk0.qcow2").is_file());
    assert!(local2.join("mover/vm.json").is_file());
    assert!(
        local2.join("mover/vm.lock").is_file(),
        "the new directory holds the lease"
    );
    wait_until(VM_WAIT_TIMEOUT, "the source copy to go", || {
        (!local1.join("mover").exists() && qemu_pid(&lab, "host-1", &vm.id).is_none()).then_some(())
    });
    let task = c
        .list_tasks()
        .await
        .expect("tasks")
        .into_iter()
        .filter(|t| t.target == "mover" && t.state == TaskState::Succeeded)
        .max_by_key(|t| t.started_ms)
        .expect("the migration task");
    let report = task.migration.expect("report");
    assert_eq!(report.datastore.as_deref(), Some("local-host-2"));
    assert!(report
        .disks
        .is_some_and(|d| d.ready && d.bytes_remaining == 0));
    assert!(
        report
            .policy_steps
            .iter()
            .any(|s| s.contains("post-copy off")),
        "{:?}",
        report.policy_steps
    );
    let events = c.event_history("vm.migrated").await.expect("events");
    let ev = events
        .iter()
        .rev()
        .find(|e| e.object == "mover")
        .expect("vm.migrated");
    assert_eq!(ev.data["datastore"], "local-host-2", "{ev:?}");
    assert_eq!(ev.data["target"], "host-2", "{ev:?}");
    eprintln!(
        "figure: live migration with storage: downtime {:?} ms, total {:?} ms",
        report.outcome.as_ref().map(|o| o.downtime_ms),
        report.outcome.as_ref().map(|o| o.total_ms)
    );
}
