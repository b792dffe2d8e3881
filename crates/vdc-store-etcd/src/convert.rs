//! Between the store's model and etcd's: keys under a namespace, compares,
//! ops, key-values and errors.

use etcd_client as etcd;
use vdc_store::{Compare, KeyValue, LeaseId, Op, StoreError};

/// The key namespace of one store: every key is stored as `prefix + key`.
#[derive(Debug, Clone)]
pub(crate) struct Namespace {
    prefix: String,
}

impl Namespace {
    pub(crate) fn new(prefix: &str) -> Self {
        Namespace {
            prefix: prefix.to_string(),
        }
    }

    /// The etcd key of a store key.
    pub(crate) fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// The etcd range `[start, end)` holding every store key that starts
    /// with `prefix`.
    pub(crate) fn range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.key(prefix);
        if start.is_empty() {
            // Every key: etcd spells it "\0" to "\0".
            return (vec![0], vec![0]);
        }
        let end = prefix_end(&start);
        (start, end)
    }

    /// The store key of an etcd key (which must lie in the namespace).
    pub(crate) fn strip(&self, key: &[u8]) -> Result<String, StoreError> {
        let text = std::str::from_utf8(key).map_err(|_| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
        })?;
        text.strip_prefix(&self.prefix)
            .map(str::to_string)
            .ok_or_else(|| StoreError::Corrupt {
                key: text.to_string(),
            })
    }

    /// A store [`KeyValue`] from etcd's.
    pub(crate) fn kv(&self, kv: &etcd::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: revision(kv.create_revision()),
            mod_revision: revision(kv.mod_revision()),
            lease: lease_of(kv.lease()),
        })
    }

    /// An etcd compare from a store one.
    pub(crate) fn compare(&self, c: &Compare) -> etcd::Compare {
        use etcd::CompareOp::{Equal, Greater};
        match c {
            Compare::Revision { key, mod_revision } => {
                etcd::Compare::mod_revision(self.key(key), Equal, as_i64(*mod_revision))
            }
            Compare::Value { key, value } => {
                etcd::Compare::value(self.key(key), Equal, value.clone())
            }
            Compare::Absent(key) => etcd::Compare::create_revision(self.key(key), Equal, 0),
            Compare::Exists(key) => etcd::Compare::create_revision(self.key(key), Greater, 0),
        }
    }

    /// An etcd transaction op from a store one.
    pub(crate) fn op(&self, op: &Op) -> etcd::TxnOp {
        match op {
            Op::Put { key, value, lease } => {
                let options = lease.map(|l| etcd::PutOptions::new().with_lease(as_i64(l)));
                etcd::TxnOp::put(self.key(key), value.clone(), options)
            }
            Op::Delete(key) => etcd::TxnOp::delete(self.key(key), None),
            Op::DeletePrefix(prefix) => {
                let (start, end) = self.range(prefix);
                etcd::TxnOp::delete(start, Some(etcd::DeleteOptions::new().with_range(end)))
            }
        }
    }
}

/// The first key after every key starting with `start` (etcd's prefix end).
fn prefix_end(start: &[u8]) -> Vec<u8> {
    let mut end = start.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: no end, up to the last key.
    vec![0]
}

/// etcd's revisions are positive `i64`s.
pub(crate) fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

/// The store's `u64`s as etcd's `i64`s (lease ids keep their bits).
pub(crate) fn as_i64(v: u64) -> i64 {
    v as i64
}

/// A store lease id from etcd's (0 is "no lease").
pub(crate) fn lease_of(id: i64) -> Option<LeaseId> {
    (id != 0).then_some(id as u64)
}

/// True if etcd refused the request because a lease does not exist.
pub(crate) fn is_lease_not_found(e: &etcd::Error) -> bool {
    match e {
        etcd::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        // The keep-alive stream's answer for a lease with no time left.
        etcd::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Whether `e` says the member could not be reached (a connection that
/// broke or was refused), rather than a refusal by etcd.
pub(crate) fn is_unreachable(e: &etcd::Error) -> bool {
    match e {
        etcd::Error::TransportError(_) | etcd::Error::IoError(_) => true,
        // gRPC codes: 1 cancelled, 2 unknown, 14 unavailable.
        etcd::Error::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 14),
        _ => false,
    }
}

/// Whether `e` says the request never left this process: the connection
/// to the member it was meant for could not be made (the member is gone).
/// Such a write can be sent again without being applied twice.
pub(crate) fn never_sent(e: &etcd::Error) -> bool {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&s.to_string());
        source = s.source();
    }
    if let etcd::Error::GRpcStatus(s) = e {
        text.push_str(s.message());
    }
    [
        "tcp connect error",
        "error trying to connect",
        "Connection refused",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// A store error from an etcd client error.
pub(crate) fn backend(e: etcd::Error) -> StoreError {
    StoreError::backend(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bumps_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn namespace_maps_keys_and_ranges() {
        let ns = Namespace::new("/t1/");
        assert_eq!(ns.key("vms/a"), b"/t1/vms/a");
        assert_eq!(ns.range(""), (b"/t1/".to_vec(), b"/t10".to_vec()));
        assert_eq!(ns.strip(b"/t1/vms/a").expect("strip"), "vms/a");
        assert!(ns.strip(b"/t2/x").is_err());
        let all = Namespace::new("");
        assert_eq!(all.range(""), (vec![0], vec![0]));
    }

    #[test]
    fn lease_ids_keep_their_bits() {
        let id: u64 = 0x8000_0000_0000_0001;
        assert_eq!(lease_of(as_i64(id)), Some(id));
        assert_eq!(lease_of(0), None);
    }
}
