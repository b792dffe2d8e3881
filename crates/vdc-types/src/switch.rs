//! Virtual switches and their realization on each host.
//!
//! A [`Switch`] is defined once for the cluster and realized on every host
//! as a Linux bridge of the same name. Port groups are
//! [`Network`](crate::Network)s that name a switch and, on a `managed`
//! switch, a VLAN id (realized as a bridge per VLAN, [`vlan_bridge`]). The server hands each agent the
//! desired switches ([`DesiredSwitch`]) in the answer to its report; the
//! agent realizes them and reports each one's state ([`HostSwitchState`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Current format version of a stored [`Switch`].
pub const SWITCH_VERSION: u32 = 1;

/// Current format version of a stored [`Network`](crate::Network) (port
/// group). Version 1 (no `version` field) had no switch: it is migrated in
/// place into a port group of an `existing` switch named after its bridge.
pub const NETWORK_VERSION: u32 = 2;

/// Lowest usable VLAN id.
pub const VLAN_MIN: u16 = 1;
/// Highest usable VLAN id.
pub const VLAN_MAX: u16 = 4094;

/// Longest bridge name of a managed switch: room for the VLAN bridges'
/// suffix (`v4094`) within the 15 characters of a Linux interface name.
pub const MANAGED_BRIDGE_MAX: usize = 10;

/// Bridge of VLAN `vlan` of a managed switch whose bridge is `bridge`
/// (`<bridge>v<id>`); VLAN 1 is the switch's own bridge.
pub fn vlan_bridge(bridge: &str, vlan: u16) -> String {
    if vlan == 1 {
        bridge.to_string()
    } else {
        format!("{bridge}v{vlan}")
    }
}

/// Traffic shaping of a port group's NICs, toward the VM: a token bucket
/// (`tc qdisc tbf`) on each NIC's tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Shaping {
    /// Average rate, kbit/s (1 kbit = 1000 bits).
    #[schema(minimum = 8, maximum = 10000000)]
    pub average_kbit: u32,
    /// Peak rate, kbit/s, at least the average (none: bursts go at line
    /// rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 8, maximum = 10000000)]
    pub peak_kbit: Option<u32>,
    /// Burst, KiB: what may pass at the peak rate before the average
    /// applies; at least 10 ms of the average rate and 2 KiB.
    #[schema(minimum = 2, maximum = 1048576)]
    pub burst_kib: u32,
}

/// Security policy of a port group's NICs (vSphere's words), enforced by
/// each host on the frames a VM sends (nftables, bridge family, on the
/// NIC's tap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecurityPolicy {
    /// Frames whose source MAC is not the NIC's own pass (`true`, the
    /// default: a Linux bridge forwards them) or are dropped (`false`:
    /// a guest that changes its MAC, or spoofs another, is cut off).
    #[serde(default = "yes")]
    pub forged_transmits: bool,
}

impl Default for SecurityPolicy {
    fn default() -> Self {
        SecurityPolicy {
            forged_transmits: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// How a switch's bridge comes to exist on a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SwitchKind {
    /// The agent creates the switch's bridge and one bridge per VLAN of
    /// its port groups, enslaves the uplinks (their 802.1Q sub-interfaces
    /// to the VLAN bridges) and keeps them so (recreates what is missing).
    #[default]
    Managed,
    /// A bridge the host's administrator made (today's `vmbr0`): the agent
    /// only checks it exists; no VLANs.
    Existing,
}

/// A virtual switch, the same on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Switch {
    /// Format version, [`SWITCH_VERSION`] (filled in by the server; a
    /// newer one is refused).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub version: u32,
    /// Name (unique).
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Linux bridge on each host (default: the switch's name).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]*$", max_length = 15)]
    pub bridge: String,
    /// `managed` (default) or `existing`.
    #[serde(default)]
    pub kind: SwitchKind,
    /// Host interfaces enslaved to the bridge on every host (their
    /// `<uplink>.<id>` sub-interfaces carry each VLAN, tagged). None: an
    /// isolated switch, whose VMs reach only each other on the same host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uplinks: Vec<String>,
}

/// What an agent is asked to realize for one switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesiredSwitch {
    /// Switch name.
    pub name: String,
    /// Linux bridge.
    pub bridge: String,
    /// Who creates the bridge.
    pub kind: SwitchKind,
    /// Uplink interfaces.
    #[serde(default)]
    pub uplinks: Vec<String>,
    /// Every VLAN of the switch's port groups (carried tagged on uplinks).
    #[serde(default)]
    pub vlans: Vec<u16>,
}

/// The server's answer to an agent's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReportAnswer {
    /// The switches every host must have.
    #[serde(default)]
    pub switches: Vec<DesiredSwitch>,
}

/// How one host realizes one switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RealizationState {
    /// The bridge exists as it should.
    Present,
    /// The bridge does not exist (and could not be created).
    Missing,
    /// The bridge exists but something differs (a VLAN bridge missing or
    /// down, an uplink missing or enslaved elsewhere); `detail` says what.
    Drift,
}

/// One uplink of a switch on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UplinkState {
    /// Interface name.
    pub name: String,
    /// Whether the interface exists and is in the bridge.
    pub present: bool,
    /// Whether its link is up (carrier).
    pub up: bool,
}

/// A switch as one host realizes it (reported by the agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostSwitchState {
    /// Switch name.
    pub switch: String,
    /// Linux bridge.
    pub bridge: String,
    /// Present, missing or drift.
    pub state: RealizationState,
    /// What is wrong, when not present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Each uplink's state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uplinks: Vec<UplinkState>,
}

/// A switch with each host's realization of it (`GET /api/v1/switches`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SwitchView {
    /// The switch.
    #[serde(flatten)]
    pub switch: Switch,
    /// Port groups (networks) on it.
    pub port_groups: Vec<String>,
    /// Each connected host's realization, by host name.
    pub hosts: Vec<HostRealization>,
}

/// One host's realization of a switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostRealization {
    /// Host name.
    pub host: String,
    /// Its state there (`missing` when the host has not reported it).
    #[serde(flatten)]
    pub state: HostSwitchState,
}
