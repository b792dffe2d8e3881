//! `vdc host maintenance enter|exit HOST` and `vdc host cpu-baseline`.

use crate::cli::{MaintenanceAction, WaitArgs};
use crate::commands::{host_table, out, out_json, print_started, Ctx};
use crate::error::CliError;
use crate::wait::wait_task;

/// Enters (a task, waited for unless `--no-wait`) or exits maintenance,
/// then prints the host.
pub(crate) async fn host_maintenance(
    ctx: &Ctx,
    action: MaintenanceAction,
    name: &str,
    wait: WaitArgs,
) -> Result<(), CliError> {
    let host = match action {
        MaintenanceAction::Exit => ctx.client.exit_maintenance(name).await?,
        MaintenanceAction::Enter => {
            let task = ctx.client.enter_maintenance(name).await?;
            if wait.no_wait {
                return print_started(ctx, &task);
            }
            wait_task(&ctx.client, &task, wait.timeout()).await?;
            ctx.client.get_host(name).await?
        }
    };
    if ctx.json() {
        out_json(&host)
    } else {
        out(&host_table(std::slice::from_ref(&host)))
    }
}

/// Prints the cluster's CPU baseline and each host's fit.
pub(crate) async fn cpu_baseline(ctx: &Ctx) -> Result<(), CliError> {
    let b = ctx.client.cpu_baseline().await?;
    if ctx.json() {
        return out_json(&b);
    }
    let mut t = crate::format::Table::new(&["HOST", "CPU BASELINE", "WHY"]);
    for h in &b.hosts {
        t.row(vec![
            h.host.clone(),
            crate::commands::cpu_fit(Some(&h.fit)),
            h.fit.reason.clone(),
        ]);
    }
    out(&format!(
        "baseline: {} (mode {}; newest model all hosts with KVM could run: {})\n{}",
        b.model,
        b.mode,
        b.newest_common.as_deref().unwrap_or("-, no host with KVM"),
        t.render()
    ))
}
