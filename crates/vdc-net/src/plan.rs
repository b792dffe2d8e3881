//! What a host must do to realize a switch, as a pure function of the
//! desired switch and what was observed ([`plan`]), and how far the host
//! is from it ([`assess`]). The I/O around them is in [`crate::switch`].
//!
//! A managed switch is realized as one Linux bridge per segment: the
//! switch's own bridge (port groups without a VLAN, and the uplinks) and
//! one bridge per VLAN, named [`vlan_bridge`] (`<bridge>v<id>`), whose
//! uplink is the 802.1Q sub-interface `<uplink>.<id>` of each uplink. A
//! VM's tap joins the bridge of its port group's segment, so VLANs are
//! separate broadcast domains on every host (the "traditional" layout of
//! Linux hypervisors; it needs neither bridge VLAN filtering nor anything
//! from the guest). Where the kernel has no 802.1Q support the VLAN
//! bridges have no uplink (reported as drift when the switch has
//! uplinks). An existing switch is only checked.

use vdc_types::switch::{
    DesiredSwitch, HostSwitchState, RealizationState, SwitchKind, UplinkState,
};

/// Bridge of VLAN `vlan` of a switch whose bridge is `bridge`.
pub fn vlan_bridge(bridge: &str, vlan: u16) -> String {
    format!("{bridge}v{vlan}")
}

/// Name of the 802.1Q sub-interface of `uplink` for `vlan`.
pub fn vlan_uplink(uplink: &str, vlan: u16) -> String {
    format!("{uplink}.{vlan}")
}

/// One interface as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedLink {
    /// Interface name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// Its bridge, if enslaved.
    pub master: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Carrier up.
    pub carrier: bool,
}

/// A switch as observed on the host: its bridges and their uplinks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The switch's bridge and each VLAN bridge (exists = is a bridge).
    pub bridges: Vec<ObservedLink>,
    /// Each uplink and each uplink VLAN sub-interface.
    pub uplinks: Vec<ObservedLink>,
}

impl Observed {
    fn link<'a>(list: &'a [ObservedLink], name: &str) -> Option<&'a ObservedLink> {
        list.iter().find(|l| l.name == name && l.exists)
    }
}

/// One step of realizing a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `ip link add NAME type bridge`.
    CreateBridge(String),
    /// `ip link set NAME up`.
    SetUp(String),
    /// `ip link add link UPLINK name UPLINK.ID type vlan id ID`.
    CreateVlanUplink(String, u16),
    /// `ip link set IFACE master BRIDGE up`.
    Enslave(String, String),
}

/// The interfaces a switch is made of: (bridge, its uplinks) for the
/// switch's own bridge and each VLAN bridge.
pub fn layout(desired: &DesiredSwitch) -> Vec<(String, Vec<String>)> {
    let mut out = vec![(desired.bridge.clone(), desired.uplinks.clone())];
    if desired.kind == SwitchKind::Managed {
        for &v in desired.vlans.iter().filter(|&&v| v != 1) {
            out.push((
                vlan_bridge(&desired.bridge, v),
                desired.uplinks.iter().map(|u| vlan_uplink(u, v)).collect(),
            ));
        }
    }
    out
}

/// The actions that bring `observed` to `desired` (none for an existing
/// switch: its bridge is the administrator's). Uplinks that do not exist
/// are left for [`assess`] to report.
pub fn plan(desired: &DesiredSwitch, observed: &Observed) -> Vec<Action> {
    if desired.kind == SwitchKind::Existing {
        return Vec::new();
    }
    let mut a = Vec::new();
    for (bridge, uplinks) in layout(desired) {
        let br = Observed::link(&observed.bridges, &bridge);
        if br.is_none() {
            a.push(Action::CreateBridge(bridge.clone()));
        }
        if !br.is_some_and(|b| b.up) {
            a.push(Action::SetUp(bridge.clone()));
        }
        for u in uplinks {
            let o = Observed::link(&observed.uplinks, &u);
            if o.is_none() {
                match u.rsplit_once('.') {
                    Some((parent, id)) if Observed::link(&observed.uplinks, parent).is_some() => {
                        if let Ok(id) = id.parse() {
                            a.push(Action::CreateVlanUplink(parent.to_string(), id));
                        } else {
                            continue;
                        }
                    }
                    _ => continue,
                }
            }
            // An interface in another bridge (the host's management
            // bridge, say) is never taken from it: reported as drift.
            if o.is_none_or(|o| o.master.is_none()) {
                a.push(Action::Enslave(u.clone(), bridge.clone()));
            }
        }
    }
    a
}

/// The host's state of `desired` as `observed` (after the plan ran).
pub fn assess(desired: &DesiredSwitch, observed: &Observed) -> HostSwitchState {
    let mut problems = Vec::new();
    let mut missing_main = false;
    let mut uplinks = Vec::new();
    for (i, (bridge, ups)) in layout(desired).into_iter().enumerate() {
        match Observed::link(&observed.bridges, &bridge) {
            None => {
                problems.push(format!("bridge {bridge} does not exist"));
                missing_main |= i == 0;
            }
            Some(b) if !b.up && desired.kind == SwitchKind::Managed => {
                problems.push(format!("bridge {bridge} is down"))
            }
            Some(_) => {}
        }
        for u in ups {
            let o = Observed::link(&observed.uplinks, &u);
            let present = o.is_some_and(|o| o.master.as_deref() == Some(bridge.as_str()));
            if !present {
                problems.push(match o.and_then(|o| o.master.as_deref()) {
                    Some(other) if o.is_some() => {
                        format!("uplink {u} is in bridge {other}, not {bridge}; free it by hand")
                    }
                    _ if o.is_some() => format!("uplink {u} is not in bridge {bridge}"),
                    _ => format!("uplink {u} does not exist"),
                });
            }
            if i == 0 {
                uplinks.push(UplinkState {
                    name: u.clone(),
                    present,
                    up: present && o.is_some_and(|o| o.carrier),
                });
            }
        }
    }
    let state = if missing_main {
        RealizationState::Missing
    } else if problems.is_empty() {
        RealizationState::Present
    } else {
        RealizationState::Drift
    };
    HostSwitchState {
        switch: desired.name.clone(),
        bridge: desired.bridge.clone(),
        state,
        detail: (!problems.is_empty()).then(|| problems.join("; ")),
        uplinks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sw(kind: SwitchKind, uplinks: &[&str], vlans: &[u16]) -> DesiredSwitch {
        DesiredSwitch {
            name: "sw1".into(),
            bridge: "sw1".into(),
            kind,
            uplinks: uplinks.iter().map(|s| s.to_string()).collect(),
            vlans: vlans.to_vec(),
        }
    }

    fn link(name: &str, master: Option<&str>) -> ObservedLink {
        ObservedLink {
            name: name.into(),
            exists: true,
            master: master.map(str::to_string),
            up: true,
            carrier: true,
        }
    }

    #[test]
    fn a_missing_switch_is_created_with_a_bridge_per_vlan() {
        let d = sw(SwitchKind::Managed, &["eth1"], &[1, 10]);
        let o = Observed {
            bridges: vec![],
            uplinks: vec![link("eth1", None)],
        };
        assert_eq!(
            plan(&d, &o),
            vec![
                Action::CreateBridge("sw1".into()),
                Action::SetUp("sw1".into()),
                Action::Enslave("eth1".into(), "sw1".into()),
                Action::CreateBridge("sw1v10".into()),
                Action::SetUp("sw1v10".into()),
                Action::CreateVlanUplink("eth1".into(), 10),
                Action::Enslave("eth1.10".into(), "sw1v10".into()),
            ]
        );
        assert_eq!(assess(&d, &o).state, RealizationState::Missing);
    }

    #[test]
    fn a_realized_switch_needs_nothing() {
        let d = sw(SwitchKind::Managed, &["eth1"], &[10]);
        let o = Observed {
            bridges: vec![link("sw1", None), link("sw1v10", None)],
            uplinks: vec![link("eth1", Some("sw1")), link("eth1.10", Some("sw1v10"))],
        };
        assert!(plan(&d, &o).is_empty());
        let s = assess(&d, &o);
        assert_eq!(s.state, RealizationState::Present, "{:?}", s.detail);
        assert!(s.uplinks[0].present && s.uplinks[0].up);
        assert_eq!(s.uplinks.len(), 1);
    }

    #[test]
    fn drift_is_repaired_or_reported() {
        let d = sw(SwitchKind::Managed, &["eth1", "eth2"], &[20]);
        let o = Observed {
            bridges: vec![link("sw1", None)],
            uplinks: vec![link("eth1", Some("other"))],
        };
        assert_eq!(
            plan(&d, &o),
            vec![
                Action::CreateBridge("sw1v20".into()),
                Action::SetUp("sw1v20".into()),
                Action::CreateVlanUplink("eth1".into(), 20),
                Action::Enslave("eth1.20".into(), "sw1v20".into()),
            ]
        );
        let s = assess(&d, &o);
        assert_eq!(s.state, RealizationState::Drift);
        let detail = s.detail.unwrap();
        assert!(detail.contains("eth2 does not exist"), "{detail}");
        assert!(detail.contains("eth1 is in bridge other"), "{detail}");
        assert!(detail.contains("bridge sw1v20 does not exist"), "{detail}");
        assert!(!s.uplinks[1].present);
    }

    #[test]
    fn an_isolated_switch_has_bridges_only() {
        let d = sw(SwitchKind::Managed, &[], &[10, 20]);
        let o = Observed {
            bridges: vec![
                link("sw1", None),
                link("sw1v10", None),
                link("sw1v20", None),
            ],
            uplinks: vec![],
        };
        assert!(plan(&d, &o).is_empty());
        assert_eq!(assess(&d, &o).state, RealizationState::Present);
    }

    #[test]
    fn an_existing_switch_is_only_checked() {
        let d = sw(SwitchKind::Existing, &[], &[]);
        assert!(plan(&d, &Observed::default()).is_empty());
        assert_eq!(
            assess(&d, &Observed::default()).state,
            RealizationState::Missing
        );
        let o = Observed {
            bridges: vec![ObservedLink {
                up: false,
                ..link("sw1", None)
            }],
            uplinks: vec![],
        };
        assert_eq!(assess(&d, &o).state, RealizationState::Present);
    }
}
