//! Virtual machines: the configuration an administrator chooses
//! ([`VmConfig`]), what the cluster observes ([`Vm`]) and the power state
//! machine ([`VmPowerState`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Version of the [`VmConfig`] format written to `vm.json` on the datastore.
/// Bump it (and keep reading the old one) whenever a field changes meaning.
///
/// - 1: no machine type or CPU model recorded; QEMU ran `-machine q35`
///   (the alias of `pc-q35-10.0` on the QEMU 10.0 vdc needs) and, under
///   TCG, `-cpu qemu64`.
/// - 2: [`VmConfig::machine_type`] and [`VmConfig::cpu_model`] recorded.
///   A version 1 configuration is read with [`V1_MACHINE_TYPE`] and
///   [`V1_CPU_MODEL`], the hardware it ran with, so a suspended VM resumes
///   on the same virtual hardware.
/// - 3: [`VmConfig::ha`] (restart priority, isolation response); a
///   version 2 configuration is read with the defaults (medium, keep
///   running), what HA did for every VM before.
/// - 4: [`crate::ha::VmHa::group`] (HA order group); a version 3
///   configuration has none.
/// - 5: [`VmConfig::linked_clone`] and [`NicSpec::dhcp`]; a version 4
///   configuration deployed from a template is counted as a possible
///   linked clone of it ([`VmConfig::may_use_template`]).
/// - 6: [`VmConfig::guest_agent`] (the QEMU guest agent channel in the
///   device model); a version 5 or older configuration has none, and its VM keeps
///   running, resuming and migrating without it.
/// - 7: [`VmConfig::hotplug_ports`] (spare PCIe root ports for NIC hot
///   plug in the device model) and [`NicSpec::port`]; a version 6 or older
///   configuration has no spare port: its NICs can be added and removed
///   while it is powered off only.
pub const VM_CONFIG_VERSION: u32 = 7;

/// Spare PCIe root ports new VMs get for NIC hot plug
/// ([`VmConfig::hotplug_ports`]).
pub const DEFAULT_HOTPLUG_PORTS: u32 = 4;
/// Most hot-plug ports a VM may have.
pub const MAX_HOTPLUG_PORTS: u32 = 16;

/// Machine type of new VMs: Q35, pinned to a QEMU version so the virtual
/// hardware never changes under a VM (upgrades, migration between hosts).
pub const DEFAULT_MACHINE_TYPE: &str = "pc-q35-10.0";
/// CPU model of new VMs: a named, versioned model every x86-64 host of the
/// cluster can offer, under KVM and under TCG alike (never `host`, which
/// differs from host to host and cannot migrate).
pub const DEFAULT_CPU_MODEL: &str = "Nehalem-v1";
/// Machine type a version 1 configuration ran with.
pub const V1_MACHINE_TYPE: &str = "pc-q35-10.0";
/// CPU model a version 1 configuration ran with (under TCG).
pub const V1_CPU_MODEL: &str = "qemu64";

fn v1_machine_type() -> String {
    V1_MACHINE_TYPE.to_string()
}

fn v1_cpu_model() -> String {
    V1_CPU_MODEL.to_string()
}

/// Checks a QEMU machine type or CPU model name: letters, digits, `.`,
/// `_` and `-`, 1 to 64 characters (nothing QEMU's option syntax would
/// read as another option).
pub fn validate_qemu_model(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} '{value}' must be 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// Power state of a VM.
///
/// ```text
///            start                  pause
///  Stopped ─────────► Running ◄──────────► Paused
///     ▲  ▲               │  │ suspend
///     │  │  shutdown/stop│  └─────────► Suspended ──start──► Running
///     │  └───────────────┘               (state file on datastore)
///     │ QEMU exits / host lost
///  Crashed / Unknown
/// ```
///
/// `Starting`, `ShuttingDown` and `Suspending` are transitional: a task is
/// working on the VM. `Unknown` means the VM's owner host stopped
/// reporting. Which action is allowed in which state, and the operation in
/// flight ([`crate::VmOperation`]), are decided by the control plane's
/// lifecycle (`vdc_control::lifecycle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmPowerState {
    /// No QEMU process; disks closed.
    Stopped,
    /// QEMU is being launched.
    Starting,
    /// The guest's vCPUs run.
    Running,
    /// vCPUs stopped by the administrator; memory kept in QEMU.
    Paused,
    /// ACPI power-button pressed; waiting for the guest to power off.
    ShuttingDown,
    /// Memory being saved to the state file.
    Suspending,
    /// Memory saved to the VM directory; no QEMU process.
    Suspended,
    /// QEMU exited without being asked to (or the guest panicked).
    Crashed,
    /// The host running the VM stopped reporting.
    Unknown,
}

impl VmPowerState {
    /// Whether a QEMU process exists for the VM in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmPowerState::Starting
                | VmPowerState::Running
                | VmPowerState::Paused
                | VmPowerState::ShuttingDown
                | VmPowerState::Suspending
        )
    }

    /// Lower-case name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            VmPowerState::Stopped => "stopped",
            VmPowerState::Starting => "starting",
            VmPowerState::Running => "running",
            VmPowerState::Paused => "paused",
            VmPowerState::ShuttingDown => "shutting_down",
            VmPowerState::Suspending => "suspending",
            VmPowerState::Suspended => "suspended",
            VmPowerState::Crashed => "crashed",
            VmPowerState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for VmPowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A virtual disk of a VM: a thin qcow2 file inside the VM's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskSpec {
    /// Device name inside the VM, e.g. `disk0` (the boot disk).
    pub name: String,
    /// Datastore holding the file.
    pub datastore: String,
    /// Path relative to the datastore root, e.g. `web-1/disk0.qcow2`.
    pub path: String,
    /// Virtual size in bytes.
    pub size_bytes: u64,
}

/// A virtual NIC of a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NicSpec {
    /// Network (port group) the NIC is connected to.
    pub network: String,
    /// MAC address, `52:54:00:xx:xx:xx`.
    pub mac: String,
    /// Static address given to the guest, CIDR notation (`10.77.0.100/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The guest asks a DHCP server for its address (no `ip`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// Gateway given to the guest, if the network has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Linux bridge of the network on the host, filled in by the server from
    /// the [`Network`](crate::Network) object; the agent attaches the NIC's
    /// tap device to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Switch of the port group, filled in by the server (placement and
    /// migration need a host that realizes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<String>,
    /// VLAN of the port group, filled in by the server (for people: the
    /// agent only needs `bridge`, the VLAN's bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Shaping of the port group, filled in by the server; the agent
    /// applies it to the tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shaping: Option<crate::switch::Shaping>,
    /// Shaping of what the NIC sends, filled in by the server from the
    /// port group; the agent polices it on the tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_shaping: Option<crate::switch::Shaping>,
    /// Security policy of the port group, filled in by the server; the
    /// agent enforces it on the tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<crate::switch::SecurityPolicy>,
    /// Hot-plug root port the NIC sits on (`hp<port>`), for a NIC added to
    /// a VM with spare ports ([`VmConfig::hotplug_ports`]); `None`: a NIC
    /// on the root complex, part of the VM since it was created, which
    /// cannot be unplugged while the VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

impl NicSpec {
    /// QEMU device id of NIC `index` of `nics`: `net<k>` for the `k`-th
    /// NIC on the root complex, `hpnet<port>` for a NIC on a hot-plug
    /// port. Stable while NICs are added and removed on a running VM
    /// (only hot-plug NICs come and go then).
    pub fn device_id(nics: &[NicSpec], index: usize) -> String {
        match nics.get(index).and_then(|n| n.port) {
            Some(p) => format!("hpnet{p}"),
            None => {
                let k = nics[..index.min(nics.len())]
                    .iter()
                    .filter(|n| n.port.is_none())
                    .count();
                format!("net{k}")
            }
        }
    }
}

/// Everything needed to run a VM on any host: written by the server, kept in
/// the store and copied to `vm.json` in the VM's directory (the datastore is
/// the second source of truth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmConfig {
    /// Format version, [`VM_CONFIG_VERSION`].
    pub version: u32,
    /// Immutable identifier (UUID).
    pub id: String,
    /// Unique, user-chosen name.
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Datastore holding the VM's directory (config, logs, state files).
    pub datastore: String,
    /// Directory of the VM relative to its datastore's root.
    pub dir: String,
    /// Disks, boot disk first.
    pub disks: Vec<DiskSpec>,
    /// NICs.
    pub nics: Vec<NicSpec>,
    /// Hostname given to the guest.
    pub hostname: String,
    /// Template the VM was deployed from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The boot disk is a linked clone of the template's image (version 5;
    /// a version 4 configuration with a template may be one too).
    #[serde(default)]
    pub linked_clone: bool,
    /// Creation time.
    pub created_ms: UnixMillis,
    /// QEMU machine type, pinned with its version (e.g. `pc-q35-10.0`).
    #[serde(default = "v1_machine_type")]
    pub machine_type: String,
    /// Named CPU model (e.g. `Nehalem-v1`).
    #[serde(default = "v1_cpu_model")]
    pub cpu_model: String,
    /// HA settings (version 3; older configurations read the defaults).
    #[serde(default)]
    pub ha: crate::ha::VmHa,
    /// The VM has the QEMU guest agent channel (virtio-serial port
    /// `org.qemu.guest_agent.0`), used to quiesce the guest's file systems
    /// for snapshots and to tell an instant clone its identity. Version 5;
    /// false for older configurations: part of the pinned device model.
    #[serde(default)]
    pub guest_agent: bool,
    /// Spare PCIe root ports (`hp0` …) in the device model, where NICs are
    /// hot-plugged while the VM runs (version 7; 0 for older
    /// configurations: part of the pinned device model).
    #[serde(default)]
    pub hotplug_ports: u32,
}

impl VmConfig {
    /// The first hot-plug port no NIC uses, if any.
    pub fn free_hotplug_port(&self) -> Option<u32> {
        (0..self.hotplug_ports).find(|p| !self.nics.iter().any(|n| n.port == Some(*p)))
    }

    /// Index of the NIC called `nic`: its device id (`net0`, `hpnet1`) or
    /// its MAC address.
    pub fn nic_index(&self, nic: &str) -> Option<usize> {
        (0..self.nics.len()).find(|i| {
            NicSpec::device_id(&self.nics, *i) == nic || self.nics[*i].mac.eq_ignore_ascii_case(nic)
        })
    }

    /// Whether the VM's disks may read template `name`'s image (a linked
    /// clone of it), so the template must stay.
    pub fn may_use_template(&self, name: &str) -> bool {
        self.template.as_deref() == Some(name) && (self.linked_clone || self.version < 5)
    }
}

/// What the guest reports about itself over the guest channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestInfo {
    /// The guest finished booting and its services run.
    pub ready: bool,
    /// Hostname the guest runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Address of the guest's first NIC (no prefix length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Kernel boot id: changes on every boot, kept across live migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Time of the last heartbeat the host received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<UnixMillis>,
}

/// Resource usage of a running VM, as measured on its host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStats {
    /// CPU used by the QEMU process, percent of one core (sampled).
    pub cpu_percent: f64,
    /// Resident memory of the QEMU process.
    pub rss_bytes: u64,
}

/// A VM as the API shows it: configuration plus observed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    /// Identifier.
    pub id: String,
    /// Name.
    pub name: String,
    /// Power state.
    pub state: VmPowerState,
    /// Host that owns the VM: runs it, or last ran it (holds its suspended
    /// state). Only the owner's reports change the VM's state.
    #[serde(default)]
    pub owner: Option<String>,
    /// During a move (live migration), the host the VM is moving to; it
    /// becomes the owner when the move commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The operation in flight, if any (at most one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<crate::InFlight>,
    /// Actions allowed now, by the lifecycle's transition function.
    #[serde(default)]
    pub actions: Vec<crate::VmAction>,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Home datastore.
    pub datastore: String,
    /// Disks.
    pub disks: Vec<DiskSpec>,
    /// NICs.
    pub nics: Vec<NicSpec>,
    /// What the guest reports.
    pub guest: GuestInfo,
    /// Latest resource usage, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<VmStats>,
    /// Template the VM was deployed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Creation time.
    pub created_ms: UnixMillis,
    /// QEMU machine type, pinned with its version.
    pub machine_type: String,
    /// Named CPU model.
    pub cpu_model: String,
    /// HA settings: restart priority and isolation response.
    #[serde(default)]
    pub ha: crate::ha::VmHa,
    /// Why the VM's QEMU was stopped by its host's supervisor (the host
    /// could not keep the VM's lease, e.g. its datastore hung), as its host
    /// reports it; only while the VM has no process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_configs_read_with_the_hardware_they_ran_with() {
        let v1 = r#"{"version":1,"id":"i","name":"web-1","cpus":1,"memory_mib":128,
            "datastore":"shared","dir":"web-1","disks":[],"nics":[],
            "hostname":"web-1","created_ms":5}"#;
        let c: VmConfig = serde_json::from_str(v1).unwrap();
        assert_eq!(c.version, 1);
        assert_eq!(c.machine_type, V1_MACHINE_TYPE);
        assert_eq!(c.cpu_model, V1_CPU_MODEL);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn qemu_model_names_cannot_carry_options() {
        for ok in [
            DEFAULT_MACHINE_TYPE,
            DEFAULT_CPU_MODEL,
            "qemu64",
            "pc-i440fx-9.2",
        ] {
            assert!(validate_qemu_model("x", ok).is_ok(), "{ok}");
        }
        for bad in ["", "q35,accel=kvm", "host -x", "a=b", &"x".repeat(65)] {
            assert!(validate_qemu_model("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nic_device_ids_stay_put_as_hot_plug_nics_come_and_go() {
        let nic = |port| NicSpec {
            port,
            ..Default::default()
        };
        let nics = vec![nic(None), nic(Some(2)), nic(None), nic(Some(0))];
        let ids: Vec<String> = (0..nics.len())
            .map(|i| NicSpec::device_id(&nics, i))
            .collect();
        assert_eq!(ids, ["net0", "hpnet2", "net1", "hpnet0"]);
        let mut fewer = nics.clone();
        fewer.remove(1);
        assert_eq!(NicSpec::device_id(&fewer, 1), "net1");
        assert_eq!(NicSpec::device_id(&fewer, 2), "hpnet0");
    }

    #[test]
    fn version_6_configs_have_no_hot_plug_port() {
        let v6 = r#"{"version":6,"id":"i","name":"web-1","cpus":1,"memory_mib":128,
            "datastore":"shared","dir":"web-1","disks":[],
            "nics":[{"network":"n","mac":"52:54:00:00:00:01"}],
            "hostname":"web-1","created_ms":5}"#;
        let mut c: VmConfig = serde_json::from_str(v6).unwrap();
        assert_eq!(c.hotplug_ports, 0);
        assert_eq!(c.nics[0].port, None);
        assert_eq!(c.free_hotplug_port(), None);
        c.hotplug_ports = 2;
        c.nics.push(NicSpec {
            port: Some(0),
            mac: "52:54:00:00:00:02".into(),
            ..Default::default()
        });
        assert_eq!(c.free_hotplug_port(), Some(1));
        assert_eq!(c.nic_index("hpnet0"), Some(1));
        assert_eq!(c.nic_index("52:54:00:00:00:01"), Some(0));
        assert_eq!(c.nic_index("net1"), None);
    }
}
