//! The `restore` job (steps in the `backup` module's doc).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vdc_types::backup::RestoreJobRequest;
use vdc_types::job::JobResult;
use vdc_types::{ApiError, ErrorCode};

use crate::agent::Agent;
use crate::backup::{backup_err, open_store, remove_logged, RESTORE_THREADS, TICK};
use crate::jobs::JobCell;

impl Agent {
    /// The `restore` job.
    pub(crate) async fn restore_job(
        self: &Arc<Self>,
        cell: &JobCell,
        req: RestoreJobRequest,
    ) -> Result<JobResult, ApiError> {
        if self.running(&req.config.id).is_ok() {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' runs on this host; a restore writes only over a powered-off VM's disks",
                req.config.name
            )));
        }
        cell.progress(1, "opening the backup store");
        let store = open_store(&req.store_path, req.encryption_key.as_deref()).await?;
        let (s, id) = (store.clone(), req.backup_id.clone());
        let m = tokio::task::spawn_blocking(move || s.manifest(&id))
            .await
            .map_err(|e| ApiError::internal(format!("store task: {e}")))?
            .map_err(backup_err)?;
        let layout = self.layout(&req.config)?;
        let mut written = Vec::new();
        let total: u64 = req
            .disks
            .iter()
            .filter_map(|(from, _)| m.backup.disks.iter().find(|d| &d.name == from))
            .map(|d| d.size_bytes)
            .sum::<u64>()
            .max(1);
        let done = Arc::new(AtomicU64::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        for (from, to) in &req.disks {
            let Some(i) = m.index.iter().position(|x| &x.disk == from) else {
                return Err(ApiError::invalid(format!(
                    "backup '{}' has no disk '{from}'",
                    m.backup.id
                )));
            };
            let size = m.backup.disks[i].size_bytes;
            let index = m.index[i].clone();
            let Some(j) = req.config.disks.iter().position(|d| &d.name == to) else {
                return Err(ApiError::invalid(format!("the VM has no disk '{to}'")));
            };
            let target = layout.disks[j].clone();
            let raw = target.with_file_name(format!(".restore-{to}.raw"));
            let qcow = target.with_file_name(format!(".restore-{to}.qcow2"));
            remove_logged(&raw);
            remove_logged(&qcow);
            let (s, r2, d2, c2) = (store.clone(), raw.clone(), done.clone(), cancel.clone());
            let base = done.load(Ordering::Relaxed);
            let work = tokio::task::spawn_blocking(move || {
                let progress = |b: u64| d2.store(base + b, Ordering::Relaxed);
                vdc_backup::restore::restore_raw(
                    &s,
                    &index,
                    size,
                    &r2,
                    RESTORE_THREADS,
                    &c2,
                    &progress,
                )
            });
            let mut work = std::pin::pin!(work);
            let mut tick = tokio::time::interval(TICK);
            let r = loop {
                tokio::select! {
                    r = &mut work => break r.map_err(|e| ApiError::internal(format!("restore task: {e}")))?,
                    _ = cell.cancel.cancelled(), if !cancel.load(Ordering::Relaxed) => cancel.store(true, Ordering::Relaxed),
                    _ = tick.tick() => {
                        let p = 2 + done.load(Ordering::Relaxed) * 90 / total;
                        cell.progress(p.min(92) as u8, "writing the disks");
                    }
                }
            };
            r.map_err(backup_err)?;
            cell.progress(93, "converting to qcow2");
            let converted =
                vdc_disk::qemu_img::convert_to_qcow2(&raw, vdc_types::api::ImageFormat::Raw, &qcow)
                    .await;
            remove_logged(&raw);
            if let Err(e) = converted {
                remove_logged(&qcow);
                return Err(ApiError::new(ErrorCode::HostError, crate::error::chain(&e)));
            }
            if let Err(e) = std::fs::rename(&qcow, &target) {
                remove_logged(&qcow);
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    format!(
                        "cannot put the restored image in place at '{}': {e}",
                        target.display()
                    ),
                ));
            }
            written.push(to.clone());
        }
        Ok(JobResult::Restored { disks: written })
    }
}
