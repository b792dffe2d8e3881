//! The `qemu-img` operations the agent needs.
//!
//! Thin provisioning, cloning and resizing all go through `qemu-img`. Every
//! call that opens an image names its format (`-f`): letting the tool guess
//! would let a raw file that starts with an image header be read as that
//! image, backing file and all. Only [`probe`] guesses, and only to compare
//! the guess with what the caller believes (see [`crate::image`]).
//! Each call runs the tool asynchronously; on failure the error keeps
//! qemu-img's stderr in a field ([`DiskError::QemuImg`]) rather than in the
//! message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use vdc_types::api::ImageFormat;

use crate::DiskError;

/// The program run; found on `PATH`.
const QEMU_IMG: &str = "qemu-img";
/// Longest `qemu-img info` may take: reading an image's metadata is quick,
/// unless the image makes the tool open a pipe or a device that never
/// answers (a vmdk extent naming a FIFO).
pub const INFO_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Other files the image reads its data from (a qcow2 external data
    /// file, vmdk extents other than the image itself, any child node but
    /// the image's own file).
    pub other_files: Vec<String>,
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
    #[serde(default)]
    filename: String,
    #[serde(default)]
    children: Vec<RawChild>,
    #[serde(rename = "format-specific", default)]
    format_specific: Option<RawFormatSpecific>,
}

#[derive(Deserialize)]
struct RawChild {
    name: String,
    #[serde(default)]
    info: Option<RawChildInfo>,
}

#[derive(Deserialize)]
struct RawChildInfo {
    #[serde(default)]
    filename: String,
}

#[derive(Deserialize)]
struct RawFormatSpecific {
    #[serde(default)]
    data: RawFormatData,
}

#[derive(Deserialize, Default)]
struct RawFormatData {
    #[serde(rename = "data-file", default)]
    data_file: Option<String>,
    #[serde(default)]
    extents: Vec<RawExtent>,
}

#[derive(Deserialize)]
struct RawExtent {
    #[serde(default)]
    filename: String,
}

impl RawInfo {
    /// Files other than the image itself that the image refers to.
    fn other_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        for c in &self.children {
            if c.name != "file" {
                files.push(
                    c.info
                        .as_ref()
                        .map(|i| i.filename.clone())
                        .unwrap_or_else(|| c.name.clone()),
                );
            }
        }
        if let Some(fs) = &self.format_specific {
            files.extend(fs.data.data_file.iter().cloned());
            files.extend(
                fs.data
                    .extents
                    .iter()
                    .filter(|e| e.filename != self.filename)
                    .map(|e| e.filename.clone()),
            );
        }
        files.sort();
        files.dedup();
        files
    }
}

/// Runs qemu-img with `args`; stdout on success.
async fn run(
    operation: &'static str,
    path: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<Vec<u8>, DiskError> {
    run_within(operation, path, args, None).await
}

/// [`run`], killing qemu-img after `timeout` if one is given.
async fn run_within(
    operation: &'static str,
    path: &Path,
    args: &[&std::ffi::OsStr],
    timeout: Option<Duration>,
) -> Result<Vec<u8>, DiskError> {
    let output = Command::new(QEMU_IMG)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match timeout {
        None => output.await,
        Some(t) => {
            tokio::time::timeout(t, output)
                .await
                .map_err(|_| DiskError::QemuImgTimeout {
                    operation,
                    path: path.to_path_buf(),
                    seconds: t.as_secs(),
                })?
        }
    }
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

/// Copies `source`, read as `format`, into a new, independent qcow2 image
/// at `dest` (a full clone). Check an image that is not vdc's own with
/// [`crate::image::inspect`] first: a backing chain is copied too.
pub async fn convert_to_qcow2(
    source: &Path,
    format: ImageFormat,
    dest: &Path,
) -> Result<(), DiskError> {
    run(
        "convert",
        dest,
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            format.as_str().as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            source.as_os_str(),
            dest.as_os_str(),
        ],
    )
    .await
    .map(drop)
}

/// Creates a qcow2 image at `dest` whose backing file is `backing`, a
/// qcow2 image (a linked clone of a template). The backing file is recorded
/// relative to `dest`'s directory ([`relative_backing`]): a datastore is
/// mounted at a different path on each host, and both files live in the
/// same datastore, so only a relative path works everywhere. `size`: the
/// clone's virtual size, at least the backing file's (default: the
/// backing file's).
pub async fn create_linked_clone(
    dest: &Path,
    backing: &Path,
    size: Option<u64>,
) -> Result<(), DiskError> {
    let rel = relative_backing(dest, backing)?;
    let fmt = ImageFormat::Qcow2.as_str();
    let size = size.map(|s| s.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        fmt.as_ref(),
        "-b".as_ref(),
        rel.as_os_str(),
        dest.as_os_str(),
    ];
    if let Some(s) = &size {
        args.push(s.as_ref());
    }
    run("create", dest, &args).await.map(drop)
}

/// Records `backing` (a qcow2 image) as the backing file of the qcow2 image
/// at `image`, relative to `image`'s directory, without copying any data
/// (`qemu-img rebase -u`): for an image moved within its datastore, or one
/// that still records an absolute backing path.
pub async fn rebase_in_place(image: &Path, backing: &Path) -> Result<(), DiskError> {
    let rel = relative_backing(image, backing)?;
    run(
        "rebase",
        image,
        &[
            "rebase".as_ref(),
            "-u".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            rel.as_os_str(),
            image.as_os_str(),
        ],
    )
    .await
    .map(drop)
}

/// The path of `backing` relative to the directory of `image` (both
/// resolved to absolute paths, symbolic links followed for the existing
/// directories), e.g. `../templates/base.qcow2`.
pub fn relative_backing(image: &Path, backing: &Path) -> Result<PathBuf, DiskError> {
    let resolve = |p: &Path| -> Result<PathBuf, DiskError> {
        let abs = std::path::absolute(p).map_err(|e| DiskError::io("resolve", p, e))?;
        let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) else {
            return Ok(abs);
        };
        Ok(std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .join(name))
    };
    let image = resolve(image)?;
    let backing = resolve(backing)?;
    let from: Vec<_> = image
        .parent()
        .unwrap_or(Path::new("/"))
        .components()
        .collect();
    let to: Vec<_> = backing.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    Ok(rel)
}

/// The `json:` image name of a VMDK stored at `offset`, `size` bytes long,
/// inside the file at `path` (a member of an OVA's tar), read in place
/// through QEMU's raw driver.
pub fn vmdk_slice(path: &Path, offset: u64, size: u64) -> String {
    let file = serde_json::json!({
        "driver": "vmdk",
        "file": {"driver": "raw", "offset": offset, "size": size,
                 "file": {"driver": "file", "filename": path.display().to_string()}}
    });
    format!("json:{file}")
}

/// Converts the image named by `spec` (a `json:` name, its driver inside)
/// into a new qcow2 at `dest`.
pub async fn convert_spec_to_qcow2(spec: &str, dest: &Path) -> Result<(), DiskError> {
    run(
        "convert",
        dest,
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            spec.as_ref(),
            dest.as_os_str(),
        ],
    )
    .await
    .map(drop)
}

/// Converts `source` (read as `format`) into `dest` in `out_format` with
/// `qemu-img convert -p`, calling `progress` with the percentage done as
/// `qemu-img` reports it. `options` go to `-o` (e.g.
/// `subformat=streamOptimized` for a VMDK inside an OVA).
pub async fn convert_with_progress(
    source: &Path,
    format: &str,
    dest: &Path,
    out_format: &str,
    options: Option<&str>,
    mut progress: impl FnMut(u8) + Send,
) -> Result<(), DiskError> {
    use tokio::io::AsyncReadExt;
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(["convert", "-p", "-f", format, "-O", out_format]);
    if let Some(o) = options {
        cmd.args(["-o", o]);
    }
    cmd.arg(source).arg(dest);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(DiskError::QemuImgSpawn)?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Err(e) = stderr.read_to_end(&mut buf).await {
            tracing::debug!(error = %e, "cannot read qemu-img's stderr");
        }
        buf
    });
    let mut buf = [0u8; 256];
    let mut line = Vec::new();
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| DiskError::io("read the progress of", dest, e))?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                if let Some(p) = parse_progress(&line) {
                    progress(p);
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| DiskError::io("convert", dest, e))?;
    let stderr = err_reader.await.unwrap_or_default();
    if !status.success() {
        return Err(DiskError::QemuImg {
            operation: "convert",
            path: dest.to_path_buf(),
            status: status.code(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The percentage in one line of `qemu-img convert -p`'s output
/// (`    (42.05/100%)`).
fn parse_progress(line: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(line).ok()?.trim();
    let inner = s.strip_prefix('(')?.split('/').next()?;
    let v: f64 = inner.trim().parse().ok()?;
    Some(v.clamp(0.0, 100.0) as u8)
}

/// Grows the qcow2 image's virtual size to `size_bytes`. Equal size is a
/// no-op; a smaller size is refused ([`DiskError::Shrink`]) because
/// shrinking loses guest data.
pub async fn grow(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let current = info(path, ImageFormat::Qcow2).await?.virtual_size;
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
            "-f".as_ref(),
            ImageFormat::Qcow2.as_str().as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    )
    .await
    .map(drop)
}

/// Sizes, backing file and referenced files of an image read as `format`.
/// Uses `-U` so that it works on an image a running QEMU holds locked.
pub async fn info(path: &Path, format: ImageFormat) -> Result<ImageInfo, DiskError> {
    info_args(path, Some(format), INFO_TIMEOUT).await
}

/// What `qemu-img` guesses `path` to be, without being told its format,
/// within `timeout` ([`INFO_TIMEOUT`] is the usual bound). Only to compare
/// with a format the caller believes in: never open an image with a
/// guessed format. Backing files are not opened.
pub async fn probe(path: &Path, timeout: Duration) -> Result<ImageInfo, DiskError> {
    info_args(path, None, timeout).await
}

async fn info_args(
    path: &Path,
    format: Option<ImageFormat>,
    timeout: Duration,
) -> Result<ImageInfo, DiskError> {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["info".as_ref(), "--output=json".as_ref(), "-U".as_ref()];
    if let Some(f) = format {
        args.push("-f".as_ref());
        args.push(f.as_str().as_ref());
    }
    args.push(path.as_os_str());
    let out = run_within("info", path, &args, Some(timeout)).await?;
    let raw: RawInfo = serde_json::from_slice(&out).map_err(|source| DiskError::QemuImgOutput {
        path: path.to_path_buf(),
        source,
    })?;
    let other_files = raw.other_files();
    Ok(ImageInfo {
        format: raw.format,
        virtual_size: raw.virtual_size,
        actual_size: raw.actual_size,
        backing_file: raw.full_backing_filename.or(raw.backing_filename),
        backing_format: raw.backing_format,
        other_files,
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
        let i = info(&base, ImageFormat::Qcow2).await.unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 64 * MIB);
        assert!(i.backing_file.is_none());

        let full = dir.path().join("full.qcow2");
        convert_to_qcow2(&base, ImageFormat::Qcow2, &full)
            .await
            .unwrap();
        assert_eq!(
            info(&full, ImageFormat::Qcow2).await.unwrap().virtual_size,
            64 * MIB
        );

        let linked = dir.path().join("linked.qcow2");
        create_linked_clone(&linked, &base, None).await.unwrap();
        let li = info(&linked, ImageFormat::Qcow2).await.unwrap();
        assert_eq!(li.backing_file.as_deref(), Some(base.to_str().unwrap()));
        let raw = std::process::Command::new(QEMU_IMG)
            .args(["info", "--output=json"])
            .arg(&linked)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
        assert_eq!(v["backing-filename"], "base.qcow2", "recorded relative");
        assert_eq!(li.backing_format.as_deref(), Some("qcow2"));

        grow(&linked, 128 * MIB).await.unwrap();
        assert_eq!(
            info(&linked, ImageFormat::Qcow2)
                .await
                .unwrap()
                .virtual_size,
            128 * MIB
        );
        grow(&linked, 128 * MIB).await.unwrap();
        let err = grow(&linked, 32 * MIB).await.unwrap_err();
        assert!(matches!(err, DiskError::Shrink { .. }), "{err:?}");
    }

    #[test]
    fn backing_paths_are_relative_to_the_overlay() {
        let rel = |a: &str, b: &str| {
            relative_backing(Path::new(a), Path::new(b))
                .unwrap()
                .display()
                .to_string()
        };
        assert_eq!(
            rel(
                "/nonexistent/ds/vm/disk0.qcow2",
                "/nonexistent/ds/templates/t.qcow2"
            ),
            "../templates/t.qcow2"
        );
        assert_eq!(
            rel("/nonexistent/ds/a.qcow2", "/nonexistent/ds/b.qcow2"),
            "b.qcow2"
        );
        assert_eq!(
            rel("/nonexistent/ds/x/y/d.qcow2", "/nonexistent/ds/t.qcow2"),
            "../../t.qcow2"
        );
    }

    #[test]
    fn convert_progress_lines() {
        assert_eq!(parse_progress(b"    (42.05/100%)"), Some(42));
        assert_eq!(parse_progress(b"    (100.00/100%)"), Some(100));
        assert_eq!(parse_progress(b"garbage"), None);
    }

    #[tokio::test]
    async fn raw_source_converts_and_errors_keep_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.img");
        std::fs::write(&raw, vec![0u8; 4 * MIB as usize]).unwrap();
        let out = dir.path().join("disk.qcow2");
        convert_to_qcow2(&raw, ImageFormat::Raw, &out)
            .await
            .unwrap();
        assert_eq!(probe(&out, INFO_TIMEOUT).await.unwrap().format, "qcow2");

        let err = info(&dir.path().join("missing.qcow2"), ImageFormat::Qcow2)
            .await
            .unwrap_err();
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
