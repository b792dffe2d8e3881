//! Snapshots and the guest agent channel on a real guest (QEMU, TCG): the
//! guest image's agent answers and freezes its file systems; disk
//! snapshots, a memory snapshot and its revert, a live merge of a middle
//! snapshot and a disk-only revert, each checked by what the guest reads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use vdc_qemu::qga::{self, GuestAgent, Quiesce};
use vdc_qemu::snapshot;
use vdc_qemu::{tail_file, Accelerator, DriveSpec, Incoming, MachineSpec, Vm, VmPaths};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn guest_image() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/build-guest-image.sh"))
        .output()
        .expect("run scripts/build-guest-image.sh");
    assert!(out.status.success(), "guest image build failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("image path").trim())
}

fn console(paths: &VmPaths) -> String {
    tail_file(&paths.console_log(), 1 << 20).unwrap_or_default()
}

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

/// Runs `cmd` in the guest's root shell on the serial console and returns
/// what it printed (one line).
struct Shell {
    paths: VmPaths,
    n: u32,
}

impl Shell {
    async fn run(&mut self, cmd: &str) -> String {
        self.n += 1;
        let tag = format!("R{}x", self.n);
        let deadline = Instant::now() + CMD_TIMEOUT;
        let mut sock = loop {
            match tokio::net::UnixStream::connect(self.paths.console_socket()).await {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "console socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let line = format!("echo \"{tag}=$({cmd})=\"\n");
        sock.write_all(line.as_bytes())
            .await
            .expect("console write");
        let prefix = format!("{tag}=");
        loop {
            if let Some(found) = console(&self.paths)
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .find(|l| l.starts_with(&prefix) && l.ends_with('='))
            {
                return found[prefix.len()..found.len() - 1].to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no answer to {cmd:?}; console:\n{}",
                console(&self.paths)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spec(name: &str, disk: &Path, incoming: Option<Incoming>) -> MachineSpec {
    MachineSpec {
        id: "3a0d64a4-52a8-4f0a-9a53-5f6f2f1f0c11".into(),
        name: name.to_string(),
        cpus: 1,
        memory_mib: 128,
        accelerator: Accelerator::Tcg,
        machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
        cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
        disks: vec![DriveSpec {
            node_name: "disk0".into(),
            path: disk.to_path_buf(),
            read_only: false,
            cache: vdc_types::DiskCacheMode::Writeback,
        }],
        nics: vec![],
        smbios_oem_strings: vec![format!("vdc.hostname={name}")],
        incoming,
        paused: false,
        guest_agent: true,
        hotplug_ports: 0,
    }
}

fn size_of(image: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()
        .expect("qemu-img info");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info json");
    v["virtual-size"].as_u64().expect("virtual size")
}

fn backing_name(image: &Path) -> Option<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()
        .expect("qemu-img info");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info json");
    v["backing-filename"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_agent_snapshots_memory_revert_live_merge_and_disk_revert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm_dir = dir.path().join("ds");
    std::fs::create_dir_all(&vm_dir).expect("vm dir");
    let base = guest_image();
    let disk0 = vm_dir.join("disk0.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&disk0)
        .status()
        .expect("qemu-img")
        .success());
    let size = size_of(&disk0);
    let paths = VmPaths::new(dir.path().join("run"), &vm_dir);
    let mut sh = Shell {
        paths: paths.clone(),
        n: 0,
    };

    let vm = Vm::launch(&spec("snap", &disk0, None), &paths)
        .await
        .expect("launch");
    wait_console(&paths, "VDC-GUEST-READY", 1).await;
    let boot_id = sh.run("cat /proc/sys/kernel/random/boot_id").await;

    // The guest agent answers; a freeze is recorded as quiesced, and the
    // guest reports frozen until the thaw.
    let qga_sock = paths.guest_agent_socket();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut agent = loop {
        match GuestAgent::connect(&qga_sock, Duration::from_secs(5)).await {
            Ok(a) => break a,
            Err(e) => {
                assert!(Instant::now() < deadline, "guest agent never answered: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    agent.ping().await.expect("guest-ping");
    assert_eq!(agent.fsfreeze_status().await.expect("status"), "thawed");
    drop(agent);

    // Disk snapshot s1, quiesced: f=A is in it.
    assert_eq!(sh.run("echo A > /data/f && sync && cat /data/f").await, "A");
    let q = qga::freeze(&qga_sock, Duration::from_secs(5)).await;
    assert!(
        matches!(q, Quiesce::Quiesced { frozen } if frozen >= 1),
        "{q:?}"
    );
    let mut agent = GuestAgent::connect(&qga_sock, Duration::from_secs(5))
        .await
        .expect("connect");
    assert_eq!(agent.fsfreeze_status().await.expect("status"), "frozen");
    drop(agent);
    let s1_active = vm_dir.join("disk0.s1.qcow2");
    snapshot::snapshot_live(
        vm.qmp(),
        "disk0",
        &disk0,
        &s1_active,
        "disk0-s1",
        size,
        false,
    )
    .await
    .expect("snapshot s1");
    assert!(
        qga::thaw(&qga_sock, Duration::from_secs(5))
            .await
            .expect("thaw")
            >= 1
    );
    assert_eq!(backing_name(&s1_active).as_deref(), Some("disk0.qcow2"));

    // Memory snapshot s2 (f=B), taken at one paused instant.
    assert_eq!(sh.run("echo B > /data/f && sync && cat /data/f").await, "B");
    let c_snap: u64 = sh
        .run("cat /run/vdc/counter")
        .await
        .parse()
        .expect("counter");
    let s2_active = vm_dir.join("disk0.s2.qcow2");
    let s2_state = vm_dir.join("s2.state");
    vm.qmp().stop().await.expect("stop");
    snapshot::snapshot_live(
        vm.qmp(),
        "disk0",
        &s1_active,
        &s2_active,
        "disk0-s2",
        size,
        false,
    )
    .await
    .expect("snapshot s2");
    snapshot::save_memory(vm.qmp(), &s2_state)
        .await
        .expect("save memory");
    vm.qmp().cont().await.expect("cont");
    assert!(s2_state.is_file());

    // After it: g=G written, the counter well past the snapshot's value.
    assert_eq!(sh.run("echo G > /data/g && sync && cat /data/g").await, "G");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let c_pre = loop {
        let c: u64 = sh
            .run("cat /run/vdc/counter")
            .await
            .parse()
            .expect("counter");
        if c >= c_snap + 100 {
            break c;
        }
        assert!(Instant::now() < deadline, "counter stuck at {c}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    vm.power_off().await.expect("power off");
    drop(vm);

    // Revert to s2 with memory: the same boot goes on from the snapshot.
    let r2 = vm_dir.join("disk0.r2.qcow2");
    snapshot::create_overlay(&r2, &s1_active, size)
        .await
        .expect("overlay");
    let vm = Vm::launch(&spec("snap", &r2, Some(Incoming::Defer)), &paths)
        .await
        .expect("launch incoming");
    snapshot::load_memory(vm.qmp(), &s2_state)
        .await
        .expect("load memory");
    assert!(
        s2_state.is_file(),
        "the state file stays for another revert"
    );
    let c_back: u64 = sh
        .run("cat /run/vdc/counter")
        .await
        .parse()
        .expect("counter");
    assert!(
        c_back >= c_snap && c_back < c_pre,
        "counter {c_back} not from the snapshot ({c_snap}..{c_pre})"
    );
    assert_eq!(sh.run("cat /proc/sys/kernel/random/boot_id").await, boot_id);
    assert_eq!(sh.run("cat /data/f").await, "B");
    let g = sh.run("cat /data/g 2>&1 || true").await;
    assert!(g.contains("No such file"), "{g}");
    assert_eq!(console(&paths).matches("VDC-GUEST-READY").count(), 1);

    // Delete s2 (the middle image, disk0.s1.qcow2) while the guest runs:
    // its data streams into the active image, every byte stays.
    assert_eq!(sh.run("echo H > /data/h && sync && cat /data/h").await, "H");
    snapshot::stream_into(
        vm.qmp(),
        &r2,
        &s1_active,
        Some((&disk0, "disk0.qcow2")),
        "del-s2",
    )
    .await
    .expect("live merge");
    std::fs::remove_file(&s1_active).expect("merged image removed");
    assert_eq!(backing_name(&r2).as_deref(), Some("disk0.qcow2"));
    assert_eq!(
        sh.run("sync; echo 3 > /proc/sys/vm/drop_caches; cat /data/f /data/h | tr '\\n' ' '")
            .await,
        "B H "
    );
    vm.power_off().await.expect("power off");
    drop(vm);
    assert!(Command::new("qemu-img")
        .arg("check")
        .arg(&r2)
        .status()
        .expect("check")
        .success());

    // Revert to s1 (disk only): a fresh boot on the snapshot's disk reads A.
    let r1 = vm_dir.join("disk0.r1.qcow2");
    snapshot::create_overlay(&r1, &disk0, size)
        .await
        .expect("overlay");
    let vm = Vm::launch(&spec("snap", &r1, None), &paths)
        .await
        .expect("launch r1");
    wait_console(&paths, "VDC-GUEST-READY", 2).await;
    assert_eq!(sh.run("cat /data/f").await, "A");
    assert_ne!(sh.run("cat /proc/sys/kernel/random/boot_id").await, boot_id);
    vm.power_off().await.expect("power off");
}
