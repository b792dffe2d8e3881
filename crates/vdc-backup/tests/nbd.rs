//! The NBD client against `qemu-nbd` serving a qcow2 image read-only: a
//! backup read over NBD restores to exactly the image's bytes.

use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use vdc_backup::nbd::NbdClient;
use vdc_backup::session::{write_disk, DiskPlan};
use vdc_backup::store::Store;
use vdc_types::backup::DiskRead;

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?}");
}

#[test]
fn a_qcow2_read_over_nbd_restores_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.qcow2");
    let raw = dir.path().join("source.raw");
    // 9 MiB + 4 KiB: a partial last chunk; data at 0, 5 MiB and the end.
    std::fs::write(&raw, vec![0u8; 9 * 1024 * 1024 + 4096]).expect("raw");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options()
            .write(true)
            .open(&raw)
            .expect("open");
        f.write_all_at(b"first chunk", 0).expect("w");
        f.write_all_at(&[7u8; 70_000], 5 << 20).expect("w");
        f.write_all_at(b"the very end", 9 * 1024 * 1024 + 4000)
            .expect("w");
    }
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let sock = dir.path().join("nbd.sock");
    let mut server = Command::new("qemu-nbd")
        .args([
            "--read-only",
            "--format=qcow2",
            "--export-name=disk0",
            "--socket",
        ])
        .arg(&sock)
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match NbdClient::connect(&sock, "disk0") {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("qemu-nbd did not serve: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let size = client.size();
    assert_eq!(size, std::fs::metadata(&raw).unwrap().len());
    let store = Store::open_or_init(&dir.path().join("store"), None).expect("store");
    let plan = DiskPlan {
        name: "disk0".into(),
        size,
        source: &mut client,
        changed: None,
        read: DiskRead::Full {
            reason: "test".into(),
        },
    };
    let (index, fig) = write_disk(&store, plan, &AtomicBool::new(false), &|_| {}).expect("backup");
    drop(client);
    if let Err(e) = server.kill() {
        eprintln!("kill qemu-nbd: {e}");
    }
    server.wait().expect("wait");
    assert_eq!(
        (fig.chunks, fig.chunks_zero, fig.chunks_new),
        (3, 0, 3),
        "{fig:?}"
    );
    let out = dir.path().join("restored.raw");
    vdc_backup::restore::restore_raw(
        &store,
        &index,
        size,
        &out,
        2,
        &AtomicBool::new(false),
        &|_| {},
    )
    .expect("restore");
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap(),
        "restored bytes differ"
    );
}

#[test]
fn a_dirty_bitmap_over_nbd_names_the_changed_chunks() {
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.qcow2");
    let i = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", i, "20M"]);
    qemu_img(&["bitmap", "--add", i, "b1"]);
    for (off, pattern) in [("5M", "7"), ("13M", "9")] {
        let st = Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pattern} {off} 64k"),
                i,
            ])
            .stdout(Stdio::null())
            .status()
            .expect("qemu-io");
        assert!(st.success());
    }
    let sock = dir.path().join("nbd.sock");
    let mut server = Command::new("qemu-nbd")
        .args([
            "--read-only",
            "--format=qcow2",
            "--export-name=disk0",
            "--shared=2",
            "-B",
            "b1",
            "--socket",
        ])
        .arg(&sock)
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match NbdClient::connect_meta(&sock, "disk0", "qemu:dirty-bitmap:b1") {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("qemu-nbd did not serve: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let ext = client.block_status(0, client.size()).expect("block status");
    drop(client);
    if let Err(e) = server.kill() {
        eprintln!("kill qemu-nbd: {e}");
    }
    server.wait().expect("wait");
    let changed = vdc_backup::session::changed_chunks(&ext, 20 << 20, 4 << 20);
    assert_eq!(changed, vec![false, true, false, true, false], "{ext:?}");
}
