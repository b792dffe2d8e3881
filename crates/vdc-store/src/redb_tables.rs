//! The redb store's table I/O inside one transaction: opening and
//! checking the database, reading, scanning, comparing and applying
//! operations. Free of the store's in-memory state (watchers, leases).

use redb::{Database, ReadableTable, ReadableTableMetadata};

use crate::format::{self, RecordHeader};
use crate::redb_store::{db_err, Change, KV, META};
use crate::{Compare, KeyValue, Op, StoreError};

/// Check or initialise the format, drop leased keys; returns the revision.
pub(crate) fn prepare(db: &Database) -> Result<u64, StoreError> {
    let wtx = db.begin_write().map_err(db_err)?;
    let revision = {
        let mut meta = wtx.open_table(META).map_err(db_err)?;
        let mut kv = wtx.open_table(KV).map_err(db_err)?;
        let version = meta
            .get(format::META_FORMAT_VERSION)
            .map_err(db_err)?
            .map(|v| v.value());
        match version {
            Some(format::FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    expected: format::FORMAT_VERSION,
                })
            }
            None if kv.len().map_err(db_err)? > 0 => {
                return Err(StoreError::UnsupportedFormat {
                    found: 0,
                    expected: format::FORMAT_VERSION,
                })
            }
            None => {
                meta.insert(format::META_FORMAT_VERSION, format::FORMAT_VERSION)
                    .map_err(db_err)?;
            }
        }
        let mut revision = meta
            .get(format::META_REVISION)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let leased: Vec<String> = scan_prefix(&kv, "")?
            .into_iter()
            .filter(|kv| kv.lease.is_some())
            .map(|kv| kv.key)
            .collect();
        if !leased.is_empty() {
            revision += 1;
            for key in &leased {
                kv.remove(key.as_str()).map_err(db_err)?;
            }
            tracing::info!(
                keys = leased.len(),
                "deleted keys of leases from a previous run"
            );
        }
        meta.insert(format::META_REVISION, revision)
            .map_err(db_err)?;
        revision
    };
    wtx.commit().map_err(db_err)?;
    Ok(revision)
}

pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    let (h, value) = format::decode_record(bytes).ok_or_else(|| StoreError::Corrupt {
        key: key.to_string(),
    })?;
    Ok(KeyValue {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision: h.create_revision,
        mod_revision: h.mod_revision,
        lease: h.lease,
    })
}

pub(crate) fn read_kv(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>, StoreError> {
    match table.get(key).map_err(db_err)? {
        Some(guard) => decode(key, guard.value()).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn scan_prefix(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    for item in table.range::<&str>(prefix..).map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push(decode(key, v.value())?);
    }
    Ok(out)
}

pub(crate) fn holds(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    compare: &Compare,
) -> Result<bool, StoreError> {
    Ok(match compare {
        Compare::Revision { key, mod_revision } => {
            read_kv(table, key)?.map_or(0, |kv| kv.mod_revision) == *mod_revision
        }
        Compare::Value { key, value } => read_kv(table, key)?.is_some_and(|kv| kv.value == *value),
        Compare::Absent(key) => read_kv(table, key)?.is_none(),
        Compare::Exists(key) => read_kv(table, key)?.is_some(),
    })
}

/// Remove one key, recording the change if it existed.
pub(crate) fn delete_key(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: String,
    changes: &mut Vec<Change>,
) -> Result<(), StoreError> {
    let old = table.remove(key.as_str()).map_err(db_err)?;
    if let Some(old) = old {
        let old_lease = decode(&key, old.value())?.lease;
        changes.push(Change::Delete { key, old_lease });
    }
    Ok(())
}

/// Apply `ops` to the table under `revision`; returns what changed.
pub(crate) fn apply_ops(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    ops: Vec<Op>,
    revision: u64,
) -> Result<Vec<Change>, StoreError> {
    let mut changes = Vec::new();
    for op in ops {
        match op {
            Op::Delete(key) => delete_key(table, key, &mut changes)?,
            Op::DeletePrefix(prefix) => {
                for kv in scan_prefix(table, &prefix)? {
                    delete_key(table, kv.key, &mut changes)?;
                }
            }
            Op::Put { key, value, lease } => {
                let old = read_kv(table, &key)?;
                let header = RecordHeader {
                    create_revision: old.as_ref().map_or(revision, |o| o.create_revision),
                    mod_revision: revision,
                    lease,
                };
                let record = format::encode_record(&header, &value);
                table
                    .insert(key.as_str(), record.as_slice())
                    .map_err(db_err)?;
                changes.push(Change::Put {
                    kv: KeyValue {
                        key,
                        value,
                        create_revision: header.create_revision,
                        mod_revision: revision,
                        lease,
                    },
                    old_lease: old.and_then(|o| o.lease),
                });
            }
        }
    }
    Ok(changes)
}
