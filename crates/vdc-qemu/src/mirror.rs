//! Storage migration of a running VM's disk: `blockdev-mirror` to a new
//! image, then the switch.
//!
//! # Steps (QMP, QEMU 10)
//! 1. find the block node the disk's device (`blk-NAME`) reads now
//!    (`query-block`: the spec's node `NAME`, or the node of an earlier
//!    mirror);
//! 2. `blockdev-add` the target: a `qcow2` node over a `file` node on the
//!    new image (made by the caller with `qemu-img create`, same virtual
//!    size), node names `NAME-mN` and `NAME-mN-file`;
//! 3. `blockdev-mirror sync=full` from the current node to the target; the
//!    guest keeps writing, every write lands on both once copied;
//! 4. wait for `BLOCK_JOB_READY` (progress from `query-block-jobs`);
//! 5. `block-job-complete`: QEMU switches the device to the target and
//!    ends the job (`BLOCK_JOB_COMPLETED`);
//! 6. `blockdev-del` the old nodes, which closes the old image (the caller
//!    removes it afterwards).
//!
//! A cancel or a failure before step 5 cancels the job (`block-job-cancel`)
//! and deletes the target's nodes: the VM stays on its old image and the
//! caller removes the new one.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast;
use vdc_qmp::QmpEvent;
use vdc_types::DiskCacheMode;

use crate::error::QemuError;
use crate::vm::Vm;

/// How often the job's progress is read while it copies.
const PROGRESS_TICK: Duration = Duration::from_millis(250);
/// Longest wait for the job to end after `block-job-complete` or
/// `block-job-cancel`.
const END_WAIT: Duration = Duration::from_secs(60);

/// Why a mirror did not switch the disk.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The caller cancelled it; the VM stays on its old image.
    #[error("the mirror was cancelled")]
    Cancelled,
    /// QEMU refused or failed it; the VM stays on its old image.
    #[error("the mirror of disk '{disk}' failed")]
    Failed {
        /// The disk.
        disk: String,
        /// Cause.
        #[source]
        source: QemuError,
    },
}

/// What a mirror copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MirrorSync {
    /// The whole disk, into a standalone image.
    Full,
    /// The active layer only, onto an image backed by a copy of the rest.
    Top,
}

impl MirrorSync {
    fn as_str(self) -> &'static str {
        match self {
            MirrorSync::Full => "full",
            MirrorSync::Top => "top",
        }
    }
}

/// Progress of a mirror: bytes copied of bytes to copy (both grow while
/// the guest writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorProgress {
    /// Bytes copied so far.
    pub done: u64,
    /// Bytes to copy in all, as QEMU sees it now.
    pub total: u64,
}

impl Vm {
    /// Mirrors disk `disk` (its spec's node name, e.g. `disk0`) to the
    /// image `target` and switches the VM to it (see the module doc).
    /// `cancelled` resolving stops the mirror and leaves the VM on its old
    /// image.
    pub async fn mirror_disk(
        &self,
        disk: &str,
        target: &Path,
        cache: DiskCacheMode,
        progress: impl Fn(MirrorProgress) + Sync,
        cancelled: impl Future<Output = ()>,
    ) -> Result<(), MirrorError> {
        self.mirror_with(disk, target, cache, MirrorSync::Full, progress, cancelled)
            .await
    }

    /// Mirrors the active layer of disk `disk`, a chain of snapshot
    /// overlays, onto `target`: a new overlay whose header names a copy
    /// of the chain below (made by the caller, byte for byte). QEMU opens
    /// that copy as the target's backing, `sync=top` copies only what the
    /// active layer holds, and after the switch the old chain's nodes
    /// `old_nodes` (top first: the nodes vdc added, by name) are deleted,
    /// which closes the old images.
    pub async fn mirror_top(
        &self,
        disk: &str,
        target: &Path,
        cache: DiskCacheMode,
        old_nodes: &[String],
        progress: impl Fn(MirrorProgress) + Sync,
        cancelled: impl Future<Output = ()>,
    ) -> Result<(), MirrorError> {
        self.mirror_with(disk, target, cache, MirrorSync::Top, progress, cancelled)
            .await?;
        for node in old_nodes {
            self.delete_node(node).await;
            if node == disk {
                self.delete_node(&format!("{disk}-file")).await;
            }
        }
        Ok(())
    }

    async fn mirror_with(
        &self,
        disk: &str,
        target: &Path,
        cache: DiskCacheMode,
        sync: MirrorSync,
        progress: impl Fn(MirrorProgress) + Sync,
        cancelled: impl Future<Output = ()>,
    ) -> Result<(), MirrorError> {
        let failed = |source| MirrorError::Failed {
            disk: disk.to_string(),
            source,
        };
        let source = self.disk_node(disk).await.map_err(failed)?;
        let target_node = format!("{disk}-m{}", vdc_types::now_ms());
        let job = format!("mirror-{disk}");
        let direct = cache == DiskCacheMode::None;
        let cache = json!({"direct": direct, "no-flush": false});
        self.qmp()
            .execute(
                "blockdev-add",
                json!({
                    "driver": "qcow2",
                    "node-name": target_node,
                    "cache": cache,
                    "discard": "unmap",
                    "file": {
                        "driver": "file",
                        "node-name": format!("{target_node}-file"),
                        "filename": target.to_string_lossy(),
                        "cache": cache,
                        "discard": "unmap",
                    },
                }),
            )
            .await
            .map_err(|e| failed(QemuError::qmp("blockdev-add")(e)))?;
        let mut events = self.qmp().subscribe();
        let started = self
            .qmp()
            .execute(
                "blockdev-mirror",
                json!({
                    "job-id": job,
                    "device": source,
                    "target": target_node,
                    "sync": sync.as_str(),
                }),
            )
            .await
            .map_err(QemuError::qmp("blockdev-mirror"));
        if let Err(e) = started {
            self.delete_node(&target_node).await;
            return Err(failed(e));
        }
        tokio::pin!(cancelled);
        let ready = self
            .wait_ready(&job, &mut events, &progress, &mut cancelled)
            .await;
        if let Err(e) = ready {
            self.cancel_job(&job, &mut events).await;
            self.delete_node(&target_node).await;
            return Err(match e {
                None => MirrorError::Cancelled,
                Some(e) => failed(e),
            });
        }
        // The switch: from here on the VM writes to the new image only.
        let completed = self.complete_job(&job, &mut events).await;
        if let Err(e) = completed {
            if self.disk_node(disk).await.ok().as_deref() != Some(target_node.as_str()) {
                self.cancel_job(&job, &mut events).await;
                self.delete_node(&target_node).await;
                return Err(failed(e));
            }
            tracing::warn!(vm = %self.id(), disk, error = %e, "the mirror's end was not seen, but the disk reads the new image");
        }
        self.delete_node(&source).await;
        if source == disk && sync == MirrorSync::Full {
            // The spec's nodes were added one by one; a mirror's file node
            // goes with its format node.
            self.delete_node(&format!("{disk}-file")).await;
        }
        Ok(())
    }

    /// The block node the device of disk `disk` reads now.
    pub(crate) async fn disk_node(&self, disk: &str) -> Result<String, QemuError> {
        let blocks = self
            .qmp()
            .execute("query-block", json!({}))
            .await
            .map_err(QemuError::qmp("query-block"))?;
        let qdev = format!("blk-{disk}");
        node_of_device(&blocks, &qdev).ok_or_else(|| QemuError::Qmp {
            command: "query-block",
            source: vdc_qmp::QmpError::Command {
                class: "NotFound".into(),
                desc: format!("no block device '{qdev}'"),
            },
        })
    }

    /// Waits for `BLOCK_JOB_READY`: `Ok`, or `Err(None)` when cancelled,
    /// `Err(Some(e))` when the job failed or QEMU went away.
    async fn wait_ready(
        &self,
        job: &str,
        events: &mut broadcast::Receiver<QmpEvent>,
        progress: &(dyn Fn(MirrorProgress) + Sync),
        cancelled: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), Option<QemuError>> {
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        loop {
            tokio::select! {
                _ = &mut *cancelled => return Err(None),
                _ = self.wait_exit() => return Err(Some(QemuError::Exited)),
                ev = events.recv() => match ev {
                    Ok(ev) if event_job(&ev) == Some(job) => match ev.name.as_str() {
                        "BLOCK_JOB_READY" => return Ok(()),
                        "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_ERROR" => {
                            return Err(Some(job_ended_error(&ev)));
                        }
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if self.job_info(job).await.is_some_and(|j| j["ready"] == true) {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Some(QemuError::Exited)),
                },
                _ = tick.tick() => {
                    if let Some(j) = self.job_info(job).await {
                        let done = j["offset"].as_u64().unwrap_or(0);
                        let total = j["len"].as_u64().unwrap_or(0);
                        progress(MirrorProgress { done, total });
                        if j["ready"] == true {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn complete_job(
        &self,
        job: &str,
        events: &mut broadcast::Receiver<QmpEvent>,
    ) -> Result<(), QemuError> {
        self.qmp()
            .execute("block-job-complete", json!({"device": job}))
            .await
            .map_err(QemuError::qmp("block-job-complete"))?;
        let end = self.wait_end(job, events).await?;
        match end {
            Some(ev) if ev.name == "BLOCK_JOB_COMPLETED" && ev.data.get("error").is_none() => {
                Ok(())
            }
            Some(ev) => Err(job_ended_error(&ev)),
            None => Ok(()),
        }
    }

    /// Cancels the job and waits for it to end (logged, never fails).
    pub(crate) async fn cancel_job(&self, job: &str, events: &mut broadcast::Receiver<QmpEvent>) {
        if self.job_info(job).await.is_none() {
            return;
        }
        if let Err(e) = self
            .qmp()
            .execute("block-job-cancel", json!({"device": job, "force": true}))
            .await
        {
            tracing::warn!(vm = %self.id(), job, error = %e, "block-job-cancel");
        }
        if let Err(e) = self.wait_end(job, events).await {
            tracing::warn!(vm = %self.id(), job, error = %e, "the cancelled mirror did not end");
        }
    }

    /// Waits for the job's end event; `None` when the job is gone without
    /// one being seen.
    pub(crate) async fn wait_end(
        &self,
        job: &str,
        events: &mut broadcast::Receiver<QmpEvent>,
    ) -> Result<Option<QmpEvent>, QemuError> {
        let deadline = tokio::time::Instant::now() + END_WAIT;
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(QemuError::Timeout { what: "block job end", after: END_WAIT });
                }
                _ = self.wait_exit() => return Err(QemuError::Exited),
                ev = events.recv() => match ev {
                    Ok(ev) if event_job(&ev) == Some(job)
                        && matches!(ev.name.as_str(), "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED") =>
                    {
                        return Ok(Some(ev));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(QemuError::Exited),
                },
                _ = tick.tick() => {
                    if self.job_info(job).await.is_none() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The job's entry in `query-block-jobs`, if it still exists.
    pub(crate) async fn job_info(&self, job: &str) -> Option<Value> {
        let jobs = self
            .qmp()
            .execute("query-block-jobs", json!({}))
            .await
            .ok()?;
        jobs.as_array()?
            .iter()
            .find(|j| j["device"].as_str() == Some(job))
            .cloned()
    }

    /// `blockdev-del`, logged when it fails.
    pub(crate) async fn delete_node(&self, node: &str) {
        if let Err(e) = self
            .qmp()
            .execute("blockdev-del", json!({"node-name": node}))
            .await
        {
            tracing::warn!(vm = %self.id(), node, error = %e, "blockdev-del");
        }
    }
}

/// The job an event is about (`data.device` of BLOCK_JOB_* events).
pub(crate) fn event_job(ev: &QmpEvent) -> Option<&str> {
    ev.name
        .starts_with("BLOCK_JOB_")
        .then(|| ev.data.get("device").and_then(Value::as_str))
        .flatten()
}

pub(crate) fn job_ended_error(ev: &QmpEvent) -> QemuError {
    let desc = ev
        .data
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("the job ended before it was ready")
        .to_string();
    QemuError::Migration {
        direction: "of a disk",
        status: ev.name.to_lowercase(),
        desc,
    }
}

/// The node name inserted in the device whose qdev id is `qdev`, from a
/// `query-block` answer.
fn node_of_device(blocks: &Value, qdev: &str) -> Option<String> {
    let suffix = format!("/{qdev}/virtio-backend");
    blocks.as_array()?.iter().find_map(|b| {
        let id = b["qdev"].as_str()?;
        (id == qdev || id.ends_with(&suffix) || id.ends_with(&format!("/{qdev}")))
            .then(|| b["inserted"]["node-name"].as_str().map(str::to_string))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_node_is_found_by_its_device() {
        let blocks = json!([
            {"device": "", "qdev": "/machine/peripheral/blk-disk1/virtio-backend",
             "inserted": {"node-name": "disk1"}},
            {"device": "", "qdev": "/machine/peripheral/blk-disk0/virtio-backend",
             "inserted": {"node-name": "disk0-m17"}},
        ]);
        assert_eq!(
            node_of_device(&blocks, "blk-disk0").as_deref(),
            Some("disk0-m17")
        );
        assert_eq!(node_of_device(&blocks, "blk-disk2"), None);
    }

    #[test]
    fn block_job_events_name_their_job() {
        let ev = QmpEvent {
            name: "BLOCK_JOB_READY".into(),
            data: json!({"device": "mirror-disk0", "len": 5, "offset": 5}),
            timestamp: 0,
        };
        assert_eq!(event_job(&ev), Some("mirror-disk0"));
        let other = QmpEvent {
            name: "STOP".into(),
            data: json!({"device": "x"}),
            timestamp: 0,
        };
        assert_eq!(event_job(&other), None);
    }
}
