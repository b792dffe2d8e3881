//! Off-site copy between two registered stores (`vdc_backup::sync`): run by
//! the server, which sees every store at its path, off the async runtime.

use std::sync::atomic::AtomicBool;

use serde_json::json;
use vdc_types::backup::{SyncReport, SyncRequest};
use vdc_types::{now_ms, ApiError};

use super::{blocking, open};
use crate::Cluster;

impl Cluster {
    /// Copies the backups of store `from` (of VM `req.vm` only, if given)
    /// that store `req.to` lacks: missing chunks first, each checked on
    /// arrival, then each backup's manifest.
    pub async fn sync_backup_stores(
        &self,
        from: &str,
        req: &SyncRequest,
    ) -> Result<SyncReport, ApiError> {
        if from == req.to {
            return Err(ApiError::invalid(format!(
                "cannot sync backup store '{from}' to itself; name another store with 'to'"
            )));
        }
        let src = self.get_backup_store(from).await?;
        let dst = self.get_backup_store(&req.to).await?;
        let vm = req.vm.clone();
        let report = blocking(move || {
            vdc_backup::sync::sync(
                &open(&src)?,
                &open(&dst)?,
                |b| vm.as_deref().is_none_or(|v| b.vm == v),
                now_ms(),
                &AtomicBool::new(false),
            )
        })
        .await?;
        self.events
            .publish(
                "backup.synced",
                from,
                format!(
                    "backup store {from} synced to {}: {} backup(s) copied, {} chunk(s) sent, {} already there",
                    req.to,
                    report.backups_copied.len(),
                    report.chunks_sent,
                    report.chunks_present
                ),
                json!({"to": req.to, "vm": req.vm, "report": report}),
            )
            .await;
        Ok(report)
    }
}
