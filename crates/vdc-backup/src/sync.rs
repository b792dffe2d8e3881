//! Off-site copy: the backups of one store that another store lacks, sent
//! chunk by chunk, then manifest by manifest.
//!
//! ```text
//!  for each backup of the source (complete, not damaged, not in the target):
//!     for each chunk it names that the target lacks:
//!         read the chunk file ─► decode and check it against its name
//!         ─► write it into the target (temp, fsync, rename)
//!     touch the chunks the target already had (gc sees them in use)
//!     fsync the target's chunk directories ─► write the manifest
//! ```
//!
//! The manifest of a backup is written only after every chunk it names is
//! in the target and synced, so a sync cut half-way never lists a backup
//! whose chunks are missing; the chunks it sent stay and the next sync
//! skips them. A writer marker in the target keeps its garbage collection
//! from sweeping the chunks sent before their manifest lands.
//!
//! Chunk files are copied as they are: both stores must be unencrypted or
//! encrypted with the same key (the names are keyed digests, so another
//! key would name the same content differently).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use vdc_types::backup::{Backup, SyncReport};

use crate::error::{BackupError, Result};
use crate::store::{touch, write_file_synced, Store};

/// Copies into `to` every complete backup of `from` it lacks for which
/// `wanted` holds; `now_ms` names the writer marker that keeps the
/// target's gc off the chunks sent.
pub fn sync(
    from: &Store,
    to: &Store,
    wanted: impl Fn(&Backup) -> bool,
    now_ms: u64,
    cancel: &AtomicBool,
) -> Result<SyncReport> {
    same_key(from, to)?;
    if from.chunk_size() != to.chunk_size() {
        return Err(BackupError::Key(format!(
            "the stores have different chunk sizes ({} and {} bytes)",
            from.chunk_size(),
            to.chunk_size()
        )));
    }
    let present: BTreeSet<String> = to.backup_ids()?.into_iter().collect();
    let marker = format!("sync-{now_ms}-{}", std::process::id());
    to.begin_writer(&marker, "sync", now_ms)?;
    let r = copy_all(from, to, &present, wanted, cancel);
    if let Err(e) = to.end_writer(&marker) {
        tracing::warn!(error = %e, "cannot remove the sync's writer marker");
    }
    r
}

fn same_key(from: &Store, to: &Store) -> Result<()> {
    match (from.key(), to.key()) {
        (None, None) => Ok(()),
        (Some(a), Some(b)) if a.id == b.id => Ok(()),
        (Some(_), Some(_)) => Err(BackupError::Key(
            "the stores are encrypted with different keys; sync needs the same key file on both"
                .into(),
        )),
        _ => Err(BackupError::Key(
            "one store is encrypted and the other is not; sync needs both unencrypted or both with the same key".into(),
        )),
    }
}

fn copy_all(
    from: &Store,
    to: &Store,
    present: &BTreeSet<String>,
    wanted: impl Fn(&Backup) -> bool,
    cancel: &AtomicBool,
) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    for id in from.backup_ids()? {
        let m = from.manifest(&id)?;
        if !wanted(&m.backup) {
            continue;
        }
        if present.contains(&id) {
            report.backups_present += 1;
            continue;
        }
        if m.backup.damaged {
            report.backups_skipped_damaged.push(id);
            continue;
        }
        let names = m.chunk_names();
        for name in &names {
            if cancel.load(Ordering::Relaxed) {
                return Err(BackupError::Cancelled);
            }
            let dst = to.chunk_path(name);
            if dst.exists() {
                touch(&dst)?;
                report.chunks_present += 1;
                continue;
            }
            let src = from.chunk_path(name);
            let file = match std::fs::read(&src) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(BackupError::ChunkMissing {
                        digest: name.to_string(),
                    })
                }
                Err(e) => return Err(BackupError::io("cannot read chunk", &src)(e)),
            };
            crate::chunk::decode(&file, name, to.key()).map_err(|_| BackupError::ChunkDigest {
                digest: name.to_string(),
            })?;
            let dir = dst.parent().unwrap_or(to.root());
            std::fs::create_dir_all(dir).map_err(BackupError::io("cannot make", dir))?;
            write_file_synced(&dst, &file)?;
            report.chunks_sent += 1;
            report.bytes_sent += file.len() as u64;
        }
        to.sync_chunk_dirs(names.iter().copied())?;
        let mut copy = m.clone();
        copy.backup.damaged = false;
        to.write_manifest(&copy)?;
        report.backups_copied.push(id);
    }
    Ok(report)
}
