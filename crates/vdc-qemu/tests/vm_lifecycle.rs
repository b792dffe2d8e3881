//! Boots the vdc guest image under real QEMU (TCG) and drives it through the
//! driver: pause/resume, suspend to a file and resume from it, graceful
//! shutdown, re-attach after the handle is dropped (an agent restart) and
//! power off. What is asserted is what the guest shows: its console, its
//! heartbeats (whose `seq` counts up while it runs) and its boot id.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use vdc_qemu::{
    tail_file, Accelerator, DriveSpec, GuestChannel, Incoming, MachineSpec, QmpEvent, RunState,
    ShutdownOutcome, Vm, VmPaths,
};

/// Up to four guests boot at once under TCG in this binary; on a loaded
/// two-core machine a boot can take well over a minute.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest image, built (or found in the cache) by the repository script.
fn guest_image() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/build-guest-image.sh"))
        .output()
        .expect("run scripts/build-guest-image.sh");
    assert!(
        out.status.success(),
        "guest image build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("script prints the image path")
            .trim(),
    );
    assert!(path.is_file(), "no guest image at {}", path.display());
    path
}

/// A private qcow2 overlay on the shared image.
fn overlay(dir: &Path, image: &Path) -> PathBuf {
    let path = dir.join("disk0.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(&path)
        .status()
        .expect("run qemu-img");
    assert!(st.success(), "qemu-img create failed");
    path
}

struct Fixture {
    _dir: tempfile::TempDir,
    spec: MachineSpec,
    paths: VmPaths,
}

fn fixture(name: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm_dir = dir.path().join("ds");
    std::fs::create_dir_all(&vm_dir).expect("vm dir");
    let disk = overlay(&vm_dir, &guest_image());
    let paths = VmPaths::new(dir.path().join("run"), vm_dir);
    let spec = MachineSpec {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        cpus: 1,
        memory_mib: 256,
        accelerator: Accelerator::Tcg,
        machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
        cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        disks: vec![DriveSpec {
            node_name: "disk0".into(),
            path: disk,
            read_only: false,
            cache: vdc_types::DiskCacheMode::None,
        }],
        nics: vec![],
        smbios_oem_strings: vec![format!("vdc.hostname={name}")],
        incoming: None,
        paused: false,
        guest_agent: false,
        hotplug_ports: 0,
    };
    Fixture {
        _dir: dir,
        spec,
        paths,
    }
}

fn console(paths: &VmPaths) -> String {
    tail_file(&paths.console_log(), 1 << 20).unwrap_or_default()
}

/// Waits until the console log contains `text` `count` times.
async fn wait_console(paths: &VmPaths, text: &str, count: usize) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while console(paths).matches(text).count() < count {
        assert!(
            Instant::now() < deadline,
            "console never showed {text:?} x{count}; console:\n{}\nqemu.log:\n{}",
            console(paths),
            tail_file(&paths.qemu_log(), 4096).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_event(rx: &mut broadcast::Receiver<QmpEvent>, name: &str) -> QmpEvent {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if ev.name == name => return ev,
            Ok(Ok(_)) => {}
            // Events we skip may have overflowed the buffer; the one awaited
            // may still come (if it was dropped, the deadline says so).
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                eprintln!("skipped {n} QMP events while waiting for {name}");
            }
            Ok(Err(e)) => panic!("event stream broke waiting for {name}: {e}"),
            Err(_) => panic!("no {name} event within {EVENT_TIMEOUT:?}"),
        }
    }
}

/// Waits for a heartbeat with `seq > after`; returns it.
async fn wait_seq_above(ch: &GuestChannel, after: u64) -> u64 {
    let mut rx = ch.seq();
    let seq = tokio::time::timeout(BOOT_TIMEOUT, rx.wait_for(|s| *s > after))
        .await
        .unwrap_or_else(|_| panic!("no heartbeat with seq > {after}"))
        .expect("guest channel alive");
    *seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_suspend_resume_and_graceful_shutdown() {
    let fx = fixture("lifecycle");
    let t0 = Instant::now();
    let vm = Vm::launch(&fx.spec, &fx.paths).await.expect("launch");
    let guest = GuestChannel::spawn(&fx.paths);
    assert_eq!(vm.run_state().await.expect("status"), RunState::Running);
    wait_console(&fx.paths, "VDC-GUEST-READY", 1).await;
    let first = wait_seq_above(&guest, 0).await;
    eprintln!("guest ready after {:?}", t0.elapsed());
    let info = guest.info();
    assert!(info.ready);
    assert_eq!(info.hostname.as_deref(), Some("lifecycle"));
    let boot_id = info.boot_id.clone().expect("boot id");

    // Pause and resume follow QMP events.
    let mut events = vm.events();
    vm.pause().await.expect("pause");
    wait_event(&mut events, "STOP").await;
    assert_eq!(vm.run_state().await.expect("status"), RunState::Paused);
    vm.resume().await.expect("resume");
    wait_event(&mut events, "RESUME").await;
    assert_eq!(vm.run_state().await.expect("status"), RunState::Running);
    let before_suspend = wait_seq_above(&guest, first).await;

    // Suspend to a file: QEMU goes away, the state file stays.
    let seen = std::sync::Mutex::new(Vec::new());
    vm.suspend_to_file(|p| seen.lock().expect("lock").push(p))
        .await
        .expect("suspend");
    assert!(vm.has_exited(), "QEMU exits after suspend");
    let progress = seen.into_inner().expect("lock");
    assert_eq!(progress.last(), Some(&100), "progress {progress:?}");
    assert!(fx.paths.suspend_state().is_file());
    let last_seq = *guest.seq().borrow();
    assert!(last_seq >= before_suspend);
    drop(vm);

    // Resume: the same boot continues, the counter goes on.
    let mut spec = fx.spec.clone();
    spec.incoming = Some(Incoming::StateFile(fx.paths.suspend_state()));
    let vm = Vm::launch(&spec, &fx.paths).await.expect("resume launch");
    assert_eq!(vm.run_state().await.expect("status"), RunState::Running);
    assert!(!fx.paths.suspend_state().exists(), "state file consumed");
    let after = wait_seq_above(&guest, last_seq).await;
    assert!(after > last_seq);
    assert_eq!(guest.info().boot_id.as_deref(), Some(boot_id.as_str()));
    assert_eq!(
        console(&fx.paths).matches("VDC-GUEST-READY").count(),
        1,
        "the guest did not boot again"
    );

    // Graceful shutdown through the ACPI power button.
    let mut events = vm.events();
    let outcome = vm
        .shutdown(Duration::from_secs(60))
        .await
        .expect("shutdown");
    assert_eq!(outcome, ShutdownOutcome::Graceful);
    assert!(vm.has_exited());
    wait_event(&mut events, "POWERDOWN").await;
    assert!(console(&fx.paths).contains("power button pressed"));
    assert!(Vm::attach(&fx.paths).await.expect("attach").is_none());
}

/// A guest boots on the pinned machine type and the named CPU model, and
/// QEMU opened its disk with direct I/O (`cache=none`), as QMP reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_with_pinned_machine_named_cpu_and_direct_io() {
    let fx = fixture("pinned");
    let vm = Vm::launch(&fx.spec, &fx.paths).await.expect("launch");
    wait_console(&fx.paths, "VDC-GUEST-READY", 1).await;
    let qmp = vm.qmp();
    let machine = qmp
        .execute(
            "qom-get",
            serde_json::json!({"path": "/machine", "property": "type"}),
        )
        .await
        .expect("machine type");
    assert_eq!(machine, "pc-q35-10.0-machine");
    let cpus = qmp
        .execute("query-cpus-fast", serde_json::json!({}))
        .await
        .expect("cpus");
    let cpu_path = cpus[0]["qom-path"].as_str().expect("qom path").to_string();
    let cpu_type = qmp
        .execute(
            "qom-get",
            serde_json::json!({"path": cpu_path, "property": "type"}),
        )
        .await
        .expect("cpu type");
    assert_eq!(cpu_type, "Nehalem-v1-x86_64-cpu");
    let blocks = qmp
        .execute("query-block", serde_json::json!({}))
        .await
        .expect("query-block");
    let disk = blocks
        .as_array()
        .expect("block list")
        .iter()
        .find(|b| b["inserted"]["node-name"] == "disk0")
        .unwrap_or_else(|| panic!("disk0 in {blocks}"));
    assert_eq!(disk["inserted"]["cache"]["direct"], true, "{disk}");
    assert_eq!(disk["inserted"]["cache"]["no-flush"], false, "{disk}");
    vm.power_off().await.expect("power off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_handle_drop_then_power_off() {
    let fx = fixture("attach");
    let vm = Vm::launch(&fx.spec, &fx.paths).await.expect("launch");
    let pid = vm.pid();
    assert!(
        Vm::launch(&fx.spec, &fx.paths).await.is_err(),
        "no second QEMU"
    );
    wait_console(&fx.paths, "VDC-GUEST-READY", 1).await;

    // The agent goes away: the handle (and its QMP connection) is dropped.
    drop(vm);
    let vm = Vm::attach(&fx.paths)
        .await
        .expect("attach")
        .expect("QEMU still runs");
    assert_eq!(vm.pid(), pid);
    assert_eq!(vm.id(), fx.spec.id);
    assert_eq!(vm.run_state().await.expect("status"), RunState::Running);
    let guest = GuestChannel::spawn(&fx.paths);
    wait_seq_above(&guest, 0).await;

    let mut events = vm.events();
    vm.power_off().await.expect("power off");
    assert!(vm.has_exited());
    wait_event(&mut events, "SHUTDOWN").await;
    assert!(Vm::attach(&fx.paths).await.expect("attach").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_falls_back_to_power_off_when_the_guest_does_not_answer() {
    let fx = fixture("deaf");
    let vm = Vm::launch(&fx.spec, &fx.paths).await.expect("launch");
    wait_console(&fx.paths, "VDC-GUEST-READY", 1).await;
    // With its vCPUs stopped the guest cannot act on the power button.
    vm.pause().await.expect("pause");
    let started = Instant::now();
    let outcome = vm.shutdown(Duration::from_secs(2)).await.expect("shutdown");
    assert_eq!(outcome, ShutdownOutcome::Forced);
    assert!(vm.has_exited(), "QEMU still runs after a forced shutdown");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "powered off before the timeout"
    );
    assert!(Vm::attach(&fx.paths).await.expect("attach").is_none());
}

#[tokio::test]
async fn a_failed_start_reports_the_qemu_log() {
    let mut fx = fixture("broken");
    fx.spec.disks[0].path = fx.paths.vm_dir.join("missing.qcow2");
    let err = Vm::launch(&fx.spec, &fx.paths)
        .await
        .expect_err("QEMU cannot open the disk");
    let text = err.to_string();
    assert!(text.contains("missing.qcow2"), "{text}");
    assert!(Vm::attach(&fx.paths).await.expect("attach").is_none());

    let long = VmPaths::new(fx.paths.run_dir.join("x".repeat(120)), &fx.paths.vm_dir);
    let err = Vm::launch(&fx.spec, &long)
        .await
        .expect_err("path too long");
    assert!(
        matches!(err, vdc_qemu::QemuError::SocketPathTooLong { .. }),
        "{err}"
    );
}
