//! The mechanism of an instant restore, against real QEMU: a qcow2 overlay
//! whose backing file is a backup served by [`NbdServer`] takes writes,
//! reads the backup through the overlay, and a `block-stream` job in a
//! running QEMU (driven over QMP) copies every byte into the overlay, after
//! which the overlay stands alone: the export can end.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use serde_json::{json, Value};
use vdc_backup::nbd_server::NbdServer;
use vdc_backup::session::{write_disk, DiskPlan, DiskSource};
use vdc_backup::store::Store;
use vdc_types::backup::DiskRead;

struct FileSource(std::fs::File);

impl DiskSource for FileSource {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> vdc_backup::error::Result<()> {
        self.0.read_exact_at(buf, offset).expect("read source");
        Ok(())
    }
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.stdin(Stdio::null()).output().expect("spawn");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{cmd:?}: {}{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// Sends one QMP command and returns its answer; events seen on the way
/// are pushed to `events`.
fn qmp(
    input: &mut impl Write,
    output: &mut impl BufRead,
    events: &mut Vec<Value>,
    cmd: Value,
) -> Value {
    writeln!(input, "{cmd}").expect("qmp write");
    input.flush().expect("flush");
    loop {
        let mut line = String::new();
        assert!(
            output.read_line(&mut line).expect("qmp read") > 0,
            "QEMU quit"
        );
        let v: Value = serde_json::from_str(&line).expect("qmp json");
        if v.get("event").is_some() {
            events.push(v);
            continue;
        }
        assert!(v.get("error").is_none(), "{cmd}: {v}");
        return v;
    }
}

#[test]
fn an_overlay_on_a_served_backup_streams_into_a_standalone_image() {
    let dir = tempfile::tempdir().expect("tmp");
    let raw = dir.path().join("source.raw");
    let size: u64 = 10 << 20;
    let f = std::fs::File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&raw)
        .expect("raw");
    f.set_len(size).expect("size");
    f.write_all_at(&[0x42u8; 100_000], 1 << 20).expect("w");
    f.write_all_at(&[0x43u8; 8192], (9 << 20) + 4096)
        .expect("w");
    let store = Store::open_or_init(&dir.path().join("store"), None).expect("store");
    let mut source = FileSource(f);
    let plan = DiskPlan {
        name: "disk0".into(),
        size,
        source: &mut source,
        changed: None,
        read: DiskRead::Full {
            reason: "test".into(),
        },
    };
    let (index, _) = write_disk(&store, plan, &AtomicBool::new(false), &|_| {}).expect("backup");
    let sock = dir.path().join("export.sock");
    let server = NbdServer::start(store, index, size, "disk0", &sock).expect("serve");
    let url = format!("nbd+unix:///disk0?socket={}", sock.display());

    // The VM's disk: an overlay on the export; a write lands in it.
    let overlay = dir.path().join("disk.qcow2");
    let o = overlay.to_str().unwrap();
    ok(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-b", &url, "-F", "raw", o]));
    ok(Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 0x77 0 4096", o]));
    let read = ok(Command::new("qemu-io").args([
        "-r",
        "-f",
        "qcow2",
        "-c",
        "read -P 0x42 1048576 65536",
        o,
    ]));
    assert!(!read.contains("Pattern verification failed"), "{read}");

    // A running QEMU streams the export into the overlay.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64");
    let mut input = qemu.stdin.take().expect("stdin");
    let mut output = BufReader::new(qemu.stdout.take().expect("stdout"));
    let mut greeting = String::new();
    output.read_line(&mut greeting).expect("greeting");
    let mut events = Vec::new();
    let mut q = |cmd: Value, events: &mut Vec<Value>| qmp(&mut input, &mut output, events, cmd);
    q(json!({"execute": "qmp_capabilities"}), &mut events);
    q(
        json!({"execute": "blockdev-add", "arguments": {
            "node-name": "disk0", "driver": "qcow2",
            "file": {"driver": "file", "filename": o}}}),
        &mut events,
    );
    q(
        json!({"execute": "block-stream", "arguments": {"job-id": "instant", "device": "disk0"}}),
        &mut events,
    );
    // Wait for the job's end, reading events (QEMU emits them as it goes).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !events
        .iter()
        .any(|e| e["event"] == "BLOCK_JOB_COMPLETED" && e["data"]["device"] == "instant")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "block-stream did not end: {events:?}"
        );
        q(json!({"execute": "query-block-jobs"}), &mut events);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let done = events
        .iter()
        .find(|e| e["event"] == "BLOCK_JOB_COMPLETED")
        .expect("completed");
    assert!(done["data"].get("error").is_none(), "{done}");
    q(
        json!({"execute": "blockdev-del", "arguments": {"node-name": "disk0"}}),
        &mut events,
    );
    q(json!({"execute": "quit"}), &mut events);
    drop(input);
    assert!(qemu.wait().expect("wait").success());
    assert!(
        server.bytes_read() > 0,
        "the stream read nothing from the export"
    );
    server.stop();

    // The export is gone; the overlay holds the backup plus the write.
    let info = ok(Command::new("qemu-img").args(["info", "--output=json", o]));
    let info: Value = serde_json::from_str(&info).expect("info");
    assert!(info.get("backing-filename").is_none(), "{info}");
    let copy = dir.path().join("copy.raw");
    ok(Command::new("qemu-img").args(["convert", "-q", "-O", "raw", o, copy.to_str().unwrap()]));
    let mut want = std::fs::read(&raw).expect("raw");
    want[..4096].fill(0x77);
    assert!(
        std::fs::read(&copy).unwrap() == want,
        "the streamed image differs"
    );
}
