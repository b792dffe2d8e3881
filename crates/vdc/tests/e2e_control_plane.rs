//! Chaos on the control plane, with real guests: a lab of 2 hosts, 3 etcd
//! members and 3 servers (`vdc lab up --control-plane 3`). The leader is
//! killed during a VM create, the next leader during a live migration, then
//! an etcd member: each operation completes or rolls back, no VM ever runs
//! on two hosts at once, no task is left unfinished, the CLI keeps working
//! through every fault, and the event stream goes on across servers
//! without a gap or a repeat.

use std::time::Duration;

use futures::StreamExt;
use vdc_client::Client;
use vdc_test_infra::{wait_until_async, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::control_plane::ServerRole;
use vdc_types::job::JobKind;
use vdc_types::migration::MigrateRequest;
use vdc_types::{Step, Task, TaskState, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);
const ELECTION: Duration = Duration::from_secs(60);

/// The task once it ended (any server may answer).
async fn wait_final(c: &Client, id: &str) -> Task {
    wait_until_async(TASK_TIMEOUT, "the task to end", || async {
        c.get_task(id).await.ok().filter(|t| t.state.is_final())
    })
    .await
}

/// The leader's member name (the lab names its servers `server-N`).
async fn kill_leader(lab: &TestLab) -> String {
    let leader = lab.leader(ELECTION).await;
    lab.kill_member(&leader);
    leader
}

/// `vdc ARGS` with every server in `VDC_URL`; its standard output.
fn cli(lab: &TestLab, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vdc"))
        .args(args)
        .env("VDC_URL", &lab.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .output()
        .expect("run vdc");
    assert!(
        out.status.success(),
        "vdc {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_mid_create_and_mid_migration_an_etcd_member_killed() {
    let lab = TestLab::builder(2)
        .control_plane(3)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    // No VM runs with its vCPUs on two hosts (checked while no migration
    // runs: an incoming QEMU has its vCPU threads too).
    let no_twins = lab.invariant_checker();
    let cp = c.control_plane().await.expect("control plane");
    assert_eq!(cp.store, "etcd");
    assert_eq!(cp.members.len(), 3, "{cp:?}");
    assert_eq!(
        cp.members
            .iter()
            .filter(|m| m.role == ServerRole::Leader)
            .count(),
        1,
        "{cp:?}"
    );
    let root = lab.spec.state_root.display().to_string();
    let lab_id = lab.info.lab_id.clone();
    let status = cli(
        &lab,
        &["lab", "status", "--lab-id", &lab_id, "--state-root", &root],
    );
    assert!(status.contains("leader server-"), "{status}");
    assert!(status.contains("etcd-3"), "{status}");

    // The event stream, through every fault below.
    let mut events = Box::pin(c.events(&[]).await.expect("event stream"));
    let first_seq = c
        .event_history("*")
        .await
        .expect("history")
        .last()
        .map(|e| e.seq)
        .unwrap_or(0);

    // 1. The leader dies once the create's provision job is journaled.
    let t = c
        .create_vm(&CreateVmRequest {
            name: "cp-1".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            host: Some("host-1".into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    wait_until_async(TASK_TIMEOUT, "the provision job in the journal", || async {
        let t = c.get_task(&t.id).await.ok()?;
        let provisions =
            t.journal.as_ref()?.steps().filter(
                |s| matches!(s, Step::JobSubmitted { job, .. } if *job == JobKind::Provision),
            );
        (provisions.count() > 0).then_some(())
    })
    .await;
    let first = kill_leader(&lab).await;
    let done = wait_final(c, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let vm = wait_vm(c, "cp-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let second = lab.leader(ELECTION).await;
    assert_ne!(first, second, "the dead server still leads");

    no_twins.check();
    drop(no_twins);

    // 2. The next leader dies while the VM migrates live.
    let t = c
        .migrate_vm(
            "cp-1",
            &MigrateRequest {
                to: Some("host-2".into()),
                bandwidth_mib_s: Some(8),
                ..Default::default()
            },
        )
        .await
        .expect("migration accepted");
    wait_until_async(VM_WAIT_TIMEOUT, "the migration to run", || async {
        let t = c.get_task(&t.id).await.ok()?;
        (t.state.is_final() || t.state == TaskState::Running).then_some(())
    })
    .await;
    lab.kill_member(&second);
    let end = wait_final(c, &t.id).await;
    let moved = wait_vm(c, "cp-1", |v| {
        v.state == VmPowerState::Running && v.operation.is_none()
    })
    .await;
    match end.state {
        TaskState::Succeeded => assert_eq!(moved.owner.as_deref(), Some("host-2"), "{end:?}"),
        _ => assert_eq!(moved.owner.as_deref(), Some("host-1"), "{end:?}"),
    }
    // One QEMU of the VM is left, on the host its record names.
    let qemus = vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "one QEMU of the VM", || {
        let q = lab.qemu_command_lines("cp-1");
        (q.len() == 1).then_some(q)
    });
    assert_eq!(Some(qemus[0].0.as_str()), moved.owner.as_deref());
    let no_twins = lab.invariant_checker();
    let third = lab.leader(ELECTION).await;
    assert!(third != first && third != second, "{third}");
    assert_eq!(moved.id, vm.id);
    // The guest answers where its record says it runs.
    let ip = moved.guest.address.clone().expect("the guest's address");
    vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request("host-1", &ip, &[]).ok()
    });

    // 3. One etcd member dies: the CLI goes on, and so does a task.
    lab.kill_member("etcd-1");
    let vms = cli(&lab, &["vm", "list"]);
    assert!(vms.contains("cp-1"), "{vms}");
    let t = c
        .vm_action("cp-1", "stop", serde_json::json!({}))
        .await
        .expect("stop accepted");
    let stopped = wait_final(c, &t.id).await;
    assert_eq!(stopped.state, TaskState::Succeeded, "{stopped:?}");
    wait_vm(c, "cp-1", |v| v.state == VmPowerState::Stopped).await;

    // No task left unfinished; no VM ran twice.
    // (A task ends just after it releases its VM: wait, with a deadline.)
    wait_until_async(TASK_TIMEOUT, "every task to end", || async {
        let tasks = c.list_tasks().await.ok()?;
        tasks.iter().all(|t| t.state.is_final()).then_some(())
    })
    .await;
    no_twins.check();

    // The stream saw every stored event since it opened, once, in order,
    // across the two servers that died (one of which it may have used).
    let history = c.event_history("*").await.expect("history");
    let last = history.last().map(|e| e.seq).expect("events");
    let stored: Vec<u64> = history
        .into_iter()
        .map(|e| e.seq)
        .filter(|s| *s > first_seq)
        .collect();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|s| *s < last) {
        let ev = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("the stream delivers")
            .expect("the stream goes on")
            .expect("an event");
        seen.push(ev.seq);
    }
    let seen: Vec<u64> = seen.into_iter().filter(|s| *s > first_seq).collect();
    assert_eq!(seen, stored, "the stream missed or repeated events");
    let changes = c
        .event_history("cluster.leader_changed")
        .await
        .expect("history");
    assert!(changes.len() >= 3, "{changes:?}");
}
