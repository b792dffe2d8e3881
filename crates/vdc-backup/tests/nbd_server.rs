//! The read-only NBD server against QEMU's own NBD client: `qemu-img
//! convert` of the served backup equals the original image, `qemu-io`
//! reads known data, writes are refused, and a damaged chunk fails the
//! read instead of serving bad bytes.

use std::os::unix::fs::FileExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;

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

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

#[test]
fn qemu_reads_a_backup_served_over_nbd_as_the_original_image() {
    let dir = tempfile::tempdir().expect("tmp");
    let raw = dir.path().join("source.raw");
    // 13 MiB + 4 KiB: a zero chunk (4-8 MiB), a partial last chunk.
    let size = 13 * 1024 * 1024 + 4096;
    let f = std::fs::File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&raw)
        .expect("raw");
    f.set_len(size).expect("size");
    f.write_all_at(b"first chunk", 0).expect("w");
    f.write_all_at(&[7u8; 70_000], (9 << 20) - 1000).expect("w");
    f.write_all_at(&[0x5au8; 4096], size - 4096).expect("w");
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
    let (index, fig) = write_disk(&store, plan, &AtomicBool::new(false), &|_| {}).expect("backup");
    assert_eq!((fig.chunks, fig.chunks_zero), (4, 1), "{fig:?}");

    let sock = dir.path().join("export.sock");
    let server =
        NbdServer::start(store.clone(), index.clone(), size, "disk0", &sock).expect("serve");
    let url = format!("nbd+unix:///disk0?socket={}", sock.display());

    let out = dir.path().join("copy.raw");
    let o = run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            out.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap(),
        "the served disk differs from the original"
    );

    let o = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            &format!("read -P 0x5a {} 4096", size - 4096),
            &url,
        ],
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !text.contains("Pattern verification failed"),
        "{text}"
    );

    // A write through the export is refused and changes nothing.
    let o = run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 4096", &url],
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(!text.contains("wrote 4096"), "a write went through: {text}");
    let o = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x66 0 1", &url],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        !text.contains("Pattern verification failed"),
        "byte 0 changed: {text}"
    );

    server.stop();
    assert!(!sock.exists(), "the socket outlives the server");

    // A flipped byte in the chunk at 8 MiB: reading it through a fresh
    // server (an empty cache) fails loudly.
    let name = index.chunks[2].clone().expect("data at 8 MiB");
    let path = store.chunk_path(&name);
    let mut bytes = std::fs::read(&path).expect("chunk");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).expect("flip");
    let server = NbdServer::start(store.clone(), index, size, "disk0", &sock).expect("serve");
    let o = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            &format!("read {} 4096", (9 << 20) - 1000),
            &url,
        ],
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        !text.contains("read 4096"),
        "a damaged chunk was served: {text}"
    );
    server.stop();
}

/// Speaks the protocol by hand: NBD_OPT_EXPORT_NAME, a write (refused with
/// EPERM, its payload skipped), then a read on the same connection; and
/// vdc's own client reads through NBD_OPT_GO, and is refused an unknown
/// export by name.
#[test]
fn writes_are_refused_with_eperm_and_unknown_exports_by_name() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open_or_init(&dir.path().join("store"), None).expect("store");
    let size = 1u64 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let (name, _, _) = store.put_chunk(&data).expect("chunk");
    let index = vdc_backup::store::DiskIndex {
        disk: "disk0".into(),
        chunks: vec![Some(name)],
    };
    let sock = dir.path().join("export.sock");
    let server = NbdServer::start(store, index, size, "disk0", &sock).expect("serve");

    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).expect("hello");
    assert_eq!(&hello[..16], b"NBDMAGICIHAVEOPT");
    let mut m = Vec::new();
    m.extend_from_slice(&3u32.to_be_bytes());
    m.extend_from_slice(b"IHAVEOPT");
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&5u32.to_be_bytes());
    m.extend_from_slice(b"disk0");
    s.write_all(&m).expect("export name");
    let mut info = [0u8; 10];
    s.read_exact(&mut info).expect("size and flags");
    assert_eq!(u64::from_be_bytes(info[..8].try_into().unwrap()), size);
    assert_ne!(u16::from_be_bytes([info[8], info[9]]) & 2, 0, "READ_ONLY");
    let request = |typ: u16, handle: u64, off: u64, len: u32| {
        let mut r = Vec::new();
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&typ.to_be_bytes());
        r.extend_from_slice(&handle.to_be_bytes());
        r.extend_from_slice(&off.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    };
    let mut w = request(1, 7, 0, 512);
    w.extend_from_slice(&[0xffu8; 512]);
    s.write_all(&w).expect("write request");
    let mut rep = [0u8; 16];
    s.read_exact(&mut rep).expect("write reply");
    assert_eq!(
        u32::from_be_bytes(rep[4..8].try_into().unwrap()),
        1,
        "EPERM"
    );
    assert_eq!(u64::from_be_bytes(rep[8..16].try_into().unwrap()), 7);
    s.write_all(&request(0, 8, 1000, 16)).expect("read request");
    s.read_exact(&mut rep).expect("read reply");
    assert_eq!(u32::from_be_bytes(rep[4..8].try_into().unwrap()), 0);
    let mut got = [0u8; 16];
    s.read_exact(&mut got).expect("read data");
    assert_eq!(
        &got[..],
        &data[1000..1016],
        "a refused write changed nothing"
    );
    s.write_all(&request(2, 9, 0, 0)).expect("disc");

    let mut c = vdc_backup::nbd::NbdClient::connect(&sock, "disk0").expect("go");
    assert_eq!(c.size(), size);
    let mut buf = vec![0u8; 4096];
    c.read_at(size - 4096, &mut buf).expect("read");
    assert_eq!(&buf[..], &data[(size - 4096) as usize..]);
    drop(c);
    let e = vdc_backup::nbd::NbdClient::connect(&sock, "other")
        .err()
        .expect("unknown export");
    assert!(
        e.to_string().contains("other") || e.to_string().contains("NBD"),
        "{e}"
    );
    server.stop();
}
