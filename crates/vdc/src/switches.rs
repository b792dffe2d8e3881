//! `vdc switch create|list|show|delete` and `vdc network show|delete`.

use clap::{Args, Subcommand};
use vdc_types::switch::{HostSwitchState, Switch, SwitchKind, SwitchView};

use crate::commands::{check_name, network_table, out, out_json, word, Ctx};
use crate::error::CliError;
use crate::format::{key_values, Table};

/// `vdc switch ...`
#[derive(Debug, Subcommand)]
pub enum SwitchCmd {
    /// List switches with the state of each host's realization.
    #[command(alias = "ls")]
    List,
    /// One switch: its port groups and each host's bridge and uplinks.
    Show {
        /// Switch name.
        name: String,
    },
    /// Create a switch every host realizes (a Linux bridge with VLAN
    /// filtering); without uplinks it is isolated.
    Create(SwitchCreateArgs),
    /// Delete a switch without port groups.
    #[command(alias = "rm")]
    Delete {
        /// Switch name.
        name: String,
    },
}

/// `vdc switch create`.
#[derive(Debug, Args)]
pub struct SwitchCreateArgs {
    /// Switch name.
    pub name: String,
    /// Linux bridge on each host (default: the switch's name).
    #[arg(long)]
    pub bridge: Option<String>,
    /// Host interface enslaved to the bridge (repeat for several); none:
    /// an isolated switch.
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,
    /// Adopt a bridge the hosts already have (no VLANs, no uplinks managed).
    #[arg(long)]
    pub existing: bool,
}

/// `vdc network show|delete` (beside `list` and `create`).
#[derive(Debug, Subcommand)]
pub enum NetworkMoreCmd {
    /// One network (port group).
    Show {
        /// Network name.
        name: String,
    },
    /// Delete a network no VM uses.
    #[command(alias = "rm")]
    Delete {
        /// Network name.
        name: String,
    },
}

/// Runs `vdc switch ...`.
pub(crate) async fn switch(ctx: &Ctx, cmd: SwitchCmd) -> Result<(), CliError> {
    match cmd {
        SwitchCmd::List => {
            let v = ctx.client.list_switches().await?;
            if ctx.json() {
                return out_json(&v);
            }
            out(&switch_table(&v))
        }
        SwitchCmd::Show { name } => {
            let v = ctx.client.get_switch(&name).await?;
            if ctx.json() {
                return out_json(&v);
            }
            out(&switch_details(&v))
        }
        SwitchCmd::Create(a) => {
            check_name("switch", &a.name)?;
            let s = Switch {
                version: 0,
                name: a.name,
                bridge: a.bridge.unwrap_or_default(),
                kind: if a.existing {
                    SwitchKind::Existing
                } else {
                    SwitchKind::Managed
                },
                uplinks: a.uplinks,
            };
            let created = ctx.client.create_switch(&s).await?;
            if ctx.json() {
                return out_json(&created);
            }
            out(&format!(
                "switch {} created (bridge {}); see `vdc switch show {}`",
                created.name, created.bridge, created.name
            ))
        }
        SwitchCmd::Delete { name } => {
            ctx.client.delete_switch(&name).await?;
            if ctx.json() {
                return out_json(&serde_json::json!({"deleted": name}));
            }
            out(&format!("switch {name} deleted"))
        }
    }
}

/// Runs `vdc network show|delete`.
pub(crate) async fn network_more(ctx: &Ctx, cmd: NetworkMoreCmd) -> Result<(), CliError> {
    match cmd {
        NetworkMoreCmd::Show { name } => {
            let n = ctx.client.get_network(&name).await?;
            if ctx.json() {
                return out_json(&n);
            }
            out(&network_table(std::slice::from_ref(&n)))
        }
        NetworkMoreCmd::Delete { name } => {
            ctx.client.delete_network(&name).await?;
            if ctx.json() {
                return out_json(&serde_json::json!({"deleted": name}));
            }
            out(&format!("network {name} deleted"))
        }
    }
}

/// How many hosts realize the switch, e.g. `3/3 present` or
/// `2/3 present, h3 missing`.
fn realization_summary(v: &SwitchView) -> String {
    let present = v
        .hosts
        .iter()
        .filter(|h| h.state.state == vdc_types::switch::RealizationState::Present)
        .count();
    let mut s = format!("{present}/{} present", v.hosts.len());
    for h in &v.hosts {
        if h.state.state != vdc_types::switch::RealizationState::Present {
            s.push_str(&format!(", {} {}", h.host, word(&h.state.state)));
        }
    }
    s
}

/// `switch list` as a table.
pub fn switch_table(views: &[SwitchView]) -> String {
    let mut t = Table::new(&["NAME", "BRIDGE", "KIND", "UPLINKS", "PORT GROUPS", "HOSTS"]);
    for v in views {
        t.row(vec![
            v.switch.name.clone(),
            v.switch.bridge.clone(),
            word(&v.switch.kind),
            if v.switch.uplinks.is_empty() {
                "- (isolated)".into()
            } else {
                v.switch.uplinks.join(",")
            },
            if v.port_groups.is_empty() {
                "-".into()
            } else {
                v.port_groups.join(",")
            },
            realization_summary(v),
        ]);
    }
    t.render()
}

fn switch_details(v: &SwitchView) -> String {
    let mut s = key_values(&[
        ("name", v.switch.name.clone()),
        ("bridge", v.switch.bridge.clone()),
        ("kind", word(&v.switch.kind)),
        ("uplinks", v.switch.uplinks.join(", ")),
        ("port groups", v.port_groups.join(", ")),
    ]);
    s.push('\n');
    let mut t = Table::new(&["HOST", "STATE", "UPLINKS", "DETAIL"]);
    for h in &v.hosts {
        t.row(vec![
            h.host.clone(),
            word(&h.state.state),
            uplinks_cell(&h.state),
            h.state.detail.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    s.push_str(&t.render());
    s
}

/// Each uplink with its state: `eth1 up, eth2 down`.
pub fn uplinks_cell(s: &HostSwitchState) -> String {
    if s.uplinks.is_empty() {
        return "-".into();
    }
    s.uplinks
        .iter()
        .map(|u| {
            format!(
                "{} {}",
                u.name,
                match (u.present, u.up) {
                    (false, _) => "missing",
                    (true, true) => "up",
                    (true, false) => "down",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A port group's shaping: `8000 kbit/s (peak 16000) burst 64 KiB`, or `-`.
pub fn shaping_cell(s: Option<&vdc_types::switch::Shaping>) -> String {
    match s {
        None => "-".into(),
        Some(s) => format!(
            "{} kbit/s{} burst {} KiB",
            s.average_kbit,
            s.peak_kbit
                .map_or(String::new(), |p| format!(" (peak {p})")),
            s.burst_kib
        ),
    }
}

/// The `switches` line of `vdc host show`: `sw1 present (eth1 up)`.
pub fn host_switches(states: &[HostSwitchState]) -> String {
    if states.is_empty() {
        return "-".into();
    }
    states
        .iter()
        .map(|s| {
            let mut x = format!("{} {}", s.switch, word(&s.state));
            if !s.uplinks.is_empty() {
                x.push_str(&format!(" ({})", uplinks_cell(s)));
            }
            x
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `vdc network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// List networks.
    #[command(alias = "ls")]
    List,
    /// Create a network (port group) on a switch, or on a bridge present
    /// on every host.
    Create(NetworkCreateArgs),
    /// Show or delete.
    #[command(flatten)]
    More(NetworkMoreCmd),
}

/// `vdc network create`.
#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    /// Network name.
    pub name: String,
    /// Switch of the port group (see `vdc switch list`).
    #[arg(long, required_unless_present = "bridge")]
    pub switch: Option<String>,
    /// Existing Linux bridge on each host (instead of --switch).
    #[arg(long, conflicts_with = "switch")]
    pub bridge: Option<String>,
    /// VLAN id, 1-4094 (managed switches).
    #[arg(long)]
    pub vlan: Option<u16>,
    /// Shaping toward each NIC: average rate, kbit/s.
    #[arg(long, requires = "burst_kib")]
    pub average_kbit: Option<u32>,
    /// Shaping: peak rate, kbit/s.
    #[arg(long, requires = "average_kbit")]
    pub peak_kbit: Option<u32>,
    /// Shaping: burst, KiB.
    #[arg(long, requires = "average_kbit")]
    pub burst_kib: Option<u32>,
    /// Outbound shaping (what each NIC sends): average rate, kbit/s.
    #[arg(long, requires = "outbound_burst_kib")]
    pub outbound_average_kbit: Option<u32>,
    /// Outbound shaping: burst, KiB.
    #[arg(long, requires = "outbound_average_kbit")]
    pub outbound_burst_kib: Option<u32>,
    /// Security policy: drop frames a NIC sends with a source MAC other
    /// than its own (vSphere "forged transmits: reject").
    #[arg(long)]
    pub reject_forged_transmits: bool,
    /// Subnet, CIDR notation (e.g. 10.77.0.0/24).
    #[arg(long, value_name = "CIDR")]
    pub subnet: String,
    /// Address pool for VMs, START-END (e.g. 10.77.0.100-10.77.0.199).
    #[arg(long, value_name = "START-END", value_parser = crate::format::parse_pool)]
    pub pool: (String, String),
    /// Gateway handed to guests.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<std::net::IpAddr>,
}

/// The outbound shaping and security policy of `vdc network create`.
pub(crate) fn network_policy(
    a: &NetworkCreateArgs,
) -> (
    Option<vdc_types::switch::Shaping>,
    Option<vdc_types::switch::SecurityPolicy>,
) {
    let outbound = a
        .outbound_average_kbit
        .map(|average_kbit| vdc_types::switch::Shaping {
            average_kbit,
            peak_kbit: None,
            burst_kib: a.outbound_burst_kib.unwrap_or_default(),
        });
    let security = a
        .reject_forged_transmits
        .then_some(vdc_types::switch::SecurityPolicy {
            forged_transmits: false,
        });
    (outbound, security)
}
