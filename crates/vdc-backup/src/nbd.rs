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
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
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
}

fn nbd_io(e: std::io::Error) -> BackupError {
    BackupError::Nbd(format!("connection: {e}"))
}

impl NbdClient {
    /// Connects to export `name` on the unix socket `path`.
    pub fn connect(path: &Path, name: &str) -> Result<NbdClient> {
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
        let mut msg = Vec::new();
        msg.extend_from_slice(&cflags.to_be_bytes());
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_GO.to_be_bytes());
        msg.extend_from_slice(&((4 + name.len() + 2) as u32).to_be_bytes());
        msg.extend_from_slice(&(name.len() as u32).to_be_bytes());
        msg.extend_from_slice(name.as_bytes());
        msg.extend_from_slice(&0u16.to_be_bytes());
        sock.write_all(&msg).map_err(nbd_io)?;
        let mut size = None;
        loop {
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
            match typ {
                REP_ACK => break,
                REP_INFO if len >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8")));
                }
                REP_INFO => {}
                t if t & 0x8000_0000 != 0 => {
                    return Err(BackupError::Nbd(format!(
                        "export '{name}' refused: {}",
                        String::from_utf8_lossy(&data)
                    )))
                }
                t => return Err(BackupError::Nbd(format!("unexpected option reply {t}"))),
            }
        }
        let size = size.ok_or_else(|| BackupError::Nbd("the server sent no export size".into()))?;
        Ok(NbdClient {
            sock,
            size,
            handle: 0,
        })
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
