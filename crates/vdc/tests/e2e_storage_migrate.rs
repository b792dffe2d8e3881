//! Storage, cold and suspended migration on real guests, in one 2-host lab
//! whose hosts each have a local datastore the other cannot see:
//!
//! 1. a running VM's disk moves from `local-host-1` to `shared` while the
//!    guest writes; every write reads back, the guest never restarted, the
//!    old image is gone, and the VM boots from the new one;
//! 2. the same VM, stopped, moves to host-2's `local-host-2` (host-2
//!    cannot see `local-host-1`): its files are copied, the source copy is
//!    removed, and it starts on host-2 with every write there;
//! 3. a suspended VM moves from host-1's local datastore to host-2 and
//!    resumes there with its boot id unchanged;
//! 4. refusals change nothing: unknown datastore, a datastore the
//!    destination does not have.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vdc_client::{Client, ClientError};
use vdc_test_infra::{wait_until, wait_vm, TestLab, VM_WAIT_TIMEOUT};
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrateRequest;
use vdc_types::{ErrorCode, Vm, VmAction, VmPowerState};

const TEMPLATE: &str = "debian-busybox";
const TASK_TIMEOUT: Duration = Duration::from_secs(300);

async fn run_task(c: &Client, t: vdc_types::Task) -> vdc_types::Task {
    match c.wait_task(&t.id, TASK_TIMEOUT, |_| {}).await {
        Ok(t) => t,
        Err(e) => panic!("task {} {} failed: {e}", t.kind, t.target),
    }
}

async fn create(lab: &TestLab, name: &str, datastore: &str) -> Vm {
    let c = &lab.client;
    let t = c
        .create_vm(&CreateVmRequest {
            name: name.into(),
            template: Some(TEMPLATE.into()),
            memory_mib: Some(128),
            host: Some("host-1".into()),
            datastore: Some(datastore.into()),
            start: true,
            ..Default::default()
        })
        .await
        .expect("create accepted");
    run_task(c, t).await;
    ready(c, name).await
}

async fn ready(c: &Client, name: &str) -> Vm {
    wait_vm(c, name, |v| {
        v.state == VmPowerState::Running && v.guest.ready && v.guest.address.is_some()
    })
    .await
}

async fn action(c: &Client, name: &str, act: VmAction) {
    let t = c
        .vm_action(name, act, serde_json::json!({}))
        .await
        .unwrap_or_else(|e| panic!("{act} {name}: {e}"));
    run_task(c, t).await;
}

async fn migrate(c: &Client, name: &str, to: Option<&str>, datastore: Option<&str>) {
    let req = MigrateRequest {
        to: to.map(str::to_string),
        datastore: datastore.map(str::to_string),
        ..Default::default()
    };
    let t = c
        .migrate_vm(name, &req)
        .await
        .unwrap_or_else(|e| panic!("migrate {name}: {e}"));
    run_task(c, t).await;
}

fn addr(vm: &Vm) -> String {
    vm.guest.address.clone().expect("the guest's address")
}

/// `(boot_id, counter)` as the guest's service answers from host `from`.
fn identity(lab: &TestLab, from: &str, vm: &Vm) -> (String, u64) {
    let a = addr(vm);
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(from, &a, &[]).ok()
    });
    let parts: Vec<&str> = lines[0].split_whitespace().collect();
    (parts[1].to_string(), parts[2].parse().expect("a counter"))
}

/// Reads `/data/NAME` in the guest.
fn read(lab: &TestLab, from: &str, ip: &str, name: &str) -> String {
    let cmd = format!("read {name}");
    let lines = wait_until(VM_WAIT_TIMEOUT, "the guest's service", || {
        lab.guest_request(from, ip, &[&cmd]).ok()
    });
    lines.get(1).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_cold_and_suspended_migration_keep_the_guests_data() {
    let lab = TestLab::builder(2)
        .vdc_binary(env!("CARGO_BIN_EXE_vdc"))
        .start()
        .await;
    let c = &lab.client;
    let local1 = lab.datastore_path("local-host-1");
    let local2 = lab.datastore_path("local-host-2");
    let shared = lab.datastore_path("shared");

    // 1. Storage migration while the guest writes.
    let vm = create(&lab, "mover", "local-host-1").await;
    let (boot, _) = identity(&lab, "host-2", &vm);
    let ip = addr(&vm);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, ip, netns) = (stop.clone(), ip.clone(), lab.netns("host-2").to_string());
        std::thread::spawn(move || {
            let mut written = Vec::new();
            let mut n = 0u32;
            // Until told to stop, then a few more after the switch.
            let mut after = 0;
            while after < 3 {
                if stop.load(Ordering::SeqCst) {
                    after += 1;
                }
                let (k, v) = (format!("k{n}"), format!("v{n}-{}", n * 7919));
                let cmd = format!("write {k} {v}");
                if let Ok(lines) = vdc_test_infra::guest_request(
                    &netns,
                    &ip,
                    vdc_types::GUEST_SERVICE_PORT,
                    &[&cmd],
                ) {
                    if lines.get(1).map(String::as_str) == Some("ok") {
                        written.push((k, v));
                    }
                }
                n += 1;
                assert!(n < 100_000, "the writer never stopped");
            }
            written
        })
    };
    migrate(c, "mover", None, Some("shared")).await;
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("writer");
    assert!(written.len() >= 4, "too few writes: {written:?}");
    let moved = c.get_vm("mover").await.expect("VM");
    assert_eq!(moved.owner.as_deref(), Some("host-1"));
    assert_eq!(moved.state, VmPowerState::Running);
    assert!(
        moved.disks.iter().all(|d| d.datastore == "shared"),
        "{:?}",
        moved.disks
    );
    assert!(shared.join("mover/disk0.qcow2").is_file());
    assert!(!local1.join("mover/disk0.qcow2").exists(), "old image kept");
    assert_eq!(
        identity(&lab, "host-2", &moved).0,
        boot,
        "the guest restarted"
    );
    for (k, v) in &written {
        assert_eq!(&read(&lab, "host-2", &ip, k), v, "write {k} lost");
    }
    // The VM boots from its new image, with the data.
    action(c, "mover", VmAction::Stop).await;

    // 2. Cold migration to a host that cannot see local-host-1.
    let refused = c
        .migrate_vm(
            "mover",
            &MigrateRequest {
                to: Some("host-2".into()),
                datastore: Some("local-host-1".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("host-2 has no local-host-1");
    assert!(
        refused.to_string().contains("not present on host 'host-2'"),
        "{refused}"
    );
    let unknown = c
        .migrate_vm(
            "mover",
            &MigrateRequest {
                to: Some("host-2".into()),
                datastore: Some("nowhere".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("unknown datastore");
    assert!(
        matches!(&unknown, ClientError::Api(e) if e.code == ErrorCode::NotFound),
        "{unknown}"
    );
    let untouched = c.get_vm("mover").await.expect("VM");
    assert_eq!(untouched.owner.as_deref(), Some("host-1"));
    assert!(untouched.operation.is_none());

    migrate(c, "mover", Some("host-2"), Some("local-host-2")).await;
    let cold = c.get_vm("mover").await.expect("VM");
    assert_eq!(cold.owner.as_deref(), Some("host-2"));
    assert_eq!(cold.datastore, "local-host-2");
    assert!(local2.join("mover/disk0.qcow2").is_file());
    assert!(local2.join("mover/vm.json").is_file());
    assert!(!local1.join("mover").exists(), "source directory kept");
    assert!(
        !shared.join("mover/disk0.qcow2").exists(),
        "source disk kept"
    );
    action(c, "mover", VmAction::Start).await;
    let started = ready(c, "mover").await;
    assert_eq!(started.owner.as_deref(), Some("host-2"));
    let ip = addr(&started);
    for (k, v) in &written {
        assert_eq!(
            &read(&lab, "host-1", &ip, k),
            v,
            "write {k} lost in the copy"
        );
    }
    action(c, "mover", VmAction::Stop).await;

    // 3. Suspended migration: the saved state moves; same boot on resume.
    let vm = create(&lab, "sleeper", "local-host-1").await;
    let (boot, count) = identity(&lab, "host-2", &vm);
    action(c, "sleeper", VmAction::Suspend).await;
    assert!(local1.join("sleeper/suspend.state").is_file());
    migrate(c, "sleeper", Some("host-2"), None).await;
    let moved = c.get_vm("sleeper").await.expect("VM");
    assert_eq!(moved.state, VmPowerState::Suspended);
    assert_eq!(moved.owner.as_deref(), Some("host-2"));
    assert_eq!(moved.datastore, "shared");
    assert!(shared.join("sleeper/suspend.state").is_file());
    assert!(!local1.join("sleeper").exists(), "source directory kept");
    action(c, "sleeper", VmAction::Resume).await;
    let resumed = ready(c, "sleeper").await;
    assert_eq!(resumed.owner.as_deref(), Some("host-2"));
    let (boot2, count2) = identity(&lab, "host-1", &resumed);
    assert_eq!(boot2, boot, "the guest rebooted instead of resuming");
    assert!(
        count2 >= count,
        "the counter went back: {count} -> {count2}"
    );
}
