//! Backup and restore jobs: a VM's disks read at one instant into a
//! backup store, and a backup written back into a VM's images.
//!
//! # Backup
//! 1. open the store (its key, if encrypted) and leave a writer marker;
//! 2. the point in time: a running VM's disks are fleeced
//!    (`vdc_qemu::fleece`: copy-before-write into temporary images in the
//!    VM's directory, exported over NBD on a unix socket); a stopped VM's
//!    images are exported read-only by `qemu-nbd`, one per disk;
//! 3. each disk is read over NBD in 4 MiB chunks, hashed, compressed and
//!    stored on worker threads (`vdc_backup::session`);
//! 4. the exports end, the temporary images are removed;
//! 5. the manifest is written (last), the writer marker removed.
//!
//! Any failure or a cancel before step 5 leaves no manifest: the backup
//! never lists, and its chunks are reclaimed by the next gc.
//!
//! # Restore
//! Per disk: the chunks are written in parallel into a raw sparse file
//! beside the target image (zeros skipped), converted to qcow2 under a
//! temporary name and renamed over the target. A damaged chunk fails the
//! job and removes both temporary files; the target is untouched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vdc_backup::session::{write_disk, DiskPlan};
use vdc_backup::store::{DiskIndex, Manifest, Store};
use vdc_backup::BackupError;
use vdc_types::backup::{
    Backup, BackupJobRequest, Consistency, DiskBackup, DiskRead, RestoreJobRequest,
};
use vdc_types::job::JobResult;
use vdc_types::{now_ms, ApiError, ErrorCode};

use crate::agent::Agent;
use crate::jobs::{job_cancelled, JobCell};

/// How often progress is sampled.
const TICK: Duration = Duration::from_millis(250);
/// Longest wait for `qemu-nbd` to listen.
const NBD_START: Duration = Duration::from_secs(20);
/// Threads a restore reads and writes chunks with.
const RESTORE_THREADS: usize = 4;

fn backup_err(e: BackupError) -> ApiError {
    match e {
        BackupError::Cancelled => job_cancelled(),
        BackupError::Key(m) => ApiError::invalid(m),
        BackupError::NotAStore(_) | BackupError::TooNew { .. } => ApiError::invalid(e.to_string()),
        BackupError::NoBackup(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
        BackupError::ChunkDigest { .. } | BackupError::ChunkMissing { .. } => ApiError::new(
            ErrorCode::HostError,
            format!(
                "{e}: the backup is damaged; run 'vdc backup verify' and restore another backup"
            ),
        ),
        other => ApiError::new(ErrorCode::HostError, crate::error::chain(&other)),
    }
}

/// Opens a store on a blocking thread.
pub(crate) async fn open_store(path: &str, key: Option<&str>) -> Result<Store, ApiError> {
    let (path, key) = (PathBuf::from(path), key.map(PathBuf::from));
    tokio::task::spawn_blocking(move || {
        let key = key
            .map(|k| vdc_backup::key::StoreKey::read(&k))
            .transpose()?;
        Store::open(&path, key)
    })
    .await
    .map_err(|e| ApiError::internal(format!("store task: {e}")))?
    .map_err(backup_err)
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vdc-{tag}-{}-{:08x}.sock",
        std::process::id(),
        rand_u32()
    ))
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Err(e) = getrandom(&mut b) {
        tracing::debug!(error = %e, "getrandom");
    }
    u32::from_ne_bytes(b)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The figures of reading the disks, updated by the blocking reader.
struct Reading {
    done: AtomicU64,
    total: u64,
    cancel: AtomicBool,
}

impl Agent {
    /// The `backup` job.
    pub(crate) async fn backup_job(
        self: &Arc<Self>,
        cell: &JobCell,
        req: BackupJobRequest,
    ) -> Result<JobResult, ApiError> {
        cell.progress(1, "opening the backup store");
        let store = open_store(&req.store_path, req.encryption_key.as_deref()).await?;
        let started_ms = now_ms();
        let host = self.config.name.clone();
        let id = req.backup_id.clone();
        {
            let (s, id, host) = (store.clone(), id.clone(), host.clone());
            tokio::task::spawn_blocking(move || s.begin_writer(&id, &host, started_ms))
                .await
                .map_err(|e| ApiError::internal(format!("store task: {e}")))?
                .map_err(backup_err)?;
        }
        let r = self.backup_disks(cell, &req, &store, started_ms).await;
        let s = store.clone();
        let manifest = r.as_ref().ok().cloned();
        let end = tokio::task::spawn_blocking(move || -> Result<(), BackupError> {
            if let Some(m) = &manifest {
                s.write_manifest(m)?;
            }
            s.end_writer(&id)?;
            Ok(())
        })
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")))?;
        let m = r?;
        end.map_err(backup_err)?;
        Ok(JobResult::Backup(Box::new(m.backup)))
    }

    async fn backup_disks(
        self: &Arc<Self>,
        cell: &JobCell,
        req: &BackupJobRequest,
        store: &Store,
        started_ms: u64,
    ) -> Result<Manifest, ApiError> {
        let config = &req.config;
        let layout = self.layout(config)?;
        let reading = Arc::new(Reading {
            done: AtomicU64::new(0),
            total: config
                .disks
                .iter()
                .map(|d| d.size_bytes)
                .sum::<u64>()
                .max(1),
            cancel: AtomicBool::new(false),
        });
        let socket = socket_path("backup");
        let names: Vec<String> = config.disks.iter().map(|d| d.name.clone()).collect();
        let running = self.running(&config.id).ok();
        let (consistency, figures) = match running {
            Some((_, vm)) => {
                cell.progress(2, "taking the point in time");
                let mut disks = Vec::new();
                for d in &config.disks {
                    let image = layout
                        .vm_dir
                        .path()
                        .join(format!(".backup-{}.qcow2", d.name));
                    remove_logged(&image);
                    vdc_disk::qemu_img::create_qcow2(&image, d.size_bytes)
                        .await
                        .map_err(|e| {
                            ApiError::new(ErrorCode::HostError, crate::error::chain(&e))
                        })?;
                    disks.push(vdc_qemu::fleece::FleeceDisk {
                        disk: d.name.clone(),
                        image,
                        freeze_bitmap: None,
                        new_bitmap: None,
                    });
                }
                let fleece = match vm.fleece_start(&disks, &socket).await {
                    Ok(f) => f,
                    Err(e) => {
                        disks.iter().for_each(|d| remove_logged(&d.image));
                        return Err(ApiError::new(
                            ErrorCode::HostError,
                            format!("cannot take the point in time: {}", crate::error::chain(&e)),
                        ));
                    }
                };
                let r = self
                    .read_disks(cell, store, &socket, &names, config, &reading)
                    .await;
                vm.fleece_end(&fleece, r.is_err()).await;
                disks.iter().for_each(|d| remove_logged(&d.image));
                (Consistency::CrashConsistent, r?)
            }
            None => {
                cell.progress(2, "exporting the stopped VM's disks");
                let mut figures = Vec::new();
                for (d, path) in config.disks.iter().zip(&layout.disks) {
                    let server = QemuNbd::start(path, &d.name, &socket).await?;
                    let r = self
                        .read_disks(
                            cell,
                            store,
                            &socket,
                            std::slice::from_ref(&d.name),
                            config,
                            &reading,
                        )
                        .await;
                    server.stop().await;
                    figures.extend(r?);
                }
                (Consistency::Stopped, figures)
            }
        };
        remove_logged(&socket);
        let (index, disks): (Vec<DiskIndex>, Vec<DiskBackup>) = figures.into_iter().unzip();
        let backup = Backup {
            id: req.backup_id.clone(),
            store: req.store.clone(),
            vm: config.name.clone(),
            vm_id: config.id.clone(),
            host: self.config.name.clone(),
            consistency,
            started_ms,
            finished_ms: now_ms(),
            size_bytes: config.disks.iter().map(|d| d.size_bytes).sum(),
            disks,
            damaged: false,
            config: config.clone(),
        };
        Ok(Manifest::new(backup, index))
    }

    /// Reads disks `names` from the NBD server on `socket` into the store.
    async fn read_disks(
        &self,
        cell: &JobCell,
        store: &Store,
        socket: &Path,
        names: &[String],
        config: &vdc_types::VmConfig,
        reading: &Arc<Reading>,
    ) -> Result<Vec<(DiskIndex, DiskBackup)>, ApiError> {
        let sizes: Vec<(String, u64)> = names
            .iter()
            .map(|n| {
                let size = config
                    .disks
                    .iter()
                    .find(|d| &d.name == n)
                    .map(|d| d.size_bytes)
                    .unwrap_or(0);
                (n.clone(), size)
            })
            .collect();
        let (store, socket, rd) = (store.clone(), socket.to_path_buf(), reading.clone());
        let work = tokio::task::spawn_blocking(move || -> Result<Vec<_>, BackupError> {
            let mut out = Vec::new();
            for (name, size) in sizes {
                let mut client = vdc_backup::nbd::NbdClient::connect(&socket, &name)?;
                let size = size.min(client.size()).max(client.size());
                let base = rd.done.load(Ordering::Relaxed);
                let plan = DiskPlan {
                    name: name.clone(),
                    size,
                    source: &mut client,
                    changed: None,
                    read: DiskRead::Full {
                        reason: "no dirty bitmap of an earlier backup".into(),
                    },
                };
                let progress = |b: u64| rd.done.store(base + b, Ordering::Relaxed);
                out.push(write_disk(&store, plan, &rd.cancel, &progress)?);
            }
            Ok(out)
        });
        let mut work = std::pin::pin!(work);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                r = &mut work => {
                    return r
                        .map_err(|e| ApiError::internal(format!("backup task: {e}")))?
                        .map_err(backup_err);
                }
                _ = cell.cancel.cancelled(), if !reading.cancel.load(Ordering::Relaxed) => {
                    reading.cancel.store(true, Ordering::Relaxed);
                }
                _ = tick.tick() => {
                    let p = 3 + reading.done.load(Ordering::Relaxed) * 94 / reading.total;
                    cell.progress(p.min(97) as u8, "reading the disks");
                }
            }
        }
    }

    /// The `restore` job.
    pub(crate) async fn restore_job(
        self: &Arc<Self>,
        cell: &JobCell,
        req: RestoreJobRequest,
    ) -> Result<JobResult, ApiError> {
        if self.running(&req.config.id).is_ok() {
            return Err(ApiError::invalid_state(format!(
                "VM '{}' runs on this host; a restore writes only over a powered-off VM's disks",
                req.config.name
            )));
        }
        cell.progress(1, "opening the backup store");
        let store = open_store(&req.store_path, req.encryption_key.as_deref()).await?;
        let (s, id) = (store.clone(), req.backup_id.clone());
        let m = tokio::task::spawn_blocking(move || s.manifest(&id))
            .await
            .map_err(|e| ApiError::internal(format!("store task: {e}")))?
            .map_err(backup_err)?;
        let layout = self.layout(&req.config)?;
        let mut written = Vec::new();
        let total: u64 = req
            .disks
            .iter()
            .filter_map(|(from, _)| m.backup.disks.iter().find(|d| &d.name == from))
            .map(|d| d.size_bytes)
            .sum::<u64>()
            .max(1);
        let done = Arc::new(AtomicU64::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        for (from, to) in &req.disks {
            let Some(i) = m.index.iter().position(|x| &x.disk == from) else {
                return Err(ApiError::invalid(format!(
                    "backup '{}' has no disk '{from}'",
                    m.backup.id
                )));
            };
            let size = m.backup.disks[i].size_bytes;
            let index = m.index[i].clone();
            let Some(j) = req.config.disks.iter().position(|d| &d.name == to) else {
                return Err(ApiError::invalid(format!("the VM has no disk '{to}'")));
            };
            let target = layout.disks[j].clone();
            let raw = target.with_file_name(format!(".restore-{to}.raw"));
            let qcow = target.with_file_name(format!(".restore-{to}.qcow2"));
            remove_logged(&raw);
            remove_logged(&qcow);
            let (s, r2, d2, c2) = (store.clone(), raw.clone(), done.clone(), cancel.clone());
            let base = done.load(Ordering::Relaxed);
            let work = tokio::task::spawn_blocking(move || {
                let progress = |b: u64| d2.store(base + b, Ordering::Relaxed);
                vdc_backup::restore::restore_raw(
                    &s,
                    &index,
                    size,
                    &r2,
                    RESTORE_THREADS,
                    &c2,
                    &progress,
                )
            });
            let mut work = std::pin::pin!(work);
            let mut tick = tokio::time::interval(TICK);
            let r = loop {
                tokio::select! {
                    r = &mut work => break r.map_err(|e| ApiError::internal(format!("restore task: {e}")))?,
                    _ = cell.cancel.cancelled(), if !cancel.load(Ordering::Relaxed) => cancel.store(true, Ordering::Relaxed),
                    _ = tick.tick() => {
                        let p = 2 + done.load(Ordering::Relaxed) * 90 / total;
                        cell.progress(p.min(92) as u8, "writing the disks");
                    }
                }
            };
            r.map_err(backup_err)?;
            cell.progress(93, "converting to qcow2");
            let converted =
                vdc_disk::qemu_img::convert_to_qcow2(&raw, vdc_types::api::ImageFormat::Raw, &qcow)
                    .await;
            remove_logged(&raw);
            if let Err(e) = converted {
                remove_logged(&qcow);
                return Err(ApiError::new(ErrorCode::HostError, crate::error::chain(&e)));
            }
            if let Err(e) = std::fs::rename(&qcow, &target) {
                remove_logged(&qcow);
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    format!(
                        "cannot put the restored image in place at '{}': {e}",
                        target.display()
                    ),
                ));
            }
            written.push(to.clone());
        }
        Ok(JobResult::Restored { disks: written })
    }
}

/// `qemu-nbd` serving one image read-only on a unix socket.
struct QemuNbd {
    child: tokio::process::Child,
    socket: PathBuf,
}

impl QemuNbd {
    async fn start(image: &Path, name: &str, socket: &Path) -> Result<QemuNbd, ApiError> {
        remove_logged(socket);
        let child = tokio::process::Command::new("qemu-nbd")
            .arg("--read-only")
            .arg("--format=qcow2")
            .arg("--shared=2")
            .arg(format!("--export-name={name}"))
            .arg("--socket")
            .arg(socket)
            .arg(image)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ApiError::new(ErrorCode::HostError, format!("cannot run qemu-nbd: {e}"))
            })?;
        let mut server = QemuNbd {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = tokio::time::Instant::now() + NBD_START;
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    if let Err(e) = e.read_to_string(&mut err).await {
                        tracing::debug!(error = %e, "qemu-nbd stderr");
                    }
                }
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    format!(
                        "qemu-nbd ended ({status}) before serving '{}': {}",
                        image.display(),
                        err.trim()
                    ),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                server.stop().await;
                return Err(ApiError::new(
                    ErrorCode::HostError,
                    "qemu-nbd did not start serving in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Err(e) = self.child.start_kill() {
            tracing::debug!(error = %e, "qemu-nbd kill");
        }
        if let Err(e) = self.child.wait().await {
            tracing::debug!(error = %e, "qemu-nbd wait");
        }
        remove_logged(&self.socket);
    }
}

fn remove_logged(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a temporary file");
        }
    }
}
