//! Writing one disk into the store: read it chunk by chunk, hash and
//! compress the chunks on worker threads, store the new ones.
//!
//! ```text
//!  reader (this thread) ──(index, bytes)──► workers (hash, zero check,
//!  zstd, write if new) ──(index, name)──► the disk's index, in order
//! ```
//!
//! An incremental read names, per chunk, whether it changed since a base
//! backup; unchanged chunks are taken from the base's index (and touched,
//! so that garbage collection sees them in use) without being read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use vdc_types::backup::{DiskBackup, DiskRead};

use crate::error::{BackupError, Result};
use crate::store::{touch, DiskIndex, Store};

/// Something a disk can be read from at any offset.
pub trait DiskSource: Send {
    /// Fills `buf` from offset `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// What to read of one disk.
pub struct DiskPlan<'a> {
    /// Device name.
    pub name: String,
    /// Virtual size.
    pub size: u64,
    /// Where its bytes come from.
    pub source: &'a mut dyn DiskSource,
    /// With a base: per chunk, whether it changed since the base.
    pub changed: Option<(Vec<bool>, Vec<Option<String>>)>,
    /// How it is read (recorded as is).
    pub read: DiskRead,
}

/// How many chunks are compressed at once.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Writes one disk; `progress(bytes)` is called as chunks are done.
pub fn write_disk(
    store: &Store,
    plan: DiskPlan<'_>,
    cancel: &AtomicBool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(DiskIndex, DiskBackup)> {
    let cs = store.chunk_size();
    let count = plan.size.div_ceil(cs) as usize;
    let mut index: Vec<Option<String>> = vec![None; count];
    let mut fig = DiskBackup {
        name: plan.name.clone(),
        size_bytes: plan.size,
        chunk_size: cs,
        read: plan.read.clone(),
        chunks: count as u64,
        chunks_read: 0,
        chunks_zero: 0,
        chunks_new: 0,
        chunks_reused: 0,
        bytes_read: 0,
        bytes_stored: 0,
    };
    let to_read: Vec<usize> = match &plan.changed {
        Some((changed, base)) if changed.len() == count && base.len() == count => {
            for i in 0..count {
                if !changed[i] {
                    if let Some(name) = &base[i] {
                        let p = store.chunk_path(name);
                        if !p.exists() {
                            return Err(BackupError::ChunkMissing {
                                digest: name.clone(),
                            });
                        }
                        touch(&p)?;
                    }
                    index[i] = base[i].clone();
                }
            }
            (0..count).filter(|i| changed[*i]).collect()
        }
        _ => (0..count).collect(),
    };
    type Done = Result<(usize, Option<(String, bool, u64)>)>;
    let (work_tx, work_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(workers() * 2);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let source = plan.source;
    let outcome: Result<()> = std::thread::scope(|s| {
        for _ in 0..workers() {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            s.spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((i, buf)) = next else { break };
                let r = if crate::chunk::is_zero(&buf) {
                    Ok((i, None))
                } else {
                    store.put_chunk(&buf).map(|c| (i, Some(c)))
                };
                if tx.send(r).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let reader = s.spawn(move || -> Result<()> {
            for &i in &to_read {
                if cancel.load(Ordering::Relaxed) {
                    return Err(BackupError::Cancelled);
                }
                let off = i as u64 * cs;
                let len = cs.min(plan.size - off) as usize;
                let mut buf = vec![0u8; len];
                source.read_at(off, &mut buf)?;
                if work_tx.send((i, buf)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut first_err = None;
        for r in done_rx {
            match r {
                Ok((i, c)) => {
                    let len = cs.min(plan.size - i as u64 * cs);
                    fig.chunks_read += 1;
                    fig.bytes_read += len;
                    match c {
                        None => fig.chunks_zero += 1,
                        Some((name, new, stored)) => {
                            if new {
                                fig.chunks_new += 1;
                                fig.bytes_stored += stored;
                            } else {
                                fig.chunks_reused += 1;
                            }
                            index[i] = Some(name);
                        }
                    }
                    progress(fig.bytes_read);
                }
                Err(e) => {
                    cancel.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
            }
        }
        let read = reader.join().unwrap_or(Err(BackupError::Cancelled));
        match (first_err, read) {
            (Some(e), _) => Err(e),
            (None, r) => r,
        }
    });
    outcome?;
    store.sync_chunk_dirs(index.iter().flatten().map(String::as_str))?;
    Ok((
        DiskIndex {
            disk: plan.name,
            chunks: index,
        },
        fig,
    ))
}

/// A disk held in memory (tests, small images).
pub struct MemDisk(pub Vec<u8>);

impl DiskSource for MemDisk {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
}

/// A raw image file read with positional reads.
pub struct FileDisk(pub std::fs::File);

impl DiskSource for FileDisk {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.0
            .read_exact_at(buf, offset)
            .map_err(|e| BackupError::Io {
                what: "cannot read disk image",
                path: "(image)".into(),
                source: e,
            })
    }
}

/// Which chunks of a disk of `size` bytes the dirty extents touch
/// (extents as `NbdClient::block_status` gives them; flag 1 = dirty).
pub fn changed_chunks(extents: &[(u64, u64, u32)], size: u64, chunk_size: u64) -> Vec<bool> {
    let count = size.div_ceil(chunk_size) as usize;
    let mut changed = vec![false; count];
    for &(off, len, flags) in extents {
        if flags & 1 == 0 || len == 0 {
            continue;
        }
        let first = (off / chunk_size) as usize;
        let last = ((off + len - 1) / chunk_size) as usize;
        for c in changed
            .iter_mut()
            .take(last.min(count.saturating_sub(1)) + 1)
            .skip(first)
        {
            *c = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::changed_chunks;

    #[test]
    fn dirty_extents_mark_the_chunks_they_touch() {
        let cs = 4 << 20;
        let ext = [
            (0, 4096, 0),
            (4096, 8 << 20, 1),
            ((12 << 20) + 1, 1, 1),
            (13 << 20, 1 << 20, 0),
        ];
        assert_eq!(
            changed_chunks(&ext, 14 << 20, cs),
            vec![true, true, true, true]
        );
        let ext = [(5 << 20, 1, 1)];
        assert_eq!(
            changed_chunks(&ext, 14 << 20, cs),
            vec![false, true, false, false]
        );
        assert_eq!(changed_chunks(&[], 14 << 20, cs), vec![false; 4]);
    }
}
