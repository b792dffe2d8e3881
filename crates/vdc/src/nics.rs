//! `vdc vm nic list|add|remove`: a VM's NICs, hot-plugged while it runs.

use clap::Subcommand;
use vdc_types::nic::{AddNicRequest, NicChange};
use vdc_types::{NicSpec, Vm};

use crate::cli::WaitArgs;
use crate::commands::{out, out_json, print_started, Ctx};
use crate::error::CliError;
use crate::format::Table;
use crate::wait::wait_task;

/// `vdc vm nic ...`
#[derive(Debug, Subcommand)]
pub enum NicCmd {
    /// A VM's NICs: id, port group, MAC, address, hot-plug port.
    #[command(alias = "ls")]
    List {
        /// VM name.
        vm: String,
    },
    /// Add a NIC on a port group: hot-plugged into a running VM (on a
    /// free PCIe hot-plug port), or there at the next start.
    Add {
        /// VM name.
        vm: String,
        /// Port group (network) the NIC connects to.
        #[arg(long = "network", value_name = "PORT_GROUP")]
        network: String,
        /// MAC address (default: a random 52:54:00:xx:xx:xx).
        #[arg(long)]
        mac: Option<String>,
        /// Waiting behaviour.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a NIC (by id, e.g. hpnet0, or MAC); from a running VM only a
    /// hot-plugged NIC, once the guest released it.
    #[command(alias = "rm")]
    Remove {
        /// VM name.
        vm: String,
        /// NIC id or MAC address.
        nic: String,
        /// Waiting behaviour.
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// Runs `vdc vm nic ...`.
pub(crate) async fn run(ctx: &Ctx, cmd: NicCmd) -> Result<(), CliError> {
    let (vm, change, wait, done) = match cmd {
        NicCmd::List { vm } => {
            let v = ctx.client.get_vm(&vm).await?;
            return if ctx.json() {
                out_json(&v.nics)
            } else {
                out(&nic_table(&v))
            };
        }
        NicCmd::Add {
            vm,
            network,
            mac,
            wait,
        } => {
            let req = AddNicRequest { network, mac };
            let c = ctx.client.add_nic(&vm, &req).await?;
            (vm, c, wait, "added")
        }
        NicCmd::Remove { vm, nic, wait } => {
            let c = ctx.client.remove_nic(&vm, &nic).await?;
            (vm, c, wait, "removed")
        }
    };
    let NicChange { task, nic, mac } = change;
    if wait.no_wait {
        return print_started(ctx, &task);
    }
    let ended = wait_task(&ctx.client, &task, wait.timeout()).await?;
    if ctx.json() {
        return out_json(&ended);
    }
    let v = ctx.client.get_vm(&vm).await?;
    out(&format!(
        "vm {vm}: NIC {nic} ({mac}) {done}\n{}",
        nic_table(&v)
    ))
}

fn nic_table(v: &Vm) -> String {
    let mut t = Table::new(&["NIC", "PORT GROUP", "MAC", "IP", "HOT-PLUG PORT"]);
    for (i, n) in v.nics.iter().enumerate() {
        t.row(vec![
            NicSpec::device_id(&v.nics, i),
            n.network.clone(),
            n.mac.clone(),
            n.ip.clone().unwrap_or_else(|| "-".into()),
            n.port
                .map(|p| format!("hp{p}"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}
