//! Realizing switches on this host.
//!
//! [`realize`] observes a switch's bridges and uplinks (`ip -j -d link`),
//! runs the [`plan`](crate::plan::plan) and reports the outcome
//! ([`assess`](crate::plan::assess)). It never touches VM taps: only the
//! switch's bridges and uplinks. [`attach_port`] creates a VM's tap on the
//! bridge of its port group's segment (the server names it).

use vdc_types::switch::{DesiredSwitch, HostSwitchState, Shaping};

use crate::plan::{assess, layout, plan, vlan_uplink, Action, Observed, ObservedLink};
use crate::{create_tap, ip, validate_ifname, NetError};

/// A VM NIC's port: its tap, the bridge it joins and its shaping.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TapPort {
    /// Tap device.
    pub tap: String,
    /// Bridge it joins.
    pub bridge: String,
    /// Shaping toward the VM.
    pub shaping: Option<Shaping>,
}

/// Creates (or reuses) the tap of `port` on its bridge and shapes the
/// traffic toward the VM: `tc qdisc replace dev TAP root tbf rate Akbit
/// burst B latency 50ms [peakrate Pkbit mtu 65536]` (the tap's egress is
/// what the guest receives). A tap this call created is deleted again if
/// shaping fails.
pub async fn attach_port(port: &TapPort) -> Result<(), NetError> {
    let existed = crate::link_exists(&port.tap).await?;
    create_tap(&port.tap, &port.bridge).await?;
    let Some(s) = port.shaping else {
        return Ok(());
    };
    if let Err(e) = tc(&tbf_args(&port.tap, &s)).await {
        if !existed {
            if let Err(d) = crate::delete_tap(&port.tap).await {
                tracing::warn!(tap = %port.tap, error = %d, "cannot delete a tap that could not be shaped");
            }
        }
        return Err(e);
    }
    Ok(())
}

/// The `tc` arguments of `s` on `tap`.
pub fn tbf_args(tap: &str, s: &Shaping) -> Vec<String> {
    let mut a: Vec<String> = ["qdisc", "replace", "dev", tap, "root", "tbf", "rate"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    a.push(format!("{}kbit", s.average_kbit));
    a.push("burst".into());
    a.push((u64::from(s.burst_kib) * 1024).to_string());
    a.push("latency".into());
    a.push("50ms".into());
    if let Some(p) = s.peak_kbit {
        a.push("peakrate".into());
        a.push(format!("{p}kbit"));
        // The peak bucket must hold the largest packet the tap hands
        // over (offloads make them up to 64 KiB).
        a.push("mtu".into());
        a.push("65536".into());
    }
    a
}

/// Runs `tc ARGS`.
async fn tc(args: &[String]) -> Result<(), NetError> {
    let out = tokio::process::Command::new("tc")
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
            command: format!("tc {}", args.join(" ")),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
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

async fn observe_link(name: &str, want_bridge: bool) -> Result<ObservedLink, NetError> {
    let l = link_json(name).await?;
    let is_bridge = l.as_ref().is_some_and(|l| {
        l.pointer("/linkinfo/info_kind").and_then(|k| k.as_str()) == Some("bridge")
    });
    Ok(ObservedLink {
        name: name.to_string(),
        exists: if want_bridge { is_bridge } else { l.is_some() },
        master: l
            .as_ref()
            .and_then(|l| l.get("master"))
            .and_then(|m| m.as_str())
            .map(str::to_string),
        up: l.as_ref().is_some_and(|l| has_flag(l, "UP")),
        carrier: l.as_ref().is_some_and(|l| has_flag(l, "LOWER_UP")),
    })
}

/// Observes a switch's bridges and uplinks.
pub async fn observe(desired: &DesiredSwitch) -> Result<Observed, NetError> {
    let mut o = Observed::default();
    for (bridge, uplinks) in layout(desired) {
        o.bridges.push(observe_link(&bridge, true).await?);
        for u in uplinks {
            o.uplinks.push(observe_link(&u, false).await?);
        }
    }
    Ok(o)
}

async fn apply(action: &Action) -> Result<(), NetError> {
    match action {
        Action::CreateBridge(br) => {
            ip(&["link", "add", br, "type", "bridge"]).await?;
        }
        Action::SetUp(br) => {
            ip(&["link", "set", br, "up"]).await?;
        }
        Action::CreateVlanUplink(u, id) => {
            let name = vlan_uplink(u, *id);
            let id = id.to_string();
            ip(&[
                "link", "add", "link", u, "name", &name, "type", "vlan", "id", &id,
            ])
            .await?;
        }
        Action::Enslave(iface, br) => {
            ip(&["link", "set", iface, "master", br, "up"]).await?;
        }
    }
    Ok(())
}

/// Realizes one switch: observes, repairs what the plan says, observes
/// again and reports. The second value lists the repairs made. A failed
/// step is reported in the state's detail and the next steps still run.
pub async fn realize(desired: &DesiredSwitch) -> (HostSwitchState, Vec<String>) {
    let mut repaired = Vec::new();
    let mut failures = Vec::new();
    match observe(desired).await {
        Ok(o) => {
            for a in plan(desired, &o) {
                match apply(&a).await {
                    Ok(()) => repaired.push(format!("{a:?}")),
                    Err(e) => failures.push(format!("{a:?} failed: {}", error_text(&e))),
                }
            }
        }
        Err(e) => failures.push(error_text(&e)),
    }
    let mut state = match observe(desired).await {
        Ok(o) => assess(desired, &o),
        Err(e) => {
            failures.push(error_text(&e));
            assess(desired, &Observed::default())
        }
    };
    if !failures.is_empty() {
        let mut d: Vec<String> = state.detail.take().into_iter().collect();
        d.extend(failures);
        state.detail = Some(d.join("; "));
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
