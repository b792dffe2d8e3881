//! The VM lock: a lease file (`vm.lock`) in the VM's directory.
//!
//! Only one host may open a VM's disks at a time. The host that runs a VM
//! holds a lease `{"version":1,"host":..,"agent_id":..,"expires_ms":..}` and
//! renews it every few seconds; another host may take the VM over only once
//! the lease has expired (the owner died or lost the datastore). QEMU's own
//! image locking is a second line of defence on the same host.
//!
//! Whether a host may take a lease is decided by [`decide`], a pure function
//! of the lease's content, the host and the time. Applying the decision is
//! made race-safe between hosts sharing the directory:
//!
//! 1. No lease file: write the new lease to a private temporary file, then
//!    `link(2)` it to `vm.lock`. `link` fails if the name exists, so of two
//!    hosts racing only one creates the lease; the other re-reads and
//!    decides again.
//! 2. Expired lease, or our own: write a private temporary file and
//!    `rename(2)` it over `vm.lock`, wait a short settling delay, re-read and
//!    check the lease is still ours. Of two hosts taking over the same
//!    expired lease at once, the later rename wins and the earlier one sees
//!    the other's lease when it verifies. (The remaining window is a
//!    contender whose read-to-rename gap exceeds the settling delay.)
//!
//! Ownership is by host name, not by agent process: an agent restarted on
//! the same host finds its leases and keeps them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::DiskError;

/// Version of the lease file format. Never change the meaning of a field
/// without bumping it.
pub const LEASE_VERSION: u32 = 1;

/// File name of the lease in a VM directory.
pub const LOCK_FILE: &str = "vm.lock";

/// Delay between taking over a lease by rename and verifying it.
const SETTLE: Duration = Duration::from_millis(150);

/// The content of `vm.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Format version, [`LEASE_VERSION`].
    pub version: u32,
    /// Host holding the VM.
    pub host: String,
    /// Agent process instance on that host.
    pub agent_id: String,
    /// End of the lease (Unix ms); after it any host may take the VM.
    pub expires_ms: u64,
}

/// What a host may do about a VM's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No lease exists: create one.
    Create,
    /// The lease is ours and live: extend it.
    Renew,
    /// The lease expired (whoever held it): replace it.
    TakeOver,
    /// Another host holds a live lease.
    Refuse {
        /// That host.
        holder_host: String,
        /// When its lease expires.
        expires_ms: u64,
    },
}

/// Decides whether `host` may take the lease `current` at time `now_ms`.
pub fn decide(current: Option<&Lease>, host: &str, now_ms: u64) -> LeaseDecision {
    match current {
        None => LeaseDecision::Create,
        Some(l) if l.expires_ms <= now_ms => LeaseDecision::TakeOver,
        Some(l) if l.host == host => LeaseDecision::Renew,
        Some(l) => LeaseDecision::Refuse {
            holder_host: l.host.clone(),
            expires_ms: l.expires_ms,
        },
    }
}

/// The lease file of one VM directory.
#[derive(Debug, Clone)]
pub struct VmLock {
    path: PathBuf,
}

impl VmLock {
    /// The lock of the VM directory `vm_dir`.
    pub fn new(vm_dir: &Path) -> Self {
        Self {
            path: vm_dir.join(LOCK_FILE),
        }
    }

    /// Path of the lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current lease, if any.
    pub fn read(&self) -> Result<Option<Lease>, DiskError> {
        read_lease(&self.path)
    }

    /// Takes the lease for `host` for `ttl`: succeeds if there is none, if it
    /// expired, or if `host` already holds it; otherwise
    /// [`DiskError::Locked`]. Returns the lease written.
    pub async fn acquire(
        &self,
        host: &str,
        agent_id: &str,
        ttl: Duration,
    ) -> Result<Lease, DiskError> {
        // A few rounds: a lost link race sends us back to reading.
        for _ in 0..5 {
            let current = self.read()?;
            let now = vdc_types::now_ms();
            let lease = Lease {
                version: LEASE_VERSION,
                host: host.to_string(),
                agent_id: agent_id.to_string(),
                expires_ms: now + ttl.as_millis() as u64,
            };
            match decide(current.as_ref(), host, now) {
                LeaseDecision::Refuse {
                    holder_host,
                    expires_ms,
                } => {
                    return Err(DiskError::Locked {
                        holder_host,
                        expires_ms,
                    })
                }
                LeaseDecision::Create => {
                    let tmp = self.write_temp(&lease)?;
                    let linked = std::fs::hard_link(&tmp, &self.path);
                    let _ = std::fs::remove_file(&tmp);
                    match linked {
                        Ok(()) => return self.verify(&lease),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(DiskError::io("create", &self.path, e)),
                    }
                }
                LeaseDecision::Renew => {
                    self.replace(&lease)?;
                    return self.verify(&lease);
                }
                LeaseDecision::TakeOver => {
                    self.replace(&lease)?;
                    tokio::time::sleep(SETTLE).await;
                    return self.verify(&lease);
                }
            }
        }
        // Still racing after several rounds: report whoever holds it now.
        match self.read()? {
            Some(l) => Err(DiskError::Locked {
                holder_host: l.host,
                expires_ms: l.expires_ms,
            }),
            None => Err(DiskError::LeaseLost {
                holder_host: String::new(),
            }),
        }
    }

    /// Extends a lease `host` holds. Fails with [`DiskError::LeaseLost`] if
    /// another host took it (or it vanished).
    pub fn renew(&self, host: &str, agent_id: &str, ttl: Duration) -> Result<Lease, DiskError> {
        match self.read()? {
            Some(l) if l.host == host => {
                let lease = Lease {
                    version: LEASE_VERSION,
                    host: host.to_string(),
                    agent_id: agent_id.to_string(),
                    expires_ms: vdc_types::now_ms() + ttl.as_millis() as u64,
                };
                self.replace(&lease)?;
                self.verify(&lease)
            }
            Some(l) => Err(DiskError::LeaseLost {
                holder_host: l.host,
            }),
            None => Err(DiskError::LeaseLost {
                holder_host: String::new(),
            }),
        }
    }

    /// Gives the lease up if `host` holds it; a lease of another host (or
    /// none) is left alone.
    pub fn release(&self, host: &str) -> Result<(), DiskError> {
        match self.read()? {
            Some(l) if l.host == host => match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(DiskError::io("remove", &self.path, e)),
            },
            _ => Ok(()),
        }
    }

    /// Writes `lease` to a temporary file next to the lease (same file
    /// system, so link/rename work), synced.
    fn write_temp(&self, lease: &Lease) -> Result<PathBuf, DiskError> {
        let tmp = self.path.with_file_name(format!(
            "{LOCK_FILE}.{}.{}.tmp",
            lease.host,
            uuid::Uuid::new_v4().simple()
        ));
        let body = serde_json::to_vec(lease).map_err(|source| DiskError::Parse {
            path: tmp.clone(),
            source,
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| DiskError::io("create", &tmp, e))?;
        f.write_all(&body).and_then(|_| f.sync_all()).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            DiskError::io("write", &tmp, e)
        })?;
        Ok(tmp)
    }

    /// Atomically replaces the lease file with `lease`.
    fn replace(&self, lease: &Lease) -> Result<(), DiskError> {
        let tmp = self.write_temp(lease)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            DiskError::io("replace", &self.path, e)
        })
    }

    /// Re-reads the lease and checks it is `lease`.
    fn verify(&self, lease: &Lease) -> Result<Lease, DiskError> {
        match self.read()? {
            Some(l) if &l == lease => Ok(l),
            Some(l) if l.expires_ms > vdc_types::now_ms() => Err(DiskError::Locked {
                holder_host: l.host,
                expires_ms: l.expires_ms,
            }),
            Some(l) => Err(DiskError::LeaseLost {
                holder_host: l.host,
            }),
            None => Err(DiskError::LeaseLost {
                holder_host: String::new(),
            }),
        }
    }
}

/// Reads a lease file; `None` if it does not exist.
fn read_lease(path: &Path) -> Result<Option<Lease>, DiskError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DiskError::io("read", path, e)),
    };
    let lease: Lease = serde_json::from_slice(&bytes).map_err(|source| DiskError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if lease.version > LEASE_VERSION {
        return Err(DiskError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: lease.version,
            supported: LEASE_VERSION,
        });
    }
    Ok(Some(lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(host: &str, expires_ms: u64) -> Lease {
        Lease {
            version: 1,
            host: host.into(),
            agent_id: "a".into(),
            expires_ms,
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "h1", 100), LeaseDecision::Create);
        assert_eq!(
            decide(Some(&lease("h1", 200)), "h1", 100),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&lease("h2", 100)), "h1", 100),
            LeaseDecision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease("h1", 50)), "h1", 100),
            LeaseDecision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease("h2", 101)), "h1", 100),
            LeaseDecision::Refuse {
                holder_host: "h2".into(),
                expires_ms: 101
            }
        );
    }

    #[tokio::test]
    async fn acquire_renew_release_between_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let lock = VmLock::new(dir.path());
        let ttl = Duration::from_secs(30);

        let l1 = lock.acquire("h1", "a1", ttl).await.unwrap();
        assert_eq!(lock.read().unwrap(), Some(l1.clone()));
        // Same host again (a restarted agent): fine.
        lock.acquire("h1", "a2", ttl).await.unwrap();
        // Another host: refused, naming the holder.
        match lock.acquire("h2", "b", ttl).await.unwrap_err() {
            DiskError::Locked {
                holder_host,
                expires_ms,
            } => {
                assert_eq!(holder_host, "h1");
                assert!(expires_ms > vdc_types::now_ms());
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            lock.renew("h2", "b", ttl),
            Err(DiskError::LeaseLost { .. })
        ));
        lock.renew("h1", "a2", ttl).unwrap();
        // Release by a non-holder leaves it; by the holder removes it.
        lock.release("h2").unwrap();
        assert!(lock.read().unwrap().is_some());
        lock.release("h1").unwrap();
        assert!(lock.read().unwrap().is_none());
        // No stray temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn expired_lease_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lock = VmLock::new(dir.path());
        lock.acquire("h1", "a", Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let l = lock
            .acquire("h2", "b", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(l.host, "h2");
        assert!(matches!(
            lock.renew("h1", "a", Duration::from_secs(1)),
            Err(DiskError::LeaseLost { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creators_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let lock = VmLock::new(dir.path());
            tasks.push(tokio::spawn(async move {
                lock.acquire(&format!("h{i}"), "a", Duration::from_secs(30))
                    .await
                    .is_ok()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            if t.await.unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }
}
