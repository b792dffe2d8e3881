//! Snapshot primitives: external qcow2 overlays taken, merged and reverted
//! on a running QEMU (QMP) or on files at rest (`qemu-img`), and the memory
//! state saved to and loaded from a file.
//!
//! A disk is a chain of qcow2 files in the VM's directory, each one's
//! backing file named *relative* to it (the bare file name: the chain
//! stays valid wherever the datastore is mounted). The top of the chain is
//! the *active* image the guest writes; every other file is frozen.
//!
//! Taking a disk snapshot of a running VM ([`snapshot_live`]):
//! 1. `qemu-img create -f qcow2 -F qcow2 -b TOP-NAME -u NEW SIZE` (the
//!    backing named relatively; `-u` because TOP is open and locked);
//! 2. QMP `blockdev-add` of NEW (a `file` node inside a `qcow2` node,
//!    `backing: null`, the disk's cache mode);
//! 3. QMP `blockdev-snapshot node=TOP overlay=NEW`: the guest now writes
//!    NEW; TOP is frozen. Atomic for the guest: no write is lost or split.
//!
//! Merging a frozen image out of a running chain ([`stream_into`]):
//! `block-stream` of the child with `base-node` = the image's own backing
//! (copies the image's data into the child while the guest runs, writes
//! the relative `backing-file` into the child's header), then
//! `blockdev-del` of the merged node. At rest: `qemu-img rebase -b`
//! ([`rebase_at_rest`], safe mode: copies what differs).
//!
//! Memory ([`save_memory`], [`load_memory`]): `migrate` to a `file:` URI
//! while the vCPUs are stopped, and `migrate-incoming` from it into a QEMU
//! started with `-incoming defer`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast;
use vdc_qmp::{Qmp, QmpEvent};

/// How long a memory save or load may take before it is abandoned.
const MEMORY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a block job (stream) may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// What went wrong with a snapshot primitive.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// `qemu-img` could not be run.
    #[error("cannot run qemu-img")]
    Spawn(#[source] std::io::Error),
    /// `qemu-img` failed.
    #[error("qemu-img {operation} of {path} failed: {stderr}")]
    QemuImg {
        /// Sub-command.
        operation: &'static str,
        /// Image.
        path: PathBuf,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A QMP command failed.
    #[error("QMP {command} failed")]
    Qmp {
        /// The command.
        command: &'static str,
        /// Cause.
        #[source]
        source: vdc_qmp::QmpError,
    },
    /// The disk has no block device in this QEMU.
    #[error("disk {0} is not attached to the VM")]
    NoDisk(String),
    /// A block job or migration ended with an error.
    #[error("{what} failed: {reason}")]
    Failed {
        /// What ran.
        what: &'static str,
        /// QEMU's error text.
        reason: String,
    },
    /// A block job or migration took too long.
    #[error("{0} did not finish in time")]
    Timeout(&'static str),
}

fn qmp_err(command: &'static str) -> impl FnOnce(vdc_qmp::QmpError) -> SnapshotError {
    move |source| SnapshotError::Qmp { command, source }
}

/// The bare file name of `path`, as written into a child's header.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

async fn qemu_img(
    operation: &'static str,
    path: &Path,
    args: &[&str],
) -> Result<(), SnapshotError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(SnapshotError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SnapshotError::QemuImg {
            operation,
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Creates qcow2 `overlay` of `size_bytes` on `backing` (a file in the
/// same directory, recorded by its bare name). Does not open the backing
/// file (it may be open in a running QEMU).
pub async fn create_overlay(
    overlay: &Path,
    backing: &Path,
    size_bytes: u64,
) -> Result<(), SnapshotError> {
    create_overlay_named(overlay, &file_name(backing), size_bytes).await
}

/// Creates qcow2 `overlay` of `size_bytes` whose header names `backing`
/// as written (a relative name is resolved from the overlay's directory,
/// e.g. `../web-1/disk0.qcow2`). Does not open the backing file.
pub async fn create_overlay_named(
    overlay: &Path,
    backing: &str,
    size_bytes: u64,
) -> Result<(), SnapshotError> {
    let o = overlay.to_string_lossy().into_owned();
    let size = size_bytes.to_string();
    qemu_img(
        "create",
        overlay,
        &[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b", backing, &o, &size,
        ],
    )
    .await
}

/// `qemu-img rebase` of `child` (at rest) onto backing file `backing` (as
/// written in the header: a bare name is in `child`'s directory; `None`:
/// no backing file, the child becomes standalone). Safe mode: every
/// cluster that differs is copied into `child` first.
pub async fn rebase_at_rest(child: &Path, backing: Option<&str>) -> Result<(), SnapshotError> {
    let c = child.to_string_lossy().into_owned();
    let b = backing.unwrap_or_default().to_string();
    // qemu-img resolves a relative backing name against the child's dir.
    qemu_img(
        "rebase",
        child,
        &["rebase", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &b, &c],
    )
    .await
}

/// The node name of the image the guest writes on disk `disk` (the device
/// `blk-DISK` of [`crate::spec::command_line`]).
pub async fn active_node(qmp: &Qmp, disk: &str) -> Result<String, SnapshotError> {
    let blocks = qmp
        .execute("query-block", Value::Null)
        .await
        .map_err(qmp_err("query-block"))?;
    let want = format!("/blk-{disk}/");
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["qdev"].as_str().is_some_and(|q| q.contains(&want)))
        .and_then(|b| b["inserted"]["node-name"].as_str())
        .map(str::to_string)
        .ok_or_else(|| SnapshotError::NoDisk(disk.to_string()))
}

/// The image file named by a node's `file` field: a plain path, or the
/// `file.filename` of a `json:{...}` name (QEMU writes one for a node
/// opened with options the image header does not say, such as an overlay
/// added with `backing: null`).
pub fn plain_filename(name: &str) -> Option<PathBuf> {
    match name.strip_prefix("json:") {
        None => Some(PathBuf::from(name)),
        Some(j) => {
            let v: Value = serde_json::from_str(j).ok()?;
            v["file"]["filename"]
                .as_str()
                .or_else(|| v["file.filename"].as_str())
                .map(PathBuf::from)
        }
    }
}

async fn qcow2_nodes(qmp: &Qmp) -> Result<Vec<(String, PathBuf)>, SnapshotError> {
    let nodes = qmp
        .execute("query-named-block-nodes", json!({"flat": true}))
        .await
        .map_err(qmp_err("query-named-block-nodes"))?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["drv"] == "qcow2")
        .filter_map(|n| {
            let name = n["node-name"].as_str()?.to_string();
            let file = plain_filename(n["file"].as_str()?)?;
            Some((name, file))
        })
        .collect())
}

/// The file the qcow2 node `node` of a running QEMU has open.
pub async fn file_of_node(qmp: &Qmp, node: &str) -> Result<Option<PathBuf>, SnapshotError> {
    Ok(qcow2_nodes(qmp)
        .await?
        .into_iter()
        .find(|(n, _)| n == node)
        .map(|(_, f)| f))
}

/// The qcow2 node of the running QEMU that has `path` open, if any.
pub async fn node_of_file(qmp: &Qmp, path: &Path) -> Result<Option<String>, SnapshotError> {
    Ok(qcow2_nodes(qmp)
        .await?
        .into_iter()
        .find(|(_, f)| f == path)
        .map(|(n, _)| n))
}

/// Takes a disk snapshot of disk `disk` of a running (or paused) QEMU:
/// `overlay` (created here on the current active image `top`) becomes the
/// active image, under node name `node`. `direct`: the disk's cache mode.
pub async fn snapshot_live(
    qmp: &Qmp,
    disk: &str,
    top: &Path,
    overlay: &Path,
    node: &str,
    size_bytes: u64,
    direct: bool,
) -> Result<(), SnapshotError> {
    let current = active_node(qmp, disk).await?;
    create_overlay(overlay, top, size_bytes).await?;
    let cache = json!({"direct": direct, "no-flush": false});
    let added = qmp
        .execute(
            "blockdev-add",
            json!({
                "driver": "qcow2",
                "node-name": node,
                "cache": cache,
                "discard": "unmap",
                "backing": null,
                "file": {
                    "driver": "file",
                    "filename": overlay.to_string_lossy(),
                    "cache": cache,
                    "discard": "unmap",
                },
            }),
        )
        .await
        .map_err(qmp_err("blockdev-add"));
    if let Err(e) = added {
        remove_quietly(overlay);
        return Err(e);
    }
    if let Err(e) = qmp
        .execute(
            "blockdev-snapshot",
            json!({"node": current, "overlay": node}),
        )
        .await
        .map_err(qmp_err("blockdev-snapshot"))
    {
        if let Err(d) = qmp
            .execute("blockdev-del", json!({"node-name": node}))
            .await
        {
            tracing::warn!(node, error = %d, "could not remove the unused overlay node");
        }
        remove_quietly(overlay);
        return Err(e);
    }
    Ok(())
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a snapshot file");
    }
}

/// Merges frozen image `image` into its child `child` in a running QEMU
/// (`block-stream`), so `child`'s backing becomes `base` (`image`'s own
/// backing file, with the backing name to write into `child`'s header,
/// `None` when `image` has no backing); the guest keeps running. Then
/// removes `image`'s node from QEMU (the caller removes the file).
pub async fn stream_into(
    qmp: &Qmp,
    child: &Path,
    image: &Path,
    base: Option<(&Path, &str)>,
    job_id: &str,
) -> Result<(), SnapshotError> {
    let child_node = node_of_file(qmp, child)
        .await?
        .ok_or_else(|| SnapshotError::NoDisk(child.display().to_string()))?;
    let image_node = node_of_file(qmp, image).await?;
    let mut args = json!({"job-id": job_id, "device": child_node});
    if let Some((b, name)) = base {
        let base_node = node_of_file(qmp, b)
            .await?
            .ok_or_else(|| SnapshotError::NoDisk(b.display().to_string()))?;
        args["base-node"] = json!(base_node);
        args["backing-file"] = json!(name);
    }
    let mut events = qmp.subscribe();
    qmp.execute("block-stream", args)
        .await
        .map_err(qmp_err("block-stream"))?;
    wait_job(&mut events, job_id, "block-stream").await?;
    if let Some(node) = image_node {
        // Only a node added by -blockdev/blockdev-add outlives the stream;
        // its file node (named NODE-file when given on the command line)
        // goes with it.
        if qmp
            .execute("blockdev-del", json!({"node-name": node}))
            .await
            .is_ok()
        {
            let file_node = format!("{node}-file");
            if let Err(e) = qmp
                .execute("blockdev-del", json!({"node-name": file_node}))
                .await
            {
                tracing::debug!(node = %file_node, error = %e, "no separate file node to remove");
            }
        }
    }
    Ok(())
}

async fn wait_job(
    events: &mut broadcast::Receiver<QmpEvent>,
    job_id: &str,
    what: &'static str,
) -> Result<(), SnapshotError> {
    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    loop {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return Err(SnapshotError::Timeout(what)),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) => {
                return Err(SnapshotError::Failed {
                    what,
                    reason: "QMP connection closed".into(),
                })
            }
            Ok(Ok(ev)) => ev,
        };
        if ev.data["device"].as_str() != Some(job_id) {
            continue;
        }
        match ev.name.as_str() {
            "BLOCK_JOB_COMPLETED" => {
                return match ev.data["error"].as_str() {
                    Some(e) => Err(SnapshotError::Failed {
                        what,
                        reason: e.to_string(),
                    }),
                    None => Ok(()),
                }
            }
            "BLOCK_JOB_ERROR" | "BLOCK_JOB_CANCELLED" => {
                return Err(SnapshotError::Failed {
                    what,
                    reason: ev.data.to_string(),
                })
            }
            _ => {}
        }
    }
}

/// Saves the memory and device state of a QEMU whose vCPUs the caller
/// stopped to `state` (`migrate` to a file), and syncs the file. The vCPUs
/// stay stopped; the block devices stay active (the caller resumes with
/// `cont`).
pub async fn save_memory(qmp: &Qmp, state: &Path) -> Result<(), SnapshotError> {
    qmp.migrate_set_capabilities(&[("events", true)])
        .await
        .map_err(qmp_err("migrate-set-capabilities"))?;
    let mut events = qmp.subscribe();
    qmp.migrate(&format!("file:{}", state.display()))
        .await
        .map_err(qmp_err("migrate"))?;
    wait_migration(qmp, &mut events, "memory save").await?;
    let path = state.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&path).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| SnapshotError::Spawn(std::io::Error::other(e)))?
        .map_err(SnapshotError::Spawn)?;
    Ok(())
}

/// Loads `state` (kept) into a QEMU started with `-incoming defer` and
/// runs the guest.
pub async fn load_memory(qmp: &Qmp, state: &Path) -> Result<(), SnapshotError> {
    qmp.migrate_set_capabilities(&[("events", true)])
        .await
        .map_err(qmp_err("migrate-set-capabilities"))?;
    let mut events = qmp.subscribe();
    qmp.migrate_incoming(&format!("file:{}", state.display()))
        .await
        .map_err(qmp_err("migrate-incoming"))?;
    wait_migration(qmp, &mut events, "memory load").await?;
    let st = qmp.query_status().await.map_err(qmp_err("query-status"))?;
    if !st.running {
        qmp.cont().await.map_err(qmp_err("cont"))?;
    }
    Ok(())
}

async fn wait_migration(
    qmp: &Qmp,
    events: &mut broadcast::Receiver<QmpEvent>,
    what: &'static str,
) -> Result<(), SnapshotError> {
    let deadline = tokio::time::Instant::now() + MEMORY_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(SnapshotError::Timeout(what)),
            ev = events.recv() => {
                if let Ok(ev) = ev {
                    if ev.name != "MIGRATION" {
                        continue;
                    }
                }
            }
            _ = tick.tick() => {}
        }
        let info = qmp
            .query_migrate()
            .await
            .map_err(qmp_err("query-migrate"))?;
        match info.status.as_deref() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(SnapshotError::Failed {
                    what,
                    reason: info.error_desc.unwrap_or_else(|| "migration failed".into()),
                })
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_plain_and_json() {
        assert_eq!(
            plain_filename("/ds/web/disk0.qcow2"),
            Some(PathBuf::from("/ds/web/disk0.qcow2"))
        );
        let j = r#"json:{"backing": null, "driver": "qcow2", "file": {"driver": "file", "filename": "/ds/web/disk0.ab.qcow2"}}"#;
        assert_eq!(
            plain_filename(j),
            Some(PathBuf::from("/ds/web/disk0.ab.qcow2"))
        );
        assert_eq!(plain_filename("json:{not json"), None);
    }
}
