//! The serial console log, kept bounded: QEMU appends everything the guest
//! writes on ttyS0 to `console.log` (opened with `O_APPEND`), and the agent
//! rotates it so that a guest flooding its console cannot fill the
//! datastore.
//!
//! # Offsets
//! Readers address the log by *console offset*: the number of bytes the
//! guest wrote since the log began, across rotations. `console.log` begins
//! at offset `base` (kept in `console.log.offset`), and `console.log.1`,
//! when present, holds the bytes just before `base`. So the kept output is
//! `[base - len(console.log.1), base + len(console.log))`, and a follower
//! that reads on from the offset it was given never misses or repeats a
//! kept byte. A follower that falls behind what is kept is told how many
//! bytes were rotated away (a marker line before the bytes).
//!
//! # Rotation ([`ConsoleLog::rotate_if_large`])
//! When `console.log` reaches [`CONSOLE_LOG_MAX`] bytes:
//! 1. choose a prefix of `n` bytes: whole filesystem blocks, leaving at
//!    least one byte (what `FALLOC_FL_COLLAPSE_RANGE` can remove);
//! 2. copy those `n` bytes to `console.log.1.tmp`, fsync, rename over
//!    `console.log.1` (the previous rotation's bytes are gone);
//! 3. remove them from the front of `console.log` with
//!    `fallocate(FALLOC_FL_COLLAPSE_RANGE)`: atomic against QEMU's appends,
//!    so nothing is lost. On a filesystem without it (e.g. tmpfs, NFS) the
//!    file is truncated instead, and bytes QEMU appended since step 2 are
//!    lost (`n` is then the whole length read);
//! 4. write the new base (`base + n`) to `console.log.offset` (temp file,
//!    fsync, rename, fsync directory).
//!
//! A crash between steps 3 and 4 makes offsets go back, which readers take
//! as a replaced log (they read from the start of what is kept).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Size at which `console.log` is rotated. At most about twice this (plus
/// what the guest writes between two checks) is kept per VM.
pub(crate) const CONSOLE_LOG_MAX: u64 = 1 << 20;
/// Largest chunk returned by one read from an offset (a follower reads on).
pub(crate) const CONSOLE_CHUNK_MAX: u64 = 1024 * 1024;
/// Version of `console.log.offset`.
pub(crate) const CONSOLE_OFFSET_VERSION: u32 = 1;

/// Which part of the console log to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsoleRange {
    /// The last N bytes.
    Tail(u64),
    /// From this offset on (at most [`CONSOLE_CHUNK_MAX`] bytes); an offset
    /// past the end means the log was replaced, and reading restarts at the
    /// oldest kept byte.
    From(u64),
}

/// `console.log.offset`: the console offset of the first byte of
/// `console.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct OffsetFile {
    version: u32,
    base: u64,
}

/// The files of one VM's console log.
#[derive(Debug, Clone)]
pub(crate) struct ConsoleLog {
    current: PathBuf,
}

impl ConsoleLog {
    /// The log whose current file is `current` (`<vm-dir>/console.log`).
    pub fn new(current: PathBuf) -> ConsoleLog {
        ConsoleLog { current }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self
            .current
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(suffix);
        self.current.with_file_name(name)
    }

    /// `console.log.1`.
    pub fn previous(&self) -> PathBuf {
        self.sibling(".1")
    }

    /// `console.log.offset`.
    pub fn offset_file(&self) -> PathBuf {
        self.sibling(".offset")
    }

    fn base(&self) -> std::io::Result<u64> {
        let text = match std::fs::read(self.offset_file()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let f: OffsetFile = serde_json::from_slice(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if f.version > CONSOLE_OFFSET_VERSION {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "console.log.offset has version {}; this agent reads up to {CONSOLE_OFFSET_VERSION}",
                    f.version
                ),
            ));
        }
        Ok(f.base)
    }

    fn write_base(&self, base: u64) -> std::io::Result<()> {
        let path = self.offset_file();
        let tmp = self.sibling(".offset.tmp");
        let body = serde_json::to_vec(&OffsetFile {
            version: CONSOLE_OFFSET_VERSION,
            base,
        })
        .map_err(std::io::Error::other)?;
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(&path)
    }

    /// Rotates the log if `console.log` holds [`CONSOLE_LOG_MAX`] bytes or
    /// more (see the module docs); whether it did.
    pub fn rotate_if_large(&self) -> std::io::Result<bool> {
        self.rotate_at(CONSOLE_LOG_MAX)
    }

    fn rotate_at(&self, limit: u64) -> std::io::Result<bool> {
        let mut current = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.current)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let len = current.metadata()?.len();
        if len < limit {
            return Ok(false);
        }
        let base = self.base()?;
        let block = current.metadata()?.blksize().max(1);
        let collapsible = (len - 1) / block * block;
        let n = if collapsible > 0 { collapsible } else { len };
        self.copy_prefix(&mut current, n)?;
        let removed = if n == collapsible && collapse_front(&current, n)? {
            n
        } else {
            // No collapse here: copy everything and truncate.
            if n != len {
                current.seek(SeekFrom::Start(0))?;
                self.copy_prefix(&mut current, len)?;
            }
            current.set_len(0)?;
            len
        };
        self.write_base(base + removed)?;
        Ok(true)
    }

    /// Copies the first `n` bytes of `current` to `console.log.1` (temp
    /// file, fsync, rename).
    fn copy_prefix(&self, current: &mut File, n: u64) -> std::io::Result<()> {
        let tmp = self.sibling(".1.tmp");
        let mut copy = File::create(&tmp)?;
        std::io::copy(&mut current.take(n), &mut copy)?;
        copy.sync_all()?;
        std::fs::rename(&tmp, self.previous())
    }

    /// Reads `range` of the kept output: the bytes (preceded by a marker
    /// line when output the reader asked for was rotated away) and the
    /// console offset just past them. Characters are never split: a
    /// character cut by the range is left for the next read.
    pub fn read(&self, range: ConsoleRange) -> std::io::Result<(Vec<u8>, u64)> {
        // A rotation between reading the base and the files would shift
        // them; read again until the base holds still.
        let mut attempts = 0;
        loop {
            let base = self.base()?;
            let got = self.read_at(base, range)?;
            if self.base()? == base || attempts == 3 {
                return Ok(got);
            }
            attempts += 1;
        }
    }

    fn read_at(&self, base: u64, range: ConsoleRange) -> std::io::Result<(Vec<u8>, u64)> {
        let mut current = open_or_none(&self.current)?;
        let mut previous = open_or_none(&self.previous())?;
        let cur_len = len_of(&current)?;
        let prev_len = len_of(&previous)?.min(base);
        let kept_start = base - prev_len;
        let end = base + cur_len;
        let (start, max, skipped) = match range {
            ConsoleRange::Tail(n) => (end.saturating_sub(n).max(kept_start), n, 0),
            ConsoleRange::From(off) if off > end => (kept_start, CONSOLE_CHUNK_MAX, 0),
            ConsoleRange::From(off) if off < kept_start => {
                (kept_start, CONSOLE_CHUNK_MAX, kept_start - off)
            }
            ConsoleRange::From(off) => (off, CONSOLE_CHUNK_MAX, 0),
        };
        let want = (end - start).min(max);
        let mut buf = Vec::with_capacity(want as usize);
        if start < base {
            if let Some(f) = previous.as_mut() {
                f.seek(SeekFrom::Start(start - kept_start))?;
                f.take(want.min(base - start)).read_to_end(&mut buf)?;
            }
        }
        let rest = want - buf.len() as u64;
        if rest > 0 {
            if let Some(f) = current.as_mut() {
                f.seek(SeekFrom::Start(start.max(base) - base))?;
                f.take(rest).read_to_end(&mut buf)?;
            }
        }
        let mut start = start;
        if matches!(range, ConsoleRange::Tail(_)) {
            // A tail may begin inside a character: skip its continuation bytes.
            let skip = buf
                .iter()
                .take(3)
                .take_while(|b| (**b & 0xC0) == 0x80)
                .count();
            buf.drain(..skip);
            start += skip as u64;
        }
        buf.truncate(complete_utf8_len(&buf));
        let end = start + buf.len() as u64;
        if skipped > 0 {
            let mut marked =
                format!("\n[vdc: {skipped} bytes of console output were rotated away]\n")
                    .into_bytes();
            marked.extend_from_slice(&buf);
            buf = marked;
        }
        Ok((buf, end))
    }
}

/// Removes the first `n` bytes of `file` (a multiple of its block size,
/// short of its end) atomically; `false` where the filesystem cannot.
fn collapse_front(file: &File, n: u64) -> std::io::Result<bool> {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let len = i64::try_from(n).map_err(std::io::Error::other)?;
    match fallocate(
        file.as_raw_fd(),
        FallocateFlags::FALLOC_FL_COLLAPSE_RANGE,
        0,
        len,
    ) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn open_or_none(path: &Path) -> std::io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn len_of(f: &Option<File>) -> std::io::Result<u64> {
    Ok(match f {
        Some(f) => f.metadata()?.len(),
        None => 0,
    })
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Length of `buf` without a trailing incomplete (but so far valid) UTF-8
/// sequence.
fn complete_utf8_len(buf: &[u8]) -> usize {
    let n = buf.len();
    for back in 1..=3.min(n) {
        let b = buf[n - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return n,
        };
        return if need > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, ConsoleLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = ConsoleLog::new(dir.path().join("console.log"));
        (dir, log)
    }

    fn append(log: &ConsoleLog, data: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log.current)
            .unwrap();
        f.write_all(data).unwrap();
    }

    #[test]
    fn tail_and_offsets() {
        let (_d, log) = log();
        assert_eq!(log.read(ConsoleRange::Tail(10)).unwrap(), (vec![], 0));
        assert_eq!(log.read(ConsoleRange::From(5)).unwrap(), (vec![], 0));
        append(&log, b"hello world");
        assert_eq!(
            log.read(ConsoleRange::Tail(5)).unwrap(),
            (b"world".to_vec(), 11)
        );
        assert_eq!(
            log.read(ConsoleRange::Tail(100)).unwrap(),
            (b"hello world".to_vec(), 11)
        );
        assert_eq!(log.read(ConsoleRange::Tail(0)).unwrap(), (vec![], 11));
        assert_eq!(
            log.read(ConsoleRange::From(6)).unwrap(),
            (b"world".to_vec(), 11)
        );
        assert_eq!(log.read(ConsoleRange::From(11)).unwrap(), (vec![], 11));
        // Past the end: the log was replaced, read it again from the start.
        assert_eq!(
            log.read(ConsoleRange::From(99)).unwrap(),
            (b"hello world".to_vec(), 11)
        );
    }

    #[test]
    fn characters_are_never_split() {
        let (_d, log) = log();
        // "é" is C3 A9; "€" is E2 82 AC.
        append(&log, "aé€".as_bytes());
        // A tail starting inside "€" skips its continuation bytes.
        assert_eq!(log.read(ConsoleRange::Tail(2)).unwrap(), (vec![], 6));
        assert_eq!(
            log.read(ConsoleRange::Tail(3)).unwrap(),
            ("€".as_bytes().to_vec(), 6)
        );
        // A log ending inside a character: the end offset stops before it.
        std::fs::write(&log.current, [b'a', 0xE2, 0x82]).unwrap();
        assert_eq!(log.read(ConsoleRange::From(0)).unwrap(), (b"a".to_vec(), 1));
        // Invalid bytes are passed through, not held back forever.
        std::fs::write(&log.current, [b'a', 0xFF]).unwrap();
        assert_eq!(
            log.read(ConsoleRange::From(0)).unwrap(),
            (vec![b'a', 0xFF], 2)
        );
    }

    #[test]
    fn utf8_completeness() {
        assert_eq!(complete_utf8_len(b""), 0);
        assert_eq!(complete_utf8_len(b"abc"), 3);
        assert_eq!(complete_utf8_len("é".as_bytes()), 2);
        assert_eq!(complete_utf8_len(&[b'x', 0xC3]), 1);
        assert_eq!(complete_utf8_len(&[b'x', 0xF0, 0x9F, 0x98]), 1);
        assert_eq!(complete_utf8_len("😀".as_bytes()), 4);
    }

    /// A follower reading on from each answer's offset, with rotations in
    /// between, sees every kept byte exactly once, and is told when it fell
    /// behind what is kept.
    #[test]
    fn followers_neither_miss_nor_repeat_across_rotations() {
        let (_d, log) = log();
        let mut written = Vec::new();
        let mut seen = Vec::new();
        let mut offset = 0;
        for i in 0..50u32 {
            let line = format!("line {i}\n");
            append(&log, line.as_bytes());
            written.extend_from_slice(line.as_bytes());
            if i % 7 == 0 {
                log.rotate_at(16).unwrap();
            }
            if i % 3 == 0 {
                let (bytes, end) = log.read(ConsoleRange::From(offset)).unwrap();
                assert!(!bytes.starts_with(b"\n[vdc:"), "fell behind at {i}");
                seen.extend_from_slice(&bytes);
                offset = end;
            }
        }
        let (bytes, end) = log.read(ConsoleRange::From(offset)).unwrap();
        seen.extend_from_slice(&bytes);
        assert_eq!(seen, written);
        assert_eq!(end, written.len() as u64);

        // Rotated away: an old offset gets the marker, then what is kept.
        log.rotate_at(1).unwrap();
        append(&log, b"new\n");
        log.rotate_at(1).unwrap();
        let (bytes, end) = log.read(ConsoleRange::From(0)).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("bytes of console output were rotated away"),
            "{text}"
        );
        assert!(text.ends_with("new\n"), "{text}");
        assert_eq!(end, written.len() as u64 + 4);
        // The tail spans both files.
        append(&log, b"x\n");
        let (tail, _) = log.read(ConsoleRange::Tail(6)).unwrap();
        assert_eq!(tail, b"new\nx\n");
    }

    /// Where the filesystem can collapse a range, whole blocks move to
    /// `console.log.1` and the rest stays: every byte is still readable, in
    /// order, across both files.
    #[test]
    fn rotation_by_whole_blocks_keeps_every_byte() {
        let (_d, log) = log();
        let written: Vec<u8> = (0..3 * 4096 + 100).map(|i| b'a' + (i % 26) as u8).collect();
        append(&log, &written);
        assert!(log.rotate_at(8192).unwrap());
        let current = std::fs::metadata(&log.current).unwrap().len();
        let previous = std::fs::metadata(log.previous()).unwrap().len();
        assert_eq!(current + previous, written.len() as u64);
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let (bytes, end) = log.read(ConsoleRange::From(offset)).unwrap();
            if bytes.is_empty() {
                break;
            }
            seen.extend_from_slice(&bytes);
            offset = end;
        }
        assert_eq!(seen, written);
    }

    #[test]
    fn rotation_keeps_the_current_file_bounded() {
        let (_d, log) = log();
        for _ in 0..100 {
            append(&log, &[b'x'; 1000]);
            log.rotate_at(10_000).unwrap();
            assert!(std::fs::metadata(&log.current).unwrap().len() < 10_000);
        }
        let (_, end) = log.read(ConsoleRange::Tail(0)).unwrap();
        assert_eq!(end, 100_000);
        std::fs::write(log.offset_file(), br#"{"version":99,"base":0}"#).unwrap();
        assert!(log.read(ConsoleRange::Tail(1)).is_err());
    }
}
