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

use vdc_backup::incremental::{bitmap_name, choose, BaseState, BitmapSeen, DiskChoice};
use vdc_backup::session::changed_chunks;
use vdc_backup::session::{write_disk, DiskPlan};
use vdc_backup::store::{DiskIndex, Manifest, Store};
use vdc_backup::BackupError;
use vdc_types::backup::{Backup, BackupJobRequest, Consistency, DiskBackup};
use vdc_types::job::JobResult;
use vdc_types::{now_ms, ApiError, ErrorCode};

use crate::agent::Agent;
use crate::jobs::{job_cancelled, JobCell};
use crate::qemu_nbd::QemuNbd;

/// How often progress is sampled.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// Threads a restore reads and writes chunks with.
pub(crate) use vdc_backup::restore::RESTORE_THREADS;

pub(crate) fn backup_err(e: BackupError) -> ApiError {
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

pub(crate) fn socket_path(tag: &str) -> PathBuf {
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

/// One disk to read and how.
#[derive(Clone)]
struct DiskJob {
    name: String,
    size: u64,
    choice: DiskChoice,
    /// The base backup's chunk index of this disk (incremental reads).
    base_index: Option<Vec<Option<String>>>,
    /// The bitmap started at this backup's point in time.
    new_bitmap: String,
}

/// Where the disks were read from: what to do with the bitmaps once the
/// manifest is written (or not).
enum Source {
    Running(Arc<vdc_qemu::Vm>),
    Stopped(Vec<PathBuf>),
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
        let manifest = r.as_ref().ok().map(|(m, _, _)| m.clone());
        let end = tokio::task::spawn_blocking(move || -> Result<(), BackupError> {
            let written = match &manifest {
                Some(m) => s.write_manifest(m),
                None => Ok(()),
            };
            if let Err(e) = s.end_writer(&id) {
                tracing::warn!(backup = %id, error = %e, "cannot remove the writer marker");
            }
            written
        })
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")));
        let (m, source, jobs) = r?;
        let end = end.and_then(|e| e.map_err(backup_err));
        finish_bitmaps(&source, &jobs, end.is_ok()).await;
        end?;
        Ok(JobResult::Backup(Box::new(m.backup)))
    }

    /// The disks' bitmaps and how each disk will be read.
    async fn plan_disks(
        &self,
        req: &BackupJobRequest,
        store: &Store,
        source: &Source,
    ) -> Result<Vec<DiskJob>, ApiError> {
        let mut seen = Vec::new();
        for (i, d) in req.config.disks.iter().enumerate() {
            let list = match source {
                Source::Running(vm) => vm
                    .dirty_bitmaps(&d.name)
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::HostError, crate::error::chain(&e)))?
                    .into_iter()
                    .map(|b| BitmapSeen {
                        consistent: b.persistent && b.recording && !b.inconsistent,
                        name: b.name,
                    })
                    .collect(),
                Source::Stopped(paths) => image_bitmaps(&paths[i]).await?,
            };
            seen.push(list);
        }
        let (store, req2) = (store.clone(), req.clone());
        let jobs = tokio::task::spawn_blocking(move || {
            req2.config
                .disks
                .iter()
                .zip(seen)
                .map(|(d, bitmaps)| {
                    let mut base_index = None;
                    let choice = choose(&req2.store, &bitmaps, |id| match store.manifest(id) {
                        Ok(m) if m.backup.damaged => BaseState::Unusable("marked damaged".into()),
                        Ok(m) => match m.index.iter().position(|x| x.disk == d.name) {
                            Some(k)
                                if m.backup.disks[k].size_bytes == d.size_bytes
                                    && m.backup.disks[k].chunk_size == store.chunk_size() =>
                            {
                                base_index = Some(m.index[k].chunks.clone());
                                BaseState::Usable
                            }
                            Some(_) => BaseState::Unusable("the disk's size changed".into()),
                            None => BaseState::Unusable("it has no such disk".into()),
                        },
                        Err(BackupError::NoBackup(_)) => {
                            BaseState::Unusable("gone from the store".into())
                        }
                        Err(e) => BaseState::Unusable(e.to_string()),
                    });
                    DiskJob {
                        name: d.name.clone(),
                        size: d.size_bytes,
                        base_index: base_index.filter(|_| choice.bitmap.is_some()),
                        choice,
                        new_bitmap: bitmap_name(&req2.store, &req2.backup_id),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")))?;
        for (i, j) in jobs.iter().enumerate() {
            for b in &j.choice.stale {
                match source {
                    Source::Running(vm) => vm.remove_dirty_bitmap(&j.name, b).await,
                    Source::Stopped(paths) => remove_image_bitmap(&paths[i], b).await,
                }
            }
        }
        Ok(jobs)
    }

    async fn backup_disks(
        self: &Arc<Self>,
        cell: &JobCell,
        req: &BackupJobRequest,
        store: &Store,
        started_ms: u64,
    ) -> Result<(Manifest, Source, Vec<DiskJob>), ApiError> {
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
        let source = match self.slot(&config.id).ok().and_then(|s| s.vm()) {
            Some(vm) => Source::Running(vm),
            None => Source::Stopped(layout.disks.clone()),
        };
        let jobs = self.plan_disks(req, store, &source).await?;
        let (consistency, figures) = match &source {
            Source::Running(vm) => {
                cell.progress(2, "taking the point in time");
                let mut disks = Vec::new();
                for j in &jobs {
                    let image = layout
                        .vm_dir
                        .path()
                        .join(format!(".backup-{}.qcow2", j.name));
                    remove_logged(&image);
                    vdc_disk::qemu_img::create_qcow2(&image, j.size)
                        .await
                        .map_err(|e| {
                            ApiError::new(ErrorCode::HostError, crate::error::chain(&e))
                        })?;
                    disks.push(vdc_qemu::fleece::FleeceDisk {
                        disk: j.name.clone(),
                        image,
                        freeze_bitmap: j.choice.bitmap.clone(),
                        new_bitmap: Some(j.new_bitmap.clone()),
                    });
                }
                // Quiesced through the guest agent when it answers: frozen
                // around the point-in-time transaction only.
                let running = matches!(vm.run_state().await, Ok(vdc_qemu::RunState::Running));
                let qga = vm.paths().guest_agent_socket();
                let frozen = config.guest_agent
                    && running
                    && matches!(
                        vdc_qemu::qga::freeze(&qga, vdc_qemu::qga::DEFAULT_TIMEOUT).await,
                        vdc_qemu::qga::Quiesce::Quiesced { .. }
                    );
                let started = vm.fleece_start(&disks, &socket).await;
                if config.guest_agent && running {
                    if let Err(e) = vdc_qemu::qga::thaw(&qga, vdc_qemu::qga::DEFAULT_TIMEOUT).await
                    {
                        tracing::warn!(vm = %config.name, error = %e, "cannot thaw the guest (it thaws itself after 10 s)");
                    }
                }
                let fleece = match started {
                    Ok(f) => f,
                    Err(e) => {
                        disks.iter().for_each(|d| remove_logged(&d.image));
                        return Err(ApiError::new(
                            ErrorCode::HostError,
                            format!("cannot take the point in time: {}", crate::error::chain(&e)),
                        ));
                    }
                };
                let r = self.read_disks(cell, store, &socket, &jobs, &reading).await;
                vm.fleece_end(&fleece, r.is_err()).await;
                disks.iter().for_each(|d| remove_logged(&d.image));
                let consistency = if frozen {
                    Consistency::Quiesced
                } else {
                    Consistency::CrashConsistent
                };
                (consistency, r?)
            }
            Source::Stopped(paths) => {
                cell.progress(2, "exporting the stopped VM's disks");
                let mut figures = Vec::new();
                for (j, path) in jobs.iter().zip(paths) {
                    let server =
                        QemuNbd::start(path, &j.name, j.choice.bitmap.as_deref(), &socket).await?;
                    let r = self
                        .read_disks(cell, store, &socket, std::slice::from_ref(j), &reading)
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
        Ok((Manifest::new(backup, index), source, jobs))
    }

    /// Reads disks `jobs` from the NBD server on `socket` into the store.
    async fn read_disks(
        &self,
        cell: &JobCell,
        store: &Store,
        socket: &Path,
        jobs: &[DiskJob],
        reading: &Arc<Reading>,
    ) -> Result<Vec<(DiskIndex, DiskBackup)>, ApiError> {
        let plans = jobs.to_vec();
        let (store, socket, rd) = (store.clone(), socket.to_path_buf(), reading.clone());
        let work = tokio::task::spawn_blocking(move || -> Result<Vec<_>, BackupError> {
            let mut out = Vec::new();
            for DiskJob {
                name,
                choice,
                base_index,
                ..
            } in plans
            {
                let (bitmap, read) = (choice.bitmap, choice.read);
                let mut client = vdc_backup::nbd::NbdClient::connect(&socket, &name)?;
                let size = client.size();
                let changed = match (bitmap, base_index) {
                    (Some(b), Some(base)) => {
                        let mut meta = vdc_backup::nbd::NbdClient::connect_meta(
                            &socket,
                            &name,
                            &format!("qemu:dirty-bitmap:{b}"),
                        )?;
                        let extents = meta.block_status(0, size)?;
                        Some((changed_chunks(&extents, size, store.chunk_size()), base))
                    }
                    _ => None,
                };
                let base = rd.done.load(Ordering::Relaxed);
                let plan = DiskPlan {
                    name: name.clone(),
                    size,
                    source: &mut client,
                    changed,
                    read,
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
}

/// After the manifest: the bitmap of this backup's point in time becomes
/// the disk's only one (`written`), or the writes since the last backup
/// are put back into its bitmap (not written).
async fn finish_bitmaps(source: &Source, jobs: &[DiskJob], written: bool) {
    for (i, j) in jobs.iter().enumerate() {
        match (source, written) {
            (Source::Running(vm), true) => {
                if let Some(old) = &j.choice.bitmap {
                    vm.remove_dirty_bitmap(&j.name, old).await;
                }
            }
            (Source::Running(vm), false) => match &j.choice.bitmap {
                Some(old) => vm.restore_dirty_bitmap(&j.name, old, &j.new_bitmap).await,
                None => vm.remove_dirty_bitmap(&j.name, &j.new_bitmap).await,
            },
            (Source::Stopped(paths), true) => {
                if let Err(e) = qemu_img_bitmap(&paths[i], "--add", &j.new_bitmap).await {
                    tracing::warn!(disk = %j.name, error = %e, "cannot start the dirty bitmap; the next backup reads everything");
                }
                if let Some(old) = &j.choice.bitmap {
                    remove_image_bitmap(&paths[i], old).await;
                }
            }
            (Source::Stopped(_), false) => {}
        }
    }
}

async fn qemu_img_bitmap(image: &Path, op: &str, name: &str) -> Result<(), String> {
    let out = tokio::process::Command::new("qemu-img")
        .arg("bitmap")
        .arg(op)
        .arg(image)
        .arg(name)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

async fn remove_image_bitmap(image: &Path, name: &str) {
    if let Err(e) = qemu_img_bitmap(image, "--remove", name).await {
        tracing::warn!(image = %image.display(), bitmap = name, error = %e, "cannot remove a dirty bitmap");
    }
}

/// The dirty bitmaps stored in a stopped VM's qcow2 image.
async fn image_bitmaps(image: &Path) -> Result<Vec<BitmapSeen>, ApiError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()
        .await
        .map_err(|e| ApiError::new(ErrorCode::HostError, format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(ApiError::new(
            ErrorCode::HostError,
            format!(
                "qemu-img info '{}': {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| ApiError::new(ErrorCode::HostError, format!("qemu-img info answered: {e}")))?;
    Ok(v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    let flags: Vec<&str> = b["flags"]
                        .as_array()
                        .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
                        .unwrap_or_default();
                    BitmapSeen {
                        name: b["name"].as_str().unwrap_or_default().to_string(),
                        consistent: flags.contains(&"auto") && !flags.contains(&"in-use"),
                    }
                })
                .collect()
        })
        .unwrap_or_default())
}

pub(crate) fn remove_logged(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a temporary file");
        }
    }
}
