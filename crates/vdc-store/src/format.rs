//! On-disk format of the embedded store ([`RedbStore`](crate::RedbStore)).
//!
//! WARNING: these constants describe files that already exist on users'
//! disks. NEVER change a value here. A new layout gets a new
//! [`FORMAT_VERSION`] and an upgrade path in `RedbStore::open`.
//!
//! Layout, format version 1 — one redb database with two tables:
//!
//! - `meta` (`&str` → `u64`): `format_version` (= 1) and `revision` (the
//!   store revision, updated in the same write transaction as the data).
//! - `kv` (`&str` → `&[u8]`): key → record. A record is a 24-byte header of
//!   three little-endian `u64` — create revision, modification revision,
//!   lease id (0 = no lease) — followed by the value bytes.

/// Version of the layout written by this build.
pub const FORMAT_VERSION: u64 = 1;

/// Name of the table holding the bookkeeping counters.
pub const META_TABLE: &str = "meta";

/// Name of the table holding keys and records.
pub const KV_TABLE: &str = "kv";

/// `meta` key of the format version.
pub const META_FORMAT_VERSION: &str = "format_version";

/// `meta` key of the store revision.
pub const META_REVISION: &str = "revision";

/// Length of the record header that precedes the value bytes.
pub const RECORD_HEADER_LEN: usize = 24;

/// Lease id written for "no lease".
pub const NO_LEASE: u64 = 0;

/// Bookkeeping of one stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Revision that created the key.
    pub create_revision: u64,
    /// Revision of the last change.
    pub mod_revision: u64,
    /// Attached lease, if any.
    pub lease: Option<u64>,
}

/// Encode a record: header then value.
pub fn encode_record(header: &RecordHeader, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + value.len());
    out.extend_from_slice(&header.create_revision.to_le_bytes());
    out.extend_from_slice(&header.mod_revision.to_le_bytes());
    out.extend_from_slice(&header.lease.unwrap_or(NO_LEASE).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Decode a record into its header and value; `None` if it is too short.
pub fn decode_record(bytes: &[u8]) -> Option<(RecordHeader, &[u8])> {
    let word = |i: usize| -> Option<u64> {
        let raw = bytes.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(raw.try_into().ok()?))
    };
    let header = RecordHeader {
        create_revision: word(0)?,
        mod_revision: word(1)?,
        lease: Some(word(2)?).filter(|l| *l != NO_LEASE),
    };
    Some((header, bytes.get(RECORD_HEADER_LEN..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_layout_is_frozen() {
        let h = RecordHeader {
            create_revision: 1,
            mod_revision: 2,
            lease: Some(3),
        };
        let bytes = encode_record(&h, b"xy");
        assert_eq!(&bytes[..8], &1u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &3u64.to_le_bytes());
        assert_eq!(decode_record(&bytes), Some((h, &b"xy"[..])));
        let no_lease = RecordHeader { lease: None, ..h };
        assert_eq!(
            decode_record(&encode_record(&no_lease, b"")),
            Some((no_lease, &b""[..]))
        );
        assert_eq!(decode_record(&bytes[..23]), None);
    }
}
