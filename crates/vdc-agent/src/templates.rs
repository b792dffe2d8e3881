//! Template images on a datastore: a VM's boot disk kept as a template's
//! image when the VM becomes a template, and a template's image removed
//! when the template is deleted.
//!
//! Template images live under `templates/` of a datastore, read-only
//! (mode 0444): nothing vdc runs writes them (linked clones open them as
//! read-only backing files). A boot disk that is itself a linked clone
//! keeps its backing file, recorded again relative to its new place.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vdc_disk::qemu_img;
use vdc_types::agent::RemoveImageRequest;
use vdc_types::api::ImageFormat;
use vdc_types::{ApiError, ErrorCode, VmConfig};

use crate::agent::Agent;
use crate::error::{disk_error, host_error};

/// Checks that `path` names a template image: `templates/NAME.qcow2`.
pub(crate) fn check_template_path(path: &str) -> Result<(), ApiError> {
    let ok = path
        .strip_prefix("templates/")
        .and_then(|n| n.strip_suffix(".qcow2"))
        .is_some_and(|n| {
            !n.is_empty()
                && !n.starts_with('.')
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "'{path}' is not a template image path (templates/NAME.qcow2)"
        )))
    }
}

/// Makes the file at `path` read-only.
pub(crate) fn make_read_only(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

impl Agent {
    /// Moves the boot disk of stopped VM `config` to `dest` (a template
    /// image path on the VM's datastore), read-only, its backing file (if
    /// any) recorded relative to its new place. Nothing else changes; the
    /// VM's other files are removed by [`Agent::destroy`] after it.
    pub(crate) async fn keep_boot_disk(
        &self,
        config: &VmConfig,
        dest: &str,
    ) -> Result<(), ApiError> {
        check_template_path(dest)?;
        if let Ok(slot) = self.slot(&config.id) {
            if slot.state().has_process() {
                return Err(ApiError::invalid_state(format!(
                    "VM '{}' is {}; stop it before making it a template",
                    config.name,
                    slot.state()
                )));
            }
        }
        let boot = config
            .disks
            .first()
            .ok_or_else(|| ApiError::invalid(format!("VM '{}' has no disk", config.name)))?;
        if boot.datastore != config.datastore {
            return Err(ApiError::invalid(format!(
                "the boot disk of VM '{}' is on datastore '{}', not the VM's '{}'; clone it to a template instead",
                config.name, boot.datastore, config.datastore
            )));
        }
        let layout = self.layout(config)?;
        let from = &layout.disks[0];
        let to = self.resolve(&config.datastore, dest)?;
        if to.exists() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "'{dest}' already exists on datastore '{}'",
                    config.datastore
                ),
            ));
        }
        let what = format!("cannot keep the boot disk of VM '{}'", config.name);
        let info = qemu_img::info(from, ImageFormat::Qcow2)
            .await
            .map_err(|e| disk_error(&what, e))?;
        let backing = info.backing_file.clone();
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| host_error("cannot create the templates directory", &e))?;
        }
        std::fs::rename(from, &to).map_err(|e| host_error(&what, &e))?;
        if let Some(b) = backing {
            if let Err(e) = qemu_img::rebase_in_place(&to, Path::new(&b)).await {
                if let Err(back) = std::fs::rename(&to, from) {
                    tracing::error!(from = %to.display(), to = %from.display(), error = %back, "cannot put a boot disk back after a failed rebase");
                }
                return Err(disk_error(&what, e));
            }
        }
        if let Err(e) = make_read_only(&to) {
            tracing::warn!(path = %to.display(), error = %e, "cannot make a template image read-only");
        }
        tracing::info!(vm = %config.name, template = %dest, "boot disk kept as a template image");
        Ok(())
    }

    /// `POST /images/remove`: deletes a template's image file (a missing
    /// file counts as removed).
    pub async fn remove_image(&self, req: &RemoveImageRequest) -> Result<(), ApiError> {
        check_template_path(&req.path)?;
        let path = self.resolve(&req.datastore, &req.path)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "template image removed");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(host_error(
                format!(
                    "cannot remove '{}' on datastore '{}'",
                    req.path, req.datastore
                ),
                &e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_paths() {
        assert!(check_template_path("templates/a.qcow2").is_ok());
        for bad in [
            "templates/../x.qcow2",
            "vm/disk0.qcow2",
            "templates/.x.qcow2",
            "templates/a/b.qcow2",
            "templates/.qcow2",
            "templates/a.raw",
        ] {
            assert!(check_template_path(bad).is_err(), "{bad}");
        }
    }
}
