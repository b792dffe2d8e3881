//! A VM's directory on a datastore.
//!
//! ```text
//! <datastore>/<vm-dir>/
//!   vm.json        VmConfig (versioned), written atomically
//!   disk0.qcow2    disks named in the config
//!   vm.lock        lease (see [`crate::lock`])
//!   console.log    serial console (rotated: console.log.1, console.log.offset)
//!   qemu.log       QEMU's stderr
//!   suspend.state  memory state while suspended
//!   snapshots.json snapshot tree, with the overlays and state files it
//!                  names (see [`crate::snapshots`])
//! ```
//!
//! `vm.json` is written to a temporary file, synced, renamed over the old
//! one and the directory synced, so a crash leaves either the old or the new
//! configuration, never a torn one. Removal deletes only the files vdc
//! creates, so an administrator's stray file is never lost silently.

use std::io::Write;
use std::path::{Path, PathBuf};

use vdc_types::vm::VM_CONFIG_VERSION;
use vdc_types::VmConfig;

use crate::lock::{VmLock, LOCK_FILE};
use crate::DiskError;

/// File name of the VM configuration.
pub const CONFIG_FILE: &str = "vm.json";
/// File name of the serial console log.
pub const CONSOLE_LOG: &str = "console.log";
/// The console log's previous part, after a rotation.
pub const CONSOLE_LOG_PREVIOUS: &str = "console.log.1";
/// The console offset of the first byte of `console.log`.
pub const CONSOLE_LOG_OFFSET: &str = "console.log.offset";
/// File name of QEMU's stderr log.
pub const QEMU_LOG: &str = "qemu.log";
/// File name of the suspended memory state.
pub const SUSPEND_STATE: &str = "suspend.state";

/// A VM directory (which may not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    path: PathBuf,
}

impl VmDir {
    /// The VM directory at `path` (already resolved inside a datastore).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `vm.json`.
    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    /// `console.log`.
    pub fn console_log(&self) -> PathBuf {
        self.path.join(CONSOLE_LOG)
    }

    /// `qemu.log`.
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join(QEMU_LOG)
    }

    /// `suspend.state`.
    pub fn suspend_state(&self) -> PathBuf {
        self.path.join(SUSPEND_STATE)
    }

    /// The VM's lock.
    pub fn lock(&self) -> VmLock {
        VmLock::new(&self.path)
    }

    /// Whether the directory exists.
    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Creates the directory (its parent must exist). Fails if it exists
    /// already, so two provisioning requests cannot share a directory.
    pub fn create(&self) -> Result<(), DiskError> {
        std::fs::create_dir(&self.path).map_err(|e| DiskError::io("create", &self.path, e))
    }

    /// Writes `vm.json` atomically (temporary file, fsync, rename, fsync of
    /// the directory).
    pub fn write_config(&self, config: &VmConfig) -> Result<(), DiskError> {
        let path = self.config_path();
        let tmp = self.path.join(format!(
            ".{CONFIG_FILE}.{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let body = serde_json::to_vec_pretty(config).map_err(|source| DiskError::Parse {
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
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(DiskError::io("write", &tmp, e));
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(DiskError::io("replace", &path, e));
        }
        std::fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| DiskError::io("sync", &self.path, e))
    }

    /// Reads `vm.json`, refusing a format newer than this build knows.
    pub fn read_config(&self) -> Result<VmConfig, DiskError> {
        let path = self.config_path();
        let bytes = std::fs::read(&path).map_err(|e| DiskError::io("read", &path, e))?;
        let config: VmConfig =
            serde_json::from_slice(&bytes).map_err(|source| DiskError::Parse {
                path: path.clone(),
                source,
            })?;
        if config.version > VM_CONFIG_VERSION {
            return Err(DiskError::UnsupportedVersion {
                path,
                found: config.version,
                supported: VM_CONFIG_VERSION,
            });
        }
        Ok(config)
    }

    /// Removes the VM directory: the files vdc creates plus `disk_files`
    /// (disk file names inside the directory), then the directory itself.
    /// Refused with [`DiskError::Locked`] while another host holds a
    /// lease; a lease of `host` itself is removed.
    ///
    /// Files vdc does not know (an administrator's notes, an image copied
    /// in by hand) never stop the VM's removal and are never deleted: they
    /// stay, with the directory, and their names are returned so the
    /// caller can report them.
    pub fn remove(&self, host: &str, disk_files: &[String]) -> Result<Vec<String>, DiskError> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let lock = self.lock();
        // Whether another host's lease is live or stale takes a TTL of
        // watching to tell; a destroy never waits: any other host's lease
        // refuses it (a start there, or a take-over, clears it first).
        if let Some(lease) = lock.read()?.filter(|l| l.host != host) {
            return Err(DiskError::Locked {
                holder_host: lease.host,
                generation: lease.generation,
            });
        }
        let tree = crate::snapshots::read_tree(&self.path)?;
        let known = |name: &str| {
            crate::snapshots::owns(&tree, name)
                || [
                    CONFIG_FILE,
                    CONSOLE_LOG,
                    CONSOLE_LOG_PREVIOUS,
                    CONSOLE_LOG_OFFSET,
                    QEMU_LOG,
                    SUSPEND_STATE,
                ]
                .contains(&name)
                || disk_files.iter().any(|d| d == name)
                || (name.starts_with(&format!(".{CONFIG_FILE}.")) && name.ends_with(".tmp"))
                || (name.starts_with(&format!("{LOCK_FILE}.")) && name.ends_with(".tmp"))
                || (name.starts_with(&format!("{CONSOLE_LOG}.")) && name.ends_with(".tmp"))
        };
        let entries =
            std::fs::read_dir(&self.path).map_err(|e| DiskError::io("list", &self.path, e))?;
        let mut unknown = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DiskError::io("list", &self.path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == LOCK_FILE {
                continue;
            }
            if known(&name) && entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                std::fs::remove_file(entry.path())
                    .map_err(|e| DiskError::io("remove", entry.path(), e))?;
            } else {
                unknown.push(name);
            }
        }
        unknown.sort();
        // The lease goes last: until the directory holds no file of the VM
        // it still guards it.
        match std::fs::remove_file(lock.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DiskError::io("remove", lock.path(), e)),
        }
        if unknown.is_empty() {
            std::fs::remove_dir(&self.path).map_err(|e| DiskError::io("remove", &self.path, e))?;
        }
        Ok(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> VmConfig {
        VmConfig {
            version: VM_CONFIG_VERSION,
            id: "0b6f1f5e-1111-2222-3333-444455556666".into(),
            name: "web-1".into(),
            cpus: 1,
            memory_mib: 128,
            datastore: "ds".into(),
            dir: "web-1".into(),
            disks: vec![],
            nics: vec![],
            hostname: "web-1".into(),
            template: None,
            linked_clone: false,
            created_ms: 1,
            machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
            cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
            ha: Default::default(),
            guest_agent: false,
            hotplug_ports: 0,
        }
    }

    #[test]
    fn config_round_trip_and_version_check() {
        let root = tempfile::tempdir().unwrap();
        let dir = VmDir::new(root.path().join("web-1"));
        dir.create().unwrap();
        assert!(dir.create().is_err(), "second create must fail");
        let c = config();
        dir.write_config(&c).unwrap();
        assert_eq!(dir.read_config().unwrap(), c);
        let mut newer = c.clone();
        newer.version = VM_CONFIG_VERSION + 1;
        dir.write_config(&newer).unwrap();
        assert!(matches!(
            dir.read_config(),
            Err(DiskError::UnsupportedVersion { .. })
        ));
        // Only vm.json remains (no temporary files).
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CONFIG_FILE)]);
    }

    #[tokio::test]
    async fn remove_respects_locks_and_unknown_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = VmDir::new(root.path().join("web-1"));
        dir.create().unwrap();
        dir.write_config(&config()).unwrap();
        std::fs::write(dir.path().join("disk0.qcow2"), b"x").unwrap();
        std::fs::write(dir.console_log(), b"boot").unwrap();
        assert!(dir
            .lock()
            .create(&crate::Lease::new("h1", "a", Duration::from_secs(10), None))
            .unwrap());

        assert!(matches!(
            dir.remove("h2", &["disk0.qcow2".into()]),
            Err(DiskError::Locked { ref holder_host, .. }) if holder_host == "h1"
        ));
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let left = dir.remove("h1", &["disk0.qcow2".into()]).unwrap();
        assert_eq!(left, vec!["notes.txt".to_string()]);
        assert!(dir.path().join("notes.txt").exists());
        assert!(!dir.path().join("disk0.qcow2").exists());
        assert!(!dir.config_path().exists());
        assert!(!dir.lock().path().exists());
        std::fs::remove_file(dir.path().join("notes.txt")).unwrap();
        assert!(dir.remove("h1", &[]).unwrap().is_empty());
        assert!(!dir.exists());
        assert!(dir.remove("h1", &[]).unwrap().is_empty());
    }
}
