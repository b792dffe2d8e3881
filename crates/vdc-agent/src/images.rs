//! Disk images from outside vdc: where a source may be read from, and what
//! it holds, by the rules of [`vdc_disk::image`].
//!
//! A source is an absolute path (symbolic links resolved) inside an import
//! directory (`--import-dir`) or a datastore, or a path relative to a
//! datastore. A physical disk (P2V from a block device) is read only when
//! the administrator lists the device itself as an import directory
//! (`--import-dir /dev/sdb`): no other block device of the host is ever
//! read.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use vdc_disk::image;
use vdc_types::agent::{ImageInspection, InspectImageRequest};
use vdc_types::api::ImageFormat;
use vdc_types::{ApiError, ErrorCode};

use crate::agent::Agent;
use crate::error::{disk_error, host_error};

impl Agent {
    /// Resolves and checks an image source (see the module docs) and
    /// returns its canonical path and the format to read it as.
    pub(crate) async fn checked_source(
        &self,
        source: &str,
        source_datastore: Option<&str>,
        format: Option<ImageFormat>,
    ) -> Result<(PathBuf, ImageFormat), ApiError> {
        let given = match source_datastore {
            Some(ds) => self.resolve(ds, source)?,
            None => PathBuf::from(source),
        };
        if !given.is_absolute() {
            return Err(ApiError::invalid(format!(
                "image source '{source}' must be an absolute path on host '{}'",
                self.config.name
            )));
        }
        let path = match std::fs::canonicalize(&given) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("image '{source}' not found on host '{}'", self.config.name),
                ))
            }
            Err(e) => return Err(host_error(format!("cannot resolve '{source}'"), &e)),
        };
        let refused = |reason| {
            disk_error(
                format!("cannot import '{source}'"),
                vdc_disk::DiskError::ImageRefused {
                    path: given.clone(),
                    reason,
                },
            )
        };
        let datastores = self.datastore_roots();
        let imports = self.import_roots();
        let block = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_block_device());
        let listed_device = block && imports.contains(&path);
        let allowed: Vec<PathBuf> = datastores.iter().cloned().chain(imports).collect();
        if !listed_device && !image::within(&path, &allowed) {
            return Err(refused(image::ImageRefusal::SourceOutside {
                allowed: allowed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }));
        }
        if !listed_device && !path.is_file() {
            return Err(refused(image::ImageRefusal::NotAFile));
        }
        let format = image::inspect(&path, format, &datastores)
            .await
            .map_err(|e| disk_error(format!("cannot import '{source}'"), e))?;
        Ok((path, format))
    }

    /// `POST /images/inspect`: what an image source holds, checked as an
    /// import would check it.
    pub async fn inspect_image(
        &self,
        req: &InspectImageRequest,
    ) -> Result<ImageInspection, ApiError> {
        let (path, format) = self.checked_source(&req.source, None, req.format).await?;
        let info = vdc_disk::qemu_img::info(&path, format)
            .await
            .map_err(|e| disk_error(format!("cannot read '{}'", req.source), e))?;
        Ok(ImageInspection {
            format,
            size_bytes: info.virtual_size,
        })
    }
}
