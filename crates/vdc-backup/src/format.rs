//! The store's on-disk constants.
//!
//! **Never change a value here**: stores written with it would no longer
//! read. A change of meaning gets a new version number; readers refuse
//! versions newer than theirs.

/// `"magic"` of the store header `vdc-backup-store.json`.
pub const STORE_MAGIC: &str = "vdc-backup-store";
/// Version of the store header and layout.
pub const STORE_VERSION: u32 = 1;
/// File name of the store header.
pub const STORE_HEADER: &str = "vdc-backup-store.json";

/// `"magic"` of a backup manifest.
pub const MANIFEST_MAGIC: &str = "vdc-backup-manifest";
/// Version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;

/// `"magic"` of a writer marker.
pub const WRITER_MAGIC: &str = "vdc-backup-writer";
/// Version of the writer marker.
pub const WRITER_VERSION: u32 = 1;

/// First bytes of a chunk file.
pub const CHUNK_MAGIC: [u8; 8] = *b"VDCCHNK\0";
/// Version of the chunk file format.
pub const CHUNK_VERSION: u8 = 1;
/// Length of a chunk file's header.
pub const CHUNK_HEADER_LEN: usize = 16;
/// Chunk flag: the payload is zstd-compressed.
pub const CHUNK_FLAG_ZSTD: u8 = 1;
/// Chunk flag: the payload is encrypted (nonce, then ciphertext and tag).
pub const CHUNK_FLAG_ENCRYPTED: u8 = 2;

/// Size of the fixed chunks disk images are cut into (4 MiB).
pub const IMAGE_CHUNK_SIZE: u64 = 4 << 20;
/// zstd level of chunk payloads.
pub const ZSTD_LEVEL: i32 = 1;

/// Context of the keyed digest that names chunks of an encrypted store.
pub const KEY_CONTEXT_ID: &str = "vdc-backup 2026 chunk names v1";
/// Context of the key that encrypts chunks.
pub const KEY_CONTEXT_ENCRYPT: &str = "vdc-backup 2026 chunk encryption v1";
/// Context of the key check recorded in the store header.
pub const KEY_CONTEXT_CHECK: &str = "vdc-backup 2026 key check v1";
