//! The words of the VM lifecycle shared by server, API and CLI: what an
//! administrator (or the cluster itself) asks of a VM ([`VmAction`]) and the
//! operation in flight while it is carried out ([`VmOperation`]).
//!
//! Which action is allowed in which state, and what it leads to, is decided
//! in one place: the control plane's pure transition function
//! (`vdc_control::lifecycle::decide`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Something asked of a VM.
///
/// Start … migrate exist today; failover (HA restart), snapshot and backup
/// are modelled so that their flows plug into the same transition function,
/// but the API does not offer them yet ([`VmAction::is_offered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmAction {
    /// Power on a stopped or crashed VM, or resume a suspended one.
    Start,
    /// Power off at once (pull the plug).
    Stop,
    /// Press the ACPI power button and wait for the guest to power off.
    Shutdown,
    /// Hard reset (the guest reboots in the same QEMU process).
    Reset,
    /// Stop the vCPUs, keeping memory in QEMU.
    Pause,
    /// Run the vCPUs of a paused VM, or resume a suspended VM.
    Resume,
    /// Save memory to the datastore and end QEMU.
    Suspend,
    /// Remove a VM that does not run: its files, addresses and record.
    Delete,
    /// Move a running VM to another host (live migration).
    Migrate,
    /// Restart a VM whose host was lost on another host (HA restart).
    Failover,
    /// Take a snapshot of the VM's disks.
    Snapshot,
    /// Copy the VM's disks to a backup.
    Backup,
    /// Write a backup over the VM's disks (powered off).
    Restore,
    /// Copy the VM into a new VM (full or linked clone) or a new template.
    Clone,
    /// Make the VM a template: its boot disk becomes the template's image
    /// and the VM is gone.
    ConvertToTemplate,
    /// Change the VM's virtual hardware: add or remove a NIC (hot plug
    /// while it runs).
    Reconfigure,
}

impl VmAction {
    /// Every action, in the order above.
    pub const ALL: [VmAction; 16] = [
        VmAction::Start,
        VmAction::Stop,
        VmAction::Shutdown,
        VmAction::Reset,
        VmAction::Pause,
        VmAction::Resume,
        VmAction::Suspend,
        VmAction::Delete,
        VmAction::Migrate,
        VmAction::Failover,
        VmAction::Snapshot,
        VmAction::Backup,
        VmAction::Restore,
        VmAction::Clone,
        VmAction::ConvertToTemplate,
        VmAction::Reconfigure,
    ];

    /// The power actions posted to `POST /api/v1/vms/{name}/{action}`
    /// (delete is `DELETE /api/v1/vms/{name}`).
    pub const POSTED: [VmAction; 7] = [
        VmAction::Start,
        VmAction::Stop,
        VmAction::Shutdown,
        VmAction::Reset,
        VmAction::Pause,
        VmAction::Resume,
        VmAction::Suspend,
    ];

    /// Lower-case name, as in the API path and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::Shutdown => "shutdown",
            VmAction::Reset => "reset",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
            VmAction::Suspend => "suspend",
            VmAction::Delete => "delete",
            VmAction::Migrate => "migrate",
            VmAction::Failover => "failover",
            VmAction::Snapshot => "snapshot",
            VmAction::Backup => "backup",
            VmAction::Restore => "restore",
            VmAction::Clone => "clone",
            VmAction::ConvertToTemplate => "convert_to_template",
            VmAction::Reconfigure => "reconfigure",
        }
    }

    /// Whether the API offers this action among the VM's `actions` and the
    /// power routes (backup and restore have routes of their own; failover
    /// and snapshot are modelled for the flows still to come).
    pub fn is_offered(self) -> bool {
        !matches!(
            self,
            VmAction::Failover | VmAction::Snapshot | VmAction::Backup | VmAction::Restore
        )
    }
}

impl std::fmt::Display for VmAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for VmAction {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A name that is not a [`VmAction`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VM action '{0}'")]
pub struct UnknownAction(pub String);

impl std::str::FromStr for VmAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAction(s.to_string()))
    }
}

/// The operation in flight on a VM: at most one at a time, recorded in the
/// VM's record from the moment it is accepted until its task ends.
///
/// While an operation is in flight, host reports do not change the VM's
/// power state (the operation's task does); a move (`migrating`,
/// `failing_over`) hands the VM's ownership to its target when it commits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VmOperation {
    /// The VM is being created (address, disks on the datastore).
    Creating,
    /// QEMU is being launched (a fresh boot or a resume from suspend).
    Starting,
    /// Being powered off.
    Stopping,
    /// ACPI power button pressed; waiting for the guest to power off.
    ShuttingDown,
    /// Being reset.
    Resetting,
    /// vCPUs being stopped.
    Pausing,
    /// vCPUs of a paused VM being resumed.
    Resuming,
    /// Memory being saved to the datastore.
    Suspending,
    /// Files, addresses and record being removed.
    Deleting,
    /// Moving from `source` to `target` while it runs.
    Migrating {
        /// Host the VM runs on as the move begins.
        source: String,
        /// Host the VM moves to.
        target: String,
    },
    /// Being restarted elsewhere because host `from` was lost.
    FailingOver {
        /// The lost host.
        from: String,
    },
    /// A snapshot of its disks is being taken.
    Snapshotting,
    /// Its disks are being copied to a backup.
    BackingUp,
    /// A backup is being written over its disks.
    Restoring,
    /// Its disks are being copied into a clone or a template.
    Cloning,
    /// It is becoming a template.
    ConvertingToTemplate,
    /// Its virtual hardware is being changed (a NIC added or removed).
    Reconfiguring,
}

impl VmOperation {
    /// Lower-case name, as in the API's `kind`.
    pub fn as_str(&self) -> &'static str {
        match self {
            VmOperation::Creating => "creating",
            VmOperation::Starting => "starting",
            VmOperation::Stopping => "stopping",
            VmOperation::ShuttingDown => "shutting_down",
            VmOperation::Resetting => "resetting",
            VmOperation::Pausing => "pausing",
            VmOperation::Resuming => "resuming",
            VmOperation::Suspending => "suspending",
            VmOperation::Deleting => "deleting",
            VmOperation::Migrating { .. } => "migrating",
            VmOperation::FailingOver { .. } => "failing_over",
            VmOperation::Snapshotting => "snapshotting",
            VmOperation::BackingUp => "backing_up",
            VmOperation::Restoring => "restoring",
            VmOperation::Cloning => "cloning",
            VmOperation::ConvertingToTemplate => "converting_to_template",
            VmOperation::Reconfiguring => "reconfiguring",
        }
    }

    /// The name of the task that carries the operation out, e.g. `vm.start`.
    pub fn task_kind(&self) -> &'static str {
        match self {
            VmOperation::Creating => "vm.create",
            VmOperation::Starting => "vm.start",
            VmOperation::Stopping => "vm.stop",
            VmOperation::ShuttingDown => "vm.shutdown",
            VmOperation::Resetting => "vm.reset",
            VmOperation::Pausing => "vm.pause",
            VmOperation::Resuming => "vm.resume",
            VmOperation::Suspending => "vm.suspend",
            VmOperation::Deleting => "vm.delete",
            VmOperation::Migrating { .. } => "vm.migrate",
            VmOperation::FailingOver { .. } => "vm.failover",
            VmOperation::Snapshotting => "vm.snapshot",
            VmOperation::BackingUp => "backup.run",
            VmOperation::Restoring => "backup.restore",
            VmOperation::Cloning => "vm.clone",
            VmOperation::ConvertingToTemplate => "vm.convert_to_template",
            VmOperation::Reconfiguring => "vm.reconfigure",
        }
    }

    /// The host a move takes the VM to, if this is a move with a known
    /// target.
    pub fn target(&self) -> Option<&str> {
        match self {
            VmOperation::Migrating { target, .. } => Some(target),
            _ => None,
        }
    }
}

impl std::fmt::Display for VmOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmOperation::Migrating { source, target } => {
                write!(f, "migrating from {source} to {target}")
            }
            VmOperation::FailingOver { from } => write!(f, "failing over from {from}"),
            op => f.write_str(&op.as_str().replace('_', " ")),
        }
    }
}

/// An operation in flight with the task carrying it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InFlight {
    /// What is being done.
    pub operation: VmOperation,
    /// Task carrying it out (`vdc task show ID`); absent for the instant
    /// between accepting the operation and starting its task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// When the operation was accepted.
    pub since_ms: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_round_trip() {
        for a in VmAction::ALL {
            assert_eq!(a.as_str().parse::<VmAction>(), Ok(a));
            assert_eq!(
                serde_json::to_value(a).expect("json"),
                serde_json::json!(a.as_str())
            );
        }
        assert!("reboot".parse::<VmAction>().is_err());
        assert!(VmAction::POSTED.iter().all(|a| a.is_offered()));
    }

    #[test]
    fn operations_are_tagged_by_kind() {
        let op = VmOperation::Migrating {
            source: "a".into(),
            target: "b".into(),
        };
        let v = serde_json::to_value(&op).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"kind": "migrating", "source": "a", "target": "b"})
        );
        assert_eq!(op.target(), Some("b"));
        assert_eq!(op.to_string(), "migrating from a to b");
        assert_eq!(
            serde_json::to_value(VmOperation::ShuttingDown).expect("json"),
            serde_json::json!({"kind": "shutting_down"})
        );
        assert_eq!(VmOperation::ShuttingDown.to_string(), "shutting down");
    }
}
