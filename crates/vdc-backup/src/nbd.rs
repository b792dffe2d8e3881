//! A small NBD client (blocking, over a unix socket), enough to read a
//! point-in-time view QEMU or `qemu-nbd` exports.
//!
//! ```text
//!  server: "NBDMAGIC" "IHAVEOPT" flags(u16)       (fixed newstyle)
//!  client: flags(u32: FIXED_NEWSTYLE | NO_ZEROES)
//!  client: IHAVEOPT, NBD_OPT_GO, len, name_len(u32), name, 0 info requests
//!  server: NBD_REP_INFO (NBD_INFO_EXPORT: size, flags) … NBD_REP_ACK
//!  transmission: request (magic, flags, type, handle, offset, length)
//!                simple reply (magic, error, handle) + data for a read
//!  client: NBD_CMD_DISC
//!
//! For changed-block reads a second connection negotiates structured
//! replies (`NBD_OPT_STRUCTURED_REPLY`) and a metadata context
//! (`NBD_OPT_SET_META_CONTEXT`, e.g. `qemu:dirty-bitmap:NAME`) before
//! `NBD_OPT_GO`, and asks `NBD_CMD_BLOCK_STATUS`: extents with flags,
//! flag 1 = dirty.
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::{BackupError, Result};
use crate::session::DiskSource;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const CMD_BLOCK_STATUS: u16 = 7;
const INFO_EXPORT: u16 = 0;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
/// Largest read asked in one request (QEMU's limit is 32 MiB).
const MAX_READ: usize = 8 << 20;

/// A connection to one export.
pub struct NbdClient {
    sock: UnixStream,
    size: u64,
    handle: u64,
    meta_id: Option<u32>,
}

fn nbd_io(e: std::io::Error) -> BackupError {
    BackupError::Nbd(format!("connection: {e}"))
}

struct OptReply {
    typ: u32,
    data: Vec<u8>,
}

fn send_option(sock: &mut UnixStream, opt: u32, data: &[u8]) -> Result<()> {
    let mut msg = Vec::with_capacity(16 + data.len());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&opt.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    sock.write_all(&msg).map_err(nbd_io)
}

fn read_option_reply(sock: &mut UnixStream) -> Result<OptReply> {
    let mut h = [0u8; 20];
    sock.read_exact(&mut h).map_err(nbd_io)?;
    let magic = u64::from_be_bytes(h[0..8].try_into().expect("8"));
    let typ = u32::from_be_bytes(h[12..16].try_into().expect("4"));
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4")) as usize;
    if magic != REPLY_MAGIC_OPT || len > 1 << 20 {
        return Err(BackupError::Nbd("bad option reply".into()));
    }
    let mut data = vec![0u8; len];
    sock.read_exact(&mut data).map_err(nbd_io)?;
    if typ & 0x8000_0000 != 0 {
        return Err(BackupError::Nbd(format!(
            "option refused: {}",
            String::from_utf8_lossy(&data)
        )));
    }
    Ok(OptReply { typ, data })
}

impl NbdClient {
    /// Connects to export `name` on the unix socket `path`.
    pub fn connect(path: &Path, name: &str) -> Result<NbdClient> {
        Self::open(path, name, None).map(|(c, _)| c)
    }

    /// Connects to export `name` with structured replies and the metadata
    /// context `context` (e.g. `qemu:dirty-bitmap:NAME`), for
    /// [`NbdClient::block_status`]. Fails when the server lacks the context.
    pub fn connect_meta(path: &Path, name: &str, context: &str) -> Result<NbdClient> {
        Self::open(path, name, Some(context)).map(|(c, _)| c)
    }

    fn open(path: &Path, name: &str, context: Option<&str>) -> Result<(NbdClient, Option<u32>)> {
        let mut sock = UnixStream::connect(path).map_err(|e| {
            BackupError::Nbd(format!("cannot connect to '{}': {e}", path.display()))
        })?;
        let mut hello = [0u8; 18];
        sock.read_exact(&mut hello).map_err(nbd_io)?;
        let magic = u64::from_be_bytes(hello[0..8].try_into().expect("8"));
        let opt = u64::from_be_bytes(hello[8..16].try_into().expect("8"));
        let flags = u16::from_be_bytes([hello[16], hello[17]]);
        if magic != NBDMAGIC || opt != IHAVEOPT || flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(BackupError::Nbd(
                "the server does not speak fixed newstyle".into(),
            ));
        }
        let cflags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        sock.write_all(&cflags.to_be_bytes()).map_err(nbd_io)?;
        let mut meta_id = None;
        if let Some(ctx) = context {
            send_option(&mut sock, OPT_STRUCTURED_REPLY, &[])?;
            if read_option_reply(&mut sock)?.typ != REP_ACK {
                return Err(BackupError::Nbd("structured replies refused".into()));
            }
            let mut q = Vec::new();
            q.extend_from_slice(&(name.len() as u32).to_be_bytes());
            q.extend_from_slice(name.as_bytes());
            q.extend_from_slice(&1u32.to_be_bytes());
            q.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
            q.extend_from_slice(ctx.as_bytes());
            send_option(&mut sock, OPT_SET_META_CONTEXT, &q)?;
            loop {
                let r = read_option_reply(&mut sock)?;
                match r.typ {
                    REP_ACK => break,
                    REP_META_CONTEXT if r.data.len() >= 4 => {
                        meta_id = Some(u32::from_be_bytes(r.data[0..4].try_into().expect("4")));
                    }
                    t => {
                        return Err(BackupError::Nbd(format!(
                            "unexpected meta context reply {t}"
                        )))
                    }
                }
            }
            if meta_id.is_none() {
                return Err(BackupError::Nbd(format!(
                    "export '{name}' has no context '{ctx}'"
                )));
            }
        }
        let mut go = Vec::new();
        go.extend_from_slice(&(name.len() as u32).to_be_bytes());
        go.extend_from_slice(name.as_bytes());
        go.extend_from_slice(&0u16.to_be_bytes());
        send_option(&mut sock, OPT_GO, &go)?;
        let mut size = None;
        loop {
            let r = read_option_reply(&mut sock)?;
            match r.typ {
                REP_ACK => break,
                REP_INFO
                    if r.data.len() >= 12
                        && u16::from_be_bytes([r.data[0], r.data[1]]) == INFO_EXPORT =>
                {
                    size = Some(u64::from_be_bytes(r.data[2..10].try_into().expect("8")));
                }
                REP_INFO => {}
                t => return Err(BackupError::Nbd(format!("unexpected option reply {t}"))),
            }
        }
        let size = size.ok_or_else(|| BackupError::Nbd("the server sent no export size".into()))?;
        Ok((
            NbdClient {
                sock,
                size,
                handle: 0,
                meta_id,
            },
            meta_id,
        ))
    }

    /// The extents of `[offset, offset+len)` with their flags in the
    /// negotiated metadata context (for `qemu:dirty-bitmap:*`, flag 1 =
    /// dirty), as (offset, length, flags).
    pub fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<(u64, u64, u32)>> {
        let meta = self
            .meta_id
            .ok_or_else(|| BackupError::Nbd("no metadata context was negotiated".into()))?;
        let mut out = Vec::new();
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let ask = (end - at).min(1 << 30) as u32;
            let handle = self.request(CMD_BLOCK_STATUS, at, ask)?;
            let mut got_any = false;
            loop {
                let mut h = [0u8; 20];
                self.sock.read_exact(&mut h).map_err(nbd_io)?;
                let magic = u32::from_be_bytes(h[0..4].try_into().expect("4"));
                let flags = u16::from_be_bytes([h[4], h[5]]);
                let typ = u16::from_be_bytes([h[6], h[7]]);
                let hd = u64::from_be_bytes(h[8..16].try_into().expect("8"));
                let plen = u32::from_be_bytes(h[16..20].try_into().expect("4")) as usize;
                if magic != STRUCTURED_REPLY_MAGIC || hd != handle || plen > 16 << 20 {
                    return Err(BackupError::Nbd("bad structured reply".into()));
                }
                let mut p = vec![0u8; plen];
                self.sock.read_exact(&mut p).map_err(nbd_io)?;
                if typ & 0x8000 != 0 {
                    return Err(BackupError::Nbd(format!(
                        "block status failed (reply type {typ})"
                    )));
                }
                if typ == REPLY_TYPE_BLOCK_STATUS && plen >= 4 {
                    let id = u32::from_be_bytes(p[0..4].try_into().expect("4"));
                    if id == meta {
                        let mut o = at;
                        for d in p[4..].chunks_exact(8) {
                            let l = u64::from(u32::from_be_bytes(d[0..4].try_into().expect("4")));
                            let f = u32::from_be_bytes(d[4..8].try_into().expect("4"));
                            out.push((o, l, f));
                            o += l;
                            got_any = true;
                        }
                        at = o;
                    }
                }
                if flags & REPLY_FLAG_DONE != 0 {
                    break;
                }
            }
            if !got_any {
                return Err(BackupError::Nbd("block status answered no extent".into()));
            }
        }
        Ok(out)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn request(&mut self, typ: u16, offset: u64, len: u32) -> Result<u64> {
        self.handle += 1;
        let mut r = [0u8; 28];
        r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r[6..8].copy_from_slice(&typ.to_be_bytes());
        r[8..16].copy_from_slice(&self.handle.to_be_bytes());
        r[16..24].copy_from_slice(&offset.to_be_bytes());
        r[24..28].copy_from_slice(&len.to_be_bytes());
        self.sock.write_all(&r).map_err(nbd_io)?;
        Ok(self.handle)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_READ);
            let handle = self.request(CMD_READ, offset + done as u64, n as u32)?;
            let mut h = [0u8; 16];
            self.sock.read_exact(&mut h).map_err(nbd_io)?;
            let magic = u32::from_be_bytes(h[0..4].try_into().expect("4"));
            let err = u32::from_be_bytes(h[4..8].try_into().expect("4"));
            let got = u64::from_be_bytes(h[8..16].try_into().expect("8"));
            if magic != SIMPLE_REPLY_MAGIC || got != handle {
                return Err(BackupError::Nbd("bad reply".into()));
            }
            if err != 0 {
                return Err(BackupError::Nbd(format!(
                    "read of {n} bytes at {} failed (error {err})",
                    offset + done as u64
                )));
            }
            self.sock
                .read_exact(&mut buf[done..done + n])
                .map_err(nbd_io)?;
            done += n;
        }
        Ok(())
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if let Err(e) = self.request(CMD_DISC, 0, 0) {
            tracing::debug!(error = %e, "NBD disconnect");
        }
    }
}

impl DiskSource for NbdClient {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read(offset, buf)
    }
}
