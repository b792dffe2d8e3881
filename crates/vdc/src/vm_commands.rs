//! `vdc vm …`: create, list, show, power actions and delete.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use vdc_types::api::{CreateVmRequest, DiskRequest, ShutdownVmRequest, StartVmRequest};
use vdc_types::migration::MigrateRequest;
use vdc_types::{now_ms, Datastore, Task, Vm, VmAction, VmOperation};

use crate::cli::{VmCmd, VmCreateArgs, WaitArgs};
use crate::console::ConsoleArgs;
use crate::error::CliError;
use crate::format::{age, bytes, key_values, mib, or_dash, utc_time, Table};
use crate::wait::wait_task;

use crate::commands::*;

pub(crate) async fn vm(ctx: &Ctx, cmd: VmCmd) -> Result<(), CliError> {
    match cmd {
        VmCmd::Create(a) => vm_create(ctx, a).await,
        VmCmd::Clone(a) => crate::clone_cli::vm_clone(ctx, a).await,
        VmCmd::ToTemplate(a) => crate::clone_cli::vm_to_template(ctx, a).await,
        VmCmd::ImportDisk(a) => crate::clone_cli::vm_import_disk(ctx, a).await,
        VmCmd::Export(a) => crate::clone_cli::vm_export(ctx, a).await,
        VmCmd::Import(a) => crate::clone_cli::vm_import(ctx, a).await,
        VmCmd::List => vm_list(ctx).await,
        VmCmd::Update {
            name,
            ha_priority,
            isolation_response,
            ha_group,
            no_ha_group,
        } => {
            let req = vdc_types::ha::UpdateVmRequest {
                ha_priority: ha_priority.map(Into::into),
                isolation_response: isolation_response.map(Into::into),
                ha_group: if no_ha_group {
                    Some(None)
                } else {
                    ha_group.map(Some)
                },
            };
            if req.is_empty() {
                return Err(CliError::Usage(
                    "nothing to change: give --ha-priority, --isolation-response, --ha-group or --no-ha-group".into(),
                ));
            }
            let v = ctx.client.update_vm(&name, &req).await?;
            if ctx.json() {
                return out_json(&v);
            }
            out(&format!(
                "VM {}: HA priority {}, isolation response {}, HA group {}\n",
                v.name,
                v.ha.priority,
                word(&v.ha.isolation_response),
                or_dash(v.ha.group.as_deref())
            ))
        }
        VmCmd::Show { name } => vm_show(ctx, &name).await,
        VmCmd::Start { name, host, wait } => {
            let body = serde_json::to_value(StartVmRequest { host }).map_err(CliError::Json)?;
            vm_action(ctx, &name, VmAction::Start, body, wait).await
        }
        VmCmd::Stop(a) => vm_action(ctx, &a.name, VmAction::Stop, empty(), a.wait).await,
        VmCmd::Shutdown {
            name,
            timeout,
            wait,
        } => {
            let body = serde_json::to_value(ShutdownVmRequest { timeout_s: timeout })
                .map_err(CliError::Json)?;
            vm_action(ctx, &name, VmAction::Shutdown, body, wait).await
        }
        VmCmd::Reset(a) => vm_action(ctx, &a.name, VmAction::Reset, empty(), a.wait).await,
        VmCmd::Pause(a) => vm_action(ctx, &a.name, VmAction::Pause, empty(), a.wait).await,
        VmCmd::Suspend(a) => vm_action(ctx, &a.name, VmAction::Suspend, empty(), a.wait).await,
        VmCmd::Resume(a) => vm_action(ctx, &a.name, VmAction::Resume, empty(), a.wait).await,
        VmCmd::Migrate {
            name,
            to,
            datastore,
            allow_postcopy,
            bandwidth,
            tls,
            no_tls,
            wait,
        } => {
            let req = MigrateRequest {
                to,
                datastore,
                allow_postcopy,
                bandwidth_mib_s: bandwidth,
                tls: (tls || no_tls).then_some(tls),
            };
            let task = ctx.client.migrate_vm(&name, &req).await?;
            let id = task.id.clone();
            finish_vm_task(ctx, &name, task, wait).await?;
            if wait.no_wait || ctx.json() {
                return Ok(());
            }
            match ctx.client.get_task(&id).await?.migration {
                Some(m) => out(&migration_summary(&m)),
                None => Ok(()),
            }
        }
        VmCmd::Delete { name, yes, wait } => vm_delete(ctx, &name, yes, wait).await,
        VmCmd::Snapshot(cmd) => crate::snapshot::run(ctx, cmd).await,
        VmCmd::Nic(cmd) => crate::nics::run(ctx, cmd).await,
        VmCmd::InstantClone(a) => crate::snapshot::instant_clone(ctx, a).await,
        VmCmd::CloneRunning(a) => crate::snapshot::clone_running(ctx, a).await,
        VmCmd::Console {
            name,
            bytes,
            follow,
            send,
            wait,
        } => {
            let args = ConsoleArgs {
                name,
                bytes,
                follow,
                send,
                wait,
            };
            crate::console::run(ctx, args).await
        }
    }
}

pub(crate) fn empty() -> serde_json::Value {
    serde_json::json!({})
}

async fn vm_create(ctx: &Ctx, a: VmCreateArgs) -> Result<(), CliError> {
    check_name("VM", &a.name)?;
    let req = CreateVmRequest {
        name: a.name.clone(),
        cpus: a.cpus,
        memory_mib: a.memory,
        template: a.template,
        linked_clone: a.linked,
        disk_gib: a.disk_gib,
        datastore: a.datastore,
        network: a.network,
        host: a.host,
        start: a.start,
        ha_priority: a.ha_priority.map(Into::into),
        isolation_response: a.isolation_response.map(Into::into),
        ha_group: a.ha_group,
        disks: a
            .data_disks
            .iter()
            .map(|&size_gib| DiskRequest {
                size_gib,
                ..DiskRequest::default()
            })
            .collect(),
        hostname: a.custom.hostname,
        ip: a.custom.ip,
        dhcp: a.custom.dhcp,
    };
    let task = ctx.client.create_vm(&req).await?;
    finish_vm_task(ctx, &a.name, task, a.wait).await
}

async fn vm_action(
    ctx: &Ctx,
    name: &str,
    action: VmAction,
    body: serde_json::Value,
    wait: WaitArgs,
) -> Result<(), CliError> {
    let task = ctx.client.vm_action(name, action, body).await?;
    finish_vm_task(ctx, name, task, wait).await
}

/// One line on a finished migration: where, its downtime and total time,
/// and the policy steps taken.
pub fn migration_summary(m: &vdc_types::migration::MigrationReport) -> String {
    let mut line = format!("moved from {} to {}", m.source, m.target);
    if let Some(ds) = &m.datastore {
        line += &format!(" with its disks on datastore {ds}");
    }
    if let Some(o) = &m.outcome {
        line += &format!(
            ": downtime {} ms, total {} ms{}",
            o.downtime_ms,
            o.total_ms,
            if o.postcopy { " (post-copy)" } else { "" }
        );
        if o.encrypted {
            line += ", stream encrypted (TLS)";
        }
    }
    if !m.policy_steps.is_empty() {
        line += &format!("; policy: {}", m.policy_steps.join("; "));
    }
    line + "\n"
}

/// Waits for a VM task, then prints the VM as it is now.
async fn finish_vm_task(ctx: &Ctx, name: &str, task: Task, wait: WaitArgs) -> Result<(), CliError> {
    if wait.no_wait {
        return print_started(ctx, &task);
    }
    let started = std::time::Instant::now();
    wait_task(&ctx.client, &task, wait.timeout()).await?;
    let mut vm = ctx.client.get_vm(name).await?;
    if wait.wait_ready {
        while vm.state.has_process() && !vm.guest.ready {
            if started.elapsed() >= wait.timeout() {
                return Err(CliError::Client(vdc_client::ClientError::Timeout(
                    wait.timeout(),
                    format!("the guest of VM '{name}' to report ready"),
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            vm = ctx.client.get_vm(name).await?;
        }
    }
    if ctx.json() {
        out_json(&vm)
    } else {
        out(&vm_table(std::slice::from_ref(&vm)))
    }
}

async fn vm_list(ctx: &Ctx) -> Result<(), CliError> {
    let mut vms = ctx.client.list_vms().await?;
    if ctx.json() {
        return out_json(&vms);
    }
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    out(&vm_table(&vms))
}

/// `vm list` as a table.
pub fn vm_table(vms: &[Vm]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "OWNER",
        "OPERATION",
        "CPUS",
        "MEMORY",
        "IP",
        "READY",
    ]);
    for v in vms {
        t.row(vec![
            v.name.clone(),
            v.state.as_str().to_string(),
            or_dash(v.owner.as_deref()),
            v.operation
                .as_ref()
                .map(|o| operation_word(&o.operation))
                .unwrap_or_else(|| "-".to_string()),
            v.cpus.to_string(),
            mib(v.memory_mib),
            or_dash(v.guest.address.as_deref()),
            if v.guest.ready { "yes" } else { "no" }.to_string(),
        ]);
    }
    t.render()
}

/// An operation in one word for a table cell (`migrating→host-2`).
pub fn operation_word(op: &VmOperation) -> String {
    match op.target() {
        Some(t) => format!("{}→{t}", op.as_str()),
        None => op.as_str().to_string(),
    }
}

async fn vm_show(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let vm = ctx.client.get_vm(name).await?;
    if ctx.json() {
        return out_json(&vm);
    }
    // The disks' cache mode is their datastore's; without the list the
    // details go without it.
    let datastores = ctx.client.list_datastores().await.unwrap_or_default();
    out(&vm_details(&vm, &datastores, now_ms()))
}

/// `vm show` as `key: value` lines; `datastores` give each disk's cache
/// mode.
pub fn vm_details(v: &Vm, datastores: &[Datastore], now: u64) -> String {
    let mut pairs: Vec<(&str, String)> = vec![
        ("name", v.name.clone()),
        ("id", v.id.clone()),
        ("state", v.state.as_str().to_string()),
        ("owner", or_dash(v.owner.as_deref())),
        ("target", or_dash(v.target.as_deref())),
        (
            "operation",
            v.operation
                .as_ref()
                .map(|o| match &o.task {
                    Some(t) => format!("{} (task {t})", o.operation),
                    None => o.operation.to_string(),
                })
                .unwrap_or_else(|| "-".to_string()),
        ),
        (
            "actions",
            if v.actions.is_empty() {
                "-".to_string()
            } else {
                let names: Vec<&str> = v.actions.iter().map(|a| a.as_str()).collect();
                names.join(", ")
            },
        ),
        ("cpus", v.cpus.to_string()),
        ("memory", mib(v.memory_mib)),
        ("machine", v.machine_type.clone()),
        ("cpu model", v.cpu_model.clone()),
        ("ha priority", v.ha.priority.to_string()),
        ("isolation response", word(&v.ha.isolation_response)),
        ("ha group", or_dash(v.ha.group.as_deref())),
        ("datastore", v.datastore.clone()),
        ("template", or_dash(v.template.as_deref())),
    ];
    if let Some(reason) = &v.fenced {
        pairs.push(("fenced", reason.clone()));
    }
    for d in &v.disks {
        let cache = datastores
            .iter()
            .find(|ds| ds.name == d.datastore)
            .map(|ds| format!(", cache {}", ds.cache_mode))
            .unwrap_or_default();
        pairs.push((
            "disk",
            format!(
                "{} {}:{} ({}{cache})",
                d.name,
                d.datastore,
                d.path,
                bytes(d.size_bytes)
            ),
        ));
    }
    for (i, n) in v.nics.iter().enumerate() {
        pairs.push((
            "nic",
            format!(
                "{} {} {} ip {} gw {}",
                vdc_types::NicSpec::device_id(&v.nics, i),
                n.network,
                n.mac,
                or_dash(n.ip.as_deref()),
                or_dash(n.gateway.as_deref())
            ),
        ));
    }
    let g = &v.guest;
    pairs.push((
        "guest ready",
        if g.ready { "yes" } else { "no" }.to_string(),
    ));
    pairs.push(("guest hostname", or_dash(g.hostname.as_deref())));
    pairs.push(("guest address", or_dash(g.address.as_deref())));
    pairs.push(("guest boot id", or_dash(g.boot_id.as_deref())));
    pairs.push((
        "guest heartbeat",
        g.last_heartbeat_ms
            .map(|t| format!("{} ago", age(t, now)))
            .unwrap_or_else(|| "-".to_string()),
    ));
    if let Some(s) = &v.stats {
        pairs.push((
            "usage",
            format!("cpu {:.0}%, rss {}", s.cpu_percent, bytes(s.rss_bytes)),
        ));
    }
    pairs.push(("created", utc_time(v.created_ms)));
    key_values(&pairs)
}

async fn vm_delete(ctx: &Ctx, name: &str, yes: bool, wait: WaitArgs) -> Result<(), CliError> {
    if !yes && !confirm(&format!("Delete VM '{name}' and its disks? [y/N] "))? {
        return Err(CliError::Usage(if std::io::stdin().is_terminal() {
            format!("VM '{name}' was not deleted")
        } else {
            format!("refusing to delete VM '{name}' without confirmation; pass --yes")
        }));
    }
    let task = ctx.client.delete_vm(name).await?;
    if wait.no_wait {
        return print_started(ctx, &task);
    }
    let done = wait_task(&ctx.client, &task, wait.timeout()).await?;
    if ctx.json() {
        out_json(&done)
    } else {
        out(&format!("vm {name} deleted\n"))
    }
}

/// Asks a yes/no question on the terminal; `false` when stdin is not one.
fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::Io("read the answer", e))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

// ---- tasks ----

/// Ends a command that made VM `name` through `task`: prints the task's
/// start with `--no-wait`, else waits for it and prints the VM.
pub(crate) async fn wait_and_show_vm(
    ctx: &Ctx,
    task: &vdc_types::Task,
    name: &str,
    wait: &crate::cli::WaitArgs,
) -> Result<(), CliError> {
    if wait.no_wait {
        return crate::commands::print_started(ctx, task);
    }
    crate::wait::wait_task(&ctx.client, task, wait.timeout()).await?;
    let vm = ctx.client.get_vm(name).await?;
    if ctx.json() {
        crate::commands::out_json(&vm)
    } else {
        crate::commands::out(&vm_table(std::slice::from_ref(&vm)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::migration::{MigrationOutcome, MigrationReport};

    #[test]
    fn a_migration_summary_says_where_how_long_and_how() {
        let m = MigrationReport {
            source: "host-1".into(),
            target: "host-2".into(),
            policy_steps: vec!["pre-copy".into(), "post-copy started at pass 4".into()],
            outcome: Some(MigrationOutcome {
                downtime_ms: 12,
                total_ms: 900,
                migration_ms: 700,
                postcopy: true,
                encrypted: false,
            }),
            ..Default::default()
        };
        assert_eq!(
            migration_summary(&m),
            "moved from host-1 to host-2: downtime 12 ms, total 900 ms (post-copy); policy: pre-copy; post-copy started at pass 4\n"
        );
        let with = MigrationReport {
            datastore: Some("local-host-2".into()),
            ..m
        };
        assert!(migration_summary(&with)
            .starts_with("moved from host-1 to host-2 with its disks on datastore local-host-2: "));
    }
}
