//! The key of an encrypted store, read from a key file: 32 random bytes,
//! or 64 hex digits. Three keys are derived from it (blake3 `derive_key`):
//! one names chunks (a keyed digest, so names reveal nothing of the
//! content), one encrypts them (ChaCha20-Poly1305), one is a check
//! recorded in the store header so that a wrong key is refused at once.

use std::path::Path;

use crate::error::{BackupError, Result};
use crate::format::{KEY_CONTEXT_CHECK, KEY_CONTEXT_ENCRYPT, KEY_CONTEXT_ID};

/// The derived keys of an encrypted store.
#[derive(Clone)]
pub struct StoreKey {
    pub(crate) id: [u8; 32],
    pub(crate) encrypt: [u8; 32],
    check: [u8; 32],
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl StoreKey {
    /// Derives the keys from the key file's 32 bytes.
    pub fn from_bytes(master: &[u8; 32]) -> StoreKey {
        StoreKey {
            id: blake3::derive_key(KEY_CONTEXT_ID, master),
            encrypt: blake3::derive_key(KEY_CONTEXT_ENCRYPT, master),
            check: blake3::derive_key(KEY_CONTEXT_CHECK, master),
        }
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<StoreKey> {
        let raw = std::fs::read(path).map_err(BackupError::io("cannot read key file", path))?;
        Self::parse(&raw).ok_or_else(|| {
            BackupError::Key(format!(
                "key file '{}' must hold 32 bytes or 64 hex digits (e.g. 'head -c 32 /dev/urandom > FILE')",
                path.display()
            ))
        })
    }

    fn parse(raw: &[u8]) -> Option<StoreKey> {
        let text = std::str::from_utf8(raw).ok().map(str::trim);
        let bytes: Vec<u8> = match text {
            Some(t) if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) => (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?,
            _ if raw.len() == 32 => raw.to_vec(),
            _ => return None,
        };
        let master: [u8; 32] = bytes.try_into().ok()?;
        Some(Self::from_bytes(&master))
    }

    /// The key check recorded in the store header (hex).
    pub fn check_hex(&self) -> String {
        hex(&self.check)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_raw_key_files_give_the_same_keys() {
        let raw = [7u8; 32];
        let a = StoreKey::parse(&raw).expect("raw");
        let b = StoreKey::parse(format!("{}\n", hex(&raw)).as_bytes()).expect("hex");
        assert_eq!(a.check_hex(), b.check_hex());
        assert_ne!(a.id, a.encrypt);
        assert!(StoreKey::parse(b"short").is_none());
    }
}
