//! Realizing switches on this host, and the VLANs of each VM port.
//!
//! [`realize`] observes a switch's bridge and uplinks (`ip -j -d link`),
//! runs the [`plan`](crate::plan::plan) and reports the outcome
//! ([`assess`](crate::plan::assess)). It never touches VM taps: only the
//! bridge itself and its uplinks. [`attach_port`] creates a VM's tap and,
//! on a bridge with VLAN filtering, sets its VLANs (`bridge vlan`).

use tokio::process::Command;
use vdc_types::switch::{DesiredSwitch, HostSwitchState};

use crate::plan::{assess, plan, Action, Observed, ObservedUplink};
use crate::{create_tap, ip, validate_ifname, NetError};

/// A VM NIC's port: its tap, bridge and VLANs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TapPort {
    /// Tap device.
    pub tap: String,
    /// Bridge it joins.
    pub bridge: String,
    /// Untagged VLAN (on a VLAN-filtering bridge; default 1).
    pub vlan: Option<u16>,
    /// Tagged VLANs (a trunk).
    pub trunk: Vec<u16>,
}

/// Runs `bridge ARGS`.
async fn bridge_cmd(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("bridge")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(NetError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: format!("bridge {}", args.join(" ")),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether `bridge` filters VLANs.
pub async fn vlan_filtering(bridge: &str) -> bool {
    let path = format!("/sys/class/net/{bridge}/bridge/vlan_filtering");
    matches!(tokio::fs::read_to_string(path).await, Ok(v) if v.trim() == "1")
}

/// Creates (or reuses) the tap of `port` on its bridge and, when the bridge
/// filters VLANs, makes the tap an access port of its VLAN (untagged,
/// default 1) carrying its trunk VLANs tagged. A tap this call created is
/// deleted again if tagging fails.
pub async fn attach_port(port: &TapPort) -> Result<(), NetError> {
    let existed = crate::link_exists(&port.tap).await?;
    create_tap(&port.tap, &port.bridge).await?;
    if !vlan_filtering(&port.bridge).await {
        return Ok(());
    }
    if let Err(e) = set_port_vlans(port).await {
        if !existed {
            if let Err(d) = crate::delete_tap(&port.tap).await {
                tracing::warn!(tap = %port.tap, error = %d, "cannot delete a tap whose VLANs could not be set");
            }
        }
        return Err(e);
    }
    Ok(())
}

async fn set_port_vlans(port: &TapPort) -> Result<(), NetError> {
    let tap = port.tap.as_str();
    let untagged = port.vlan.unwrap_or(1).to_string();
    if untagged != "1" {
        // A bridge made with a default PVID of 1 (not ours) put the
        // port in VLAN 1: take it out.
        if let Err(e) = bridge_cmd(&["vlan", "del", "dev", tap, "vid", "1"]).await {
            tracing::debug!(%tap, error = %e, "VLAN 1 was not on the port");
        }
    }
    bridge_cmd(&[
        "vlan", "add", "dev", tap, "vid", &untagged, "pvid", "untagged", "master",
    ])
    .await?;
    for t in &port.trunk {
        bridge_cmd(&["vlan", "add", "dev", tap, "vid", &t.to_string(), "master"]).await?;
    }
    Ok(())
}

/// What `ip -j -d link show dev NAME` says of an interface.
async fn link_json(name: &str) -> Result<Option<serde_json::Value>, NetError> {
    validate_ifname(name)?;
    match ip(&["-j", "-d", "link", "show", "dev", name]).await {
        Ok(out) => {
            let v: serde_json::Value =
                serde_json::from_slice(&out).map_err(|source| NetError::Output {
                    command: format!("ip -j -d link show dev {name}"),
                    source,
                })?;
            Ok(v.get(0).cloned())
        }
        Err(NetError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
        Err(e) => Err(e),
    }
}

fn has_flag(link: &serde_json::Value, flag: &str) -> bool {
    link.get("flags")
        .and_then(|f| f.as_array())
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(flag)))
}

/// Observes a switch's bridge and uplinks.
pub async fn observe(desired: &DesiredSwitch) -> Result<Observed, NetError> {
    let br = link_json(&desired.bridge).await?;
    let is_bridge = br.as_ref().is_some_and(|l| {
        l.pointer("/linkinfo/info_kind").and_then(|k| k.as_str()) == Some("bridge")
    });
    let mut o = Observed {
        exists: is_bridge,
        vlan_filtering: br
            .as_ref()
            .and_then(|l| l.pointer("/linkinfo/info_data/vlan_filtering"))
            .and_then(|v| v.as_u64())
            == Some(1),
        up: br.as_ref().is_some_and(|l| has_flag(l, "UP")),
        uplinks: Vec::new(),
    };
    for u in &desired.uplinks {
        let l = link_json(u).await?;
        o.uplinks.push(ObservedUplink {
            name: u.clone(),
            exists: l.is_some(),
            master: l
                .as_ref()
                .and_then(|l| l.get("master"))
                .and_then(|m| m.as_str())
                .map(str::to_string),
            up: l.as_ref().is_some_and(|l| has_flag(l, "LOWER_UP")),
        });
    }
    Ok(o)
}

async fn apply(desired: &DesiredSwitch, action: &Action) -> Result<(), NetError> {
    let br = desired.bridge.as_str();
    match action {
        Action::CreateBridge => {
            ip(&[
                "link",
                "add",
                br,
                "type",
                "bridge",
                "vlan_filtering",
                "1",
                "vlan_default_pvid",
                "0",
            ])
            .await?;
        }
        Action::EnableVlanFiltering => {
            ip(&["link", "set", br, "type", "bridge", "vlan_filtering", "1"]).await?;
        }
        Action::SetUp => {
            ip(&["link", "set", br, "up"]).await?;
        }
        Action::Enslave(u) => {
            ip(&["link", "set", u, "master", br, "up"]).await?;
        }
        Action::UplinkVlans(u, vlans) => {
            for v in vlans {
                bridge_cmd(&["vlan", "add", "dev", u, "vid", &v.to_string(), "master"]).await?;
            }
        }
    }
    Ok(())
}

/// Realizes one switch: observes, repairs what the plan says, observes
/// again and reports. The second value lists the repairs made (drift that
/// was found and fixed). A failed step is reported in the state's detail.
pub async fn realize(desired: &DesiredSwitch) -> (HostSwitchState, Vec<String>) {
    let mut repaired = Vec::new();
    let mut failure = None;
    match observe(desired).await {
        Ok(o) => {
            for a in plan(desired, &o) {
                match apply(desired, &a).await {
                    Ok(()) => {
                        if !matches!(a, Action::UplinkVlans(..)) {
                            repaired.push(format!("{a:?}"));
                        }
                    }
                    Err(e) => {
                        failure = Some(format!("{a:?} failed: {}", error_text(&e)));
                        break;
                    }
                }
            }
        }
        Err(e) => failure = Some(error_text(&e)),
    }
    let mut state = match observe(desired).await {
        Ok(o) => assess(desired, &o),
        Err(e) => assess(desired, &Observed::default()).with_detail(error_text(&e)),
    };
    if let Some(f) = failure {
        state = state.with_detail(f);
    }
    (state, repaired)
}

fn error_text(e: &NetError) -> String {
    match e {
        NetError::Command {
            command, stderr, ..
        } => format!("'{command}': {stderr}"),
        other => other.to_string(),
    }
}

trait WithDetail {
    fn with_detail(self, d: String) -> Self;
}

impl WithDetail for HostSwitchState {
    fn with_detail(mut self, d: String) -> Self {
        self.detail = Some(match self.detail.take() {
            Some(x) => format!("{x}; {d}"),
            None => d,
        });
        self
    }
}
