//! The `qemu-img` operations the agent needs.
//!
//! Thin provisioning, cloning and resizing all go through `qemu-img` so that
//! any format QEMU understands (raw, qcow2, vmdk, vhd/vhdx) can be a source.
//! Each call runs the tool asynchronously; on failure the error keeps
//! qemu-img's stderr in a field ([`DiskError::QemuImg`]) rather than in the
//! message.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokio::process::Command;

use crate::DiskError;

/// The program run; found on `PATH`.
const QEMU_IMG: &str = "qemu-img";

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Format (`qcow2`, `raw`, `vmdk`, …).
    pub format: String,
    /// Size the guest sees.
    pub virtual_size: u64,
    /// Bytes allocated on the host file system.
    pub actual_size: u64,
    /// Backing file of a linked clone, as recorded in the image.
    pub backing_file: Option<String>,
    /// Format of the backing file, if recorded.
    pub backing_format: Option<String>,
}

#[derive(Deserialize)]
struct RawInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    actual_size: u64,
    #[serde(rename = "backing-filename", default)]
    backing_filename: Option<String>,
    #[serde(rename = "full-backing-filename", default)]
    full_backing_filename: Option<String>,
    #[serde(rename = "backing-filename-format", default)]
    backing_format: Option<String>,
}

/// Runs qemu-img with `args`; stdout on success.
async fn run(
    operation: &'static str,
    path: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<Vec<u8>, DiskError> {
    let out = Command::new(QEMU_IMG)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(DiskError::QemuImgSpawn)?;
    if !out.status.success() {
        return Err(DiskError::QemuImg {
            operation,
            path: path.to_path_buf(),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Creates an empty thin-provisioned qcow2 image of `size_bytes`.
pub async fn create_qcow2(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let size = size_bytes.to_string();
    run(
        "create",
        path,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    )
    .await
    .map(drop)
}

/// Copies `source` (any format qemu-img detects) into a new, independent
/// qcow2 image at `dest` (a full clone).
pub async fn convert_to_qcow2(source: &Path, dest: &Path) -> Result<(), DiskError> {
    run(
        "convert",
        dest,
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            source.as_os_str(),
            dest.as_os_str(),
        ],
    )
    .await
    .map(drop)
}

/// Creates a qcow2 image at `dest` whose backing file is `backing` (a linked
/// clone). `backing` is made absolute so the clone works from any directory;
/// its format is read with [`info`].
pub async fn create_linked_clone(dest: &Path, backing: &Path) -> Result<(), DiskError> {
    let backing: PathBuf =
        std::path::absolute(backing).map_err(|e| DiskError::io("resolve", backing, e))?;
    let fmt = info(&backing).await?.format;
    run(
        "create",
        dest,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            fmt.as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            dest.as_os_str(),
        ],
    )
    .await
    .map(drop)
}

/// Grows the image's virtual size to `size_bytes`. Equal size is a no-op; a
/// smaller size is refused ([`DiskError::Shrink`]) because shrinking loses
/// guest data.
pub async fn grow(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let current = info(path).await?.virtual_size;
    if size_bytes == current {
        return Ok(());
    }
    if size_bytes < current {
        return Err(DiskError::Shrink {
            path: path.to_path_buf(),
            current_bytes: current,
            requested_bytes: size_bytes,
        });
    }
    let size = size_bytes.to_string();
    run(
        "resize",
        path,
        &[
            "resize".as_ref(),
            "-q".as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    )
    .await
    .map(drop)
}

/// Format, sizes and backing file of an image. Uses `-U` so that it works on
/// an image a running QEMU holds locked.
pub async fn info(path: &Path) -> Result<ImageInfo, DiskError> {
    let out = run(
        "info",
        path,
        &[
            "info".as_ref(),
            "--output=json".as_ref(),
            "-U".as_ref(),
            path.as_os_str(),
        ],
    )
    .await?;
    let raw: RawInfo = serde_json::from_slice(&out).map_err(|source| DiskError::QemuImgOutput {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(ImageInfo {
        format: raw.format,
        virtual_size: raw.virtual_size,
        actual_size: raw.actual_size,
        backing_file: raw.full_backing_filename.or(raw.backing_filename),
        backing_format: raw.backing_format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test]
    async fn create_clone_grow_and_info() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create_qcow2(&base, 64 * MIB).await.unwrap();
        let i = info(&base).await.unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 64 * MIB);
        assert!(i.backing_file.is_none());

        let full = dir.path().join("full.qcow2");
        convert_to_qcow2(&base, &full).await.unwrap();
        assert_eq!(info(&full).await.unwrap().virtual_size, 64 * MIB);

        let linked = dir.path().join("linked.qcow2");
        create_linked_clone(&linked, &base).await.unwrap();
        let li = info(&linked).await.unwrap();
        assert_eq!(li.backing_file.as_deref(), Some(base.to_str().unwrap()));
        assert_eq!(li.backing_format.as_deref(), Some("qcow2"));

        grow(&linked, 128 * MIB).await.unwrap();
        assert_eq!(info(&linked).await.unwrap().virtual_size, 128 * MIB);
        grow(&linked, 128 * MIB).await.unwrap();
        let err = grow(&linked, 32 * MIB).await.unwrap_err();
        assert!(matches!(err, DiskError::Shrink { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn raw_source_converts_and_errors_keep_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.img");
        std::fs::write(&raw, vec![0u8; 4 * MIB as usize]).unwrap();
        let out = dir.path().join("disk.qcow2");
        convert_to_qcow2(&raw, &out).await.unwrap();
        assert_eq!(info(&out).await.unwrap().format, "qcow2");

        let err = info(&dir.path().join("missing.qcow2")).await.unwrap_err();
        match err {
            DiskError::QemuImg {
                operation, stderr, ..
            } => {
                assert_eq!(operation, "info");
                assert!(stderr.contains("missing.qcow2"), "{stderr}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
