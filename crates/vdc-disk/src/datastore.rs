//! Datastores: named directories that hold VM directories and templates.
//!
//! Every disk path in the API is relative to a datastore. [`Datastore::resolve`]
//! turns such a path into a file name on this host and refuses anything that
//! would land outside the datastore: absolute paths, `..` components, and
//! symbolic links inside the datastore that point out of it. This is what
//! backs the API rule "a disk path outside a datastore is refused".
//!
//! [`Datastore::probe_cache`] finds, once, whether the file system takes
//! direct I/O (`O_DIRECT`): disks there then run with `cache=none`, else
//! with `writeback`, and the reason is kept for the report.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use vdc_types::DiskCacheMode;

use crate::DiskError;

/// Name prefix of the file the direct I/O probe writes (then removes).
const PROBE_PREFIX: &str = ".vdc-direct-io-probe";
/// Size and alignment of the probe's write: a multiple of every logical
/// block size in use.
const PROBE_BLOCK: usize = 4096;

/// A datastore as this host mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datastore {
    /// Name, unique in the cluster.
    pub name: String,
    /// Root directory on this host.
    pub path: PathBuf,
    /// Mounted by every host (true) or only by this one.
    pub shared: bool,
    /// Cache mode of disks here ([`Datastore::probe_cache`]; `writeback`
    /// until probed).
    pub cache: DiskCacheMode,
    /// Why direct I/O is not used, when it is not.
    pub cache_reason: Option<String>,
}

/// Size and free space of a datastore's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Size of the file system in bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged writers.
    pub free_bytes: u64,
}

impl Datastore {
    /// A datastore named `name` rooted at `path`.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, shared: bool) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            shared,
            cache: DiskCacheMode::Writeback,
            cache_reason: Some("direct I/O not probed yet".into()),
        }
    }

    /// Probes whether the datastore's file system takes direct I/O (writes
    /// and removes a small file opened with `O_DIRECT`) and sets
    /// [`Datastore::cache`] accordingly: `none` if it does, `writeback`
    /// with the reason if not.
    pub fn probe_cache(&mut self) {
        let (cache, reason) = cache_choice(probe_direct_io(&self.path));
        self.cache = cache;
        self.cache_reason = reason;
    }

    /// Size and free space of the file system holding the datastore (statvfs).
    pub fn capacity(&self) -> Result<Capacity, DiskError> {
        let st = nix::sys::statvfs::statvfs(&self.path).map_err(|source| DiskError::Statvfs {
            path: self.path.clone(),
            source,
        })?;
        let frag = st.fragment_size() as u64;
        Ok(Capacity {
            total_bytes: (st.blocks() as u64).saturating_mul(frag),
            free_bytes: (st.blocks_available() as u64).saturating_mul(frag),
        })
    }

    /// Turns `rel_path` (relative to the datastore root) into a path on this
    /// host, refusing absolute paths, `..`, empty paths and anything that a
    /// symbolic link would carry outside the root.
    pub fn resolve(&self, rel_path: &str) -> Result<PathBuf, DiskError> {
        let refuse = |reason| DiskError::PathOutsideDatastore {
            datastore: self.name.clone(),
            path: rel_path.to_string(),
            reason,
        };
        check_relative(rel_path).map_err(refuse)?;
        let full = self.path.join(rel_path);
        // Follow symbolic links as far as the path exists and check the real
        // location is still under the (real) root.
        let root = std::fs::canonicalize(&self.path)
            .map_err(|e| DiskError::io("open datastore", &self.path, e))?;
        let mut existing = full.as_path();
        let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
        let real = loop {
            match std::fs::canonicalize(existing) {
                Ok(p) => break p,
                Err(_) => match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        rest.push(name);
                        existing = parent;
                    }
                    _ => return Err(refuse("its parent directory cannot be resolved")),
                },
            }
        };
        if !real.starts_with(&root) {
            return Err(refuse("a symbolic link leads outside the datastore"));
        }
        Ok(rest.iter().rev().fold(real, |p, name| p.join(name)))
    }
}

/// The cache mode that follows from a direct I/O probe, and the reason
/// when direct I/O cannot be used.
pub fn cache_choice(probe: Result<(), String>) -> (DiskCacheMode, Option<String>) {
    match probe {
        Ok(()) => (DiskCacheMode::None, None),
        Err(reason) => (DiskCacheMode::Writeback, Some(reason)),
    }
}

/// Writes one aligned block with `O_DIRECT` in `dir`; the reason it failed.
pub fn probe_direct_io(dir: &Path) -> Result<(), String> {
    let path = dir.join(format!(
        "{PROBE_PREFIX}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        // Direct I/O wants aligned memory: take an aligned block inside a
        // buffer twice its size.
        let buf = vec![0u8; 2 * PROBE_BLOCK];
        let offset = buf.as_ptr().align_offset(PROBE_BLOCK);
        f.write_all(&buf[offset..offset + PROBE_BLOCK])?;
        f.sync_all()
    })();
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the direct I/O probe file");
        }
    }
    result.map_err(|e| format!("the file system refuses direct I/O (O_DIRECT): {e}"))
}

/// Lexical checks of a datastore-relative path; the reason for refusal.
fn check_relative(rel_path: &str) -> Result<(), &'static str> {
    if rel_path.is_empty() {
        return Err("the path is empty");
    }
    if rel_path.contains('\0') {
        return Err("the path contains a NUL byte");
    }
    let mut normal = 0;
    for c in Path::new(rel_path).components() {
        match c {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed")
            }
        }
    }
    if normal == 0 {
        return Err("the path names the datastore root itself");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> (tempfile::TempDir, Datastore) {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::new("ds1", dir.path(), false);
        (dir, ds)
    }

    #[test]
    fn resolves_paths_inside_the_root() {
        let (dir, ds) = ds();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(
            ds.resolve("web-1/disk0.qcow2").unwrap(),
            root.join("web-1/disk0.qcow2")
        );
        assert_eq!(ds.resolve("./a").unwrap(), root.join("a"));
        std::fs::create_dir(dir.path().join("vm")).unwrap();
        assert_eq!(ds.resolve("vm/x.qcow2").unwrap(), root.join("vm/x.qcow2"));
    }

    #[test]
    fn refuses_escape_attempts() {
        let (_dir, ds) = ds();
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            ".",
            "./",
            "a\0b",
        ] {
            let err = ds.resolve(bad).unwrap_err();
            assert!(
                matches!(err, DiskError::PathOutsideDatastore { .. }),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn refuses_symlinks_leading_out() {
        let (dir, ds) = ds();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        let err = ds.resolve("escape/disk.qcow2").unwrap_err();
        assert!(
            matches!(err, DiskError::PathOutsideDatastore { .. }),
            "{err:?}"
        );
        // A link that stays inside is fine.
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("alias")).unwrap();
        assert!(ds.resolve("alias/d.qcow2").is_ok());
    }

    #[test]
    fn direct_io_is_probed() {
        let (dir, mut ds) = ds();
        assert_eq!(ds.cache, DiskCacheMode::Writeback);
        ds.probe_cache();
        // The test directory is on an ext4 (or similar) file system here;
        // whatever the outcome, the probe leaves no file behind and a
        // writeback choice says why.
        match ds.cache {
            DiskCacheMode::None => assert_eq!(ds.cache_reason, None),
            DiskCacheMode::Writeback => assert!(ds.cache_reason.is_some()),
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = probe_direct_io(&dir.path().join("missing"));
        assert!(missing.unwrap_err().contains("direct I/O"));
        assert_eq!(cache_choice(Ok(())), (DiskCacheMode::None, None));
        assert_eq!(
            cache_choice(Err("no".into())),
            (DiskCacheMode::Writeback, Some("no".into()))
        );
    }

    #[test]
    fn measures_capacity() {
        let (_dir, ds) = ds();
        let cap = ds.capacity().unwrap();
        assert!(cap.total_bytes > 0);
        assert!(cap.free_bytes <= cap.total_bytes);
    }
}
