//! vdc's side of `vdc bench backup`: the data path of a backup of a
//! stopped VM's disk, as the agent runs it (`qemu-nbd` serving the qcow2
//! read-only on a unix socket, vdc's NBD client, the store's parallel
//! hashing and compression), and of a restore.
//!
//! The incremental reads the changes from the persistent dirty bitmap that
//! QEMU kept in the qcow2 while the change was written (`qemu-io`), as a
//! VM's writes would be recorded. A running VM's backup adds QEMU's
//! copy-before-write on top; the manifest (a small JSON file) is left out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use vdc_backup::incremental::bitmap_name;
use vdc_backup::nbd::NbdClient;
use vdc_backup::session::{changed_chunks, write_disk, DiskPlan};
use vdc_backup::store::DiskIndex;
use vdc_backup::Store;
use vdc_types::backup::DiskRead;

use super::run_checked;
use crate::BenchError;

const EXPORT: &str = "disk";

/// What one vdc backup did.
#[derive(Debug, Clone)]
pub struct VdcBackup {
    /// Wall time.
    pub time: Duration,
    /// Chunks read from the disk.
    pub chunks_read: u64,
    /// Chunks stored new.
    pub chunks_new: u64,
    /// The disk's chunk index.
    pub index: DiskIndex,
}

/// `qemu-nbd` serving an image read-only; stopped on drop.
struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    fn start(image: &Path, socket: &Path, bitmap: Option<&str>) -> Result<Served, BenchError> {
        let mut cmd = Command::new("qemu-nbd");
        if let Some(b) = bitmap {
            cmd.arg("--bitmap").arg(b);
        }
        let child = cmd
            .args(["--read-only", "--format=qcow2", "--shared=2"])
            .arg(format!("--export-name={EXPORT}"))
            .arg("--socket")
            .arg(socket)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::Spawn {
                program: "qemu-nbd".into(),
                source: e,
            })?;
        let mut s = Served {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(BenchError::Command {
                    program: "qemu-nbd".into(),
                    stderr: format!("ended ({st}) before serving"),
                });
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout("qemu-nbd to listen".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(s)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("qemu-nbd: cannot stop: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("qemu-nbd: cannot reap: {e}");
        }
        if let Err(e) = std::fs::remove_file(&self.socket) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("qemu-nbd: cannot remove its socket: {e}");
            }
        }
    }
}

/// The VM's disk: the raw image as a qcow2 with an empty persistent dirty
/// bitmap, as a new backup into store `bench` leaves it.
pub fn make_disk(raw: &Path, qcow2: &Path, bitmap: &str) -> Result<(), BenchError> {
    let q = qcow2.to_string_lossy().to_string();
    run_checked(
        "qemu-img",
        &["convert", "-O", "qcow2", &raw.to_string_lossy(), &q],
    )?;
    run_checked("qemu-img", &["bitmap", "--add", &q, bitmap])
}

/// Writes the change into the qcow2 the way a guest would, so that its
/// dirty bitmap records it.
pub fn write_change(
    qcow2: &Path,
    work: &Path,
    change: &[(u64, Vec<u8>)],
) -> Result<(), BenchError> {
    let mut args: Vec<String> = vec!["-f".into(), "qcow2".into()];
    let mut files = Vec::new();
    for (i, (off, data)) in change.iter().enumerate() {
        let f = work.join(format!("region-{i}.bin"));
        std::fs::write(&f, data).map_err(|e| BenchError::File {
            path: f.clone(),
            source: e,
        })?;
        args.push("-c".into());
        args.push(format!("write -q -s {} {off} {}", f.display(), data.len()));
        files.push(f);
    }
    args.push(qcow2.to_string_lossy().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_checked("qemu-io", &refs);
    for f in files {
        if let Err(e) = std::fs::remove_file(&f) {
            eprintln!("cannot remove {}: {e}", f.display());
        }
    }
    r
}

/// The bitmap name of the benchmark's store after backup `id`.
pub fn bitmap(id: &str) -> String {
    bitmap_name("bench", id)
}

/// A backup of the qcow2: full, or incremental from `base` through the
/// dirty bitmap `bitmap`.
pub fn backup(
    store: &Store,
    qcow2: &Path,
    socket: &Path,
    base: Option<(&DiskIndex, &str)>,
) -> Result<VdcBackup, BenchError> {
    let t = Instant::now();
    let served = Served::start(qcow2, socket, base.map(|(_, b)| b))?;
    let mut reader = NbdClient::connect(socket, EXPORT)?;
    let size = reader.size();
    let (changed, read) = match base {
        Some((index, bm)) => {
            let mut meta =
                NbdClient::connect_meta(socket, EXPORT, &format!("qemu:dirty-bitmap:{bm}"))?;
            let extents = meta.block_status(0, size)?;
            let changed = changed_chunks(&extents, size, store.chunk_size());
            (
                Some((changed, index.chunks.clone())),
                DiskRead::Incremental {
                    base: "full".into(),
                    bitmap: bm.into(),
                },
            )
        }
        None => (
            None,
            DiskRead::Full {
                reason: "first backup".into(),
            },
        ),
    };
    let plan = DiskPlan {
        name: "disk0".into(),
        size,
        source: &mut reader,
        changed,
        read,
    };
    let (index, fig) = write_disk(store, plan, &AtomicBool::new(false), &|_| {})?;
    drop(reader);
    drop(served);
    Ok(VdcBackup {
        time: t.elapsed(),
        chunks_read: fig.chunks_read,
        chunks_new: fig.chunks_new,
        index,
    })
}

/// Restores `index` into the new raw file `out`; the time includes the
/// final sync.
pub fn restore(
    store: &Store,
    index: &DiskIndex,
    size: u64,
    out: &Path,
) -> Result<Duration, BenchError> {
    let t = Instant::now();
    vdc_backup::restore::restore_raw(
        store,
        index,
        size,
        out,
        vdc_backup::restore::RESTORE_THREADS,
        &AtomicBool::new(false),
        &|_| {},
    )?;
    Ok(t.elapsed())
}
