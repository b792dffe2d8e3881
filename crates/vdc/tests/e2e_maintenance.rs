//! Maintenance mode on a 2-host lab: entering it empties host-1 of five
//! VMs (a running VM on shared storage leaves by live migration with the
//! same boot, a running VM on host-1's local datastore leaves by live
//! migration with its storage (to `shared`, which host-2 reaches) with the
//! same boot, a stopped VM on shared storage moves by ownership, a stopped
//! and a suspended VM on host-1's local datastore are copied to host-2) and
//! reports the one it cannot move (a running VM on local storage whose
//! 1000 GiB disk fits in no datastore of host-2, so it cannot leave with
//! its storage either) with the reason, on the task and as an event; meanwhile host-1 takes no new VMs
//! (placement skips it, a start, a create or a migration naming it is
//! refused); `exit` returns it to placement.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use vdc_client::{Client, ClientError};
use vdc_test_infra::{guest_request, wait_until, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrateRequest;
use vdc_types::{ErrorCode, MaintenanceState, Vm, VmAction, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);

async fn run_task(c: &Client, t: vdc_types::Task) {
    if let Err(e) = c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        panic!("task {} {} failed: {e}", t.kind, t.target);
    }
}

fn request(name: &str, datastore: &str, host: Option<&str>, start: bool) -> CreateVmRequest {
    CreateVmRequest {
        name: name.into(),
        template: Some(TEMPLATE.into()),
        memory_mib: Some(96),
        host: host.map(str::to_string),
        datastore: Some(datastore.into()),
        start,
        ..Default::default()
    }
}

async fn create(c: &Client, name: &str, datastore: &str, start: bool) -> Vm {
    let t = c
        .create_vm(&request(name, datastore, Some("host-1"), start))
        .await
        .expect("create accepted");
    run_task(c, t).await;
    if start {
        wait_vm(c, name, |v| {
            v.state == VmPowerState::Running && v.guest.ready && v.guest.address.is_some()
        })
        .await
    } else {
        c.get_vm(name).await.expect("VM")
    }
}

/// `vdc ARGS` against the lab: (exit code, stdout, stderr).
async fn vdc(lab: &TestLab, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vdc"));
    cmd.args(args)
        .env("VDC_URL", &lab.info.api_url)
        .env("VDC_TOKEN_FILE", &lab.info.token_file)
        .env_remove("VDC_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(TASK_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("vdc {args:?} did not finish in time"))
        .unwrap_or_else(|e| panic!("cannot run vdc {args:?}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The guest's boot id, from its service, asked from `from_host`.
fn boot_id(lab: &TestLab, from_host: &str, ip: &str) -> String {
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        guest_request(lab.netns(from_host), ip, 7777, &[]).ok()
    });
    lines
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a boot id in the greeting")
        .to_string()
}

fn refused_as(e: &ClientError, code: ErrorCode, needle: &str) -> bool {
    matches!(e, ClientError::Api(a) if a.code == code && a.message.contains(needle))
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_empties_a_host_and_exit_returns_it_to_placement() {
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;

    create(c, "on-shared", "shared", false).await;
    create(c, "on-local", "local-host-1", false).await;
    let sleeper = create(c, "sleeper", "local-host-1", true).await;
    let ip = sleeper.guest.address.clone().expect("address");
    let boot = boot_id(&lab, "host-2", &ip);
    let t = c
        .vm_action("sleeper", VmAction::Suspend, serde_json::json!({}))
        .await
        .expect("suspend");
    run_task(c, t).await;
    let mut pinned = request("pinned", "local-host-1", Some("host-1"), true);
    pinned.disk_gib = Some(1000);
    let t = c.create_vm(&pinned).await.expect("create accepted");
    run_task(c, t).await;
    wait_vm(c, "pinned", |v| v.state == VmPowerState::Running).await;
    let mover = create(c, "mover", "shared", true).await;
    let mover_ip = mover.guest.address.clone().expect("address");
    let mover_boot = boot_id(&lab, "host-2", &mover_ip);
    let local_runner = create(c, "local-runner", "local-host-1", true).await;
    let runner_ip = local_runner.guest.address.clone().expect("address");
    let runner_boot = boot_id(&lab, "host-2", &runner_ip);

    let mut events = Box::pin(
        c.events(&["host.*".to_string()])
            .await
            .expect("event stream"),
    );

    // Enter, through the CLI: one VM cannot move, so it exits non-zero
    // and names it with the reason.
    let (code, _out, err) = vdc(&lab, &["host", "maintenance", "enter", "host-1"]).await;
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("pinned") && err.contains("local-host-1"),
        "the CLI must name the VM and why: {err}"
    );
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + TASK_TIMEOUT;
    while !seen
        .iter()
        .any(|e: &vdc_types::Event| e.topic == "host.maintenance_entered")
    {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("host.maintenance_entered in time")
            .expect("the stream stays open")
            .expect("an event");
        seen.push(ev);
    }
    let failed: Vec<_> = seen
        .iter()
        .filter(|e| e.topic == "host.evacuation_failed")
        .map(|e| e.data["vm"].clone())
        .collect();
    assert_eq!(failed, ["pinned"], "only the VM that cannot move stays");
    assert!(!err.contains("mover"), "{err}");
    assert!(seen.iter().any(|e| e.topic == "host.maintenance_entering"));

    for (name, datastore) in [
        ("mover", "shared"),
        ("local-runner", "shared"),
        ("on-shared", "shared"),
        ("on-local", "shared"),
        ("sleeper", "shared"),
    ] {
        let v = c.get_vm(name).await.expect("VM");
        assert_eq!(v.owner.as_deref(), Some("host-2"), "{name}");
        assert_eq!(v.datastore, datastore, "{name}");
    }
    assert_eq!(
        c.get_vm("sleeper").await.expect("VM").state,
        VmPowerState::Suspended
    );
    assert!(!lab.datastore_path("local-host-1").join("on-local").exists());
    // The running VM on shared storage left by live migration: still
    // running, the same boot, answering from host-2.
    let moved = c.get_vm("mover").await.expect("VM");
    assert_eq!(moved.state, VmPowerState::Running);
    assert!(moved.operation.is_none(), "{moved:?}");
    assert_eq!(boot_id(&lab, "host-1", &mover_ip), mover_boot);
    // The running VM on host-1's local datastore left with its disks.
    let runner = c.get_vm("local-runner").await.expect("VM");
    assert_eq!(runner.state, VmPowerState::Running);
    assert!(runner.disks.iter().all(|d| d.datastore == "shared"));
    assert_eq!(boot_id(&lab, "host-1", &runner_ip), runner_boot);
    assert!(!lab
        .datastore_path("local-host-1")
        .join("local-runner")
        .exists());
    let t = c
        .vm_action("local-runner", VmAction::Stop, serde_json::json!({}))
        .await
        .expect("stop");
    run_task(c, t).await;
    let host = c.get_host("host-1").await.expect("host");
    assert_eq!(host.maintenance, Some(MaintenanceState::InMaintenance));
    let (code, out, _) = vdc(&lab, &["host", "list"]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.lines()
            .any(|l| l.starts_with("host-1") && l.contains("in_maintenance")),
        "{out}"
    );

    // The host takes no new VMs.
    let start = c
        .vm_action(
            "on-shared",
            VmAction::Start,
            serde_json::json!({"host": "host-1"}),
        )
        .await
        .expect_err("a start on a host in maintenance");
    assert!(
        refused_as(&start, ErrorCode::InvalidState, "maintenance"),
        "{start}"
    );
    let create_there = c
        .create_vm(&request("late", "shared", Some("host-1"), false))
        .await
        .expect_err("a create on a host in maintenance");
    assert!(
        refused_as(&create_there, ErrorCode::InvalidState, "maintenance"),
        "{create_there}"
    );
    let back = c
        .migrate_vm(
            "on-shared",
            &MigrateRequest {
                to: Some("host-1".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("a move to a host in maintenance");
    assert!(
        refused_as(&back, ErrorCode::InvalidState, "maintenance"),
        "{back}"
    );
    let t = c
        .create_vm(&request("placed", "shared", None, false))
        .await
        .expect("create");
    run_task(c, t).await;
    assert_eq!(
        c.get_vm("placed").await.expect("VM").owner.as_deref(),
        Some("host-2"),
        "placement chose the host in maintenance"
    );

    // The suspended VM resumes on host-2 with the same boot.
    let t = c
        .vm_action("sleeper", VmAction::Resume, serde_json::json!({}))
        .await
        .expect("resume");
    run_task(c, t).await;
    let resumed = wait_vm(c, "sleeper", |v| v.guest.ready && v.guest.address.is_some()).await;
    assert_eq!(resumed.owner.as_deref(), Some("host-2"));
    let ip = resumed.guest.address.clone().expect("address");
    assert_eq!(boot_id(&lab, "host-1", &ip), boot);

    // Exit: host-1 takes VMs again.
    let (code, out, err) = vdc(&lab, &["host", "maintenance", "exit", "host-1"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("host-1"), "{out}");
    assert_eq!(c.get_host("host-1").await.expect("host").maintenance, None);
    let t = c
        .create_vm(&request("after", "shared", Some("host-1"), false))
        .await
        .expect("a create on host-1 after exit");
    run_task(c, t).await;
    assert_eq!(
        c.get_vm("after").await.expect("VM").owner.as_deref(),
        Some("host-1")
    );
    let again = c
        .exit_maintenance("host-1")
        .await
        .expect_err("not in maintenance");
    assert!(
        refused_as(&again, ErrorCode::InvalidState, "not in maintenance"),
        "{again}"
    );
}

/// The text of cell `i` of a table row.
fn cell(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or_default()
}

/// Column of the host table's maintenance state and button.
const MAINTENANCE: usize = 8;

/// The web page (headless Chromium): a host's maintenance state and its
/// button, and the migrate form's datastore choice moving a stopped VM's
/// files to another host's local datastore.
#[tokio::test(flavor = "multi_thread")]
async fn web_page_enters_and_exits_maintenance_and_moves_storage() {
    use vdc_test_infra::webdriver::Browser;
    const PAGE: Duration = Duration::from_secs(60);
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    create(c, "parked", "local-host-1", false).await;
    let browser = Browser::start().await.unwrap_or_else(|e| {
        panic!(
            "starting headless Chromium: {}",
            vdc_test_infra::error_chain(&e)
        )
    });
    let token = std::fs::read_to_string(&lab.info.token_file).expect("token");
    browser
        .goto(&format!("{}/#token={}", lab.info.api_url, token.trim()))
        .await
        .expect("page");
    browser
        .wait_row("#hosts tbody tr", PAGE, |r| {
            cell(r, 0) == "host-1" && cell(r, MAINTENANCE).starts_with("- enter")
        })
        .await
        .expect("host-1 out of maintenance, with its button");

    // The migrate form: VM, host and datastore chosen from the cluster's.
    let choose = "document.querySelector('#mig-vm').value = 'parked'; \
                  document.querySelector('#mig-to').value = 'host-2'; \
                  document.querySelector('#mig-ds').value = 'local-host-2'; \
                  return [document.querySelector('#mig-vm').value, \
                          document.querySelector('#mig-ds').value];";
    let chosen = browser.execute(choose, vec![]).await.expect("choose");
    assert_eq!(chosen, serde_json::json!(["parked", "local-host-2"]));
    browser
        .click_css("#migrate button", PAGE)
        .await
        .expect("click migrate");
    let moved =
        vdc_test_infra::wait_until_async(TASK_TIMEOUT, "the move the page asked for", || async {
            let v = c.get_vm("parked").await.ok()?;
            (v.owner.as_deref() == Some("host-2") && v.operation.is_none()).then_some(v)
        })
        .await;
    assert_eq!(moved.datastore, "local-host-2");
    browser
        .wait_row("#vms tbody tr", PAGE, |r| {
            cell(r, 0) == "parked" && cell(r, 2) == "host-2"
        })
        .await
        .expect("the VM table shows the new owner");

    // Enter maintenance on host-1 (nothing to move), then exit.
    browser
        .click_css(
            r#"#hosts tr[data-host="host-1"] button[data-maint="enter"]"#,
            PAGE,
        )
        .await
        .expect("click enter maintenance");
    browser
        .wait_row("#hosts tbody tr", PAGE, |r| {
            cell(r, 0) == "host-1" && cell(r, MAINTENANCE).starts_with("in maintenance exit")
        })
        .await
        .expect("host-1 shown in maintenance");
    assert_eq!(
        c.get_host("host-1").await.expect("host").maintenance,
        Some(MaintenanceState::InMaintenance)
    );
    browser
        .wait_text("#events", PAGE, |t| t.contains("host.maintenance_entered"))
        .await
        .expect("the event on the page");
    browser
        .click_css(
            r#"#hosts tr[data-host="host-1"] button[data-maint="exit"]"#,
            PAGE,
        )
        .await
        .expect("click exit maintenance");
    browser
        .wait_row("#hosts tbody tr", PAGE, |r| {
            cell(r, 0) == "host-1" && cell(r, MAINTENANCE).starts_with("- enter")
        })
        .await
        .expect("host-1 back in placement");
    assert_eq!(c.get_host("host-1").await.expect("host").maintenance, None);
}
