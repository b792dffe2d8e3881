//! VM files on a datastore: provision (directory, disks, `vm.json`),
//! destroy, and image import for templates.
//!
//! Import reads a file from outside vdc, so it follows the rules of
//! [`vdc_disk::image`]: the path (symbolic links resolved) must be inside an
//! import directory (`--import-dir`) or a datastore, the format is checked
//! against the file's content and always given to `qemu-img`, and backing
//! files must be vdc's own. Destroy removes files only inside the VM's
//! directory on each datastore; a disk kept elsewhere is left in place.

use std::path::{Path, PathBuf};

use vdc_disk::{image, qemu_img};
use vdc_types::agent::{
    DiskSource, ImportImageRequest, ImportImageResponse, ProvisionVmRequest, VmRuntime,
};
use vdc_types::api::ImageFormat;
use vdc_types::{ApiError, ErrorCode, VmConfig, VmPowerState};

use crate::error::{disk_error, host_error};

use crate::agent::{Agent, Layout};

impl Agent {
    /// `PUT /vms/{id}`: create directory, disks and `vm.json`.
    pub async fn provision(
        &self,
        id: &str,
        req: ProvisionVmRequest,
    ) -> Result<VmRuntime, ApiError> {
        let config = req.config;
        check_config(id, &config)?;
        if let Ok(slot) = self.slot(id) {
            if slot.state().has_process() {
                return Err(ApiError::invalid_state(format!(
                    "VM '{}' is {}; stop it before provisioning it again",
                    config.name,
                    slot.state()
                )));
            }
        }
        let layout = self.layout(&config)?;
        if layout.vm_dir.exists() {
            return match layout.vm_dir.read_config() {
                Ok(existing) if existing.id == config.id => {
                    let slot = self.slot_or_insert(&config, VmPowerState::Stopped);
                    let _op = slot.op.lock().await;
                    slot.inner().config = config;
                    slot.persist_config()
                        .map_err(|e| host_error("cannot write the runtime directory", &e))?;
                    Ok(slot.runtime())
                }
                _ => Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "directory '{}' on datastore '{}' already exists and belongs to another VM",
                        config.dir, config.datastore
                    ),
                )),
            };
        }
        for (disk, path) in config.disks.iter().zip(&layout.disks) {
            if path.exists() {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "disk file '{}' on datastore '{}' already exists",
                        disk.path, disk.datastore
                    ),
                ));
            }
        }
        let mut image_format = ImageFormat::Qcow2;
        let mut ova_spec = None;
        let mut template_bytes = 0;
        let template = match &req.boot_source {
            DiskSource::Blank => None,
            DiskSource::Template {
                datastore,
                path,
                linked,
            } => {
                let p = self.resolve(datastore, path)?;
                if !p.is_file() {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        format!("template disk '{path}' not found on datastore '{datastore}'"),
                    ));
                }
                let (_, size) = image::inspect_sized(
                    &p,
                    Some(ImageFormat::Qcow2),
                    &self.datastore_roots(),
                    qemu_img::INFO_TIMEOUT,
                )
                .await
                .map_err(|e| disk_error(format!("template disk '{path}'"), e))?;
                template_bytes = size;
                Some((p, *linked))
            }
            DiskSource::OvaDisk { ova, offset, size } => {
                let p = self.checked_ova(ova)?;
                let spec = qemu_img::vmdk_slice(&p, *offset, *size);
                crate::ova_read::check_single_vmdk(&spec, ova, "disk").await?;
                ova_spec = Some(spec);
                None
            }
            DiskSource::Image { source, format } => {
                let (p, f) = self.checked_source(source, None, *format).await?;
                image_format = f;
                Some((p, false))
            }
        };
        layout.vm_dir.create().map_err(|e| {
            disk_error(
                format!("cannot create the directory of VM '{}'", config.name),
                e,
            )
        })?;
        let mut copies = Vec::new();
        for f in &req.data_sources {
            let p = self.resolve(&f.datastore, &f.path)?;
            image::inspect(&p, Some(ImageFormat::Qcow2), &self.datastore_roots())
                .await
                .map_err(|e| disk_error(format!("disk '{}' to copy", f.path), e))?;
            copies.push(p);
        }
        let mut images = Vec::new();
        for (i, source) in req.data_images.iter().enumerate() {
            let DiskSource::OvaDisk { ova, offset, size } = source else {
                return Err(ApiError::invalid(
                    "a data disk read from elsewhere must be a disk of an OVA",
                ));
            };
            let p = self.checked_ova(ova)?;
            let spec = qemu_img::vmdk_slice(&p, *offset, *size);
            crate::ova_read::check_single_vmdk(&spec, ova, &format!("data disk {}", i + 1)).await?;
            images.push(spec);
        }
        let made = self
            .make_disks(
                &config,
                &layout,
                (template.map(|(p, l)| (p, l, image_format)), ova_spec),
                (&copies, &images),
                template_bytes,
            )
            .await
            .and_then(|()| {
                layout
                    .vm_dir
                    .write_config(&config)
                    .map_err(|e| disk_error("cannot write vm.json", e))
            });
        if let Err(e) = made {
            for p in layout.disks.iter().chain([&layout.vm_dir.config_path()]) {
                remove_made(p, std::fs::remove_file(p));
            }
            remove_made(
                layout.vm_dir.path(),
                std::fs::remove_dir(layout.vm_dir.path()),
            );
            return Err(e);
        }
        let slot = self.slot_or_insert(&config, VmPowerState::Stopped);
        slot.inner().config = config.clone();
        slot.persist_config()
            .map_err(|e| host_error("cannot write the runtime directory", &e))?;
        self.changed.notify_one();
        tracing::info!(vm = %config.name, "provisioned");
        Ok(slot.runtime())
    }

    async fn make_disks(
        &self,
        config: &VmConfig,
        layout: &Layout,
        (template, ova_spec): (Option<(PathBuf, bool, ImageFormat)>, Option<String>),
        (copies, images): (&[PathBuf], &[String]),
        template_bytes: u64,
    ) -> Result<(), ApiError> {
        for (i, (disk, path)) in config.disks.iter().zip(&layout.disks).enumerate() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    host_error(
                        format!("cannot create the directory of disk '{}'", disk.name),
                        &e,
                    )
                })?;
            }
            let what = format!("cannot create disk '{}'", disk.name);
            match (i, &template) {
                (0, Some((src, true, _))) if disk.size_bytes >= template_bytes => {
                    // One run: the size is given (at least the template's,
                    // read when it was checked), nothing to read back or
                    // grow.
                    qemu_img::create_linked_clone(path, src, Some(disk.size_bytes))
                        .await
                        .map_err(|e| disk_error(&what, e))?;
                }
                (0, Some((src, linked, format))) => {
                    if *linked {
                        qemu_img::create_linked_clone(path, src, None).await
                    } else {
                        qemu_img::convert_to_qcow2(src, *format, path).await
                    }
                    .map_err(|e| disk_error(&what, e))?;
                    let size = qemu_img::info(path, ImageFormat::Qcow2)
                        .await
                        .map_err(|e| disk_error(&what, e))?
                        .virtual_size;
                    if disk.size_bytes > size {
                        qemu_img::grow(path, disk.size_bytes)
                            .await
                            .map_err(|e| disk_error(&what, e))?;
                    }
                }
                (0, None) if ova_spec.is_some() => {
                    let spec = ova_spec.as_deref().unwrap_or_default();
                    import_grown(spec, path, disk.size_bytes)
                        .await
                        .map_err(|e| disk_error(&what, e))?;
                }
                (i, _) if i > 0 && i <= copies.len() => {
                    qemu_img::convert_to_qcow2(&copies[i - 1], ImageFormat::Qcow2, path)
                        .await
                        .map_err(|e| disk_error(&what, e))?
                }
                (i, _) if i > copies.len() && i - copies.len() <= images.len() => {
                    import_grown(&images[i - copies.len() - 1], path, disk.size_bytes)
                        .await
                        .map_err(|e| disk_error(&what, e))?;
                }
                _ => qemu_img::create_qcow2(path, disk.size_bytes)
                    .await
                    .map_err(|e| disk_error(&what, e))?,
            }
        }
        Ok(())
    }

    /// `DELETE /vms/{id}`: remove the VM's files; it must have no process.
    pub async fn destroy(&self, id: &str, config: VmConfig) -> Result<(), ApiError> {
        check_config(id, &config)?;
        let slot = self.slot(id).ok();
        let _op = match &slot {
            Some(s) => Some(s.op.lock().await),
            None => None,
        };
        if let Some(s) = &slot {
            if s.state().has_process() {
                return Err(ApiError::invalid_state(format!(
                    "VM '{}' is {}; stop it before destroying it",
                    config.name,
                    s.state()
                )));
            }
        }
        let layout = self.layout(&config)?;
        let ended = self.instant.end(id);
        if !ended.is_empty() {
            tracing::info!(vm = %config.name, ?ended, "ended the exports of an instant restore");
        }
        if slot.is_none() && !layout.vm_dir.exists() {
            return Err(ApiError::not_found("VM", &config.name));
        }
        // Never remove the files of another VM that happens to use the
        // same directory (a name reused on a shared datastore).
        if let Ok(on_disk) = layout.vm_dir.read_config() {
            if on_disk.id != config.id {
                return Err(ApiError::new(
                    vdc_types::ErrorCode::InvalidState,
                    format!(
                        "the directory of VM '{}' holds another VM (id {}); nothing was removed",
                        config.name, on_disk.id
                    ),
                ));
            }
        }
        // Only files inside the VM's directory are removed: a disk the
        // configuration places anywhere else is left where it is.
        let mut in_dir = Vec::new();
        let mut moved = Vec::new();
        for (disk, path) in config.disks.iter().zip(&layout.disks) {
            // A disk moved by a storage migration lives in the directory of
            // the VM's name on its own datastore: the VM's too.
            let own_elsewhere = self
                .resolve(&disk.datastore, &config.dir)
                .is_ok_and(|d| disk.datastore != config.datastore && path.parent() == Some(&d));
            match path.file_name() {
                Some(name) if path.parent() == Some(layout.vm_dir.path()) => {
                    in_dir.push(name.to_string_lossy().into_owned());
                }
                Some(_) if own_elsewhere => moved.push(path.clone()),
                _ => tracing::warn!(
                    vm = %config.name,
                    disk = %disk.name,
                    path = %disk.path,
                    datastore = %disk.datastore,
                    "disk is outside the VM directory; left in place"
                ),
            }
        }
        // The configured files too: with snapshots the layout names the
        // active overlays, and a configured file may be no snapshot's.
        for disk in &config.disks {
            if let Ok(path) = self.resolve(&disk.datastore, &disk.path) {
                if path.parent() == Some(layout.vm_dir.path()) {
                    if let Some(name) = path.file_name() {
                        in_dir.push(name.to_string_lossy().into_owned());
                    }
                }
            }
        }
        let left = layout
            .vm_dir
            .remove(&self.config.name, &in_dir)
            .map_err(|e| {
                disk_error(
                    format!("cannot remove the directory of VM '{}'", config.name),
                    e,
                )
            })?;
        if !left.is_empty() {
            tracing::warn!(
                vm = %config.name,
                dir = %layout.vm_dir.path().display(),
                files = ?left,
                "files vdc does not know were left in the VM's directory"
            );
        }
        for path in moved {
            remove_made(&path, std::fs::remove_file(&path));
            if let Some(dir) = path.parent() {
                if let Err(e) = std::fs::remove_dir(dir) {
                    tracing::debug!(path = %dir.display(), error = %e, "directory of a moved disk kept");
                }
            }
        }
        self.forget(id);
        tracing::info!(vm = %config.name, "destroyed");
        Ok(())
    }

    /// `POST /images/import`: convert `source` into a qcow2 in a datastore,
    /// by the rules of the module docs.
    pub async fn import_image(
        &self,
        req: ImportImageRequest,
    ) -> Result<ImportImageResponse, ApiError> {
        let (source, format) = self
            .checked_source(&req.source, req.source_datastore.as_deref(), req.format)
            .await?;
        let dest = self.resolve(&req.datastore, &req.path)?;
        if dest.exists() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "'{}' already exists on datastore '{}'",
                    req.path, req.datastore
                ),
            ));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| host_error("cannot create the target directory", &e))?;
        }
        let what = format!("cannot import '{}'", req.source);
        let result = async {
            qemu_img::convert_to_qcow2(&source, format, &dest).await?;
            qemu_img::info(&dest, ImageFormat::Qcow2).await
        }
        .await;
        match result {
            Ok(info) => {
                if let Err(e) = crate::templates::make_read_only(&dest) {
                    tracing::warn!(path = %dest.display(), error = %e, "cannot make an imported image read-only");
                }
                tracing::info!(source = %source.display(), %format, dest = %dest.display(), "image imported");
                Ok(ImportImageResponse {
                    size_bytes: info.virtual_size,
                    format,
                })
            }
            Err(e) => {
                remove_made(&dest, std::fs::remove_file(&dest));
                Err(disk_error(what, e))
            }
        }
    }

    /// The datastores' roots, symbolic links resolved (those that resolve).
    pub(crate) fn datastore_roots(&self) -> Vec<PathBuf> {
        canonical_roots(self.datastores.iter().map(|d| d.path.as_path()))
    }

    /// The import directories, symbolic links resolved (those that exist).
    pub(crate) fn import_roots(&self) -> Vec<PathBuf> {
        canonical_roots(self.config.import_dirs.iter().map(PathBuf::as_path))
    }
}

/// Writes the image `spec` names (an OVA member or a foreign image) as
/// qcow2 at `path`, grown to `size_bytes` when it is smaller.
async fn import_grown(spec: &str, path: &Path, size_bytes: u64) -> Result<(), vdc_disk::DiskError> {
    qemu_img::convert_spec_to_qcow2(spec, path).await?;
    let size = qemu_img::info(path, ImageFormat::Qcow2).await?.virtual_size;
    if size_bytes > size {
        qemu_img::grow(path, size_bytes).await?;
    }
    Ok(())
}

fn canonical_roots<'a>(dirs: impl Iterator<Item = &'a Path>) -> Vec<PathBuf> {
    dirs.filter_map(|d| match std::fs::canonicalize(d) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %d.display(), error = %e, "cannot resolve directory");
            None
        }
    })
    .collect()
}

/// Logs a failed removal during a rollback (a missing file is fine).
fn remove_made(path: &Path, result: std::io::Result<()>) {
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a file made by a failed operation");
        }
    }
}

/// Checks a configuration against the id in the URL and basic sanity.
pub(crate) fn check_config(id: &str, config: &VmConfig) -> Result<(), ApiError> {
    if config.id != id {
        return Err(ApiError::invalid(format!(
            "config id '{}' does not match the VM id '{id}' in the URL",
            config.id
        )));
    }
    if config.version > vdc_types::vm::VM_CONFIG_VERSION {
        return Err(ApiError::invalid(format!(
            "config version {} is newer than this agent understands ({})",
            config.version,
            vdc_types::vm::VM_CONFIG_VERSION
        )));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || id.is_empty() || id.len() > 64
    {
        return Err(ApiError::invalid(format!(
            "VM id '{id}' must be letters, digits and '-'"
        )));
    }
    vdc_types::names::validate_name("VM", &config.name).map_err(ApiError::invalid)?;
    vdc_types::vm::validate_qemu_model("machine type", &config.machine_type)
        .map_err(ApiError::invalid)?;
    vdc_types::vm::validate_qemu_model("CPU model", &config.cpu_model)
        .map_err(ApiError::invalid)?;
    if config.disks.is_empty() {
        return Err(ApiError::invalid(format!(
            "VM '{}' has no disk",
            config.name
        )));
    }
    for d in &config.disks {
        let ok = d.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && d.name.len() <= 31
            && d.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ApiError::invalid(format!(
                "disk name '{}' must start with a letter and hold letters, digits, '-' or '_'",
                d.name
            )));
        }
        if d.size_bytes == 0 {
            return Err(ApiError::invalid(format!("disk '{}' has size 0", d.name)));
        }
    }
    if config.cpus == 0 || config.memory_mib < 16 {
        return Err(ApiError::invalid(format!(
            "VM '{}' needs at least 1 CPU and 16 MiB of memory",
            config.name
        )));
    }
    Ok(())
}
