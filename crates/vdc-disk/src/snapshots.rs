//! A VM's snapshot tree on its datastore: `snapshots.json` in the VM's
//! directory ([`vdc_types::snapshot::SnapshotTree`], versioned), written
//! to a temporary file, synced, renamed over the old one and the directory
//! synced, so a crash leaves the old tree or the new one. Kept with the VM's
//! files so it survives agent restarts and follows the VM to any host that
//! mounts the datastore.

use std::io::Write;
use std::path::{Path, PathBuf};

use vdc_types::snapshot::{SnapshotTree, SNAPSHOT_TREE_FILE, SNAPSHOT_TREE_VERSION};

use crate::DiskError;

/// Path of the tree in VM directory `dir`.
pub fn tree_path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_TREE_FILE)
}

/// Reads the tree of VM directory `dir`; an empty tree when there is none.
/// A newer version is refused.
pub fn read_tree(dir: &Path) -> Result<SnapshotTree, DiskError> {
    let path = tree_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SnapshotTree::new()),
        Err(e) => return Err(DiskError::io("read", &path, e)),
    };
    let tree: SnapshotTree = serde_json::from_slice(&bytes).map_err(|source| DiskError::Parse {
        path: path.clone(),
        source,
    })?;
    if tree.version > SNAPSHOT_TREE_VERSION {
        return Err(DiskError::UnsupportedVersion {
            path,
            found: tree.version,
            supported: SNAPSHOT_TREE_VERSION,
        });
    }
    Ok(tree)
}

/// Writes `tree` as the tree of VM directory `dir`, atomically and durably.
pub fn write_tree(dir: &Path, tree: &SnapshotTree) -> Result<(), DiskError> {
    let path = tree_path(dir);
    let tmp = dir.join(format!(
        ".{SNAPSHOT_TREE_FILE}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let mut tree = tree.clone();
    tree.version = SNAPSHOT_TREE_VERSION;
    let body = serde_json::to_vec_pretty(&tree).map_err(|source| DiskError::Parse {
        path: path.clone(),
        source,
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    if let Err(e) = write().and_then(|()| std::fs::rename(&tmp, &path)) {
        if let Err(re) = std::fs::remove_file(&tmp) {
            tracing::debug!(path = %tmp.display(), error = %re, "no temporary tree to remove");
        }
        return Err(DiskError::io("write", &path, e));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DiskError::io("sync", dir, e))
}

/// Whether `name` is a file the snapshot code leaves in a VM directory
/// (the tree, its temporary files, overlays and state files it names).
pub fn owns(tree: &SnapshotTree, name: &str) -> bool {
    name == SNAPSHOT_TREE_FILE
        || (name.starts_with(&format!(".{SNAPSHOT_TREE_FILE}.")) && name.ends_with(".tmp"))
        || tree.files().iter().any(|f| f == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_empty_written_reads_back_newer_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_tree(dir.path()).unwrap(), SnapshotTree::new());
        let mut t = SnapshotTree::new();
        t.current = Some("s1".into());
        t.active.insert("disk0".into(), "disk0.a.qcow2".into());
        write_tree(dir.path(), &t).unwrap();
        assert_eq!(read_tree(dir.path()).unwrap(), t);
        assert!(owns(&t, "disk0.a.qcow2") && owns(&t, SNAPSHOT_TREE_FILE));
        assert!(!owns(&t, "other.qcow2"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        t.version = SNAPSHOT_TREE_VERSION + 1;
        std::fs::write(tree_path(dir.path()), serde_json::to_vec(&t).unwrap()).unwrap();
        assert!(matches!(
            read_tree(dir.path()),
            Err(DiskError::UnsupportedVersion { .. })
        ));
    }
}
