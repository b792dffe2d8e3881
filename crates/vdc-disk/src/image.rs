//! Images that come from outside vdc: which ones may be read, and as what.
//!
//! A disk image can make `qemu-img` read other files: a qcow2 backing file
//! or external data file, vmdk extents. Read as the wrong format, a plain
//! raw file that starts with a qcow2 header becomes a qcow2 image with
//! whatever backing file its author wrote (`/etc/shadow`, say), and a
//! conversion copies that file into the datastore. So an image from outside
//! is accepted only when:
//!
//! 1. its path, with every symbolic link resolved, is inside one of the
//!    allowed places (the agent's import directories and datastores);
//! 2. the format stated by the user, if any, is what `qemu-img` finds in
//!    the file (a file stated raw but holding an image header is refused);
//! 3. it reads no file but itself (no external data file, no extent
//!    elsewhere), except
//! 4. backing files that are vdc's own: inside a datastore, with their
//!    format recorded, each of them checked by the same rules.
//!
//! The decisions are pure functions of `qemu-img info` output
//! ([`check_layer`], [`backing_of`], [`within`]); [`inspect`] drives them.

use std::path::{Path, PathBuf};

use vdc_types::api::ImageFormat;

use crate::qemu_img::{self, ImageInfo};
use crate::DiskError;

/// Longest backing chain followed.
pub const MAX_CHAIN: usize = 16;

/// Why an image from outside vdc was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefusal {
    /// The path is not inside an import directory or a datastore.
    #[error("it is not inside an import directory or a datastore of this host (allowed: {allowed}); copy it into one of them")]
    SourceOutside {
        /// The allowed places, comma-separated.
        allowed: String,
    },
    /// The path is not a regular file.
    #[error("it is not a regular file")]
    NotAFile,
    /// The file was stated raw but starts with an image header.
    #[error("it was given as raw but holds a {found} image header; vdc does not import raw files that look like another format")]
    RawWithHeader {
        /// Format `qemu-img` found.
        found: String,
    },
    /// The file holds another format than the one stated.
    #[error("it was given as {stated} but holds a {found} image; state the format it is")]
    FormatMismatch {
        /// Format the user stated.
        stated: ImageFormat,
        /// Format `qemu-img` found.
        found: String,
    },
    /// A format vdc does not import.
    #[error("it is a '{found}' image; vdc imports raw, qcow2, vmdk, vhdx and vpc")]
    UnsupportedFormat {
        /// Format `qemu-img` found.
        found: String,
    },
    /// The image reads data from other files.
    #[error("it reads data from other files ({files}); convert it into a single file first")]
    OtherFiles {
        /// Those files, comma-separated.
        files: String,
    },
    /// A backing file outside every datastore.
    #[error("its backing file '{backing}' is not inside a datastore of this host; flatten the image first (qemu-img convert)")]
    BackingOutside {
        /// The backing file as recorded in the image.
        backing: String,
    },
    /// A backing file whose format the image does not record.
    #[error("its backing file '{backing}' has no recorded format; rebase it with the format stated (qemu-img rebase -F)")]
    BackingFormatUnknown {
        /// The backing file as recorded in the image.
        backing: String,
    },
    /// `qemu-img` could not read the image in time: it names a pipe or a
    /// device that does not answer.
    #[error("qemu-img could not read it within {seconds} s; does it refer to a pipe or a device?")]
    Unreadable {
        /// The time allowed.
        seconds: u64,
    },
    /// More backing files than [`MAX_CHAIN`].
    #[error("its backing chain is longer than {MAX_CHAIN} images")]
    ChainTooLong,
}

/// Whether `path` is inside one of `roots`. Both must already be canonical
/// (symbolic links resolved); a root itself is not "inside".
pub fn within(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| path != r && path.starts_with(r))
}

/// The format to read one image as, given the format the caller states
/// (the user, or the image above it in a chain) and what `qemu-img`
/// guessed: they must agree, and the image must read no other file.
pub fn check_layer(
    stated: Option<ImageFormat>,
    probed: &ImageInfo,
) -> Result<ImageFormat, ImageRefusal> {
    let found = ImageFormat::from_qemu_name(&probed.format);
    let format = match (stated, found) {
        (Some(s), Some(f)) if s == f => s,
        (Some(ImageFormat::Raw), _) => {
            return Err(ImageRefusal::RawWithHeader {
                found: probed.format.clone(),
            })
        }
        (Some(stated), _) => {
            return Err(ImageRefusal::FormatMismatch {
                stated,
                found: probed.format.clone(),
            })
        }
        (None, Some(f)) => f,
        (None, None) => {
            return Err(ImageRefusal::UnsupportedFormat {
                found: probed.format.clone(),
            })
        }
    };
    if !probed.other_files.is_empty() {
        return Err(ImageRefusal::OtherFiles {
            files: probed.other_files.join(", "),
        });
    }
    Ok(format)
}

/// The backing file of an image at `image` (as a path to resolve: relative
/// names are relative to the image's directory) and its recorded format;
/// `None` without a backing file.
pub fn backing_of(
    image: &Path,
    info: &ImageInfo,
) -> Result<Option<(PathBuf, ImageFormat)>, ImageRefusal> {
    let Some(backing) = &info.backing_file else {
        return Ok(None);
    };
    let format = info
        .backing_format
        .as_deref()
        .and_then(ImageFormat::from_qemu_name)
        .ok_or_else(|| ImageRefusal::BackingFormatUnknown {
            backing: backing.clone(),
        })?;
    let path = Path::new(backing);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new("/")).join(path)
    };
    Ok(Some((path, format)))
}

/// Checks an image from outside vdc by the rules of the module docs and
/// returns the format to read it as. `source` must already be canonical
/// and inside an allowed place; `datastores` are the canonical datastore
/// roots (where vdc's own backing files live).
pub async fn inspect(
    source: &Path,
    stated: Option<ImageFormat>,
    datastores: &[PathBuf],
) -> Result<ImageFormat, DiskError> {
    inspect_within(source, stated, datastores, qemu_img::INFO_TIMEOUT).await
}

/// [`inspect`] with each `qemu-img info` bounded by `timeout`.
pub async fn inspect_within(
    source: &Path,
    stated: Option<ImageFormat>,
    datastores: &[PathBuf],
    timeout: std::time::Duration,
) -> Result<ImageFormat, DiskError> {
    inspect_sized(source, stated, datastores, timeout)
        .await
        .map(|(f, _)| f)
}

/// [`inspect_within`], also giving the image's virtual size.
pub async fn inspect_sized(
    source: &Path,
    stated: Option<ImageFormat>,
    datastores: &[PathBuf],
    timeout: std::time::Duration,
) -> Result<(ImageFormat, u64), DiskError> {
    let refuse = |path: &Path, reason| DiskError::ImageRefused {
        path: path.to_path_buf(),
        reason,
    };
    let mut current = source.to_path_buf();
    let mut stated = stated;
    let mut top = None;
    for _ in 0..MAX_CHAIN {
        let probed = match qemu_img::probe(&current, timeout).await {
            Err(DiskError::QemuImgTimeout { seconds, .. }) => {
                return Err(refuse(source, ImageRefusal::Unreadable { seconds }))
            }
            other => other?,
        };
        let format = check_layer(stated, &probed).map_err(|r| refuse(source, r))?;
        top.get_or_insert((format, probed.virtual_size));
        let Some((backing, backing_format)) =
            backing_of(&current, &probed).map_err(|r| refuse(source, r))?
        else {
            return Ok(top.unwrap_or((format, probed.virtual_size)));
        };
        let outside = || ImageRefusal::BackingOutside {
            backing: probed.backing_file.clone().unwrap_or_default(),
        };
        let real = std::fs::canonicalize(&backing).map_err(|_| refuse(source, outside()))?;
        if !within(&real, datastores) || !real.is_file() {
            return Err(refuse(source, outside()));
        }
        current = real;
        stated = Some(backing_format);
    }
    Err(refuse(source, ImageRefusal::ChainTooLong))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(format: &str) -> ImageInfo {
        ImageInfo {
            format: format.into(),
            virtual_size: 1 << 20,
            actual_size: 4096,
            backing_file: None,
            backing_format: None,
            other_files: vec![],
        }
    }

    #[test]
    fn stated_format_must_match_the_content() {
        assert_eq!(check_layer(None, &info("qcow2")), Ok(ImageFormat::Qcow2));
        assert_eq!(
            check_layer(Some(ImageFormat::Raw), &info("raw")),
            Ok(ImageFormat::Raw)
        );
        assert!(matches!(
            check_layer(Some(ImageFormat::Raw), &info("qcow2")),
            Err(ImageRefusal::RawWithHeader { found }) if found == "qcow2"
        ));
        assert!(matches!(
            check_layer(Some(ImageFormat::Qcow2), &info("raw")),
            Err(ImageRefusal::FormatMismatch { .. })
        ));
        assert!(matches!(
            check_layer(None, &info("luks")),
            Err(ImageRefusal::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn images_reading_other_files_are_refused() {
        let mut i = info("vmdk");
        i.other_files = vec!["/etc/shadow".into()];
        assert!(matches!(
            check_layer(None, &i),
            Err(ImageRefusal::OtherFiles { files }) if files == "/etc/shadow"
        ));
    }

    #[test]
    fn backing_files_resolve_next_to_the_image_and_need_a_format() {
        let mut i = info("qcow2");
        assert_eq!(backing_of(Path::new("/ds/a.qcow2"), &i), Ok(None));
        i.backing_file = Some("base.qcow2".into());
        assert!(matches!(
            backing_of(Path::new("/ds/t/a.qcow2"), &i),
            Err(ImageRefusal::BackingFormatUnknown { .. })
        ));
        i.backing_format = Some("qcow2".into());
        assert_eq!(
            backing_of(Path::new("/ds/t/a.qcow2"), &i),
            Ok(Some((
                PathBuf::from("/ds/t/base.qcow2"),
                ImageFormat::Qcow2
            )))
        );
        i.backing_file = Some("/etc/shadow".into());
        i.backing_format = Some("raw".into());
        assert_eq!(
            backing_of(Path::new("/ds/t/a.qcow2"), &i),
            Ok(Some((PathBuf::from("/etc/shadow"), ImageFormat::Raw)))
        );
    }

    #[test]
    fn within_is_strictly_inside() {
        let roots = [PathBuf::from("/srv/ds"), PathBuf::from("/srv/import")];
        assert!(within(Path::new("/srv/ds/t/a.qcow2"), &roots));
        assert!(within(Path::new("/srv/import/a.img"), &roots));
        assert!(!within(Path::new("/srv/ds"), &roots));
        assert!(!within(Path::new("/srv/dsx/a"), &roots));
        assert!(!within(Path::new("/etc/shadow"), &roots));
    }

    async fn qemu_img(args: &[&str]) {
        let out = tokio::process::Command::new("qemu-img")
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[tokio::test]
    async fn real_images_are_inspected() {
        let ds = tempfile::tempdir().unwrap();
        let ds_root = std::fs::canonicalize(ds.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let out_root = std::fs::canonicalize(outside.path()).unwrap();
        let roots = [ds_root.clone()];
        let secret = out_root.join("secret");
        std::fs::write(&secret, vec![7u8; 4096]).unwrap();

        // A plain qcow2 and a raw file pass, as what they are.
        let plain = out_root.join("plain.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", plain.to_str().unwrap(), "1M"]).await;
        assert_eq!(
            inspect(&plain, None, &roots).await.unwrap(),
            ImageFormat::Qcow2
        );
        assert_eq!(
            inspect(&secret, Some(ImageFormat::Raw), &roots)
                .await
                .unwrap(),
            ImageFormat::Raw
        );

        // A qcow2 backed by a file outside the datastores, probed or
        // stated raw: refused.
        let evil = out_root.join("evil.img");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            secret.to_str().unwrap(),
            "-F",
            "raw",
            evil.to_str().unwrap(),
            "1M",
        ])
        .await;
        let refused = |e: DiskError| match e {
            DiskError::ImageRefused { reason, .. } => reason,
            other => panic!("unexpected {other:?}"),
        };
        assert!(matches!(
            refused(inspect(&evil, None, &roots).await.unwrap_err()),
            ImageRefusal::BackingOutside { .. }
        ));
        assert!(matches!(
            refused(
                inspect(&evil, Some(ImageFormat::Raw), &roots)
                    .await
                    .unwrap_err()
            ),
            ImageRefusal::RawWithHeader { .. }
        ));

        // A qcow2 with an external data file: refused.
        let with_data = out_root.join("data.qcow2");
        let data_file = out_root.join("data.raw");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", data_file.display()),
            with_data.to_str().unwrap(),
            "1M",
        ])
        .await;
        assert!(matches!(
            refused(inspect(&with_data, None, &roots).await.unwrap_err()),
            ImageRefusal::OtherFiles { .. }
        ));

        // A vmdk descriptor whose extent is another file: refused.
        let desc = out_root.join("desc.vmdk");
        std::fs::write(
            &desc,
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"monolithicFlat\"\nRW 8 FLAT \"{}\" 0\n",
                secret.display()
            ),
        )
        .unwrap();
        assert!(matches!(
            refused(inspect(&desc, None, &roots).await.unwrap_err()),
            ImageRefusal::OtherFiles { .. }
        ));

        // A vmdk whose extent is a FIFO nobody writes: qemu-img would wait
        // forever; the probe gives up and the image is refused.
        let fifo = out_root.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let fifo_vmdk = out_root.join("fifo.vmdk");
        std::fs::write(
            &fifo_vmdk,
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"monolithicFlat\"\nRW 8 FLAT \"{}\" 0\n",
                fifo.display()
            ),
        )
        .unwrap();
        let err = inspect_within(&fifo_vmdk, None, &roots, std::time::Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(refused(err), ImageRefusal::Unreadable { seconds: 2 }),
            "a FIFO extent is refused"
        );

        // A backing file inside a datastore is vdc's own: accepted.
        let base = ds_root.join("base.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"]).await;
        let linked = out_root.join("linked.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            linked.to_str().unwrap(),
            "1M",
        ])
        .await;
        assert_eq!(
            inspect(&linked, None, &roots).await.unwrap(),
            ImageFormat::Qcow2
        );
        // ... unless it is reached through a link leading out.
        std::os::unix::fs::symlink(&secret, ds_root.join("link")).unwrap();
        let via_link = out_root.join("via-link.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            ds_root.join("link").to_str().unwrap(),
            "-F",
            "raw",
            via_link.to_str().unwrap(),
            "1M",
        ])
        .await;
        assert!(matches!(
            refused(inspect(&via_link, None, &roots).await.unwrap_err()),
            ImageRefusal::BackingOutside { .. }
        ));
    }
}
