//! The store's directory: header, chunk files, manifests, writer markers.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use vdc_types::backup::Backup;
use vdc_types::UnixMillis;

use crate::chunk::{self, ChunkError};
use crate::error::{BackupError, Result};
use crate::format::*;
use crate::key::StoreKey;

/// `vdc-backup-store.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreHeader {
    /// [`STORE_MAGIC`].
    pub magic: String,
    /// [`STORE_VERSION`].
    pub version: u32,
    /// Chunk size of disk images.
    pub chunk_size: u64,
    /// Key check of an encrypted store (see [`StoreKey::check_hex`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<String>,
}

/// One disk's chunk index in a manifest: a chunk name per chunk, `None`
/// for a chunk of zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIndex {
    /// Device name.
    pub disk: String,
    /// Chunk names, in disk order.
    pub chunks: Vec<Option<String>>,
}

/// `backups/ID.json`: a complete backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_MAGIC`].
    pub magic: String,
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// What is listed.
    pub backup: Backup,
    /// Per disk, its chunks.
    pub index: Vec<DiskIndex>,
}

impl Manifest {
    /// A manifest of the current version.
    pub fn new(backup: Backup, index: Vec<DiskIndex>) -> Manifest {
        Manifest {
            magic: MANIFEST_MAGIC.into(),
            version: MANIFEST_VERSION,
            backup,
            index,
        }
    }

    /// Every chunk name it needs.
    pub fn chunk_names(&self) -> BTreeSet<&str> {
        self.index
            .iter()
            .flat_map(|d| d.chunks.iter().flatten().map(String::as_str))
            .collect()
    }
}

/// `writers/ID.json`: a backup being written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterMarker {
    /// [`WRITER_MAGIC`].
    pub magic: String,
    /// [`WRITER_VERSION`].
    pub version: u32,
    /// The backup's id.
    pub backup: String,
    /// Host writing it.
    pub host: String,
    /// When it began; garbage collection keeps every chunk touched since.
    pub started_ms: UnixMillis,
}

/// An open backup store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    header: StoreHeader,
    key: Option<StoreKey>,
}

impl Store {
    /// Opens the store at `root`, or initialises it when the directory is
    /// missing or empty. With `key`, the store must be (or becomes)
    /// encrypted with it; without, it must not be encrypted.
    pub fn open_or_init(root: &Path, key: Option<StoreKey>) -> Result<Store> {
        let empty = match std::fs::read_dir(root) {
            Ok(mut d) => d.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(BackupError::io("cannot read store directory", root)(e)),
        };
        if empty {
            for sub in ["chunks", "backups", "writers"] {
                let p = root.join(sub);
                std::fs::create_dir_all(&p).map_err(BackupError::io("cannot make", &p))?;
            }
            let header = StoreHeader {
                magic: STORE_MAGIC.into(),
                version: STORE_VERSION,
                chunk_size: IMAGE_CHUNK_SIZE,
                key_check: key.as_ref().map(StoreKey::check_hex),
            };
            write_atomic(&root.join(STORE_HEADER), &json(&header))?;
        }
        Self::open(root, key)
    }

    /// Opens an existing store.
    pub fn open(root: &Path, key: Option<StoreKey>) -> Result<Store> {
        let path = root.join(STORE_HEADER);
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::NotAStore(root.to_path_buf()))
            }
            Err(e) => return Err(BackupError::io("cannot read", &path)(e)),
        };
        let header: StoreHeader = parse("store header", &path, &raw)?;
        if header.magic != STORE_MAGIC {
            return Err(corrupt("store header", &path, "wrong magic"));
        }
        if header.version > STORE_VERSION {
            return Err(BackupError::TooNew {
                what: "store header",
                path,
                found: header.version,
                supported: STORE_VERSION,
            });
        }
        match (&header.key_check, &key) {
            (None, None) => {}
            (Some(c), Some(k)) if *c == k.check_hex() => {}
            (Some(_), Some(_)) => {
                return Err(BackupError::Key(format!(
                    "the key does not open the store '{}'",
                    root.display()
                )))
            }
            (Some(_), None) => {
                return Err(BackupError::Key(format!(
                    "the store '{}' is encrypted; give its key file",
                    root.display()
                )))
            }
            (None, Some(_)) => {
                return Err(BackupError::Key(format!(
                    "the store '{}' is not encrypted; it takes no key",
                    root.display()
                )))
            }
        }
        Ok(Store {
            root: root.to_path_buf(),
            header,
            key,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Chunk size of disk images.
    pub fn chunk_size(&self) -> u64 {
        self.header.chunk_size
    }

    /// The key of an encrypted store.
    pub fn key(&self) -> Option<&StoreKey> {
        self.key.as_ref()
    }

    /// The file of chunk `name` (`chunks/ab/abcdef…`).
    pub fn chunk_path(&self, name: &str) -> PathBuf {
        self.root
            .join("chunks")
            .join(&name[..2.min(name.len())])
            .join(name)
    }

    /// Stores a chunk unless present. Returns its name, whether it was new,
    /// and the bytes written. A chunk already present has its mtime set to
    /// now, which garbage collection reads as "in use by a recent writer".
    pub fn put_chunk(&self, plain: &[u8]) -> Result<(String, bool, u64)> {
        let name = chunk::digest(plain, self.key.as_ref());
        let path = self.chunk_path(&name);
        if path.exists() {
            touch(&path)?;
            return Ok((name, false, 0));
        }
        let file = chunk::encode(plain, self.key.as_ref());
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(BackupError::io("cannot make", dir))?;
        write_file_synced(&path, &file)?;
        Ok((name, true, file.len() as u64))
    }

    /// Reads chunk `name` and checks it against its name.
    pub fn get_chunk(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.chunk_path(name);
        let file = match std::fs::read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::ChunkMissing {
                    digest: name.into(),
                })
            }
            Err(e) => return Err(BackupError::io("cannot read chunk", &path)(e)),
        };
        chunk::decode(&file, name, self.key.as_ref()).map_err(|e| match e {
            ChunkError::NeedsKey => {
                BackupError::Key("the chunk is encrypted; give the store's key".into())
            }
            _ => BackupError::ChunkDigest {
                digest: name.into(),
            },
        })
    }

    /// Moves a damaged chunk file aside (`NAME.bad`).
    pub fn quarantine_chunk(&self, name: &str) -> Result<()> {
        let p = self.chunk_path(name);
        let bad = p.with_file_name(format!("{name}.bad"));
        std::fs::rename(&p, &bad).map_err(BackupError::io("cannot move aside", &p))
    }

    /// fsyncs the fan-out directories named (after their chunk files were
    /// renamed into them), so that the chunks survive a crash before their
    /// manifest is written.
    pub fn sync_chunk_dirs<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let dirs: BTreeSet<&str> = names.into_iter().map(|n| &n[..2.min(n.len())]).collect();
        for d in dirs {
            sync_dir(&self.root.join("chunks").join(d))?;
        }
        sync_dir(&self.root.join("chunks"))
    }

    fn manifest_path(&self, id: &str) -> PathBuf {
        self.root.join("backups").join(format!("{id}.json"))
    }

    fn damaged_path(&self, id: &str) -> PathBuf {
        self.root.join("backups").join(format!("{id}.damaged"))
    }

    /// Writes a backup's manifest (the last step of a backup).
    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        write_atomic(&self.manifest_path(&m.backup.id), &json(m))
    }

    /// Reads a backup's manifest (with `damaged` set from the marker).
    pub fn manifest(&self, id: &str) -> Result<Manifest> {
        if id.contains('/') || id.starts_with('.') {
            return Err(BackupError::NoBackup(id.into()));
        }
        let path = self.manifest_path(id);
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::NoBackup(id.into()))
            }
            Err(e) => return Err(BackupError::io("cannot read", &path)(e)),
        };
        let mut m: Manifest = parse("manifest", &path, &raw)?;
        if m.magic != MANIFEST_MAGIC {
            return Err(corrupt("manifest", &path, "wrong magic"));
        }
        if m.version > MANIFEST_VERSION {
            return Err(BackupError::TooNew {
                what: "manifest",
                path,
                found: m.version,
                supported: MANIFEST_VERSION,
            });
        }
        m.backup.damaged = self.damaged_path(id).exists();
        Ok(m)
    }

    /// Ids of every complete backup, sorted.
    pub fn backup_ids(&self) -> Result<Vec<String>> {
        let dir = self.root.join("backups");
        let mut ids: Vec<String> = std::fs::read_dir(&dir)
            .map_err(BackupError::io("cannot list", &dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.strip_suffix(".json")
                    .filter(|s| !s.starts_with('.'))
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every complete backup, oldest first.
    pub fn list(&self) -> Result<Vec<Backup>> {
        let mut v = Vec::new();
        for id in self.backup_ids()? {
            match self.manifest(&id) {
                Ok(m) => v.push(m.backup),
                Err(BackupError::NoBackup(_)) => {}
                Err(e) => return Err(e),
            }
        }
        v.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        Ok(v)
    }

    /// Marks (or unmarks) a backup as damaged.
    pub fn set_damaged(&self, id: &str, damaged: bool) -> Result<()> {
        let p = self.damaged_path(id);
        if damaged {
            write_atomic(&p, b"damaged: a chunk was missing or failed its digest\n")
        } else {
            remove_if_present(&p)
        }
    }

    /// Removes a backup's manifest (its chunks go at the next gc).
    pub fn remove_backup(&self, id: &str) -> Result<()> {
        self.manifest(id)?;
        remove_if_present(&self.damaged_path(id))?;
        let p = self.manifest_path(id);
        std::fs::remove_file(&p).map_err(BackupError::io("cannot remove", &p))?;
        sync_dir(&self.root.join("backups"))
    }

    /// Records that backup `id` is being written by `host`.
    pub fn begin_writer(&self, id: &str, host: &str, started_ms: UnixMillis) -> Result<()> {
        let m = WriterMarker {
            magic: WRITER_MAGIC.into(),
            version: WRITER_VERSION,
            backup: id.into(),
            host: host.into(),
            started_ms,
        };
        let dir = self.root.join("writers");
        std::fs::create_dir_all(&dir).map_err(BackupError::io("cannot make", &dir))?;
        write_atomic(&dir.join(format!("{id}.json")), &json(&m))
    }

    /// Ends the writer marker of `id` (done or abandoned).
    pub fn end_writer(&self, id: &str) -> Result<()> {
        remove_if_present(&self.root.join("writers").join(format!("{id}.json")))
    }

    /// The backups being written now.
    pub fn writers(&self) -> Result<Vec<WriterMarker>> {
        let dir = self.root.join("writers");
        let mut v = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(BackupError::io("cannot list", &dir)(e)),
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let raw = std::fs::read(&p).map_err(BackupError::io("cannot read", &p))?;
                v.push(parse("writer marker", &p, &raw)?);
            }
        }
        Ok(v)
    }

    /// Every chunk file: name and mtime.
    pub fn chunk_files(&self) -> Result<Vec<(String, SystemTime)>> {
        let mut v = Vec::new();
        let top = self.root.join("chunks");
        for d in std::fs::read_dir(&top)
            .map_err(BackupError::io("cannot list", &top))?
            .flatten()
        {
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if name.starts_with('.') || name.ends_with(".bad") {
                    continue;
                }
                let mtime = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(BackupError::io("cannot stat", f.path()))?;
                v.push((name, mtime));
            }
        }
        Ok(v)
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("store records serialize");
    s.push(b'\n');
    s
}

fn parse<T: for<'de> Deserialize<'de>>(what: &'static str, path: &Path, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| corrupt(what, path, &e.to_string()))
}

fn corrupt(what: &'static str, path: &Path, detail: &str) -> BackupError {
    BackupError::Corrupt {
        what,
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Sets a file's mtime to now.
pub(crate) fn touch(path: &Path) -> Result<()> {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(BackupError::io("cannot open", path))?;
    f.set_modified(SystemTime::now())
        .map_err(BackupError::io("cannot touch", path))
}

fn remove_if_present(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackupError::io("cannot remove", p)(e)),
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Writes `data` to a temporary file, fsyncs it and renames it to `path`
/// (the directory is not synced; see [`write_atomic`]).
pub(crate) fn write_file_synced(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_name(path);
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        if let Err(e2) = std::fs::remove_file(&tmp) {
            tracing::debug!(path = %tmp.display(), error = %e2, "cannot remove a temporary file");
        }
        return Err(BackupError::io("cannot write", path)(e));
    }
    Ok(())
}

/// Temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_file_synced(path, data)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io("cannot sync directory", dir))
}
