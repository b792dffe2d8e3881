//! File-level restore on the server: the backed-up disk is materialised
//! as a sparse raw file in a temporary directory (parallel chunk reads,
//! zeros skipped) and read with `vdc_backup::files` (debugfs), then removed.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use vdc_backup::BackupError;
use vdc_types::backup::FileEntry;
use vdc_types::ApiError;

use super::blocking;
use crate::Cluster;

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, BackupError> {
        let p = std::env::temp_dir().join(format!("vdc-files-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&p).map_err(BackupError::io("cannot make", &p))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove a temporary directory");
        }
    }
}

impl Cluster {
    /// Lists directory `path` of disk `disk` (default: the first) of backup
    /// `id`, or, with `extract`, returns the content of file `path`.
    pub async fn backup_files(
        &self,
        id: &str,
        store: Option<&str>,
        disk: Option<&str>,
        path: &str,
        extract: bool,
    ) -> Result<(Vec<FileEntry>, Option<Vec<u8>>), ApiError> {
        let (s, m) = self.find_backup(id, store).await?;
        let i = match disk {
            Some(d) => m
                .index
                .iter()
                .position(|x| x.disk == d)
                .ok_or_else(|| ApiError::invalid(format!("backup '{id}' has no disk '{d}'")))?,
            None => 0,
        };
        let index = m.index[i].clone();
        let size = m.backup.disks[i].size_bytes;
        let path = path.to_string();
        blocking(move || {
            let store = super::open(&s)?;
            let tmp = TempDir::new()?;
            let image = tmp.0.join("disk.raw");
            vdc_backup::restore::restore_raw(
                &store,
                &index,
                size,
                &image,
                4,
                &AtomicBool::new(false),
                &|_| {},
            )?;
            let offset = vdc_backup::files::find_ext_filesystem(&image)?;
            if extract {
                let out = tmp.0.join("extracted");
                vdc_backup::files::extract(&image, offset, &path, &out)?;
                let data = std::fs::read(&out).map_err(BackupError::io("cannot read", &out))?;
                Ok((Vec::new(), Some(data)))
            } else {
                Ok((vdc_backup::files::list(&image, offset, &path)?, None))
            }
        })
        .await
    }
}
