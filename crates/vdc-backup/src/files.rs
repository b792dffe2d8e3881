//! File-level restore: list and extract files of a backed-up ext2/3/4 file
//! system without running the VM. The disk is restored into a sparse raw
//! file (only its data chunks are written), the file system found through
//! the MBR partition table (or at offset 0), and read with e2fsprogs'
//! `debugfs` (`ls -p`, `dump -p`) at that offset (`IMAGE?offset=N`):
//! nothing is mounted, no kernel driver parses the backup.

use std::path::Path;
use std::process::Command;

use vdc_types::backup::FileEntry;

use crate::error::{BackupError, Result};

/// The partitions an MBR in `sector0` lists, as (byte offset, length);
/// empty when there is no MBR signature. Pure.
pub fn mbr_partitions(sector0: &[u8]) -> Vec<(u64, u64)> {
    if sector0.len() < 512 || sector0[510] != 0x55 || sector0[511] != 0xaa {
        return Vec::new();
    }
    (0..4)
        .filter_map(|i| {
            let e = &sector0[446 + 16 * i..446 + 16 * (i + 1)];
            let kind = e[4];
            let lba = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
            let sectors = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]]));
            (kind != 0 && kind != 0x05 && kind != 0x0f && sectors > 0)
                .then_some((lba * 512, sectors * 512))
        })
        .collect()
}

/// The offset of the first ext2/3/4 file system in `image`: at 0, or in
/// a partition.
pub fn find_ext_filesystem(image: &Path) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(image).map_err(BackupError::io("cannot open", image))?;
    let mut sector0 = [0u8; 512];
    f.read_exact_at(&mut sector0, 0)
        .map_err(BackupError::io("cannot read", image))?;
    let is_ext = |off: u64| {
        let mut magic = [0u8; 2];
        f.read_exact_at(&mut magic, off + 1024 + 56).is_ok() && magic == [0x53, 0xef]
    };
    std::iter::once(0)
        .chain(mbr_partitions(&sector0).into_iter().map(|p| p.0))
        .find(|o| is_ext(*o))
        .ok_or_else(|| {
            BackupError::Files(
                "no ext2/3/4 file system on this disk (at its start or in an MBR partition)".into(),
            )
        })
}

/// Parses `debugfs -R "ls -p"` output (`/inode/mode/uid/gid/name/size/`).
/// Pure.
pub fn parse_ls(out: &str) -> Vec<FileEntry> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            if f.len() < 7 || !f[0].is_empty() {
                return None;
            }
            let mode = u32::from_str_radix(f[2], 8).ok()?;
            let kind = match mode & 0o170000 {
                0o040000 => "dir",
                0o100000 => "file",
                0o120000 => "link",
                _ => "other",
            };
            let name = f[5].to_string();
            (name != "." && name != "..").then(|| FileEntry {
                name,
                kind: kind.into(),
                size: f[6].parse().unwrap_or(0),
            })
        })
        .collect()
}

fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') || path.contains(['"', '\n', '\r']) {
        return Err(BackupError::Files(format!(
            "path '{path}' must be absolute, without quotes or line breaks"
        )));
    }
    Ok(())
}

fn debugfs(image: &Path, offset: u64, request: &str) -> Result<(String, String)> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .map_err(BackupError::io("cannot run debugfs", image))?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(BackupError::Files(format!(
            "debugfs failed: {}",
            err.trim()
        )));
    }
    Ok((String::from_utf8_lossy(&out.stdout).to_string(), err))
}

fn lookup_error(err: &str, path: &str) -> Option<BackupError> {
    err.lines()
        .find(|l| l.contains("not found") || l.contains("No such file"))
        .map(|_| BackupError::NotInBackup(path.to_string()))
}

/// The entries of directory `path` (or the file itself).
pub fn list(image: &Path, offset: u64, path: &str) -> Result<Vec<FileEntry>> {
    check_path(path)?;
    let (out, err) = debugfs(image, offset, &format!("ls -p \"{path}\""))?;
    if let Some(e) = lookup_error(&err, path) {
        return Err(e);
    }
    Ok(parse_ls(&out))
}

/// Copies file `path` out to `dest`.
pub fn extract(image: &Path, offset: u64, path: &str, dest: &Path) -> Result<()> {
    check_path(path)?;
    let (_, err) = debugfs(
        image,
        offset,
        &format!("dump -p \"{path}\" \"{}\"", dest.display()),
    )?;
    if let Some(e) = lookup_error(&err, path) {
        return Err(e);
    }
    if !dest.is_file() {
        return Err(BackupError::Files(format!(
            "debugfs could not extract '{path}': {}",
            err.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_output_and_mbr_are_read() {
        let out =
            "/92/040755/0/0/.//\n/2/040755/0/0/..//\n/12/100644/0/0/k1/14/\n/13/040755/0/0/sub//\n";
        let e = parse_ls(out);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].name.as_str(), e[0].kind.as_str(), e[0].size),
            ("k1", "file", 14)
        );
        assert_eq!(e[1].kind, "dir");
        let mut s = vec![0u8; 512];
        s[510] = 0x55;
        s[511] = 0xaa;
        s[446 + 4] = 0x0e;
        s[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        s[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        s[462 + 4] = 0x83;
        s[462 + 8..462 + 12].copy_from_slice(&67584u32.to_le_bytes());
        s[462 + 12..462 + 16].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(
            mbr_partitions(&s),
            vec![(2048 * 512, 100 * 512), (67584 * 512, 10 * 512)]
        );
        assert!(mbr_partitions(&[0u8; 512]).is_empty());
    }
}
