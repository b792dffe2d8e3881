//! Which store a `vdc server` keeps its state in: `--store`.
//!
//! - `redb:PATH` — the embedded store, one file (the default is
//!   `redb:<data-dir>/state.redb`);
//! - `etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]` — etcd, for several
//!   servers sharing one state (keys under `/vdc` unless a namespace is
//!   given).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use vdc_store::{RedbStore, Store};
use vdc_store_etcd::{EtcdStore, EtcdUrl};

/// A parsed `--store` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded store in this file.
    Redb(PathBuf),
    /// etcd members and namespace.
    Etcd(EtcdUrl),
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("redb:") {
            if path.is_empty() {
                return Err(
                    "redb: needs a file path, e.g. redb:/var/lib/vdc/server/state.redb".into(),
                );
            }
            return Ok(StoreUrl::Redb(PathBuf::from(path)));
        }
        if s.starts_with("etcd://") {
            return s.parse().map(StoreUrl::Etcd).map_err(|e| e.to_string());
        }
        Err(format!(
            "unknown store {s:?}: expected redb:PATH or etcd://HOST:PORT[,HOST:PORT...]"
        ))
    }
}

impl StoreUrl {
    /// The default store of a server whose data directory is `data_dir`.
    pub fn default_for(data_dir: &Path) -> Self {
        StoreUrl::Redb(data_dir.join("state.redb"))
    }

    /// Open the store (connect to etcd and check it answers).
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            StoreUrl::Redb(path) => Arc::new(
                RedbStore::open(path)
                    .await
                    .with_context(|| format!("cannot open the store file {}", path.display()))?,
            ),
            StoreUrl::Etcd(url) => Arc::new(
                EtcdStore::connect(url)
                    .await
                    .with_context(|| format!("cannot reach etcd at {}", url.endpoints.join(",")))?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_refuses_others() {
        assert_eq!(
            "redb:/x/state.redb".parse::<StoreUrl>(),
            Ok(StoreUrl::Redb("/x/state.redb".into()))
        );
        match "etcd://10.0.0.1:2379,10.0.0.2:2379".parse::<StoreUrl>() {
            Ok(StoreUrl::Etcd(url)) => assert_eq!(url.endpoints.len(), 2),
            other => panic!("{other:?}"),
        }
        for bad in ["redb:", "etcd://nohost", "mysql://x", ""] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
