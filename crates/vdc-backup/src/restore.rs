//! Restoring one disk: its chunks are read, decompressed and checked on
//! several threads at once and written with positional writes into a raw
//! sparse file; chunks of zeros are skipped (the file's holes read as
//! zeros). A chunk that is missing or fails its digest fails the restore
//! and the partial file is removed: nothing half-made is left.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::error::{BackupError, Result};
use crate::store::{DiskIndex, Store};

/// Threads a restore reads, decompresses and writes chunks on.
pub const RESTORE_THREADS: usize = 4;

/// Writes the disk `index` of virtual size `size` into a new raw file
/// `out`; `progress(bytes)` as chunks land. Returns the bytes written
/// (zeros skipped).
pub fn restore_raw(
    store: &Store,
    index: &DiskIndex,
    size: u64,
    out: &Path,
    threads: usize,
    cancel: &AtomicBool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let r = write(store, index, size, out, threads.max(1), cancel, progress);
    if r.is_err() {
        if let Err(e) = std::fs::remove_file(out) {
            tracing::warn!(path = %out.display(), error = %e, "cannot remove a partial restore");
        }
    }
    r
}

/// Starts writing a landed chunk to the device at once, so that the final
/// fsync does not find the whole disk's data still dirty in memory.
fn start_writeback(file: &std::fs::File, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and a range inside the file;
    // sync_file_range only starts writeback of those pages.
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range");
    }
}

fn write(
    store: &Store,
    index: &DiskIndex,
    size: u64,
    out: &Path,
    threads: usize,
    cancel: &AtomicBool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(BackupError::io("cannot create", out))?;
    file.set_len(size)
        .map_err(BackupError::io("cannot size", out))?;
    let cs = store.chunk_size();
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let result: Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        if cancel.load(Ordering::Relaxed) {
                            return Err(BackupError::Cancelled);
                        }
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(entry) = index.chunks.get(i) else {
                            return Ok(());
                        };
                        let off = i as u64 * cs;
                        let len = cs.min(size.saturating_sub(off));
                        if let Some(name) = entry {
                            let data = store.get_chunk(name).inspect_err(|_| {
                                failed.store(true, Ordering::Relaxed);
                            })?;
                            if data.len() as u64 != len {
                                failed.store(true, Ordering::Relaxed);
                                return Err(BackupError::ChunkDigest {
                                    digest: name.clone(),
                                });
                            }
                            file.write_all_at(&data, off)
                                .map_err(BackupError::io("cannot write", out))?;
                            start_writeback(&file, off, len);
                            written.fetch_add(len, Ordering::Relaxed);
                        }
                        progress(done.fetch_add(len, Ordering::Relaxed) + len);
                    }
                })
            })
            .collect();
        let mut first = Ok(());
        for h in handles {
            let r = h.join().unwrap_or(Err(BackupError::Cancelled));
            if first.is_ok() {
                first = r;
            }
        }
        first
    });
    result?;
    file.sync_all()
        .map_err(BackupError::io("cannot sync", out))?;
    Ok(written.load(Ordering::Relaxed))
}
