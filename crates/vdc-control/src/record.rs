//! The VM record kept in the store at `/vms/<name>`: configuration, power
//! state, owner host and the operation in flight.
//!
//! Versioned: [`VM_RECORD_VERSION`] is written with every record; a record
//! of a newer version is refused when read (a newer server wrote it), an
//! older one is read as it was meant.
//!
//! | version | change |
//! |---|---|
//! | 1 | `host`: the host running the VM or that last ran it |
//! | 2 | `host` renamed `owner` (only the owner's reports count); `operation` in flight |

use serde::{Deserialize, Deserializer, Serialize};
use vdc_types::{ApiError, GuestInfo, InFlight, UnixMillis, VmAction, VmConfig, VmPowerState};

use crate::lifecycle::{self, Now, Step};

/// Version of the [`VmRecord`] format. Bump it when a field changes
/// meaning, and keep reading the older ones.
pub const VM_RECORD_VERSION: u32 = 2;

/// Store key of VM `name`'s record.
pub fn vm_key(name: &str) -> String {
    format!("/vms/{name}")
}

fn known_version<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v > VM_RECORD_VERSION {
        return Err(serde::de::Error::custom(format!(
            "VM record version {v} is newer than this server's ({VM_RECORD_VERSION}); upgrade the server"
        )));
    }
    Ok(v)
}

fn first_version() -> u32 {
    1
}

/// A VM as recorded in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Format version, [`VM_RECORD_VERSION`] when written by this server.
    #[serde(default = "first_version", deserialize_with = "known_version")]
    pub version: u32,
    /// Configuration.
    pub config: VmConfig,
    /// Last known power state.
    pub state: VmPowerState,
    /// Host that owns the VM: runs it, or last ran it. Only the owner's
    /// reports change the record (see `ownership::fold_report`); a move
    /// hands ownership to its target when it commits.
    #[serde(alias = "host")]
    pub owner: Option<String>,
    /// Operation in flight (at most one), with its task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<InFlight>,
    /// Last known guest report (heartbeat time not persisted).
    pub guest: GuestInfo,
    /// When the owner saw `state` begin, in the owner's clock (from
    /// [`vdc_types::agent::VmRuntime::since_ms`]); a report about an older
    /// state is stale and ignored. 0 when ownership changed since.
    #[serde(default)]
    pub since_ms: UnixMillis,
}

impl VmRecord {
    /// A record of the current version, without guest information or
    /// operation.
    pub fn new(config: VmConfig, state: VmPowerState, owner: Option<String>) -> VmRecord {
        VmRecord {
            version: VM_RECORD_VERSION,
            config,
            state,
            owner,
            operation: None,
            guest: GuestInfo::default(),
            since_ms: 0,
        }
    }

    /// What the lifecycle decides from.
    pub fn now(&self) -> Now<'_> {
        Now {
            state: self.state,
            owner: self.owner.as_deref(),
            operation: self.operation.as_ref().map(|o| &o.operation),
        }
    }

    /// The lifecycle's decision on `action` for this VM (`target`: a
    /// move's target host); a refusal as the API error, naming the task in
    /// flight.
    pub fn decide(&self, action: VmAction, target: Option<&str>) -> Result<Step, ApiError> {
        lifecycle::decide(&self.now(), action, target).map_err(|r| {
            let task = self.operation.as_ref().and_then(|o| o.task.as_deref());
            r.to_api_error(&self.config.name, task)
        })
    }

    /// The host a move in flight takes the VM to.
    pub fn target(&self) -> Option<&str> {
        self.operation.as_ref().and_then(|o| o.operation.target())
    }

    /// Hands the VM to `owner`; a new owner's clock is not comparable with
    /// the old one's, so the freshness mark starts over.
    pub fn set_owner(&mut self, owner: &str) {
        if self.owner.as_deref() != Some(owner) {
            self.owner = Some(owner.to_string());
            self.since_ms = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> serde_json::Value {
        json!({"version": 1, "id": "i", "name": "n", "cpus": 1, "memory_mib": 128,
               "datastore": "shared", "dir": "n", "disks": [], "nics": [],
               "hostname": "n", "created_ms": 0})
    }

    #[test]
    fn a_version_1_record_reads_its_host_as_owner() {
        let v1 = json!({"config": config(), "state": "running", "host": "h1",
                        "guest": {"ready": true}, "since_ms": 5});
        let r: VmRecord = serde_json::from_value(v1).expect("v1 reads");
        assert_eq!(r.version, 1);
        assert_eq!(r.owner.as_deref(), Some("h1"));
        assert!(r.operation.is_none());
        let written =
            serde_json::to_value(VmRecord::new(r.config.clone(), r.state, r.owner.clone()))
                .expect("json");
        assert_eq!(written["version"], VM_RECORD_VERSION);
        assert_eq!(written["owner"], "h1");
    }

    #[test]
    fn a_newer_record_is_refused() {
        let v9 = json!({"version": 9, "config": config(), "state": "running",
                        "owner": "h1", "guest": {"ready": false}});
        let e = serde_json::from_value::<VmRecord>(v9).expect_err("refused");
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn a_new_owner_restarts_the_freshness_mark() {
        let c: VmConfig = serde_json::from_value(config()).expect("config");
        let mut r = VmRecord::new(c, VmPowerState::Running, Some("a".into()));
        r.since_ms = 99;
        r.set_owner("a");
        assert_eq!(r.since_ms, 99);
        r.set_owner("b");
        assert_eq!((r.owner.as_deref(), r.since_ms), (Some("b"), 0));
    }
}
