//! The server on etcd (`vdc server --store etcd://...`) with a real guest:
//! the cluster state lives in etcd (not in a file of the server), and a
//! server killed (SIGKILL) during a VM create finishes it after its restart
//! from what etcd kept: the task resumed, the disks made once, the guest
//! running once.

use std::time::Duration;

use vdc_client::Client;
use vdc_store::Store;
use vdc_store_etcd::test_etcd::TestEtcd;
use vdc_test_infra::{wait_until_async, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::job::JobKind;
use vdc_types::{Step, Task, TaskState, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);

fn provisions(t: &Task) -> usize {
    t.journal
        .as_ref()
        .map(|j| {
            j.steps()
                .filter(
                    |s| matches!(s, Step::JobSubmitted { job, .. } if *job == JobKind::Provision),
                )
                .count()
        })
        .unwrap_or_default()
}

/// The task once it ended, across a server restart.
async fn wait_final(c: &Client, id: &str) -> Task {
    wait_until_async(TASK_TIMEOUT, "the task to end", || async {
        c.get_task(id).await.ok().filter(|t| t.state.is_final())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_on_etcd_keeps_its_state_there_and_resumes_a_create_after_a_kill() {
    let etcd = TestEtcd::start().await.unwrap_or_else(|e| panic!("{e}"));
    let lab = TestLab::builder(1)
        .store(format!("etcd://{}", etcd.endpoint()))
        .start()
        .await;
    let c = &lab.client;

    // Create (with start); kill the server once the provision job is
    // journaled, start it again.
    let t = c
        .create_vm(&CreateVmRequest {
            name: "etcd-1".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    wait_until_async(TASK_TIMEOUT, "the provision job in the journal", || async {
        let t = c.get_task(&t.id).await.ok()?;
        assert!(
            !t.state.is_final(),
            "the task ended before a provision job: {t:?}"
        );
        (provisions(&t) > 0).then_some(())
    })
    .await;
    lab.kill_server();
    lab.restart_server();
    wait_until_async(VM_WAIT_TIMEOUT, "the restarted server", || async {
        c.version().await.ok()
    })
    .await;
    let done = wait_final(c, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(provisions(&done), 1, "the disks were made twice: {done:?}");
    let vm = wait_vm(c, "etcd-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    assert_eq!(vm.owner.as_deref(), Some("host-1"));
    assert_eq!(c.list_vms().await.expect("vms").len(), 1);

    // The state is etcd's: the VM record is under the server's namespace,
    // and the server's data directory holds no store file.
    let store = etcd.store("/vdc/").await.expect("connect");
    let record = store.get("/vms/etcd-1").await.expect("get");
    assert!(record.is_some(), "no VM record in etcd");
    let data_dir = lab.spec.plan().expect("plan").server_data_dir;
    assert!(
        !data_dir.join("state.redb").exists(),
        "the server wrote an embedded store too"
    );
}
