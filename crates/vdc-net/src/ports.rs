//! What each VM NIC may send, enforced on its tap: the port group's
//! security policy (forged transmits) and its outbound shaping, as one
//! nftables table in the bridge family (`table bridge vdc_ports`), chain
//! `from_vms` on the bridge's prerouting hook, where every frame a VM sends
//! passes as it enters the bridge from its tap.
//!
//! Why nftables and this hook: this kernel family lacks tc's police action
//! and ifb (the usual ingress policing), while nftables' bridge family and
//! its `limit` expression exist; the bridge's forward hook is not traversed
//! here, its prerouting hook is.
//!
//! Per tap, in this order:
//! - forged transmits refused: `iifname TAP ether saddr != MAC drop`;
//! - outbound shaping: `iifname TAP limit rate over R bytes/second burst
//!   B bytes drop` (frames beyond the rate are dropped; TCP settles at the
//!   rate). nftables' bucket starts full with one second of the rate plus
//!   the burst, so a transfer's first `R + B` bytes pass at line rate.
//!
//! [`ruleset`] renders the whole table (pure); [`apply`] replaces it in one
//! `nft -f -` transaction, so a port's rules never disappear while others
//! change.

use vdc_types::switch::Shaping;

use crate::NetError;

/// The table's name.
pub const TABLE: &str = "vdc_ports";

/// What one tap's VM may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPolicy {
    /// Tap device.
    pub tap: String,
    /// The NIC's MAC address.
    pub mac: String,
    /// Frames with another source MAC pass.
    pub forged_transmits: bool,
    /// Shaping of what the VM sends.
    pub outbound: Option<Shaping>,
}

impl PortPolicy {
    /// Whether the port needs any rule.
    pub fn restricts(&self) -> bool {
        !self.forged_transmits || self.outbound.is_some()
    }
}

/// The `nft -f` script that makes the table hold exactly `ports`' rules.
/// Taps and MACs are checked by the caller ([`crate::validate_ifname`]) and
/// here (hex and `:` only); a port with a bad one gets no rule.
pub fn ruleset(ports: &[PortPolicy]) -> String {
    let mut s = format!(
        "add table bridge {TABLE}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{\n\tchain from_vms {{\n\t\ttype filter hook prerouting priority 0; policy accept;\n"
    );
    for p in ports.iter().filter(|p| p.restricts()) {
        if crate::validate_ifname(&p.tap).is_err()
            || !p.tap.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            continue;
        }
        if !p.forged_transmits {
            if p.mac.len() != 17 || !p.mac.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                continue;
            }
            s.push_str(&format!(
                "\t\tiifname \"{}\" ether saddr != {} drop\n",
                p.tap,
                p.mac.to_ascii_lowercase()
            ));
        }
        if let Some(o) = p.outbound {
            // kbit are 1000 bits; nft's kbytes would be 1024 bytes.
            let rate = (u64::from(o.average_kbit) * 1000 / 8).max(1);
            s.push_str(&format!(
                "\t\tiifname \"{}\" limit rate over {rate} bytes/second burst {} bytes drop\n",
                p.tap,
                u64::from(o.burst_kib.max(1)) * 1024
            ));
        }
    }
    s.push_str("\t}\n}\n");
    s
}

/// Replaces the table with `script` ([`ruleset`]).
pub async fn apply(script: &str) -> Result<(), NetError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NetError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(NetError::Spawn)?;
    }
    let out = child.wait_with_output().await.map_err(NetError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: "nft -f -".into(),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether the table exists (it goes with a host reboot or by hand).
pub async fn present() -> bool {
    tokio::process::Command::new("nft")
        .args(["list", "table", "bridge", TABLE])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(tap: &str, forged: bool, outbound: Option<u32>) -> PortPolicy {
        PortPolicy {
            tap: tap.into(),
            mac: "52:54:00:AA:00:01".into(),
            forged_transmits: forged,
            outbound: outbound.map(|k| Shaping {
                average_kbit: k,
                peak_kbit: None,
                burst_kib: 64,
            }),
        }
    }

    #[test]
    fn rules_per_tap_in_one_transaction() {
        let s = ruleset(&[
            port("vt1", false, Some(4000)),
            port("vt2", true, None),
            port("vt3", true, Some(800)),
        ]);
        assert!(s.starts_with("add table bridge vdc_ports\ndelete table bridge vdc_ports\n"));
        assert!(s.contains("hook prerouting"));
        assert!(s.contains("iifname \"vt1\" ether saddr != 52:54:00:aa:00:01 drop\n"));
        assert!(s.contains(
            "iifname \"vt1\" limit rate over 500000 bytes/second burst 65536 bytes drop\n"
        ));
        assert!(!s.contains("vt2"));
        assert!(s.contains("iifname \"vt3\" limit rate over 100000 bytes/second"));
        assert!(!s.contains("\"vt3\" ether"));
    }

    #[test]
    fn nothing_odd_reaches_nft() {
        let mut bad = port("vt\"x", false, None);
        assert!(!ruleset(std::slice::from_ref(&bad)).contains("iifname"));
        bad.tap = "vt1".into();
        bad.mac = "52:54:00:aa:00:01; flush ruleset".into();
        assert!(!ruleset(&[bad]).contains("iifname"));
        assert!(ruleset(&[]).contains("chain from_vms"));
    }
}
