//! Pure rules of switches and port groups: validation, the migration of
//! version-1 networks, address-pool overlaps within one segment and the
//! desired state handed to every host. No I/O: tested in milliseconds.
//!
//! A *segment* is one broadcast domain: a switch and a VLAN (VLAN 1 for a
//! port group without one). Two port groups whose pools overlap on one
//! segment could hand the same address to two guests that see each other,
//! so that is refused; on different segments (an isolated DR bubble reusing
//! production addresses) it is allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use vdc_types::names::validate_name;
use vdc_types::switch::{
    DesiredSwitch, Switch, SwitchKind, MANAGED_BRIDGE_MAX, NETWORK_VERSION, SWITCH_VERSION,
    VLAN_MAX, VLAN_MIN,
};
use vdc_types::Network;

/// Longest Linux interface name.
const MAX_IFNAME: usize = 15;

/// Whether `name` is a usable Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks a switch and fills in its defaults (bridge = name, version).
pub fn normalize_switch(mut s: Switch) -> Result<Switch, String> {
    validate_name("switch", &s.name)?;
    if s.bridge.is_empty() {
        s.bridge = s.name.clone();
    }
    if !valid_ifname(&s.bridge) {
        return Err(format!(
            "bridge '{}' is not a valid Linux interface name (1-15 letters, digits, '-', '_', '.'); give a shorter --bridge",
            s.bridge.escape_default()
        ));
    }
    if s.kind == SwitchKind::Managed && s.bridge.len() > MANAGED_BRIDGE_MAX {
        return Err(format!(
            "bridge '{}' is longer than {MANAGED_BRIDGE_MAX} characters, leaving no room for its VLAN bridges ('{}v4094'); give a shorter --bridge",
            s.bridge,
            s.bridge
        ));
    }
    let mut seen = BTreeSet::new();
    for u in &s.uplinks {
        if !valid_ifname(u) {
            return Err(format!(
                "uplink '{}' is not a valid Linux interface name",
                u.escape_default()
            ));
        }
        if u == &s.bridge {
            return Err(format!("uplink '{u}' is the switch's own bridge"));
        }
        if !seen.insert(u) {
            return Err(format!("uplink '{u}' is listed twice"));
        }
    }
    if s.kind == SwitchKind::Existing && !s.uplinks.is_empty() {
        return Err(
            "an existing switch's bridge is set up by the host's administrator; it takes no uplinks"
                .into(),
        );
    }
    if s.version > SWITCH_VERSION {
        return Err(format!(
            "switch format version {} is newer than this server's ({SWITCH_VERSION}); leave 'version' out",
            s.version
        ));
    }
    s.version = SWITCH_VERSION;
    Ok(s)
}

/// Checks a VLAN id.
pub fn check_vlan(id: u16) -> Result<(), String> {
    if (VLAN_MIN..=VLAN_MAX).contains(&id) {
        Ok(())
    } else {
        Err(format!(
            "VLAN id {id} is out of range; use {VLAN_MIN}-{VLAN_MAX}"
        ))
    }
}

/// Checks a port group's VLAN settings against its switch.
pub fn check_port_group_vlans(n: &Network, switch: &Switch) -> Result<(), String> {
    if switch.kind == SwitchKind::Existing && n.vlan.is_some() {
        return Err(format!(
            "switch '{}' is an existing bridge vdc does not manage; VLANs need a managed switch (vdc switch create)",
            switch.name
        ));
    }
    if let Some(v) = n.vlan {
        check_vlan(v)?;
    }
    Ok(())
}

/// Checks a port group's shaping.
pub fn check_shaping(s: &vdc_types::switch::Shaping) -> Result<(), String> {
    const MAX_KBIT: u32 = 10_000_000;
    if !(8..=MAX_KBIT).contains(&s.average_kbit) {
        return Err(format!(
            "average rate {} kbit/s is out of range; use 8-{MAX_KBIT}",
            s.average_kbit
        ));
    }
    if let Some(p) = s.peak_kbit {
        if p < s.average_kbit || p > MAX_KBIT {
            return Err(format!(
                "peak rate {p} kbit/s must be between the average rate ({}) and {MAX_KBIT}",
                s.average_kbit
            ));
        }
    }
    // 10 ms of the average rate, in KiB, rounded up.
    let min_burst = (u64::from(s.average_kbit) * 10 / 8).div_ceil(1024).max(2);
    if u64::from(s.burst_kib) < min_burst || s.burst_kib > 1_048_576 {
        return Err(format!(
            "burst {} KiB is out of range; at {} kbit/s use {min_burst}-1048576 KiB",
            s.burst_kib, s.average_kbit
        ));
    }
    Ok(())
}

/// The segment (switch, VLAN) of a port group.
pub fn segment(n: &Network) -> (String, u16) {
    (
        n.switch.clone().unwrap_or_else(|| n.bridge.clone()),
        n.vlan.unwrap_or(1),
    )
}

fn pool_range(n: &Network) -> Option<(u32, u32)> {
    let a: Ipv4Addr = n.pool_start.parse().ok()?;
    let b: Ipv4Addr = n.pool_end.parse().ok()?;
    Some((u32::from(a), u32::from(b)))
}

/// The port group among `others` whose pool overlaps `n`'s on the same
/// segment, if any.
pub fn overlapping_pool<'a>(n: &Network, others: &'a [Network]) -> Option<&'a Network> {
    let (a0, a1) = pool_range(n)?;
    let seg = segment(n);
    others.iter().find(|o| {
        o.name != n.name
            && segment(o) == seg
            && pool_range(o).is_some_and(|(b0, b1)| a0 <= b1 && b0 <= a1)
    })
}

/// Migrates a stored network to [`NETWORK_VERSION`]: a version-1 network
/// becomes a port group of the `existing` switch named after its bridge.
/// Newer versions are refused.
pub fn migrate_network(mut n: Network) -> Result<Network, String> {
    if n.version > NETWORK_VERSION {
        return Err(format!(
            "network '{}' has format version {}; this server reads up to {NETWORK_VERSION}",
            n.name, n.version
        ));
    }
    if n.version < NETWORK_VERSION || n.switch.is_none() {
        if n.switch.is_none() {
            n.switch = Some(n.bridge.clone());
        }
        n.version = NETWORK_VERSION;
    }
    Ok(n)
}

/// The `existing` switch a bridge given alone stands for.
pub fn existing_switch(bridge: &str) -> Switch {
    Switch {
        version: SWITCH_VERSION,
        name: bridge.to_string(),
        bridge: bridge.to_string(),
        kind: SwitchKind::Existing,
        uplinks: Vec::new(),
    }
}

/// What every host must realize: each switch with every VLAN its port
/// groups use (VLAN 1 for port groups without one).
pub fn desired(switches: &[Switch], networks: &[Network]) -> Vec<DesiredSwitch> {
    let mut vlans: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    for n in networks {
        let Some(sw) = n.switch.as_deref() else {
            continue;
        };
        vlans.entry(sw).or_default().insert(n.vlan.unwrap_or(1));
    }
    switches
        .iter()
        .map(|s| DesiredSwitch {
            name: s.name.clone(),
            bridge: s.bridge.clone(),
            kind: s.kind,
            uplinks: s.uplinks.clone(),
            vlans: match s.kind {
                SwitchKind::Managed => vlans
                    .get(s.name.as_str())
                    .map(|v| v.iter().copied().collect())
                    .unwrap_or_default(),
                SwitchKind::Existing => Vec::new(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pg(name: &str, sw: &str, vlan: Option<u16>, pool: (&str, &str)) -> Network {
        Network {
            name: name.into(),
            bridge: sw.into(),
            subnet: "10.9.0.0/24".into(),
            pool_start: pool.0.into(),
            pool_end: pool.1.into(),
            version: NETWORK_VERSION,
            switch: Some(sw.into()),
            vlan,
            ..Default::default()
        }
    }

    fn managed(name: &str) -> Switch {
        Switch {
            version: 0,
            name: name.into(),
            bridge: String::new(),
            kind: SwitchKind::Managed,
            uplinks: vec![],
        }
    }

    #[test]
    fn switches_get_defaults_and_are_checked() {
        let s = normalize_switch(managed("sw1")).unwrap();
        assert_eq!((s.bridge.as_str(), s.version), ("sw1", SWITCH_VERSION));
        let long = managed("a-switch-with-a-long-name");
        assert!(normalize_switch(long).unwrap_err().contains("--bridge"));
        let eleven = managed("elevenchars");
        assert!(normalize_switch(eleven)
            .unwrap_err()
            .contains("VLAN bridges"));
        let mut dup = managed("sw1");
        dup.uplinks = vec!["eth1".into(), "eth1".into()];
        assert!(normalize_switch(dup).unwrap_err().contains("twice"));
        let mut ex = managed("vmbr0");
        ex.kind = SwitchKind::Existing;
        ex.uplinks = vec!["eth0".into()];
        assert!(normalize_switch(ex).is_err());
        assert!(normalize_switch(managed("-x")).is_err());
    }

    #[test]
    fn vlans_are_checked() {
        let sw = normalize_switch(managed("sw1")).unwrap();
        let mut n = pg("a", "sw1", Some(0), ("10.9.0.10", "10.9.0.20"));
        assert!(check_port_group_vlans(&n, &sw)
            .unwrap_err()
            .contains("1-4094"));
        n.vlan = Some(4095);
        assert!(check_port_group_vlans(&n, &sw).is_err());
        n.vlan = Some(10);
        check_port_group_vlans(&n, &sw).unwrap();
        let ex = existing_switch("vmbr0");
        assert!(check_port_group_vlans(&n, &ex)
            .unwrap_err()
            .contains("managed"));
    }

    #[test]
    fn shaping_is_checked() {
        use vdc_types::switch::Shaping;
        let ok = Shaping {
            average_kbit: 8000,
            peak_kbit: Some(16000),
            burst_kib: 64,
        };
        check_shaping(&ok).unwrap();
        for bad in [
            Shaping {
                average_kbit: 0,
                ..ok
            },
            Shaping {
                peak_kbit: Some(100),
                ..ok
            },
            Shaping { burst_kib: 1, ..ok },
            Shaping {
                average_kbit: 8_000_000,
                burst_kib: 64,
                peak_kbit: None,
            },
        ] {
            assert!(check_shaping(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pools_overlap_only_on_one_segment() {
        let a = pg("a", "sw1", Some(10), ("10.9.0.10", "10.9.0.20"));
        let same = pg("b", "sw1", Some(10), ("10.9.0.20", "10.9.0.30"));
        let other_vlan = pg("c", "sw1", Some(20), ("10.9.0.10", "10.9.0.20"));
        let other_switch = pg("d", "sw2", Some(10), ("10.9.0.10", "10.9.0.20"));
        let disjoint = pg("e", "sw1", Some(10), ("10.9.0.21", "10.9.0.30"));
        let others = vec![other_vlan, other_switch, disjoint.clone()];
        assert!(overlapping_pool(&a, &others).is_none());
        let others = vec![disjoint, same];
        assert_eq!(overlapping_pool(&a, &others).unwrap().name, "b");
    }

    #[test]
    fn version_1_networks_join_the_switch_of_their_bridge() {
        let v1 = Network {
            name: "lan".into(),
            bridge: "vmbr0".into(),
            subnet: "10.9.0.0/24".into(),
            pool_start: "10.9.0.10".into(),
            pool_end: "10.9.0.20".into(),
            ..Default::default()
        };
        let v2 = migrate_network(v1.clone()).unwrap();
        assert_eq!(v2.switch.as_deref(), Some("vmbr0"));
        assert_eq!(v2.version, NETWORK_VERSION);
        assert_eq!(migrate_network(v2.clone()).unwrap(), v2);
        let newer = Network {
            version: NETWORK_VERSION + 1,
            ..v1
        };
        assert!(migrate_network(newer).is_err());
    }

    #[test]
    fn desired_state_carries_each_switchs_vlans() {
        let sw1 = normalize_switch(managed("sw1")).unwrap();
        let ex = existing_switch("vmbr0");
        let nets = vec![
            pg("a", "sw1", Some(20), ("10.9.0.10", "10.9.0.20")),
            pg("t", "sw1", None, ("10.9.0.10", "10.9.0.20")),
            pg("u", "sw1", Some(30), ("10.9.0.10", "10.9.0.20")),
            pg("lan", "vmbr0", None, ("10.9.0.10", "10.9.0.20")),
        ];
        let d = desired(&[sw1, ex], &nets);
        assert_eq!(d[0].vlans, vec![1, 20, 30]);
        assert!(d[1].vlans.is_empty());
        assert_eq!(d[1].kind, SwitchKind::Existing);
    }

    proptest! {
        /// Overlap is symmetric and matches the arithmetic definition.
        #[test]
        fn overlap_is_symmetric(a0 in 0u8..50, al in 0u8..50, b0 in 0u8..50, bl in 0u8..50, same_vlan: bool) {
            let ip = |x: u8| format!("10.9.0.{x}");
            let a = pg("a", "sw", Some(10), (&ip(a0), &ip(a0 + al)));
            let b = pg("b", "sw", Some(if same_vlan { 10 } else { 11 }), (&ip(b0), &ip(b0 + bl)));
            let ab = overlapping_pool(&a, std::slice::from_ref(&b)).is_some();
            let ba = overlapping_pool(&b, std::slice::from_ref(&a)).is_some();
            prop_assert_eq!(ab, ba);
            let expect = same_vlan && a0 <= b0 + bl && b0 <= a0 + al;
            prop_assert_eq!(ab, expect);
        }
    }
}
