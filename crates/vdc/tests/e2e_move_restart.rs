//! A cold migration interrupted by a server restart leaves nothing
//! half-made: the server is killed while the VM's files are being copied
//! to another host's local datastore, started again, and the move either
//! stands whole (the record moved before the kill) or is rolled back (the
//! VM stays on its source with its files, the copy on the destination is
//! gone). Either way the VM starts and its guest boots.

use std::time::Duration;

use vdc_test_infra::{wait_until_async, wait_vm, TestLab};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrateRequest;
use vdc_types::{HostState, TaskState, VmAction, VmPowerState};

const TASK_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_move_cut_by_a_server_restart_stands_whole_or_is_rolled_back() {
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
            start: false,
            disks: vec![vdc_types::api::DiskRequest {
                size_gib: 1,
                datastore: None,
                path: None,
            }],
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("created");
    assert!(local1.join("mover/vm.json").is_file());
    // 256 MiB of data on the data disk: a copy that takes a while, so the
    // kill below most likely cuts it (either outcome is checked).
    let data = std::fs::read_dir(local1.join("mover"))
        .expect("the VM's directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|x| x == "qcow2")
                && p.file_name().is_some_and(|n| n != "disk0.qcow2")
        })
        .expect("the data disk");
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 256M"])
        .arg(&data)
        .output()
        .expect("run qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let t = c
        .migrate_vm(
            "mover",
            &MigrateRequest {
                to: Some("host-2".into()),
                datastore: Some("local-host-2".into()),
                ..Default::default()
            },
        )
        .await
        .expect("move accepted");
    // Killed once the copy job is on its way (the journal holds it).
    wait_until_async(TASK_TIMEOUT, "the copy began", || async {
        let task = c.get_task(&t.id).await.ok()?;
        let submitted = task.journal.as_ref().is_some_and(|j| {
            j.steps
                .iter()
                .any(|s| matches!(s.step, vdc_types::Step::JobSubmitted { .. }))
        });
        (submitted || task.state.is_final()).then_some(())
    })
    .await;
    lab.kill_server();
    lab.restart_server();
    let ended = wait_until_async(
        TASK_TIMEOUT,
        "the move settled after the restart",
        || async {
            let task = c.get_task(&t.id).await.ok()?;
            task.state.is_final().then_some(task)
        },
    )
    .await;
    let v = c.get_vm("mover").await.expect("VM");
    assert!(v.operation.is_none(), "the move still claims the VM: {v:?}");
    match ended.state {
        TaskState::Succeeded => {
            assert_eq!(v.owner.as_deref(), Some("host-2"), "{v:?}");
            assert_eq!(v.datastore, "local-host-2");
            assert!(local2.join("mover/vm.json").is_file());
        }
        TaskState::Failed => {
            let why = ended.error.expect("an error").message;
            assert!(why.contains("rolled back"), "{why}");
            assert_eq!(v.owner.as_deref(), Some("host-1"), "{v:?}");
            assert_eq!(v.datastore, "local-host-1");
            assert!(local1.join("mover/vm.json").is_file());
            assert!(data.is_file(), "the data disk left the source");
            assert!(
                !local2.join("mover").exists(),
                "the copy on host-2 was left behind"
            );
        }
        other => panic!("the move ended {other:?}: {ended:?}"),
    }
    eprintln!("the move ended {:?} after the restart", ended.state);
    // The restarted server knows the hosts again once they reported.
    wait_until_async(TASK_TIMEOUT, "both hosts connected again", || async {
        let hosts = c.list_hosts().await.ok()?;
        (hosts.len() == 2 && hosts.iter().all(|h| h.state == HostState::Connected)).then_some(())
    })
    .await;
    let t = c
        .vm_action("mover", VmAction::Start, serde_json::json!({}))
        .await
        .expect("start accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("started");
    wait_vm(c, "mover", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
}
