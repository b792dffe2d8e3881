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
use vdc_store::{Op, RedbStore, Store};
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

/// `vdc server <command>`: maintenance of the server's store.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServerCommand {
    /// Copy every key of a stopped server's store into an empty one (e.g.
    /// from the embedded file to etcd), then start the servers with
    /// `--store` set to the new one. Keys held by leases (liveness) are
    /// not copied: their owners write them again.
    MigrateStore {
        /// The store to copy: `redb:PATH` or `etcd://...` (its server
        /// stopped).
        #[arg(long)]
        from: StoreUrl,
        /// The empty store to fill: `etcd://HOST:PORT[,...]` or `redb:PATH`.
        #[arg(long)]
        to: StoreUrl,
    },
}

/// Keys written per transaction while migrating.
const MIGRATE_BATCH: usize = 100;

/// Run a `vdc server` maintenance command.
pub async fn run_command(command: &ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::MigrateStore { from, to } => {
            let copied = migrate(from, to).await?;
            println!(
                "copied {copied} keys; start the server(s) with --store {}",
                to.display()
            );
            Ok(())
        }
    }
}

impl StoreUrl {
    /// The URL as given on the command line.
    pub fn display(&self) -> String {
        match self {
            StoreUrl::Redb(path) => format!("redb:{}", path.display()),
            StoreUrl::Etcd(url) => format!("etcd://{}{}", url.endpoints.join(","), url.namespace),
        }
    }
}

/// Copy every key without a lease from `from` into the empty store `to`,
/// then check that the target lists the same keys and values. Returns the
/// number of keys copied.
pub async fn migrate(from: &StoreUrl, to: &StoreUrl) -> anyhow::Result<usize> {
    anyhow::ensure!(from != to, "--from and --to name the same store");
    if let StoreUrl::Redb(path) = from {
        anyhow::ensure!(
            path.is_file(),
            "no store file at {} (give the stopped server's state.redb)",
            path.display()
        );
    }
    let source = from.open().await.context("cannot open the source store")?;
    let target = to.open().await.context("cannot open the target store")?;
    let present = target
        .list("")
        .await
        .context("cannot list the target store")?;
    anyhow::ensure!(
        present.is_empty(),
        "the target store is not empty ({} keys): migrate into an empty store",
        present.len()
    );
    let keys: Vec<_> = source
        .list("")
        .await
        .context("cannot list the source store")?
        .into_iter()
        .filter(|kv| kv.lease.is_none())
        .collect();
    for chunk in keys.chunks(MIGRATE_BATCH) {
        let ops = chunk
            .iter()
            .map(|kv| Op::Put {
                key: kv.key.clone(),
                value: kv.value.clone(),
                lease: None,
            })
            .collect();
        target
            .txn(vec![], ops, vec![])
            .await
            .context("cannot write to the target store")?;
    }
    let copied = target
        .list("")
        .await
        .context("cannot check the target store")?;
    let same = copied.len() == keys.len()
        && copied
            .iter()
            .zip(&keys)
            .all(|(a, b)| a.key == b.key && a.value == b.value);
    anyhow::ensure!(
        same,
        "the target store does not hold what was copied; do not use it"
    );
    Ok(keys.len())
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
