//! `vdc host maintenance enter|exit HOST`.

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
