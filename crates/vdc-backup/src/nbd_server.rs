//! A read-only NBD server (blocking, on a unix socket) that serves one disk
//! of a backup straight from the chunk store: what an instant restore boots
//! from while QEMU copies the disk into a local overlay.
//!
//! ```text
//!  server: "NBDMAGIC" "IHAVEOPT" flags(u16: FIXED_NEWSTYLE | NO_ZEROES)
//!  client: flags(u32)
//!  options (until GO, EXPORT_NAME or ABORT):
//!    NBD_OPT_LIST          → NBD_REP_SERVER(name) … NBD_REP_ACK
//!    NBD_OPT_INFO / GO     → NBD_REP_INFO(EXPORT: size, flags)
//!                            [NBD_REP_INFO(BLOCK_SIZE) when asked] NBD_REP_ACK
//!    NBD_OPT_EXPORT_NAME   → size, flags (then transmission)
//!    NBD_OPT_ABORT         → NBD_REP_ACK, close
//!    anything else         → NBD_REP_ERR_UNSUP (structured replies too:
//!                            simple replies only)
//!  transmission (simple replies):
//!    READ          chunk(s) decoded, checked against their names; zero
//!                  chunks read as zeros; a bad chunk answers EIO
//!    WRITE, TRIM, WRITE_ZEROES → EPERM (the export is read-only)
//!    FLUSH, CACHE  → 0
//!    DISC          close
//! ```
//!
//! Decoded chunks are kept in a small cache shared by the connections
//! (QEMU reads a chunk in many small requests).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{BackupError, Result};
use crate::store::{DiskIndex, Store};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const HS_FIXED_NEWSTYLE: u16 = 1;
const HS_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;
const TF_HAS_FLAGS: u16 = 1;
const TF_READ_ONLY: u16 = 2;
const TF_SEND_FLUSH: u16 = 4;
const TF_CAN_MULTI_CONN: u16 = 1 << 8;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
/// Largest request served (QEMU asks at most 32 MiB).
const MAX_REQUEST: u32 = 32 << 20;
/// Longest option payload accepted.
const MAX_OPTION: u32 = 64 << 10;
/// Decoded chunks kept in memory.
const CACHE_CHUNKS: usize = 8;

/// What one export serves: a disk of a backup.
struct Export {
    store: Store,
    index: DiskIndex,
    size: u64,
    name: String,
    cache: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    bytes_read: AtomicU64,
}

impl Export {
    /// Chunk `i`'s bytes (`None`: a chunk of zeros).
    fn chunk(&self, i: usize) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(Some(name)) = self.index.chunks.get(i) else {
            return Ok(None);
        };
        if let Some((_, data)) = lock(&self.cache).iter().find(|(n, _)| *n == i) {
            return Ok(Some(data.clone()));
        }
        let data = Arc::new(self.store.get_chunk(name)?);
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_CHUNKS {
            cache.pop_front();
        }
        cache.push_back((i, data.clone()));
        Ok(Some(data))
    }

    /// Fills `buf` with the disk's bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cs = self.store.chunk_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = (pos / cs) as usize;
            let within = (pos % cs) as usize;
            let n = (buf.len() - done).min(cs as usize - within);
            let out = &mut buf[done..done + n];
            match self.chunk(i)? {
                Some(data) => {
                    let Some(src) = data.get(within..within + n) else {
                        return Err(BackupError::ChunkDigest {
                            digest: self.index.chunks[i].clone().unwrap_or_default(),
                        });
                    };
                    out.copy_from_slice(src);
                }
                None => out.fill(0),
            }
            done += n;
        }
        self.bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running server; [`NbdServer::stop`] (or dropping it) closes every
/// connection and removes the socket.
pub struct NbdServer {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    export: Arc<Export>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl NbdServer {
    /// Serves disk `index` (virtual size `size`) of `store` read-only as
    /// export `name` on a new unix socket at `socket`.
    pub fn start(
        store: Store,
        index: DiskIndex,
        size: u64,
        name: &str,
        socket: &Path,
    ) -> Result<NbdServer> {
        let need = size.div_ceil(store.chunk_size());
        if index.chunks.len() as u64 != need {
            return Err(BackupError::Nbd(format!(
                "disk '{}' has {} chunks, its size needs {need}",
                index.disk,
                index.chunks.len()
            )));
        }
        let listener =
            UnixListener::bind(socket).map_err(BackupError::io("cannot listen on", socket))?;
        let export = Arc::new(Export {
            store,
            index,
            size,
            name: name.to_string(),
            cache: Mutex::new(VecDeque::new()),
            bytes_read: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (export, stop, conns) = (export.clone(), stop.clone(), conns.clone());
            std::thread::Builder::new()
                .name("nbd-serve".into())
                .spawn(move || accept_loop(listener, export, stop, conns))
                .map_err(BackupError::io("cannot start a thread for", socket))?
        };
        Ok(NbdServer {
            socket: socket.to_path_buf(),
            stop,
            conns,
            export,
            accept: Some(accept),
        })
    }

    /// The socket served on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Bytes served by reads so far.
    pub fn bytes_read(&self) -> u64 {
        self.export.bytes_read.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; it sees the flag and returns.
        if let Err(e) = UnixStream::connect(&self.socket) {
            tracing::debug!(error = %e, "waking the NBD accept loop");
        }
        if accept.join().is_err() {
            tracing::warn!("the NBD accept loop panicked");
        }
        for c in lock(&self.conns).drain(..) {
            if let Err(e) = c.shutdown(std::net::Shutdown::Both) {
                tracing::debug!(error = %e, "closing an NBD connection");
            }
        }
        if let Err(e) = std::fs::remove_file(&self.socket) {
            tracing::warn!(socket = %self.socket.display(), error = %e, "cannot remove the NBD socket");
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: UnixListener,
    export: Arc<Export>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "NBD accept");
                continue;
            }
        };
        match conn.try_clone() {
            Ok(c) => lock(&conns).push(c),
            Err(e) => tracing::warn!(error = %e, "NBD connection"),
        }
        let export = export.clone();
        let spawned = std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                if let Err(e) = serve(conn, &export) {
                    tracing::debug!(error = %e, "NBD connection ended");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start an NBD connection thread");
        }
    }
}

fn read_u32(s: &mut UnixStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn reply_opt(s: &mut UnixStream, opt: u32, typ: u32, data: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&REPLY_MAGIC_OPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&typ.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

const TRANSMISSION_FLAGS: u16 = TF_HAS_FLAGS | TF_READ_ONLY | TF_SEND_FLUSH | TF_CAN_MULTI_CONN;

/// What an NBD_OPT_INFO/GO asks: the export's name and the info types.
fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4 + len)?).ok()?.to_string();
    let rest = data.get(4 + len..)?;
    let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let infos = rest.get(2..2 + 2 * n)?;
    if rest.len() != 2 + 2 * n {
        return None;
    }
    Some((
        name,
        infos
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

fn export_info(export: &Export) -> Vec<u8> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&export.size.to_be_bytes());
    d.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    d
}

fn block_size_info() -> Vec<u8> {
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&4096u32.to_be_bytes());
    d.extend_from_slice(&MAX_REQUEST.to_be_bytes());
    d
}

/// One connection: the handshake, then requests until DISC.
fn serve(mut s: UnixStream, export: &Export) -> std::io::Result<()> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(HS_FIXED_NEWSTYLE | HS_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let client_flags = read_u32(&mut s)?;
    // Options until the client picks the export.
    loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h)?;
        if u64::from_be_bytes(h[0..8].try_into().expect("8")) != IHAVEOPT {
            return Err(std::io::Error::other("bad option magic"));
        }
        let opt = u32::from_be_bytes(h[8..12].try_into().expect("4"));
        let len = u32::from_be_bytes(h[12..16].try_into().expect("4"));
        if len > MAX_OPTION {
            return Err(std::io::Error::other("option too long"));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                let mut m = Vec::with_capacity(134);
                m.extend_from_slice(&export.size.to_be_bytes());
                m.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if client_flags & CLIENT_NO_ZEROES == 0 {
                    m.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&m)?;
                break;
            }
            OPT_ABORT => {
                reply_opt(&mut s, opt, REP_ACK, &[])?;
                return Ok(());
            }
            OPT_LIST => {
                let mut d = Vec::new();
                d.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                d.extend_from_slice(export.name.as_bytes());
                reply_opt(&mut s, opt, REP_SERVER, &d)?;
                reply_opt(&mut s, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                None => reply_opt(&mut s, opt, REP_ERR_INVALID, b"malformed request")?,
                Some((name, _)) if !name.is_empty() && name != export.name => {
                    let msg = format!("no export '{name}'; this server has '{}'", export.name);
                    reply_opt(&mut s, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                }
                Some((_, infos)) => {
                    reply_opt(&mut s, opt, REP_INFO, &export_info(export))?;
                    if infos.contains(&INFO_BLOCK_SIZE) {
                        reply_opt(&mut s, opt, REP_INFO, &block_size_info())?;
                    }
                    reply_opt(&mut s, opt, REP_ACK, &[])?;
                    if opt == OPT_GO {
                        break;
                    }
                }
            },
            _ => reply_opt(&mut s, opt, REP_ERR_UNSUP, &[])?,
        }
    }
    transmission(s, export)
}

fn reply(s: &mut UnixStream, handle: u64, error: u32, data: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&error.to_be_bytes());
    m.extend_from_slice(&handle.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

fn transmission(mut s: UnixStream, export: &Export) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut h = [0u8; 28];
        s.read_exact(&mut h)?;
        if u32::from_be_bytes(h[0..4].try_into().expect("4")) != REQUEST_MAGIC {
            return Err(std::io::Error::other("bad request magic"));
        }
        let typ = u16::from_be_bytes([h[6], h[7]]);
        let handle = u64::from_be_bytes(h[8..16].try_into().expect("8"));
        let offset = u64::from_be_bytes(h[16..24].try_into().expect("8"));
        let len = u32::from_be_bytes(h[24..28].try_into().expect("4"));
        match typ {
            CMD_DISC => return Ok(()),
            CMD_WRITE => {
                // Read and drop the payload, then refuse.
                std::io::copy(&mut (&mut s).take(len as u64), &mut std::io::sink())?;
                reply(&mut s, handle, EPERM, &[])?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => reply(&mut s, handle, EPERM, &[])?,
            CMD_FLUSH | CMD_CACHE => reply(&mut s, handle, 0, &[])?,
            CMD_READ => {
                let end = offset.checked_add(len as u64);
                if len > MAX_REQUEST || end.is_none_or(|e| e > export.size) {
                    reply(&mut s, handle, EINVAL, &[])?;
                    continue;
                }
                buf.resize(len as usize, 0);
                match export.read_at(offset, &mut buf) {
                    Ok(()) => reply(&mut s, handle, 0, &buf)?,
                    Err(e) => {
                        tracing::error!(error = %e, offset, len, "NBD read from the backup failed");
                        reply(&mut s, handle, EIO, &[])?;
                    }
                }
            }
            _ => reply(&mut s, handle, EINVAL, &[])?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_requests_parse_and_malformed_ones_do_not() {
        let mut d = Vec::new();
        d.extend_from_slice(&5u32.to_be_bytes());
        d.extend_from_slice(b"disk0");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some(("disk0".into(), vec![0, 3])));
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        assert_eq!(parse_info_request(&[0, 0, 0, 9, b'a']), None);
    }
}
