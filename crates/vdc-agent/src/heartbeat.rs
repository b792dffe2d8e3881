//! The datastore heartbeat: about every second the agent rewrites
//! `<datastore>/.vdc-heartbeats/<host>.json` on each shared datastore
//! ([`vdc_types::ha::DatastoreHeartbeat`], versioned), so the HA manager
//! can tell a dead host (both heartbeats stopped) from an isolated one
//! (reports stopped, this file still changing).
//!
//! Each datastore has its own thread, not a task of the runtime: a hung
//! mount blocks only that thread (its heartbeat stops, as it should, since
//! the host no longer reaches that datastore) and never the agent's
//! reports or API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vdc_types::ha::{
    heartbeat_file_name, DatastoreHeartbeat, DATASTORE_HEARTBEAT_VERSION, HEARTBEAT_DIR,
};

/// How often the file is rewritten.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// Starts one writer thread per shared datastore.
pub(crate) fn start(host: &str, started_ms: u64, shared: Vec<(String, PathBuf)>) {
    for (name, root) in shared {
        let host = host.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("heartbeat-{name}"))
            .spawn(move || run(&host, started_ms, &name, &root));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a datastore heartbeat thread");
        }
    }
}

fn run(host: &str, started_ms: u64, name: &str, root: &Path) {
    let dir = root.join(HEARTBEAT_DIR);
    let mut seq = 0u64;
    let mut failing = false;
    loop {
        seq += 1;
        let hb = DatastoreHeartbeat {
            version: DATASTORE_HEARTBEAT_VERSION,
            host: host.to_string(),
            seq,
            agent_started_ms: started_ms,
            written_ms: vdc_types::now_ms(),
        };
        match write(&dir, host, &hb) {
            Ok(()) if failing => {
                tracing::info!(datastore = %name, "datastore heartbeat written again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(datastore = %name, error = %e, "cannot write the datastore heartbeat; retrying every second");
                failing = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(PERIOD);
    }
}

/// Temporary file, fsync, rename, fsync of the directory.
fn write(dir: &Path, host: &str, hb: &DatastoreHeartbeat) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(heartbeat_file_name(host));
    let tmp = dir.join(format!(".{}.tmp", heartbeat_file_name(host)));
    let body = serde_json::to_vec(hb).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_file_is_versioned_json_named_after_the_host() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(HEARTBEAT_DIR);
        let hb = DatastoreHeartbeat {
            version: DATASTORE_HEARTBEAT_VERSION,
            host: "host-1".into(),
            seq: 7,
            agent_started_ms: 1,
            written_ms: 2,
        };
        write(&dir, "host-1", &hb).unwrap();
        let back: DatastoreHeartbeat =
            serde_json::from_slice(&std::fs::read(dir.join("host-1.json")).unwrap()).unwrap();
        assert_eq!(back, hb);
    }
}
