//! What a host must do to realize a switch, as a pure function of the
//! desired switch and what was observed ([`plan`]), and how far the host
//! is from it ([`assess`]). The I/O around them is in [`crate::switch`].
//!
//! A managed switch is a Linux bridge with `vlan_filtering 1` and
//! `vlan_default_pvid 0` (a new port belongs to no VLAN until its VLANs
//! are set, so a tap never leaks onto VLAN 1 between creation and
//! tagging), up, with each uplink enslaved and carrying every VLAN of the
//! switch tagged. An existing switch is only checked.

use vdc_types::switch::{
    DesiredSwitch, HostSwitchState, RealizationState, SwitchKind, UplinkState,
};

/// One uplink as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedUplink {
    /// Interface name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// Its bridge, if enslaved.
    pub master: Option<String>,
    /// Carrier up.
    pub up: bool,
}

/// A switch's bridge as observed on the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The bridge exists (and is a bridge).
    pub exists: bool,
    /// Its `vlan_filtering`.
    pub vlan_filtering: bool,
    /// Administratively up.
    pub up: bool,
    /// Each desired uplink.
    pub uplinks: Vec<ObservedUplink>,
}

/// One step of realizing a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `ip link add BR type bridge vlan_filtering 1 vlan_default_pvid 0`.
    CreateBridge,
    /// `ip link set BR type bridge vlan_filtering 1`.
    EnableVlanFiltering,
    /// `ip link set BR up`.
    SetUp,
    /// `ip link set UPLINK master BR up`.
    Enslave(String),
    /// `bridge vlan add dev UPLINK vid V` for each VLAN of the switch.
    UplinkVlans(String, Vec<u16>),
}

/// The actions that bring `observed` to `desired` (none for an existing
/// switch: its bridge is the administrator's). Uplinks that do not exist
/// are left for [`assess`] to report.
pub fn plan(desired: &DesiredSwitch, observed: &Observed) -> Vec<Action> {
    if desired.kind == SwitchKind::Existing {
        return Vec::new();
    }
    let mut a = Vec::new();
    if !observed.exists {
        a.push(Action::CreateBridge);
    } else if !observed.vlan_filtering {
        a.push(Action::EnableVlanFiltering);
    }
    if !observed.exists || !observed.up {
        a.push(Action::SetUp);
    }
    for u in &desired.uplinks {
        let o = observed.uplinks.iter().find(|o| &o.name == u);
        let Some(o) = o.filter(|o| o.exists) else {
            continue;
        };
        if o.master.as_deref() != Some(desired.bridge.as_str()) || !observed.exists {
            a.push(Action::Enslave(u.clone()));
        }
        if !desired.vlans.is_empty() {
            a.push(Action::UplinkVlans(u.clone(), desired.vlans.clone()));
        }
    }
    a
}

/// The host's state of `desired` as `observed` (after the plan ran).
pub fn assess(desired: &DesiredSwitch, observed: &Observed) -> HostSwitchState {
    let mut problems = Vec::new();
    let uplinks: Vec<UplinkState> = desired
        .uplinks
        .iter()
        .map(|u| {
            let o = observed.uplinks.iter().find(|o| &o.name == u);
            let present =
                o.is_some_and(|o| o.exists && o.master.as_deref() == Some(&desired.bridge));
            if !present {
                problems.push(match o {
                    Some(o) if o.exists => format!("uplink {u} is not in the bridge"),
                    _ => format!("uplink {u} does not exist"),
                });
            }
            UplinkState {
                name: u.clone(),
                present,
                up: present && o.is_some_and(|o| o.up),
            }
        })
        .collect();
    let state = if !observed.exists {
        problems.insert(0, format!("bridge {} does not exist", desired.bridge));
        RealizationState::Missing
    } else {
        if desired.kind == SwitchKind::Managed && !observed.vlan_filtering {
            problems.push("VLAN filtering is off".into());
        }
        if desired.kind == SwitchKind::Managed && !observed.up {
            problems.push("the bridge is down".into());
        }
        if problems.is_empty() {
            RealizationState::Present
        } else {
            RealizationState::Drift
        }
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

    fn up(name: &str, exists: bool, master: Option<&str>) -> ObservedUplink {
        ObservedUplink {
            name: name.into(),
            exists,
            master: master.map(str::to_string),
            up: true,
        }
    }

    #[test]
    fn a_missing_bridge_is_created_with_its_uplinks() {
        let d = sw(SwitchKind::Managed, &["eth1"], &[10, 20]);
        let o = Observed {
            uplinks: vec![up("eth1", true, None)],
            ..Default::default()
        };
        assert_eq!(
            plan(&d, &o),
            vec![
                Action::CreateBridge,
                Action::SetUp,
                Action::Enslave("eth1".into()),
                Action::UplinkVlans("eth1".into(), vec![10, 20]),
            ]
        );
        assert_eq!(assess(&d, &o).state, RealizationState::Missing);
    }

    #[test]
    fn a_realized_switch_needs_nothing_but_its_vlans() {
        let d = sw(SwitchKind::Managed, &["eth1"], &[]);
        let o = Observed {
            exists: true,
            vlan_filtering: true,
            up: true,
            uplinks: vec![up("eth1", true, Some("sw1"))],
        };
        assert!(plan(&d, &o).is_empty());
        let s = assess(&d, &o);
        assert_eq!(s.state, RealizationState::Present);
        assert!(s.uplinks[0].present && s.uplinks[0].up);
    }

    #[test]
    fn drift_is_repaired_or_reported() {
        let d = sw(SwitchKind::Managed, &["eth1", "eth2"], &[]);
        let o = Observed {
            exists: true,
            vlan_filtering: false,
            up: true,
            uplinks: vec![up("eth1", true, Some("other")), up("eth2", false, None)],
        };
        assert_eq!(
            plan(&d, &o),
            vec![Action::EnableVlanFiltering, Action::Enslave("eth1".into())]
        );
        let s = assess(&d, &o);
        assert_eq!(s.state, RealizationState::Drift);
        let detail = s.detail.unwrap();
        assert!(detail.contains("eth2 does not exist"), "{detail}");
        assert!(detail.contains("VLAN filtering is off"), "{detail}");
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
            exists: true,
            ..Default::default()
        };
        assert_eq!(assess(&d, &o).state, RealizationState::Present);
    }
}
