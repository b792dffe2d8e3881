//! Storage migration of a running VM's disk that is a chain of snapshot
//! overlays (`storage`): the read-only layers are copied first, then only
//! the active layer is mirrored.
//!
//! # Steps, per disk
//! 1. plan from the tree ([`plan`]): every frozen image the tree names for
//!    the disk (all branches, so each snapshot can still be reverted to),
//!    the active image, the name its header gives its backing file, and
//!    the images QEMU has open, top first;
//! 2. copy each frozen image byte for byte into the disk's new directory
//!    (their relative backing names stay right), fsync each, then the
//!    directory; check the copied chain opens (`qemu-img info
//!    --backing-chain`);
//! 3. a new overlay with the active image's name, whose header names the
//!    same backing file: `Vm::mirror_top` (`sync=top`) fills it from the
//!    active layer while the guest writes, switches the disk to it and
//!    closes the old chain's nodes;
//! 4. the caller records the disk's new place; the old chain's files are
//!    removed ([`remove_old`]).
//!
//! A failure before the switch removes everything made in the new
//! directory: the VM runs on where it was.

use std::path::{Path, PathBuf};

use vdc_types::snapshot::SnapshotTree;
use vdc_types::ApiError;

use crate::error::host_error;

/// What a chain-carrying mirror of one disk does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainPlan {
    /// File names of the frozen images the tree names for the disk.
    pub frozen: Vec<String>,
    /// File name of the active image.
    pub active: String,
}

/// The plan for disk `disk` from `tree`; `None` when the disk has no
/// snapshot chain (a plain mirror).
pub(crate) fn plan(tree: &SnapshotTree, disk: &str) -> Option<ChainPlan> {
    let active = tree.active.get(disk)?.clone();
    let mut frozen: Vec<String> = tree
        .snapshots
        .iter()
        .filter_map(|s| s.images.get(disk).cloned())
        .filter(|f| *f != active)
        .collect();
    frozen.sort();
    frozen.dedup();
    Some(ChainPlan { frozen, active })
}

/// Copies `files` from `from` into `to` (each synced, then `to`); the
/// paths made, also on failure (for the caller to remove).
pub(crate) async fn copy_frozen(
    from: &Path,
    to: &Path,
    files: &[String],
) -> (Vec<PathBuf>, Result<(), ApiError>) {
    let (from, to, files) = (from.to_path_buf(), to.to_path_buf(), files.to_vec());
    let joined = tokio::task::spawn_blocking(move || {
        let mut made = Vec::new();
        let copy = |f: &String, made: &mut Vec<PathBuf>| -> std::io::Result<()> {
            let dest = to.join(f);
            made.push(dest.clone());
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dest)?;
            let mut src = std::fs::File::open(from.join(f))?;
            std::io::copy(&mut src, &mut out)?;
            out.sync_all()
        };
        for f in &files {
            if let Err(e) = copy(f, &mut made) {
                return (made, Err(host_error(format!("cannot copy image {f}"), &e)));
            }
        }
        let synced = std::fs::File::open(&to).and_then(|d| d.sync_all());
        (
            made,
            synced.map_err(|e| host_error("cannot sync the new directory", &e)),
        )
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => (
            Vec::new(),
            Err(ApiError::internal(format!("image copy: {e}"))),
        ),
    }
}

/// The images of the chain under `active` that QEMU opened from `dir`,
/// top first (read from the images' headers).
pub(crate) async fn open_chain(active: &Path, dir: &Path) -> Result<Vec<PathBuf>, ApiError> {
    let mut chain = vec![active.to_path_buf()];
    let mut current = active.to_path_buf();
    for _ in 0..=vdc_types::snapshot::MAX_CHAIN_LENGTH {
        match crate::snapshot::backing_of(&current).await? {
            Some((path, _)) if path.parent() == Some(dir) => {
                chain.push(path.clone());
                current = path;
            }
            _ => break,
        }
    }
    Ok(chain)
}

/// Steps 2 and 3 of the module doc for disk `disk` of running `vm`: its
/// chain `plan` moves from `old_dir` to `new_dir`; `size` is the disk's
/// virtual size. On failure the files made in `new_dir` are removed and
/// the VM runs on its old chain; `Err(None)`: cancelled.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn mirror_chain(
    vm: &vdc_qemu::Vm,
    disk: &str,
    (old_dir, new_dir): (&Path, &Path),
    plan: &ChainPlan,
    size: u64,
    cache: vdc_types::DiskCacheMode,
    progress: impl Fn(vdc_qemu::MirrorProgress) + Sync,
    cancelled: impl std::future::Future<Output = ()>,
) -> Result<(), Option<ApiError>> {
    let old_active = old_dir.join(&plan.active);
    let new_active = new_dir.join(&plan.active);
    let (mut made, copied) = copy_frozen(old_dir, new_dir, &plan.frozen).await;
    let result = async {
        copied?;
        let backing = crate::snapshot::backing_of(&old_active)
            .await?
            .map(|(_, name)| name)
            .ok_or_else(|| {
                ApiError::invalid_state(format!(
                    "the active image of disk '{disk}' has no backing file, but the tree names snapshots"
                ))
            })?;
        let below: Vec<PathBuf> = vec![new_dir.join(&backing)];
        crate::transfer_chain::verify_chains(&below).await?;
        made.push(new_active.clone());
        vdc_qemu::snapshot::create_overlay_named(&new_active, &backing, size)
            .await
            .map_err(|e| host_error("cannot create the new active image", &e))?;
        let mut old_nodes = Vec::new();
        for image in open_chain(&old_active, old_dir).await? {
            match vdc_qemu::snapshot::node_of_file(vm.qmp(), &image).await {
                Ok(Some(node)) => old_nodes.push(node),
                Ok(None) => {}
                Err(e) => return Err(host_error("cannot read the VM's disks", &e)),
            }
        }
        Ok(old_nodes)
    }
    .await;
    let mirrored = match result {
        Ok(old_nodes) => vm
            .mirror_top(disk, &new_active, cache, &old_nodes, progress, cancelled)
            .await
            .map_err(|e| match e {
                vdc_qemu::MirrorError::Cancelled => None,
                e => Some(host_error("storage migration failed", &e)),
            }),
        Err(e) => Err(Some(e)),
    };
    if mirrored.is_err() {
        for p in &made {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove an image of a failed mirror");
                }
            }
        }
    }
    mirrored
}

/// Removes the old chain's files in `dir` (each failure logged).
pub(crate) fn remove_old(dir: &Path, plan: &ChainPlan) {
    for f in plan.frozen.iter().chain([&plan.active]) {
        let p = dir.join(f);
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove an image of the old chain");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vdc_types::snapshot::{Consistency, Snapshot};

    use super::*;

    fn snap(name: &str, images: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            name: name.into(),
            description: String::new(),
            created_ms: 1,
            consistency: Consistency::Quiesced,
            quiesce_note: None,
            memory: false,
            running: true,
            parent: None,
            images: images
                .iter()
                .map(|(d, f)| (d.to_string(), f.to_string()))
                .collect::<BTreeMap<_, _>>(),
            state_file: None,
            clones: Vec::new(),
        }
    }

    #[test]
    fn a_plan_names_every_frozen_image_of_the_disk_on_every_branch() {
        let mut tree = SnapshotTree::new();
        assert_eq!(plan(&tree, "disk0"), None);
        tree.snapshots = vec![
            snap("s1", &[("disk0", "disk0.qcow2"), ("disk1", "disk1.qcow2")]),
            snap("s3", &[("disk0", "disk0.b.qcow2")]),
        ];
        tree.active.insert("disk0".into(), "disk0.c.qcow2".into());
        assert_eq!(
            plan(&tree, "disk0"),
            Some(ChainPlan {
                frozen: vec!["disk0.b.qcow2".into(), "disk0.qcow2".into()],
                active: "disk0.c.qcow2".into()
            })
        );
        assert_eq!(plan(&tree, "disk2"), None);
    }
}
