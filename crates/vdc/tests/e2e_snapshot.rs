//! Snapshots end to end on a real guest, through the API, the CLI and the
//! event history: a quiesced disk snapshot, a memory snapshot reverted to
//! the same running boot, the tree surviving an agent restart, a middle
//! snapshot deleted while the guest runs without losing a byte, disk-only
//! reverts that boot on the snapshot's data, and the refusals.

use std::time::Duration;

use vdc_client::{Client, ClientError};
use vdc_test_infra::{wait_until, wait_until_async, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::snapshot::{Consistency, CreateSnapshotRequest};
use vdc_types::{ErrorCode, Task, Vm, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);
const VM: &str = "snap-1";

async fn run_task(c: &Client, t: Task) -> Task {
    let done = c
        .wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .unwrap_or_else(|e| panic!("task {} {} failed: {e}", t.kind, t.target));
    // For docs/benchmarks.md: the task's time from accepted to finished.
    if done.kind.starts_with("snapshot.") {
        let ms = done.finished_ms.unwrap_or(done.created_ms) - done.created_ms;
        eprintln!("figure: {} took {ms} ms", done.kind);
    }
    done
}

async fn snapshot(c: &Client, name: &str, memory: bool) {
    let req = CreateSnapshotRequest {
        name: name.into(),
        description: format!("test {name}"),
        memory,
    };
    let t = c
        .create_snapshot(VM, &req)
        .await
        .expect("snapshot accepted");
    assert_eq!(t.kind, "snapshot.create");
    run_task(c, t).await;
    eprintln!("figure: ^ snapshot {name} (memory: {memory})");
}

/// Memory snapshot `name`, with the server killed (SIGKILL) once the task
/// has sent its agent job (the agent frozen meanwhile, so the job cannot
/// report its end first) and restarted: the task ends well, the snapshot
/// is in the tree, and — unless the task had ended before the kill — the
/// restarted server says it resumed it.
async fn snapshot_across_a_server_restart(lab: &TestLab, name: &str) {
    let c = &lab.client;
    let req = CreateSnapshotRequest {
        name: name.into(),
        description: format!("test {name}, across a server restart"),
        memory: true,
    };
    let owner = c.get_vm(VM).await.expect("vm").owner.expect("owner");
    let t = c
        .create_snapshot(VM, &req)
        .await
        .expect("snapshot accepted");
    wait_until_async(VM_WAIT_TIMEOUT, "the snapshot job sent", || async {
        let task = c.get_task(&t.id).await.ok()?;
        let steps = task.journal.map(|j| j.steps).unwrap_or_default();
        let sent = steps
            .iter()
            .any(|s| matches!(s.step, vdc_types::Step::JobSubmitted { .. }));
        (sent || task.state.is_final()).then_some(())
    })
    .await;
    let frozen = lab.freeze_agent(&owner);
    lab.kill_server();
    let killed_ms = vdc_types::now_ms();
    lab.restart_server();
    frozen.thaw();
    let done = wait_until_async(VM_WAIT_TIMEOUT, "the restarted server", || async {
        c.get_task(&t.id).await.ok()
    })
    .await;
    let done = if done.state.is_final() {
        done
    } else {
        run_task(c, done).await
    };
    assert_eq!(done.state, vdc_types::TaskState::Succeeded, "{done:?}");
    let list = c.list_snapshots(VM).await.expect("list");
    assert!(list.snapshots.iter().any(|s| s.name == name && s.memory));
    if done.finished_ms.is_some_and(|f| f >= killed_ms) {
        let resumed = c.event_history("task.resumed").await.expect("events");
        assert!(
            resumed.iter().any(|e| e.data["task"] == t.id.as_str()),
            "{resumed:?}"
        );
    }
}

async fn revert(c: &Client, name: &str) {
    let t = c.revert_snapshot(VM, name).await.expect("revert accepted");
    run_task(c, t).await;
}

async fn running(c: &Client) -> Vm {
    wait_vm(c, VM, |v| v.state == VmPowerState::Running && v.guest.ready).await
}

async fn start(c: &Client) -> Vm {
    let t = c
        .vm_action(VM, vdc_types::VmAction::Start, serde_json::json!({}))
        .await
        .expect("start accepted");
    run_task(c, t).await;
    running(c).await
}

/// `(hostname, boot_id, counter)` from the guest's service.
fn identity(lab: &TestLab, addr: &str) -> (String, String, u64) {
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request("host-2", addr, &[]).ok()
    });
    let parts: Vec<String> = lines[0].split_whitespace().map(str::to_string).collect();
    assert_eq!(parts.len(), 3, "greeting {lines:?}");
    (
        parts[0].clone(),
        parts[1].clone(),
        parts[2].parse().expect("counter"),
    )
}

/// One request line to the guest; its answer.
fn ask(lab: &TestLab, addr: &str, line: &str) -> String {
    let out = lab
        .guest_request("host-2", addr, &[line])
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    out.get(1).cloned().unwrap_or_default()
}

/// Runs the `vdc` CLI against the lab.
fn vdc(lab: &TestLab, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(args)
        .env_remove("VDC_TOKEN")
        .env("VDC_URL", &lab.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run vdc")
}

fn api_code(e: ClientError) -> (ErrorCode, String) {
    match e {
        ClientError::Api(a) => (a.code, a.message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_on_a_real_guest() {
    let lab = TestLab::start(2).await;
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: VM.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            host: Some("host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    run_task(c, t).await;
    let vm = running(c).await;
    let ip = vm.guest.address.clone().expect("address");
    let (_, boot, _) = identity(&lab, &ip);

    // s1, disk only: the guest agent answers, so it is quiesced.
    assert_eq!(ask(&lab, &ip, "write f A"), "ok");
    snapshot(c, "s1", false).await;
    let list = c.list_snapshots(VM).await.expect("list");
    let s1 = list.snapshots.iter().find(|s| s.name == "s1").expect("s1");
    assert_eq!(s1.consistency, Consistency::Quiesced, "{s1:?}");
    assert!(!s1.memory);
    assert_eq!(list.current.as_deref(), Some("s1"));
    assert_eq!(list.chain_length, 2);

    // Refusals, nothing changed: a taken name, an unknown snapshot.
    let (code, msg) = api_code(
        c.create_snapshot(
            VM,
            &CreateSnapshotRequest {
                name: "s1".into(),
                description: String::new(),
                memory: false,
            },
        )
        .await
        .expect_err("a taken name"),
    );
    assert_eq!(code, ErrorCode::AlreadyExists, "{msg}");
    assert!(msg.contains("already exists"), "{msg}");
    let (code, msg) = api_code(
        c.revert_snapshot(VM, "no-such")
            .await
            .expect_err("an unknown snapshot"),
    );
    assert_eq!(code, ErrorCode::NotFound, "{msg}");
    let (code, _) = api_code(
        c.create_snapshot(
            VM,
            &CreateSnapshotRequest {
                name: "bad name".into(),
                description: String::new(),
                memory: false,
            },
        )
        .await
        .expect_err("a bad name"),
    );
    assert_eq!(code, ErrorCode::InvalidInput);

    // s2 with memory, then the guest moves on.
    assert_eq!(ask(&lab, &ip, "write f B"), "ok");
    let (_, _, c_snap) = identity(&lab, &ip);
    snapshot_across_a_server_restart(&lab, "s2").await;
    assert_eq!(ask(&lab, &ip, "write g G"), "ok");
    let c_pre = wait_until(VM_WAIT_TIMEOUT, "the counter to move on", || {
        let (_, _, n) = identity(&lab, &ip);
        (n >= c_snap + 40).then_some(n)
    });

    // Revert to s2: the same boot runs on from the snapshot's counter, with
    // the snapshot's data.
    revert(c, "s2").await;
    running(c).await;
    let (_, boot_back, c_back) = identity(&lab, &ip);
    assert_eq!(boot_back, boot, "a memory revert must not reboot");
    assert!(
        c_back >= c_snap && c_back < c_pre,
        "counter {c_back} is not the snapshot's ({c_snap}..{c_pre})"
    );
    assert_eq!(ask(&lab, &ip, "read f"), "B");
    assert_eq!(ask(&lab, &ip, "read g"), "error: no such file");

    // The tree lives in the VM's directory: an agent restart keeps it.
    lab.kill_agent("host-1");
    lab.restart_agent("host-1");
    running(c).await;
    // Once the new agent answers, it reads the tree from the datastore.
    let list = wait_until_async(VM_WAIT_TIMEOUT, "the restarted agent's tree", || async {
        c.list_snapshots(VM).await.ok()
    })
    .await;
    let names: Vec<&str> = list.snapshots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2"]);
    assert_eq!(list.current.as_deref(), Some("s2"));

    // s3, then delete the middle one (s2) while the guest runs.
    assert_eq!(ask(&lab, &ip, "write h H"), "ok");
    snapshot(c, "s3", false).await;
    let t = c.delete_snapshot(VM, "s2").await.expect("delete accepted");
    run_task(c, t).await;
    let v = c.get_vm(VM).await.expect("vm");
    assert_eq!(v.state, VmPowerState::Running);
    assert_eq!(identity(&lab, &ip).1, boot, "the delete stopped the guest");
    let list = c.list_snapshots(VM).await.expect("list");
    let s3 = list.snapshots.iter().find(|s| s.name == "s3").expect("s3");
    assert_eq!(s3.parent.as_deref(), Some("s1"));

    // Revert to s3 (disk only): powered off; booted, it reads every byte.
    revert(c, "s3").await;
    assert_eq!(c.get_vm(VM).await.expect("vm").state, VmPowerState::Stopped);
    let (code, _) = api_code(
        c.create_snapshot(
            VM,
            &CreateSnapshotRequest {
                name: "m".into(),
                description: String::new(),
                memory: true,
            },
        )
        .await
        .expect_err("memory of a stopped VM"),
    );
    assert_eq!(code, ErrorCode::InvalidInput);
    start(c).await;
    let (_, boot3, _) = identity(&lab, &ip);
    assert_ne!(boot3, boot);
    assert_eq!(ask(&lab, &ip, "read f"), "B");
    assert_eq!(ask(&lab, &ip, "read h"), "H");
    assert_eq!(ask(&lab, &ip, "read g"), "error: no such file");

    // Revert to s1: A, not B.
    revert(c, "s1").await;
    start(c).await;
    assert_eq!(ask(&lab, &ip, "read f"), "A");
    assert_eq!(ask(&lab, &ip, "read h"), "error: no such file");

    // A live migration with its disks to another host is refused while it
    // has snapshots (the mirror to another host carries no chain yet).
    let owner = c
        .get_vm(VM)
        .await
        .expect("the VM")
        .owner
        .expect("a running VM has an owner");
    let other = if owner == "host-1" {
        "host-2"
    } else {
        "host-1"
    };
    let (code, msg) = api_code(
        c.migrate_vm(
            VM,
            &vdc_types::migration::MigrateRequest {
                to: Some(other.into()),
                datastore: Some(format!("local-{other}")),
                ..Default::default()
            },
        )
        .await
        .expect_err("a live migration with storage of a VM with snapshots"),
    );
    assert_eq!(code, ErrorCode::InvalidState, "{msg}");
    assert!(msg.contains("snapshots"), "{msg}");

    // The CLI shows the tree with the current position.
    let out = vdc(&lab, &["vm", "snapshot", "list", VM]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.lines().any(|l| l.starts_with("s1 *")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("  s3 ")), "{text}");

    // Instant clone: a new VM forked from the running guest answers with its
    // own hostname on its own address; the source runs on unchanged.
    let (_, src_boot, src_count) = identity(&lab, &ip);
    let t = c
        .instant_clone(VM, "snap-2")
        .await
        .expect("instant clone accepted");
    assert_eq!(t.kind, "vm.instant_clone");
    let started = std::time::Instant::now();
    run_task(c, t).await;
    let clone = c.get_vm("snap-2").await.expect("the clone");
    let clone_ip = clone.nics[0]
        .ip
        .as_deref()
        .and_then(|i| i.split('/').next())
        .expect("the clone's address")
        .to_string();
    assert_ne!(clone_ip, ip);
    assert_ne!(clone.nics[0].mac, vm.nics[0].mac);
    let (host, clone_boot, _) = wait_until(VM_WAIT_TIMEOUT, "the clone on its address", || {
        lab.guest_request("host-2", &clone_ip, &[])
            .ok()
            .and_then(|l| l.first().cloned())
            .map(|g| {
                let p: Vec<String> = g.split_whitespace().map(str::to_string).collect();
                (p[0].clone(), p[1].clone(), p[2].clone())
            })
            .filter(|(h, _, _)| h == "snap-2")
    });
    eprintln!(
        "figure: instant clone, API call to answering on its new address: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(host, "snap-2");
    assert_eq!(clone_boot, src_boot, "the clone was booted, not forked");
    assert_eq!(
        ask(&lab, &clone_ip, "read f"),
        "A",
        "the clone has the source's data"
    );
    let (src_host, src_boot_after, src_after) = identity(&lab, &ip);
    assert_eq!(src_host, VM);
    assert_eq!(src_boot_after, src_boot);
    assert!(src_after >= src_count);
    // The clone's base cannot go while the clone exists.
    let (code, msg) = api_code(
        c.delete_snapshot(VM, "clone-snap-2")
            .await
            .expect_err("the base of a clone"),
    );
    assert_eq!(code, ErrorCode::InvalidState, "{msg}");
    assert!(msg.contains("snap-2"), "{msg}");

    // A full clone of the running VM, through the CLI: it boots with its
    // own identity and the source's data; the temporary snapshot is merged
    // back into the source, which runs on.
    let out = vdc(&lab, &["vm", "clone-running", VM, "snap-3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = wait_vm(c, "snap-3", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let full_ip = full
        .guest
        .address
        .clone()
        .expect("the full clone's address");
    let (h3, boot3_clone, _) = identity(&lab, &full_ip);
    assert_eq!(h3, "snap-3");
    assert_ne!(boot3_clone, src_boot, "a full clone boots");
    assert_eq!(ask(&lab, &full_ip, "read f"), "A");
    let names: Vec<String> = c
        .list_snapshots(VM)
        .await
        .expect("list")
        .snapshots
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(!names.iter().any(|n| n == "clone-snap-3"), "{names:?}");
    assert_eq!(identity(&lab, &ip).1, src_boot);

    // The event stream told each step.
    let events = c.event_history("snapshot.*").await.expect("events");
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    for want in ["snapshot.created", "snapshot.reverted", "snapshot.deleted"] {
        assert!(topics.contains(&want), "{topics:?}");
    }
    let cloned = c.event_history("vm.instant_cloned").await.expect("events");
    assert_eq!(cloned.len(), 1, "{cloned:?}");
    eprintln!(
        "figure: instant clone task {} ms, steps {}",
        cloned[0].data["ms"], cloned[0].data["steps_ms"]
    );

    // The source cannot be deleted while its instant clone reads its base.
    // (Written first: the data of "now", past every snapshot.)
    assert_eq!(ask(&lab, &ip, "write k K"), "ok");
    let t = c
        .vm_action(VM, vdc_types::VmAction::Stop, serde_json::json!({}))
        .await
        .expect("stop accepted");
    run_task(c, t).await;
    let (code, msg) = api_code(c.delete_vm(VM).await.expect_err("the base of a clone"));
    assert_eq!(code, ErrorCode::InvalidState, "{msg}");
    assert!(msg.contains("snap-2"), "{msg}");
    let first = events
        .iter()
        .find(|e| e.topic == "snapshot.created")
        .expect("created");
    assert_eq!(first.data["consistency"], "quiesced", "{first:?}");

    copies_and_moves_carry_the_tree(&lab).await;
}

async fn stop_and_delete(c: &Client, vm: &str) {
    let t = c
        .vm_action(vm, vdc_types::VmAction::Stop, serde_json::json!({}))
        .await
        .expect("stop accepted");
    run_task(c, t).await;
    let t = c.delete_vm(vm).await.expect("delete accepted");
    run_task(c, t).await;
}

/// The stopped VM (snapshots s1 and s3, at s1 with `k` written since): a
/// full clone reads its current data; a move to the other host's local
/// datastore carries its tree, and it reverts there to each snapshot; a
/// storage migration while it runs carries the tree too.
async fn copies_and_moves_carry_the_tree(lab: &TestLab) {
    let c = &lab.client;
    for clone in ["snap-2", "snap-3"] {
        stop_and_delete(c, clone).await;
    }

    let t = c
        .clone_vm(
            VM,
            &vdc_types::clone::CloneVmRequest {
                name: "snap-4".into(),
                start: true,
                ..Default::default()
            },
        )
        .await
        .expect("a clone of a VM with snapshots accepted");
    run_task(c, t).await;
    let clone = wait_vm(c, "snap-4", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let clone_ip = clone.guest.address.clone().expect("the clone's address");
    assert_eq!(identity(lab, &clone_ip).0, "snap-4");
    assert_eq!(ask(lab, &clone_ip, "read k"), "K", "the clone reads now");
    assert_eq!(ask(lab, &clone_ip, "read f"), "A");
    assert!(
        c.list_snapshots("snap-4")
            .await
            .expect("list")
            .snapshots
            .is_empty(),
        "a clone has no snapshots"
    );
    stop_and_delete(c, "snap-4").await;

    let vm = c.get_vm(VM).await.expect("the VM");
    let owner = vm.owner.clone().expect("an owner");
    let other = if owner == "host-1" {
        "host-2"
    } else {
        "host-1"
    };
    let ds = format!("local-{other}");
    let t = c
        .migrate_vm(
            VM,
            &vdc_types::migration::MigrateRequest {
                to: Some(other.into()),
                datastore: Some(ds.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("a cold move of a VM with snapshots accepted");
    run_task(c, t).await;
    let moved = c.get_vm(VM).await.expect("the VM");
    assert_eq!(moved.owner.as_deref(), Some(other));
    assert_eq!(moved.datastore, ds);
    let list = c.list_snapshots(VM).await.expect("list");
    let names: Vec<&str> = list.snapshots.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"s1") && names.contains(&"s3"), "{names:?}");
    // The instant clone's fork is the newest snapshot on the s1 branch.
    assert_eq!(list.current.as_deref(), Some("clone-snap-2"));

    let v = start(c).await;
    let ip = v.guest.address.clone().expect("address");
    identity(lab, &ip);
    assert_eq!(
        ask(lab, &ip, "read k"),
        "K",
        "the move kept the current data"
    );
    revert(c, "s3").await;
    start(c).await;
    identity(lab, &ip);
    assert_eq!(ask(lab, &ip, "read f"), "B");
    assert_eq!(ask(lab, &ip, "read h"), "H");
    assert_eq!(ask(lab, &ip, "read k"), "error: no such file");

    // Its disks move back to the shared datastore while it runs: the
    // frozen images are copied, the active layer mirrored.
    let (_, boot, _) = identity(lab, &ip);
    assert_eq!(ask(lab, &ip, "write m M"), "ok");
    let t = c
        .migrate_vm(
            VM,
            &vdc_types::migration::MigrateRequest {
                datastore: Some("shared".into()),
                ..Default::default()
            },
        )
        .await
        .expect("a storage migration of a VM with snapshots accepted");
    run_task(c, t).await;
    let moved = c.get_vm(VM).await.expect("the VM");
    assert!(
        moved.disks.iter().all(|d| d.datastore == "shared"),
        "{:?}",
        moved.disks
    );
    assert_eq!(identity(lab, &ip).1, boot, "the guest ran on");
    assert_eq!(ask(lab, &ip, "read m"), "M");
    revert(c, "s1").await;
    start(c).await;
    identity(lab, &ip);
    assert_eq!(ask(lab, &ip, "read f"), "A");
    assert_eq!(ask(lab, &ip, "read h"), "error: no such file");
    assert_eq!(ask(lab, &ip, "read m"), "error: no such file");
}
