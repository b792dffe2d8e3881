//! Garbage collection, mark and sweep, with the rule that keeps chunks a
//! running backup may need:
//!
//! 1. mark: every chunk a complete backup names has its mtime set to now;
//! 2. the cutoff is the earlier of the gc's start and the start of the
//!    oldest running backup (its writer marker), less a grace period;
//!    a running backup writes new chunks and touches the ones it reuses,
//!    so everything it needs is newer than its start;
//! 3. sweep: a chunk no backup names whose mtime is before the cutoff is
//!    removed.
//!
//! Writer markers older than [`STALE_WRITER`] belong to backups killed
//! half-way; they are removed and do not hold the cutoff back.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

pub use vdc_types::backup::GcReport;

use crate::error::{BackupError, Result};
use crate::store::{touch, Store};

/// Age past which a writer marker is taken for a dead backup.
pub const STALE_WRITER: Duration = Duration::from_secs(24 * 3600);

/// The chunks to remove: unused and older than `cutoff`. Pure.
pub fn sweep_candidates(
    chunks: &[(String, SystemTime)],
    in_use: &BTreeSet<String>,
    cutoff: SystemTime,
) -> Vec<String> {
    chunks
        .iter()
        .filter(|(n, t)| !in_use.contains(n) && *t < cutoff)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Runs a gc on `store`.
pub fn gc(store: &Store, grace: Duration) -> Result<GcReport> {
    let start = SystemTime::now();
    let mut cutoff = start;
    for w in store.writers()? {
        let began = SystemTime::UNIX_EPOCH + Duration::from_millis(w.started_ms);
        if start.duration_since(began).unwrap_or_default() > STALE_WRITER {
            store.end_writer(&w.backup)?;
        } else if began < cutoff {
            cutoff = began;
        }
    }
    let cutoff = cutoff.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut in_use = BTreeSet::new();
    for id in store.backup_ids()? {
        let m = match store.manifest(&id) {
            Ok(m) => m,
            Err(BackupError::NoBackup(_)) => continue,
            Err(e) => return Err(e),
        };
        for n in m.chunk_names() {
            if in_use.insert(n.to_string()) {
                let p = store.chunk_path(n);
                if p.exists() {
                    touch(&p)?;
                }
            }
        }
    }
    let files = store.chunk_files()?;
    let remove = sweep_candidates(&files, &in_use, cutoff);
    let mut report = GcReport {
        chunks_in_use: in_use.len() as u64,
        chunks_pending: (files.len() - in_use.len().min(files.len()) - remove.len()) as u64,
        ..Default::default()
    };
    for n in remove {
        let p = store.chunk_path(&n);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&p) {
            Ok(()) => {
                report.chunks_removed += 1;
                report.bytes_removed += len;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::io("cannot remove chunk", &p)(e)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unused_chunks_older_than_the_cutoff_go() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let chunks = vec![
            ("used".to_string(), t0 - Duration::from_secs(100)),
            ("old".to_string(), t0 - Duration::from_secs(100)),
            ("fresh".to_string(), t0 + Duration::from_secs(1)),
        ];
        let in_use = BTreeSet::from(["used".to_string()]);
        assert_eq!(sweep_candidates(&chunks, &in_use, t0), ["old"]);
    }
}
