//! One chunk file: a 16-byte header, then the payload.
//!
//! ```text
//!  0  magic "VDCCHNK\0"          8 bytes
//!  8  version (1)                1 byte
//!  9  flags: 1 zstd, 2 encrypted 1 byte
//! 10  reserved (0)               2 bytes
//! 12  plaintext length, LE       4 bytes
//! 16  payload: zstd(plaintext), or nonce (12) + ChaCha20-Poly1305(zstd(plaintext))
//! ```
//!
//! A chunk's name is the blake3 digest of its plaintext (keyed with the
//! store's naming key when the store is encrypted), so a reader checks
//! every chunk it decodes against its name.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::format::{
    CHUNK_FLAG_ENCRYPTED, CHUNK_FLAG_ZSTD, CHUNK_HEADER_LEN, CHUNK_MAGIC, CHUNK_VERSION, ZSTD_LEVEL,
};
use crate::key::{hex, StoreKey};

/// Why a chunk file does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Too short or wrong magic.
    #[error("not a chunk file")]
    NotAChunk,
    /// Written by a newer vdc.
    #[error("chunk version {0} is newer than this vdc reads")]
    TooNew(u8),
    /// Encrypted, and no key was given.
    #[error("the chunk is encrypted and no key was given")]
    NeedsKey,
    /// Authentication or decompression failed.
    #[error("the chunk's payload does not decode")]
    Payload,
    /// The content does not match the name.
    #[error("the chunk's content does not match its name")]
    Digest,
}

/// The name of a chunk with content `plain`.
pub fn digest(plain: &[u8], key: Option<&StoreKey>) -> String {
    let hash = match key {
        Some(k) => blake3::keyed_hash(&k.id, plain),
        None => blake3::hash(plain),
    };
    hex(hash.as_bytes())
}

/// Whether `data` is all zeros.
pub fn is_zero(data: &[u8]) -> bool {
    let (head, body, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|b| *b == 0) && body.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Encodes `plain` as a chunk file.
pub fn encode(plain: &[u8], key: Option<&StoreKey>) -> Vec<u8> {
    let compressed = zstd::bulk::compress(plain, ZSTD_LEVEL).unwrap_or_else(|_| plain.to_vec());
    let zstd_ok = compressed.len() < plain.len();
    let body = if zstd_ok { compressed } else { plain.to_vec() };
    let mut flags = if zstd_ok { CHUNK_FLAG_ZSTD } else { 0 };
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + body.len() + 28);
    out.extend_from_slice(&CHUNK_MAGIC);
    out.push(CHUNK_VERSION);
    let flags_at = out.len();
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    match key {
        Some(k) => {
            flags |= CHUNK_FLAG_ENCRYPTED;
            let cipher = ChaCha20Poly1305::new(Key::from_slice(&k.encrypt));
            let mut nonce = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut nonce);
            let sealed = cipher
                .encrypt(Nonce::from_slice(&nonce), body.as_slice())
                .expect("ChaCha20-Poly1305 encrypts any length below 256 GiB");
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
        None => out.extend_from_slice(&body),
    }
    out[flags_at] = flags;
    out
}

/// Decodes a chunk file and checks its content against `name`.
pub fn decode(file: &[u8], name: &str, key: Option<&StoreKey>) -> Result<Vec<u8>, ChunkError> {
    if file.len() < CHUNK_HEADER_LEN || file[..8] != CHUNK_MAGIC {
        return Err(ChunkError::NotAChunk);
    }
    if file[8] > CHUNK_VERSION {
        return Err(ChunkError::TooNew(file[8]));
    }
    let flags = file[9];
    let len = u32::from_le_bytes([file[12], file[13], file[14], file[15]]) as usize;
    let payload = &file[CHUNK_HEADER_LEN..];
    let opened;
    let body = if flags & CHUNK_FLAG_ENCRYPTED != 0 {
        let k = key.ok_or(ChunkError::NeedsKey)?;
        if payload.len() < 12 {
            return Err(ChunkError::Payload);
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&k.encrypt));
        opened = cipher
            .decrypt(Nonce::from_slice(&payload[..12]), &payload[12..])
            .map_err(|_| ChunkError::Payload)?;
        opened.as_slice()
    } else {
        payload
    };
    let plain = if flags & CHUNK_FLAG_ZSTD != 0 {
        zstd::bulk::decompress(body, len).map_err(|_| ChunkError::Payload)?
    } else {
        body.to_vec()
    };
    if plain.len() != len {
        return Err(ChunkError::Payload);
    }
    let key = if flags & CHUNK_FLAG_ENCRYPTED != 0 {
        key
    } else {
        None
    };
    if digest(&plain, key) != name {
        return Err(ChunkError::Digest);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunks_round_trip_with_and_without_a_key(data in proptest::collection::vec(any::<u8>(), 0..5000), enc in any::<bool>()) {
            let key = StoreKey::from_bytes(&[3; 32]);
            let key = enc.then_some(&key);
            let name = digest(&data, key);
            let file = encode(&data, key);
            prop_assert_eq!(decode(&file, &name, key).expect("decodes"), data);
        }
    }

    #[test]
    fn a_flipped_byte_or_a_wrong_name_is_refused() {
        let data = vec![42u8; 100_000];
        let name = digest(&data, None);
        let mut file = encode(&data, None);
        assert!(file.len() < 1000, "compressed");
        let last = file.len() - 1;
        file[last] ^= 1;
        assert!(decode(&file, &name, None).is_err());
        let file = encode(&data, None);
        assert_eq!(
            decode(&file, &"0".repeat(64), None),
            Err(ChunkError::Digest)
        );
    }

    #[test]
    fn encrypted_chunks_hide_their_content_and_name() {
        let key = StoreKey::from_bytes(&[9; 32]);
        let data = b"PLAINTEXT-MARKER ".repeat(1000);
        let file = encode(&data, Some(&key));
        assert!(!file.windows(16).any(|w| w == b"PLAINTEXT-MARKER"));
        assert_ne!(digest(&data, Some(&key)), digest(&data, None));
        assert_eq!(
            decode(&file, &digest(&data, Some(&key)), None),
            Err(ChunkError::NeedsKey)
        );
        let other = StoreKey::from_bytes(&[8; 32]);
        assert!(decode(&file, &digest(&data, Some(&key)), Some(&other)).is_err());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
    }
}
