//! Shipping a running VM's disk to a replica over NBD, at one instant.
//!
//! # Steps (QMP, QEMU 10)
//! 1. `blockdev-add` an `nbd` node on the replica's export (TCP);
//! 2. a `blockdev-backup` from the disk's node into it: `sync=full` for a
//!    first copy, in one `transaction` with the (re)creation of the
//!    replication's persistent dirty bitmap; `sync=bitmap` with
//!    `bitmap-mode=on-success` afterwards. The backup job is
//!    copy-before-write: the target receives the disk as it was when the
//!    job started, while the guest keeps writing; the bitmap is cleared of
//!    what was copied only if the job succeeds, so a failed cycle loses no
//!    change (the next one ships it again);
//! 3. the job is followed until it concludes (`auto-dismiss` off, so its
//!    error is read), then dismissed;
//! 4. `blockdev-del` of the nbd node (whatever happened).

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::QemuError;
use crate::vm::Vm;

/// How often the job is polled.
const POLL: Duration = Duration::from_millis(100);

/// Where and how to ship a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaTarget {
    /// NBD server address.
    pub host: String,
    /// NBD server port.
    pub port: u16,
    /// Export name.
    pub export: String,
}

fn target_node(disk: &str) -> String {
    format!("{disk}-replica")
}

fn job_id(disk: &str) -> String {
    format!("replicate-{disk}")
}

/// A failed QMP step named `what`.
fn failed(what: &'static str, desc: String) -> QemuError {
    QemuError::Qmp {
        command: what,
        source: vdc_qmp::QmpError::Command {
            class: "GenericError".into(),
            desc,
        },
    }
}

impl Vm {
    /// Whether disk `disk` has a dirty bitmap `name` QEMU trusts.
    pub async fn has_usable_bitmap(&self, disk: &str, name: &str) -> Result<bool, QemuError> {
        Ok(self
            .dirty_bitmaps(disk)
            .await?
            .iter()
            .any(|b| b.name == name && b.persistent && b.recording && !b.inconsistent))
    }

    /// Steps 1–4 of the module doc: ships disk `disk` into `target` (all of
    /// it with `full`, else what bitmap `bitmap` marks) and returns the
    /// bytes copied. `between` runs right after the instant is taken (the
    /// caller thaws the guest there).
    pub async fn replicate_disk(
        &self,
        disk: &str,
        bitmap: &str,
        full: bool,
        target: &ReplicaTarget,
        between: impl std::future::Future<Output = ()>,
    ) -> Result<u64, QemuError> {
        let source = self.disk_node(disk).await?;
        let node = target_node(disk);
        self.qmp()
            .execute(
                "blockdev-add",
                json!({"driver": "raw", "node-name": node,
                       "file": {"driver": "nbd", "export": target.export,
                                "server": {"type": "inet", "host": target.host,
                                           "port": target.port.to_string()}}}),
            )
            .await
            .map_err(QemuError::qmp("blockdev-add nbd"))?;
        let r = self
            .replicate_into(disk, &source, &node, bitmap, full, between)
            .await;
        if let Err(e) = self
            .qmp()
            .execute("blockdev-del", json!({"node-name": node}))
            .await
        {
            tracing::warn!(vm = %self.id(), disk, error = %e, "cannot remove the replica's NBD node");
        }
        r
    }

    async fn replicate_into(
        &self,
        disk: &str,
        source: &str,
        node: &str,
        bitmap: &str,
        full: bool,
        between: impl std::future::Future<Output = ()>,
    ) -> Result<u64, QemuError> {
        let job = job_id(disk);
        let mut backup = json!({"job-id": job, "device": source, "target": node,
                                "auto-finalize": true, "auto-dismiss": false});
        if full {
            if self
                .dirty_bitmaps(disk)
                .await?
                .iter()
                .any(|b| b.name == bitmap)
            {
                self.remove_dirty_bitmap(disk, bitmap).await;
            }
            backup["sync"] = json!("full");
            self.qmp()
                .execute(
                    "transaction",
                    json!({"actions": [
                        {"type": "block-dirty-bitmap-add",
                         "data": {"node": source, "name": bitmap, "persistent": true}},
                        {"type": "blockdev-backup", "data": backup}]}),
                )
                .await
                .map_err(QemuError::qmp("transaction"))?;
        } else {
            backup["sync"] = json!("bitmap");
            backup["bitmap"] = json!(bitmap);
            backup["bitmap-mode"] = json!("on-success");
            self.qmp()
                .execute("blockdev-backup", backup)
                .await
                .map_err(QemuError::qmp("blockdev-backup"))?;
        }
        between.await;
        let ended = self.wait_concluded(&job).await;
        if let Err(e) = self.qmp().execute("job-dismiss", json!({"id": job})).await {
            tracing::debug!(vm = %self.id(), error = %e, "job-dismiss");
        }
        ended
    }

    /// Polls job `job` until it concludes; its length, or its error.
    async fn wait_concluded(&self, job: &str) -> Result<u64, QemuError> {
        loop {
            let jobs = self
                .qmp()
                .execute("query-block-jobs", json!({}))
                .await
                .map_err(QemuError::qmp("query-block-jobs"))?;
            let Some(j) = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["device"] == job))
                .cloned()
            else {
                return Err(failed("blockdev-backup", format!("job {job} vanished")));
            };
            if j["status"] == "concluded" {
                if let Some(e) = j.get("error").and_then(Value::as_str) {
                    return Err(failed("blockdev-backup", e.to_string()));
                }
                return Ok(j["len"].as_u64().unwrap_or(0));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Cancels a running replicate job of disk `disk` (a cancelled agent
    /// job); the bitmap keeps every change.
    pub async fn cancel_replicate(&self, disk: &str) {
        if let Err(e) = self
            .qmp()
            .execute(
                "block-job-cancel",
                json!({"device": job_id(disk), "force": true}),
            )
            .await
        {
            tracing::debug!(vm = %self.id(), error = %e, "block-job-cancel");
        }
    }
}
