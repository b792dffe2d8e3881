//! A running VM's disks at one instant, exported read-only over NBD on a
//! unix socket for a backup to read while the guest keeps running
//! ("image fleecing").
//!
//! # Steps (QMP, QEMU 10)
//! 1. per disk, `blockdev-add` a fleecing node: a `qcow2` node on an empty
//!    temporary image (made by the caller) whose backing is the node the
//!    disk's device reads now;
//! 2. one `transaction` of a `blockdev-backup sync=none` per disk from the
//!    disk's node to its fleecing node: from this instant every guest write
//!    first copies the old data into the fleecing image (copy-before-write),
//!    so the fleecing node reads as the disk did at the instant, on every
//!    disk at the same instant; with dirty bitmaps (incremental backups)
//!    the same transaction disables the bitmap of the last backup and adds
//!    the next one;
//! 3. `nbd-server-start` on the unix socket and `block-export-add` of each
//!    fleecing node under the disk's name (with the frozen bitmap exported
//!    as `qemu:dirty-bitmap:NAME`);
//! 4. (the caller reads the exports)
//! 5. `block-export-del`, `nbd-server-stop`, `block-job-cancel` of the
//!    backup jobs, `blockdev-del` of the fleecing nodes; the caller removes
//!    the temporary images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::QemuError;
use crate::vm::Vm;

/// Longest wait for a fleecing node to be released after its job ended.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// One disk to fleece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleeceDisk {
    /// Disk name (spec node name, e.g. `disk0`); the export's name.
    pub disk: String,
    /// Empty qcow2 image of the disk's size for the copied-before-write data.
    pub image: PathBuf,
    /// Dirty bitmap to freeze at the instant and export (the last backup's).
    pub freeze_bitmap: Option<String>,
    /// Persistent dirty bitmap to start at the instant (for the next backup).
    pub new_bitmap: Option<String>,
}

/// A point-in-time view being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleece {
    disks: Vec<(FleeceDisk, String)>,
}

/// A dirty bitmap of a disk as QEMU lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// Name.
    pub name: String,
    /// Kept in the qcow2 across restarts.
    pub persistent: bool,
    /// Recording writes now.
    pub recording: bool,
    /// Not to be trusted (QEMU was killed before it saved it).
    pub inconsistent: bool,
}

fn fleece_node(disk: &str) -> String {
    format!("{disk}-fleece")
}

fn job_id(disk: &str) -> String {
    format!("fleece-{disk}")
}

fn export_id(disk: &str) -> String {
    format!("backup-{disk}")
}

impl Vm {
    /// The dirty bitmaps of disk `disk`'s current node.
    pub async fn dirty_bitmaps(&self, disk: &str) -> Result<Vec<DirtyBitmap>, QemuError> {
        let node = self.disk_node(disk).await?;
        let nodes = self
            .qmp()
            .execute("query-named-block-nodes", json!({"flat": true}))
            .await
            .map_err(QemuError::qmp("query-named-block-nodes"))?;
        let list = nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["node-name"] == node.as_str()))
            .and_then(|n| n["dirty-bitmaps"].as_array().cloned())
            .unwrap_or_default();
        Ok(list
            .iter()
            .map(|b| DirtyBitmap {
                name: b["name"].as_str().unwrap_or_default().to_string(),
                persistent: b["persistent"].as_bool().unwrap_or(false),
                recording: b["recording"].as_bool().unwrap_or(false),
                inconsistent: b["inconsistent"].as_bool().unwrap_or(false),
            })
            .collect())
    }

    /// Removes dirty bitmap `name` of disk `disk` (failures logged).
    pub async fn remove_dirty_bitmap(&self, disk: &str, name: &str) {
        let r = match self.disk_node(disk).await {
            Ok(node) => self
                .qmp()
                .execute(
                    "block-dirty-bitmap-remove",
                    json!({"node": node, "name": name}),
                )
                .await
                .map(drop)
                .map_err(QemuError::qmp("block-dirty-bitmap-remove")),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(vm = %self.id(), disk, bitmap = name, error = %e, "cannot remove a dirty bitmap");
        }
    }

    /// Puts the changes recorded by `from` back into `into` and records
    /// again with `into` (a backup that failed after the instant).
    pub async fn restore_dirty_bitmap(&self, disk: &str, into: &str, from: &str) {
        let Ok(node) = self.disk_node(disk).await else {
            return;
        };
        let steps = [
            (
                "block-dirty-bitmap-merge",
                json!({"node": node, "target": into, "bitmaps": [from]}),
            ),
            (
                "block-dirty-bitmap-enable",
                json!({"node": node, "name": into}),
            ),
            (
                "block-dirty-bitmap-remove",
                json!({"node": node, "name": from}),
            ),
        ];
        for (cmd, args) in steps {
            if let Err(e) = self.qmp().execute(cmd, args).await {
                tracing::warn!(vm = %self.id(), disk, error = %e, "{cmd} after a failed backup");
            }
        }
    }

    /// Steps 1–3 of the module doc: serves every disk of `disks` as it is
    /// now on the unix socket `socket`.
    pub async fn fleece_start(
        &self,
        disks: &[FleeceDisk],
        socket: &Path,
    ) -> Result<Fleece, QemuError> {
        let mut f = Fleece { disks: Vec::new() };
        let r = self.fleece_setup(disks, socket, &mut f).await;
        if let Err(e) = r {
            self.fleece_end(&f, false).await;
            return Err(e);
        }
        Ok(f)
    }

    async fn fleece_setup(
        &self,
        disks: &[FleeceDisk],
        socket: &Path,
        f: &mut Fleece,
    ) -> Result<(), QemuError> {
        let mut actions = Vec::new();
        for d in disks {
            let source = self.disk_node(&d.disk).await?;
            let node = fleece_node(&d.disk);
            self.qmp()
                .execute(
                    "blockdev-add",
                    json!({"driver": "qcow2", "node-name": node, "backing": source,
                           "file": {"driver": "file", "filename": d.image}}),
                )
                .await
                .map_err(QemuError::qmp("blockdev-add fleece"))?;
            f.disks.push((d.clone(), source.clone()));
            if let Some(b) = &d.freeze_bitmap {
                actions.push(json!({"type": "block-dirty-bitmap-disable",
                                    "data": {"node": source, "name": b}}));
            }
            if let Some(b) = &d.new_bitmap {
                actions.push(json!({"type": "block-dirty-bitmap-add",
                                    "data": {"node": source, "name": b, "persistent": true}}));
            }
            actions.push(json!({"type": "blockdev-backup",
                "data": {"job-id": job_id(&d.disk), "device": source, "target": node,
                         "sync": "none", "auto-finalize": true, "auto-dismiss": true}}));
        }
        self.qmp()
            .execute("transaction", json!({"actions": actions}))
            .await
            .map_err(QemuError::qmp("transaction"))?;
        self.qmp()
            .execute(
                "nbd-server-start",
                json!({"addr": {"type": "unix", "data": {"path": socket}}}),
            )
            .await
            .map_err(QemuError::qmp("nbd-server-start"))?;
        for (d, _) in &f.disks {
            let mut args = json!({"type": "nbd", "id": export_id(&d.disk),
                "node-name": fleece_node(&d.disk), "name": d.disk, "writable": false});
            if let Some(b) = &d.freeze_bitmap {
                args["bitmaps"] = json!([b]);
            }
            self.qmp()
                .execute("block-export-add", args)
                .await
                .map_err(QemuError::qmp("block-export-add"))?;
        }
        Ok(())
    }

    /// Step 5: ends the exports, jobs and fleecing nodes (failures logged;
    /// what is already gone is no failure). With `failed`, the bitmaps go
    /// back to what they were before the instant (no change is lost).
    pub async fn fleece_end(&self, f: &Fleece, failed: bool) {
        for (d, _) in &f.disks {
            if let Err(e) = self
                .qmp()
                .execute(
                    "block-export-del",
                    json!({"id": export_id(&d.disk), "mode": "hard"}),
                )
                .await
            {
                tracing::debug!(vm = %self.id(), disk = %d.disk, error = %e, "block-export-del");
            }
        }
        if let Err(e) = self.qmp().execute("nbd-server-stop", json!({})).await {
            tracing::debug!(vm = %self.id(), error = %e, "nbd-server-stop");
        }
        for (d, _) in &f.disks {
            if let Err(e) = self
                .qmp()
                .execute(
                    "block-job-cancel",
                    json!({"device": job_id(&d.disk), "force": true}),
                )
                .await
            {
                tracing::debug!(vm = %self.id(), disk = %d.disk, error = %e, "block-job-cancel");
            }
        }
        for (d, _) in &f.disks {
            self.release_node(&fleece_node(&d.disk)).await;
            if failed {
                match (&d.freeze_bitmap, &d.new_bitmap) {
                    (Some(old), Some(new)) => self.restore_dirty_bitmap(&d.disk, old, new).await,
                    (None, Some(new)) => self.remove_dirty_bitmap(&d.disk, new).await,
                    _ => {}
                }
            }
        }
    }

    /// `blockdev-del`, retried while the cancelled job still holds the node.
    async fn release_node(&self, node: &str) {
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        loop {
            match self
                .qmp()
                .execute("blockdev-del", json!({"node-name": node}))
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    let gone = matches!(&e, vdc_qmp::QmpError::Command { desc, .. } if desc.contains("Failed to find node"));
                    if gone {
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(vm = %self.id(), node, error = %e, "cannot delete the fleecing node");
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a `query-block-jobs` answer still lists job `id`.
pub fn has_job(jobs: &Value, id: &str) -> bool {
    jobs.as_array()
        .is_some_and(|a| a.iter().any(|j| j["device"] == id))
}
