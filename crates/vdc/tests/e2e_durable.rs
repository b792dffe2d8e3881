//! Durable operations on real guests: the server killed (SIGKILL) in the
//! middle of a create and of a suspend finishes them after its restart,
//! leaving record, files, address and what the agent runs in agreement;
//! and a cancel reaches a running agent job at once (a shutdown of a guest
//! that ignores its power button).

use std::time::Duration;

use serde_json::json;
use vdc_client::Client;
use vdc_test_infra::{wait_until_async, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::job::{JobKind, JobState};
use vdc_types::{now_ms, Step, Task, TaskState, Vm, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest a cancelled job may take to end: far below the 600 s the
/// shutdown would otherwise wait.
const CANCEL_BOUND: Duration = Duration::from_secs(60);

fn steps(t: &Task) -> Vec<Step> {
    t.journal
        .as_ref()
        .map(|j| j.steps().cloned().collect())
        .unwrap_or_default()
}

fn submitted(t: &Task, kind: JobKind) -> usize {
    steps(t)
        .iter()
        .filter(|s| matches!(s, Step::JobSubmitted { job, .. } if *job == kind))
        .count()
}

/// Waits until the task has journaled a job of `kind`, polling fast, and
/// returns it as seen then.
async fn wait_job_journaled(c: &Client, id: &str, kind: JobKind) -> Task {
    wait_until_async(TASK_TIMEOUT, "the job in the task's journal", || async {
        let t = c.get_task(id).await.ok()?;
        if submitted(&t, kind) > 0 {
            return Some(t);
        }
        assert!(
            !t.state.is_final(),
            "the task ended without a {kind} job: {t:?}"
        );
        None
    })
    .await
}

/// The task once it ended, across a server restart (errors while the
/// server comes back are retried).
async fn wait_final(c: &Client, id: &str) -> Task {
    wait_until_async(TASK_TIMEOUT, "the task to end", || async {
        c.get_task(id).await.ok().filter(|t| t.state.is_final())
    })
    .await
}

/// Kills the server (SIGKILL) and starts it again; returns the kill time.
async fn kill_and_restart_server(lab: &TestLab) -> u64 {
    lab.kill_server();
    let killed_at = now_ms();
    lab.restart_server();
    wait_until_async(VM_WAIT_TIMEOUT, "the restarted server", || async {
        lab.client.version().await.ok()
    })
    .await;
    killed_at
}

/// A task that was unfinished when the server died says it was resumed.
fn assert_resumed_if_cut(t: &Task, killed_at: u64) {
    let ended_before = t.finished_ms.is_some_and(|f| f <= killed_at);
    if !ended_before {
        assert!(
            steps(t).iter().any(|s| matches!(s, Step::Resumed { .. })),
            "the restarted server did not journal a resume: {t:?}"
        );
    }
}

fn identity(lab: &TestLab, addr: &str) -> (String, String) {
    let lines = vdc_test_infra::wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request("host-1", addr, &[]).ok()
    });
    let parts: Vec<String> = lines
        .first()
        .expect("a greeting")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(parts.len(), 3, "{lines:?}");
    (parts[0].clone(), parts[1].clone())
}

fn addr(vm: &Vm) -> String {
    vm.guest
        .address
        .clone()
        .expect("the guest reports its address")
}

fn shared_dir(lab: &TestLab) -> std::path::PathBuf {
    lab.info
        .datastores
        .iter()
        .find(|d| d.kind == "shared")
        .expect("a shared datastore")
        .path
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_during_a_create_and_a_suspend_finishes_them_after_restart() {
    let lab = TestLab::start(1).await;
    let c = &lab.client;

    // Create (with start) from the template; kill the server as soon as the
    // provision job is journaled.
    let t = c
        .create_vm(&CreateVmRequest {
            name: "dur-1".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(160),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    wait_job_journaled(c, &t.id, JobKind::Provision).await;
    let killed_at = kill_and_restart_server(&lab).await;
    let done = wait_final(c, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_resumed_if_cut(&done, killed_at);
    assert_eq!(
        submitted(&done, JobKind::Provision),
        1,
        "the disks were made twice: {:?}",
        steps(&done)
    );

    // Consistent: the record, the agent, the files and the address agree.
    let vm = wait_vm(c, "dur-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    assert_eq!(vm.owner.as_deref(), Some("host-1"));
    let ip = addr(&vm);
    let recorded_ip = vm.nics[0].ip.clone().expect("an address recorded");
    assert_eq!(recorded_ip.split('/').next(), Some(ip.as_str()));
    let (hostname, boot) = identity(&lab, &ip);
    assert_eq!(hostname, "dur-1");
    let on_disk: vdc_types::VmConfig = serde_json::from_slice(
        &std::fs::read(shared_dir(&lab).join("dur-1/vm.json")).expect("vm.json"),
    )
    .expect("vm.json parses");
    assert_eq!(on_disk.id, vm.id);
    assert_eq!(c.list_vms().await.expect("vms").len(), 1);

    // Suspend; kill the server as soon as the suspend job is journaled.
    let t = c
        .vm_action("dur-1", "suspend", json!({}))
        .await
        .expect("suspend accepted");
    wait_job_journaled(c, &t.id, JobKind::Suspend).await;
    let killed_at = kill_and_restart_server(&lab).await;
    let done = wait_final(c, &t.id).await;
    assert_resumed_if_cut(&done, killed_at);
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert!(
        steps(&done).iter().any(|s| matches!(
            s,
            Step::JobEnded {
                state: JobState::Succeeded,
                ..
            }
        )),
        "{:?}",
        steps(&done)
    );
    let vm = wait_vm(c, "dur-1", |v| v.state == VmPowerState::Suspended).await;
    assert_eq!(vm.owner.as_deref(), Some("host-1"));
    assert!(
        shared_dir(&lab).join("dur-1/suspend.state").is_file(),
        "a suspended VM keeps its memory in suspend.state"
    );

    // The saved state is whole: resuming continues the same boot.
    let t = c
        .vm_action("dur-1", "start", json!({}))
        .await
        .expect("resume accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("resumed");
    let vm = wait_vm(c, "dur-1", |v| {
        v.state == VmPowerState::Running && v.guest.address.is_some()
    })
    .await;
    let (_, boot_after) = identity(&lab, &addr(&vm));
    assert_eq!(boot_after, boot, "the guest rebooted instead of resuming");
    let t = c.vm_action("dur-1", "stop", json!({})).await.expect("stop");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_shutdown_the_guest_ignores_ends_it_at_once() {
    let lab = TestLab::start(1).await;
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: "acpi-1".into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(160),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("created");
    let vm = wait_vm(c, "acpi-1", |v| {
        v.state == VmPowerState::Running && v.guest.ready
    })
    .await;
    let (_, boot) = identity(&lab, &addr(&vm));

    // The guest stops listening to its power button (its watchers are `dd`
    // reads of the button's input device).
    c.console_input("acpi-1", "killall dd; echo acpi-off-$((6*7))\n")
        .await
        .expect("console input");
    wait_until_async(
        VM_WAIT_TIMEOUT,
        "the guest to drop its power button",
        || async {
            c.console("acpi-1", 4000)
                .await
                .ok()
                .filter(|out| out.contains("acpi-off-42"))
        },
    )
    .await;

    let t = c
        .vm_action("acpi-1", "shutdown", json!({"timeout_s": 600}))
        .await
        .expect("shutdown accepted");
    wait_job_journaled(c, &t.id, JobKind::Shutdown).await;
    wait_vm(c, "acpi-1", |v| v.state == VmPowerState::ShuttingDown).await;
    c.cancel_task(&t.id).await.expect("cancel accepted");
    let done = wait_until_async(CANCEL_BOUND, "the cancelled shutdown to end", || async {
        c.get_task(&t.id).await.ok().filter(|t| t.state.is_final())
    })
    .await;
    assert_eq!(done.state, TaskState::Cancelled, "{done:?}");
    assert!(
        steps(&done).iter().any(|s| matches!(
            s,
            Step::JobEnded {
                state: JobState::Cancelled,
                ..
            }
        )),
        "the cancel did not reach the agent's job: {:?}",
        steps(&done)
    );
    // Rolled back: the guest runs on, same boot.
    let vm = wait_vm(c, "acpi-1", |v| {
        v.state == VmPowerState::Running && v.guest.address.is_some()
    })
    .await;
    let (_, boot_after) = identity(&lab, &addr(&vm));
    assert_eq!(boot_after, boot, "the guest was powered off");
    let t = c
        .vm_action("acpi-1", "stop", json!({}))
        .await
        .expect("stop");
    c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("stopped");
}

/// A create (with start) cancelled while it runs ends cancelled with
/// everything it made undone: no record, no files, no address, nothing on
/// the host. A cancel needs the task in flight: if this machine was so slow
/// that the create ended first, the VM is deleted and the cancel tried
/// again.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_cancelled_in_flight_leaves_nothing() {
    let lab = TestLab::start(1).await;
    let c = &lab.client;
    let mut cancelled = None;
    for attempt in 0..3 {
        let t = c
            .create_vm(&CreateVmRequest {
                name: "gone-1".into(),
                template: Some(TEMPLATE.into()),
                memory_mib: Some(160),
                start: true,
                ..Default::default()
            })
            .await
            .expect("create accepted");
        match c.cancel_task(&t.id).await {
            Ok(_) => {
                cancelled = Some(t);
                break;
            }
            Err(e) => {
                eprintln!("attempt {attempt}: the create ended before its cancel ({e}); again");
                c.wait_task(&t.id, TASK_TIMEOUT, |_| {})
                    .await
                    .expect("created");
                let s = c
                    .vm_action("gone-1", "stop", json!({}))
                    .await
                    .expect("stop");
                c.wait_task(&s.id, TASK_TIMEOUT, |_| {})
                    .await
                    .expect("stopped");
                let d = c.delete_vm("gone-1").await.expect("delete");
                c.wait_task(&d.id, TASK_TIMEOUT, |_| {})
                    .await
                    .expect("deleted");
            }
        }
    }
    let t = cancelled.expect("a cancel landed while the create ran");
    let done = wait_final(c, &t.id).await;
    assert_eq!(done.state, TaskState::Cancelled, "{done:?}");
    assert!(
        steps(&done)
            .iter()
            .any(|s| matches!(s, Step::RollingBack { .. })),
        "{:?}",
        steps(&done)
    );
    assert!(c.get_vm("gone-1").await.is_err(), "the record was kept");
    assert!(
        !shared_dir(&lab).join("gone-1").exists(),
        "the VM's files were left"
    );
    wait_until_async(VM_WAIT_TIMEOUT, "host-1 to report no VM", || async {
        c.get_host("host-1").await.ok().filter(|h| h.vm_count == 0)
    })
    .await;
    // The address came back: the next VM gets the first one of the pool.
    let pool_start = c.list_networks().await.expect("networks")[0]
        .pool_start
        .clone();
    let p = c
        .create_vm(&CreateVmRequest {
            name: "probe-1".into(),
            disk_gib: Some(1),
            ..Default::default()
        })
        .await
        .expect("probe accepted");
    c.wait_task(&p.id, TASK_TIMEOUT, |_| {})
        .await
        .expect("probe created");
    let probe = c.get_vm("probe-1").await.expect("probe");
    let ip = probe.nics[0].ip.clone().expect("an address");
    assert_eq!(ip.split('/').next(), Some(pool_start.as_str()));
}
