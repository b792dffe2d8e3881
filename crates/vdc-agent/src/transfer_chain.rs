//! The snapshot chains of a VM whose files move between hosts
//! (`transfer`): besides its configured disk files, an export offers every
//! image of each disk's chain (the snapshots' frozen images and the active
//! overlays), the snapshots' memory state files and the tree
//! (`snapshots.json`), each under the name `snap.<file name>`. Images are
//! copied byte for byte, so the relative backing names written in their
//! headers (`vdc_qemu::snapshot`) stay right in the new directory.
//!
//! The destination places each `snap.` file in the VM's directory (a bare
//! file name only) and, before it knows the VM, checks every disk's chain
//! with `qemu-img info --backing-chain`: a chain that does not open there
//! (an image missing, a base outside the directory that the destination
//! datastore lacks) fails the copy, which removes what it made, so the
//! source, where the VM still is, stays the only copy.

use std::path::{Path, PathBuf};

use vdc_types::snapshot::{SnapshotTree, SNAPSHOT_TREE_FILE};
use vdc_types::{ApiError, ErrorCode};

use crate::error::host_error;

/// Prefix of the export names of chain files.
const PREFIX: &str = "snap.";

/// The chain files of a VM to export besides its configured disks: each
/// export name with its path on this host. `disks` are the VM's disks by
/// name with their configured paths; the images of a disk's chain live
/// next to its configured file, the state files and the tree in `vm_dir`.
/// Empty when the VM has no snapshots.
pub(crate) fn chain_files(
    disks: &[(String, PathBuf)],
    vm_dir: &Path,
    tree: &SnapshotTree,
) -> Vec<(String, PathBuf)> {
    if tree.active.is_empty() && tree.snapshots.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    let mut add = |file: &str, path: PathBuf| {
        let name = format!("{PREFIX}{file}");
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, path));
        }
    };
    for (disk, configured) in disks {
        let images = tree
            .snapshots
            .iter()
            .filter_map(|s| s.images.get(disk))
            .chain(tree.active.get(disk));
        for image in images {
            if configured.file_name().and_then(|f| f.to_str()) != Some(image.as_str()) {
                add(image, configured.with_file_name(image));
            }
        }
    }
    for state in tree.snapshots.iter().filter_map(|s| s.state_file.as_ref()) {
        add(state, vm_dir.join(state));
    }
    // Last: the tree names the files above.
    add(SNAPSHOT_TREE_FILE, vm_dir.join(SNAPSHOT_TREE_FILE));
    out
}

/// Where chain file `name` of an export goes in VM directory `vm_dir`
/// (`None`: not a chain file). A name that is not a bare file name is
/// refused.
pub(crate) fn chain_target(name: &str, vm_dir: &Path) -> Option<Result<PathBuf, ApiError>> {
    let file = name.strip_prefix(PREFIX)?;
    let bare = !file.is_empty()
        && !file.starts_with('.')
        && !file.contains('/')
        && !file.contains('\\')
        && file != "vm.json";
    Some(if bare {
        Ok(vm_dir.join(file))
    } else {
        Err(ApiError::invalid(format!(
            "file '{name}' of the export is not a plain file name of a snapshot chain"
        )))
    })
}

/// Checks that each of `images` (the active image of each disk) opens with
/// its whole backing chain on this host.
pub(crate) async fn verify_chains(images: &[PathBuf]) -> Result<(), ApiError> {
    for image in images {
        let out = tokio::process::Command::new("qemu-img")
            .args(["info", "-U", "--backing-chain", "--output=json"])
            .arg(image)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| host_error("cannot run qemu-img", &e))?;
        if !out.status.success() {
            return Err(ApiError::new(
                ErrorCode::HostError,
                format!(
                    "the copied snapshot chain of '{}' does not open on this host: {}",
                    image.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vdc_types::snapshot::{Consistency, Snapshot};

    use super::*;

    fn snap(name: &str, image: &str, state: Option<&str>) -> Snapshot {
        Snapshot {
            name: name.into(),
            description: String::new(),
            created_ms: 1,
            consistency: Consistency::Quiesced,
            quiesce_note: None,
            memory: state.is_some(),
            running: true,
            parent: None,
            images: BTreeMap::from([("disk0".to_string(), image.to_string())]),
            state_file: state.map(String::from),
            clones: Vec::new(),
        }
    }

    #[test]
    fn an_export_offers_every_image_state_file_and_the_tree_last() {
        let dir = Path::new("/ds/web");
        let disks = vec![("disk0".to_string(), dir.join("disk0.qcow2"))];
        let mut tree = SnapshotTree::new();
        assert!(chain_files(&disks, dir, &tree).is_empty());
        tree.snapshots = vec![
            snap("a", "disk0.qcow2", None),
            snap("b", "disk0.111.qcow2", Some("snap-1.state")),
        ];
        tree.active.insert("disk0".into(), "disk0.222.qcow2".into());
        let files = chain_files(&disks, dir, &tree);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "snap.disk0.111.qcow2",
                "snap.disk0.222.qcow2",
                "snap.snap-1.state",
                "snap.snapshots.json"
            ]
        );
        assert_eq!(files[1].1, dir.join("disk0.222.qcow2"));
    }

    #[test]
    fn a_chain_file_lands_in_the_vm_directory_by_its_bare_name() {
        let dir = Path::new("/ds/web");
        assert!(chain_target("disk.disk0", dir).is_none());
        assert_eq!(
            chain_target("snap.disk0.1.qcow2", dir)
                .expect("chain")
                .expect("bare"),
            dir.join("disk0.1.qcow2")
        );
        for bad in [
            "snap.../x",
            "snap.a/b",
            "snap.",
            "snap..hidden",
            "snap.vm.json",
        ] {
            assert!(chain_target(bad, dir).expect("chain").is_err(), "{bad}");
        }
    }
}
