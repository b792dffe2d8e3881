//! Storage migration of a running guest's disk under real QEMU (TCG): a
//! cancelled mirror leaves the VM on its image and releases the new one; a
//! completed mirror switches the VM to the new image (which QEMU then
//! locks) and releases the old one, while the guest keeps running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;
use vdc_qemu::{
    tail_file, Accelerator, DriveSpec, MachineSpec, MirrorError, RunState, Vm, VmPaths,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn guest_image() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/build-guest-image.sh"))
        .output()
        .expect("run scripts/build-guest-image.sh");
    assert!(out.status.success(), "guest image build failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("image path").trim())
}

fn qemu_img(args: &[&str], path: &Path) -> bool {
    Command::new("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .expect("run qemu-img")
        .status
        .success()
}

fn create(path: &Path, size: &str) {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .status()
        .expect("qemu-img create");
    assert!(st.success(), "qemu-img create {}", path.display());
}

fn virtual_size(path: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .expect("qemu-img info");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    v["virtual-size"].as_u64().expect("virtual-size")
}

/// The node the disk's device reads now.
async fn disk_node(vm: &Vm) -> String {
    let blocks = vm
        .qmp()
        .execute("query-block", serde_json::json!({}))
        .await
        .expect("query-block");
    blocks
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["qdev"].as_str().is_some_and(|q| q.contains("blk-disk0")))
        .and_then(|b| b["inserted"]["node-name"].as_str())
        .unwrap_or_else(|| panic!("disk0's device in {blocks}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_switches_the_running_disk_and_a_cancelled_one_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "qcow2"])
        .arg(guest_image())
        .arg(&old)
        .status()
        .expect("qemu-img convert");
    assert!(st.success());
    let paths = VmPaths::new(dir.path().join("run"), dir.path().join("vm"));
    std::fs::create_dir_all(dir.path().join("vm")).expect("vm dir");
    let spec = MachineSpec {
        id: uuid::Uuid::new_v4().to_string(),
        name: "mirror".into(),
        cpus: 1,
        memory_mib: 128,
        accelerator: Accelerator::Tcg,
        machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
        cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        disks: vec![DriveSpec {
            node_name: "disk0".into(),
            path: old.clone(),
            read_only: false,
            cache: vdc_types::DiskCacheMode::Writeback,
        }],
        nics: vec![],
        smbios_oem_strings: vec!["vdc.hostname=mirror".into()],
        incoming: None,
        paused: false,
        guest_agent: false,
        hotplug_ports: 0,
    };
    let vm = Vm::launch(&spec, &paths).await.expect("launch");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !tail_file(&paths.console_log(), 1 << 20)
        .unwrap_or_default()
        .contains("VDC-GUEST-READY")
    {
        assert!(Instant::now() < deadline, "the guest never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let size = "2G";

    // Cancelled: the VM stays on its image; the new one is not held.
    let cancelled = dir.path().join("cancelled.qcow2");
    create(&cancelled, size);
    let r = vm
        .mirror_disk(
            "disk0",
            &cancelled,
            vdc_types::DiskCacheMode::Writeback,
            |_| {},
            std::future::ready(()),
        )
        .await;
    assert!(matches!(r, Err(MirrorError::Cancelled)), "{r:?}");
    assert_eq!(disk_node(&vm).await, "disk0");
    assert!(
        qemu_img(&["info"], &cancelled),
        "the cancelled target is still locked by QEMU"
    );
    assert!(!qemu_img(&["info"], &old), "the old image should be in use");

    // Failed (QEMU refuses a target of another size): the same.
    let r = vm
        .mirror_disk(
            "disk0",
            &cancelled,
            vdc_types::DiskCacheMode::Writeback,
            |_| {},
            std::future::pending(),
        )
        .await;
    assert!(matches!(r, Err(MirrorError::Failed { .. })), "{r:?}");
    assert_eq!(disk_node(&vm).await, "disk0");
    assert!(
        qemu_img(&["info"], &cancelled),
        "the failed target is still locked"
    );

    // Completed: the VM reads the new image; the old one is released.
    let new = dir.path().join("new.qcow2");
    create(&new, &virtual_size(&old).to_string());
    vm.mirror_disk(
        "disk0",
        &new,
        vdc_types::DiskCacheMode::Writeback,
        |_| {},
        std::future::pending(),
    )
    .await
    .expect("mirror");
    assert!(disk_node(&vm).await.starts_with("disk0-m"));
    assert!(qemu_img(&["info"], &old), "the old image is still held");
    assert!(!qemu_img(&["info"], &new), "the new image should be in use");
    assert_eq!(vm.run_state().await.expect("state"), RunState::Running);
    vm.power_off().await.expect("power off");
}
