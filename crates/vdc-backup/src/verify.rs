//! Verify: every distinct chunk a backup names is re-read and re-hashed;
//! a backup with a missing or damaged chunk is marked damaged (and
//! unmarked when a later verify finds it whole again).

use vdc_types::backup::VerifyReport;

use crate::error::{BackupError, Result};
use crate::store::Store;

/// Verifies backup `id` and records the outcome.
pub fn verify(store: &Store, id: &str) -> Result<VerifyReport> {
    let m = store.manifest(id)?;
    let names = m.chunk_names();
    let mut damaged = Vec::new();
    for name in &names {
        match store.get_chunk(name) {
            Ok(_) => {}
            Err(BackupError::ChunkDigest { .. } | BackupError::ChunkMissing { .. }) => {
                damaged.push(name.to_string())
            }
            Err(e) => return Err(e),
        }
    }
    store.set_damaged(id, !damaged.is_empty())?;
    Ok(VerifyReport {
        backup: id.into(),
        chunks_checked: names.len() as u64,
        damaged: !damaged.is_empty(),
        damaged_chunks: damaged,
    })
}
