//! Reading the end of a log file (serial console, qemu.log).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::QemuError;

/// The last `bytes` bytes of the file at `path`, decoded as UTF-8 with
/// invalid sequences replaced. An absent file reads as empty (a VM that
/// never started has no console log yet).
pub fn tail_file(path: &Path, bytes: u64) -> Result<String, QemuError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(QemuError::io("open", path)(e)),
    };
    let len = f.metadata().map_err(QemuError::io("stat", path))?.len();
    let start = len.saturating_sub(bytes);
    f.seek(SeekFrom::Start(start))
        .map_err(QemuError::io("seek", path))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(bytes)
        .read_to_end(&mut buf)
        .map_err(QemuError::io("read", path))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        assert_eq!(tail_file(&p, 10).expect("absent"), "");
        std::fs::write(&p, "hello world\nVDC-GUEST-READY\n").expect("write");
        assert_eq!(tail_file(&p, 16).expect("tail"), "VDC-GUEST-READY\n");
        assert_eq!(
            tail_file(&p, 1000).expect("all"),
            "hello world\nVDC-GUEST-READY\n"
        );
        assert_eq!(tail_file(&p, 0).expect("none"), "");
    }
}
