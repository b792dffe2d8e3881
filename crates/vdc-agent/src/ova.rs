//! OVA export: a stopped VM written as a DMTF OVF package.
//!
//! 1. The OVA path must be absolute, end in `.ova`, not exist, and sit in
//!    one of the agent's import directories (the exchange place with the
//!    outside; nothing is ever written elsewhere).
//! 2. Each disk is converted into a streamOptimized VMDK (`qemu-img
//!    convert -O vmdk -o subformat=streamOptimized`, progress from `-p`)
//!    in a temporary directory beside the OVA.
//! 3. The descriptor (`vdc_ovf::write_descriptor`: CPUs, memory, disks,
//!    NICs with their network names) and the manifest (SHA-256 of the
//!    descriptor and each disk) are made.
//! 4. The tar is written in OVF's order (descriptor, manifest, disks) to a
//!    temporary file, synced, renamed to the OVA, the directory synced.
//!
//! A failure or cancel removes the temporary directory and file: nothing
//! is left but a finished OVA.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use vdc_disk::qemu_img;
use vdc_ovf::{Digest, DigestAlgorithm, OvfDisk, OvfNic, OvfSystem};
use vdc_types::ova::{ExportOvaRequest, ExportOvaResponse};
use vdc_types::{ApiError, ErrorCode};

use crate::agent::Agent;
use crate::error::{disk_error, host_error};

/// The temporary paths of one export, removed whatever happens.
pub(crate) struct ExportScratch {
    /// Directory of the converted disks.
    pub dir: PathBuf,
    /// The tar being written.
    pub tar: PathBuf,
}

impl ExportScratch {
    /// The scratch paths beside `ova`.
    pub(crate) fn beside(ova: &Path) -> Self {
        let parent = ova.parent().unwrap_or(Path::new("/"));
        let name = ova
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        Self {
            dir: parent.join(format!(".{name}.{tag}.d")),
            tar: parent.join(format!(".{name}.{tag}.tmp")),
        }
    }

    /// Removes what exists of them (logged).
    pub(crate) fn remove(&self) {
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove an export's scratch directory");
            }
        }
        if let Err(e) = std::fs::remove_file(&self.tar) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.tar.display(), error = %e, "cannot remove an export's scratch file");
            }
        }
    }
}

impl Agent {
    /// Checks where an OVA may be written (module docs, step 1).
    pub(crate) fn check_ova_target(&self, ova: &str) -> Result<PathBuf, ApiError> {
        let path = PathBuf::from(ova);
        let name_ok = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .is_some_and(|n| n.ends_with(".ova") && n.len() > 4 && !n.starts_with('.'));
        if !path.is_absolute() || !name_ok {
            return Err(ApiError::invalid(format!(
                "OVA file '{ova}' must be an absolute path ending in .ova"
            )));
        }
        let parent = path
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "the directory of '{ova}' does not exist on host '{}'",
                    self.config.name
                ))
            })?;
        let roots = self.import_roots();
        if !roots.iter().any(|r| parent.starts_with(r)) {
            return Err(ApiError::invalid(format!(
                "'{ova}' is outside the import directories of host '{}' ({}); write it there",
                self.config.name,
                roots
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let target = parent.join(path.file_name().unwrap_or_default());
        if target.exists() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("'{ova}' already exists; choose another file"),
            ));
        }
        Ok(target)
    }

    /// Writes the OVA of stopped VM `req.config` (module docs).
    pub(crate) async fn export_ova(
        &self,
        req: &ExportOvaRequest,
        target: &Path,
        scratch: &ExportScratch,
        progress: impl Fn(u8, &str) + Send + Sync,
    ) -> Result<ExportOvaResponse, ApiError> {
        let config = &req.config;
        if let Ok(slot) = self.slot(&config.id) {
            if slot.state().has_process() {
                return Err(ApiError::invalid_state(format!(
                    "VM '{}' is {}; power it off before exporting it",
                    config.name,
                    slot.state()
                )));
            }
        }
        let layout = self.layout(config)?;
        std::fs::create_dir(&scratch.dir)
            .map_err(|e| host_error("cannot create the export's scratch directory", &e))?;
        let n = config.disks.len().max(1) as u32;
        let mut disks = Vec::new();
        for (i, (disk, path)) in config.disks.iter().zip(&layout.disks).enumerate() {
            let file = format!("{}-{}.vmdk", config.name, disk.name);
            let out = scratch.dir.join(&file);
            let base = (i as u32 * 90 / n) as u8;
            qemu_img::convert_with_progress(
                path,
                "qcow2",
                &out,
                "vmdk",
                Some("subformat=streamOptimized"),
                |p| {
                    progress(
                        base + (p as u32 * 90 / n / 100) as u8,
                        "converting the disks",
                    )
                },
            )
            .await
            .map_err(|e| disk_error(format!("cannot convert disk '{}'", disk.name), e))?;
            let size = std::fs::metadata(&out)
                .map_err(|e| host_error("cannot read a converted disk", &e))?
                .len();
            disks.push((
                out,
                OvfDisk {
                    file,
                    file_size: Some(size),
                    capacity_bytes: disk.size_bytes,
                },
            ));
        }
        let system = OvfSystem {
            name: config.name.clone(),
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            disks: disks.iter().map(|(_, d)| d.clone()).collect(),
            nics: config
                .nics
                .iter()
                .map(|n| OvfNic {
                    network: n.network.clone(),
                    mac: Some(n.mac.clone()),
                })
                .collect(),
        };
        progress(92, "writing the package");
        let descriptor = vdc_ovf::write_descriptor(&system);
        let name = config.name.clone();
        let tar = scratch.tar.clone();
        let target_owned = target.to_path_buf();
        let files = tokio::task::spawn_blocking(move || {
            write_ova(&name, &descriptor, &disks, &tar, &target_owned)
        })
        .await
        .map_err(|e| ApiError::internal(format!("the export stopped: {e}")))?
        .map_err(|e| host_error("cannot write the OVA", &e))?;
        let size_bytes = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
        tracing::info!(vm = %config.name, ova = %target.display(), size_bytes, "exported");
        Ok(ExportOvaResponse {
            ova: target.display().to_string(),
            size_bytes,
            files,
        })
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut d = Digest::new(DigestAlgorithm::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(d.hex());
        }
        d.update(&buf[..n]);
    }
}

/// Writes the tar (descriptor, manifest, disks) to `tmp`, syncs it and
/// renames it to `target`; returns the member names.
fn write_ova(
    name: &str,
    descriptor: &str,
    disks: &[(PathBuf, OvfDisk)],
    tmp: &Path,
    target: &Path,
) -> std::io::Result<Vec<String>> {
    let ovf_name = format!("{name}.ovf");
    let mf_name = format!("{name}.mf");
    let mut digests = Vec::new();
    let mut d = Digest::new(DigestAlgorithm::Sha256);
    d.update(descriptor.as_bytes());
    digests.push((ovf_name.clone(), d.hex()));
    for (path, disk) in disks {
        digests.push((disk.file.clone(), sha256_file(path)?));
    }
    let manifest = vdc_ovf::manifest(&digests);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    let mut b = tar::Builder::new(file);
    let add_bytes = |b: &mut tar::Builder<std::fs::File>, n: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, n, data)
    };
    add_bytes(&mut b, &ovf_name, descriptor.as_bytes())?;
    add_bytes(&mut b, &mf_name, manifest.as_bytes())?;
    let mut files = vec![ovf_name, mf_name];
    for (path, disk) in disks {
        let mut f = std::fs::File::open(path)?;
        let mut h = tar::Header::new_ustar();
        h.set_size(f.metadata()?.len());
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, &disk.file, &mut f)?;
        files.push(disk.file.clone());
    }
    let mut file = b.into_inner()?;
    file.flush()?;
    file.sync_all()?;
    std::fs::rename(tmp, target)?;
    if let Some(dir) = target.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(files)
}
