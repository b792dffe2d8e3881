//! The VM lease: a file (`vm.lock`) in the VM's directory that says which
//! host may open the VM's disks.
//!
//! Only one host may run a VM at a time. The host that runs it holds a
//! lease and renews it every few seconds; the holder is the VM's own
//! supervisor process (`vdc vm-supervisor`), which stops QEMU when it cannot
//! renew in time. QEMU's image locking is a second line of defence on one
//! host.
//!
//! # Format (version 2)
//! `{"version":2,"host":..,"holder":..,"generation":..,"ttl_ms":..,
//! "successor":..,"renewed_ms":..}`: the holding host, the holder instance
//! on it, a generation bumped on every write, the TTL the holder promises
//! to honour, the host it hands the VM over to (optional) and the writer's
//! wall-clock time (for people only; no rule reads it). Version 1 files
//! (`expires_ms`, compared across hosts' wall clocks) are read as a lease
//! whose generation is that expiry, which changes on every renewal as a
//! generation does; a newer version is refused.
//!
//! # Rules
//! Pure functions in [`rule`]: expiry is judged by the holder on its own
//! monotonic clock and by others by watching the generation on theirs
//! (never another host's wall clock); a named successor takes over at once.
//!
//! # Applying a decision, race-safe between hosts
//! 1. No lease file: write the new lease to a private temporary file, then
//!    `link(2)` it to `vm.lock`. `link` fails if the name exists, so of two
//!    hosts racing only one creates the lease.
//! 2. Take-over or renewal: write a private temporary file and `rename(2)`
//!    it over `vm.lock`; a take-over waits a settling delay, then re-reads
//!    and checks the lease is still the one written (of two contenders
//!    the later rename wins, the earlier sees the other's lease).
//!
//! All of it is blocking file I/O: run it through [`LeaseIo`], a dedicated
//! thread with a deadline, so a hung datastore never stalls an async
//! runtime.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::DiskError;

pub mod clock;
mod io;
pub mod rule;

pub use clock::monotonic_now;
pub use io::{acquire, acquire_after, Acquired, LeaseIo};
pub use rule::{LeaseDecision, LeaseKey, LeaseTiming, Seen, TakeOver, Watch};

/// Version of the lease file format. Never change the meaning of a field
/// without bumping it.
pub const LEASE_VERSION: u32 = 2;

/// File name of the lease in a VM directory.
pub const LOCK_FILE: &str = "vm.lock";

/// TTL assumed for a version 1 lease (the TTL those holders used).
const V1_TTL_MS: u64 = 30_000;

/// Delay between taking over a lease by rename and verifying it.
const SETTLE: Duration = Duration::from_millis(150);

/// The content of `vm.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Format version, [`LEASE_VERSION`].
    pub version: u32,
    /// Host holding the VM.
    pub host: String,
    /// Holder instance on that host (one VM supervisor process).
    pub holder: String,
    /// Bumped on every write; a change proves the holder alive.
    pub generation: u64,
    /// How long the holder may go without renewing before others may take
    /// the lease (it fences itself earlier).
    pub ttl_ms: u64,
    /// Host the holder hands the VM over to: it may take the lease at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// Writer's wall-clock time (Unix ms), for people reading the file.
    pub renewed_ms: u64,
}

impl Lease {
    /// A new lease for `holder` on `host`, following `previous` (its
    /// generation continues from it).
    pub fn new(host: &str, holder: &str, ttl: Duration, previous: Option<&Lease>) -> Lease {
        Lease {
            version: LEASE_VERSION,
            host: host.to_string(),
            holder: holder.to_string(),
            generation: previous.map_or(1, |p| p.generation + 1),
            ttl_ms: ttl.as_millis() as u64,
            successor: None,
            renewed_ms: vdc_types::now_ms(),
        }
    }

    /// This lease renewed: next generation, fresh wall-clock stamp, the
    /// successor as given.
    pub fn renewed(&self, successor: Option<String>) -> Lease {
        Lease {
            generation: self.generation + 1,
            successor,
            renewed_ms: vdc_types::now_ms(),
            ..self.clone()
        }
    }
}

/// A version 1 lease, as older agents wrote it.
#[derive(Deserialize)]
struct LeaseV1 {
    host: String,
    agent_id: String,
    expires_ms: u64,
}

/// The lease file of one VM directory. Every method does blocking I/O.
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

    /// Creates the lease file with `lease` if none exists; `Ok(false)` if
    /// another writer got there first.
    pub fn create(&self, lease: &Lease) -> Result<bool, DiskError> {
        let tmp = self.write_temp(lease)?;
        let linked = std::fs::hard_link(&tmp, &self.path);
        self.remove_temp(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(DiskError::io("create", &self.path, e)),
        }
    }

    /// Atomically replaces the lease file with `lease`.
    pub fn replace(&self, lease: &Lease) -> Result<(), DiskError> {
        let tmp = self.write_temp(lease)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            self.remove_temp(&tmp);
            DiskError::io("replace", &self.path, e)
        })
    }

    /// Re-reads the lease and checks it is `lease`; otherwise the lease
    /// was lost to whoever wrote it last.
    pub fn verify(&self, lease: &Lease) -> Result<Lease, DiskError> {
        match self.read()? {
            Some(l) if &l == lease => Ok(l),
            Some(l) => Err(DiskError::LeaseLost {
                holder_host: l.host,
            }),
            None => Err(DiskError::LeaseLost {
                holder_host: String::new(),
            }),
        }
    }

    /// Takes over a lease by rename, waits the settling delay, verifies.
    pub fn take_over(&self, lease: &Lease) -> Result<Lease, DiskError> {
        self.replace(lease)?;
        std::thread::sleep(SETTLE);
        self.verify(lease)
    }

    /// Renews the lease `holder` on `host` holds: re-reads it, checks it is
    /// still theirs, writes the next generation (naming `successor`, if
    /// any) and verifies. [`DiskError::LeaseLost`] if another holder wrote
    /// it or it vanished.
    pub fn renew(
        &self,
        host: &str,
        holder: &str,
        successor: Option<String>,
    ) -> Result<Lease, DiskError> {
        let current = self.read()?;
        let current = match (rule::holding(current.as_ref(), host, holder), current) {
            (rule::Holding::Ours, Some(current)) => current,
            (rule::Holding::Lost { holder_host, .. }, _) => {
                return Err(DiskError::LeaseLost { holder_host })
            }
            _ => {
                return Err(DiskError::LeaseLost {
                    holder_host: String::new(),
                })
            }
        };
        let next = current.renewed(successor);
        self.replace(&next)?;
        self.verify(&next)
    }

    /// Names `successor` in the lease `holder` on `host` holds (a renewal):
    /// that host may take it at once ([`rule::TakeOver::HandedOver`]).
    pub fn hand_over(&self, host: &str, holder: &str, successor: &str) -> Result<Lease, DiskError> {
        self.renew(host, holder, Some(successor.to_string()))
    }

    /// Gives the lease up if `host` holds it (and, when given, `holder`);
    /// a lease of anyone else (or none) is left alone. Returns whether a
    /// lease was removed.
    pub fn release(&self, host: &str, holder: Option<&str>) -> Result<bool, DiskError> {
        match self.read()? {
            Some(l) if l.host == host && holder.is_none_or(|h| h == l.holder) => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(DiskError::io("remove", &self.path, e)),
                }
            }
            _ => Ok(false),
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
            self.remove_temp(&tmp);
            DiskError::io("write", &tmp, e)
        })?;
        Ok(tmp)
    }

    fn remove_temp(&self, tmp: &Path) {
        if let Err(e) = std::fs::remove_file(tmp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a temporary lease file");
            }
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
    parse_lease(path, &bytes).map(Some)
}

/// Parses a lease file of any version this build reads.
fn parse_lease(path: &Path, bytes: &[u8]) -> Result<Lease, DiskError> {
    let parse_error = |source| DiskError::Parse {
        path: path.to_path_buf(),
        source,
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let Versioned { version } = serde_json::from_slice(bytes).map_err(parse_error)?;
    match version {
        1 => {
            let v1: LeaseV1 = serde_json::from_slice(bytes).map_err(parse_error)?;
            Ok(Lease {
                version: 1,
                host: v1.host,
                holder: v1.agent_id,
                generation: v1.expires_ms,
                ttl_ms: V1_TTL_MS,
                successor: None,
                renewed_ms: v1.expires_ms.saturating_sub(V1_TTL_MS),
            })
        }
        LEASE_VERSION => serde_json::from_slice(bytes).map_err(parse_error),
        found => Err(DiskError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: LEASE_VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn create_renew_release_between_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let lock = VmLock::new(dir.path());
        let l1 = Lease::new("h1", "s1", TTL, None);
        assert!(lock.create(&l1).unwrap());
        assert!(!lock.create(&Lease::new("h2", "s2", TTL, None)).unwrap());
        assert_eq!(lock.read().unwrap(), Some(l1.clone()));

        let l2 = lock.renew("h1", "s1", None).unwrap();
        assert_eq!(l2.generation, l1.generation + 1);
        let l3 = lock.hand_over("h1", "s1", "h2").unwrap();
        assert_eq!(l3.successor.as_deref(), Some("h2"));
        assert!(matches!(
            lock.renew("h2", "s2", None),
            Err(DiskError::LeaseLost { holder_host }) if holder_host == "h1"
        ));
        // Same host, another holder instance: not theirs to renew.
        assert!(matches!(
            lock.renew("h1", "s9", None),
            Err(DiskError::LeaseLost { .. })
        ));

        // The successor takes it; the old holder has lost it.
        let taken = lock
            .take_over(&Lease::new("h2", "s2", TTL, Some(&l3)))
            .unwrap();
        assert_eq!(taken.generation, l3.generation + 1);
        assert!(matches!(
            lock.renew("h1", "s1", None),
            Err(DiskError::LeaseLost { holder_host }) if holder_host == "h2"
        ));

        assert!(!lock.release("h1", None).unwrap());
        assert!(!lock.release("h2", Some("other")).unwrap());
        assert!(lock.read().unwrap().is_some());
        assert!(lock.release("h2", Some("s2")).unwrap());
        assert!(lock.read().unwrap().is_none());
        assert!(matches!(
            lock.renew("h2", "s2", None),
            Err(DiskError::LeaseLost { holder_host }) if holder_host.is_empty()
        ));
        // No stray temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn versions() {
        let dir = tempfile::tempdir().unwrap();
        let lock = VmLock::new(dir.path());
        std::fs::write(
            lock.path(),
            r#"{"version":1,"host":"old","agent_id":"a","expires_ms":5000}"#,
        )
        .unwrap();
        let l = lock.read().unwrap().unwrap();
        assert_eq!(
            (l.host.as_str(), l.generation, l.ttl_ms),
            ("old", 5000, 30_000)
        );
        std::fs::write(lock.path(), r#"{"version":3,"host":"new","future":true}"#).unwrap();
        assert!(matches!(
            lock.read(),
            Err(DiskError::UnsupportedVersion {
                found: 3,
                supported: 2,
                ..
            })
        ));
        std::fs::write(lock.path(), "garbage").unwrap();
        assert!(matches!(lock.read(), Err(DiskError::Parse { .. })));
    }

    #[test]
    fn concurrent_creators_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let lock = VmLock::new(dir.path());
                std::thread::spawn(move || {
                    lock.create(&Lease::new(&format!("h{i}"), "s", TTL, None))
                        .unwrap()
                })
            })
            .collect();
        let winners = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1);
    }
}
