//! `vdc replication enable|list|show|sync|disable` (protected site) and
//! `vdc replica list|show|recover|delete` (recovery site).

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use vdc_types::replication::{
    EnableReplicationRequest, LinkLossPolicy, RecoverMode, RecoverRequest, Replica, Replication,
    ReplicationMode,
};

use crate::cli::WaitArgs;
use crate::commands::{out, out_json, print_started, Ctx};
use crate::error::CliError;
use crate::format::{age, bytes, key_values, utc_time, Table};
use crate::wait::wait_task;

/// `vdc replication ...`
#[derive(Debug, Subcommand)]
pub enum ReplicationCmd {
    /// Replicate a running VM to a paired site (first a full copy).
    Enable(EnableArgs),
    /// Replications of this site's VMs, with lag and achieved RPO.
    #[command(alias = "ls")]
    List,
    /// One replication.
    Show {
        /// VM name.
        vm: String,
    },
    /// Take a point now and wait until the recovery site applied it.
    Sync {
        /// VM name.
        vm: String,
        /// Freeze the guest's file systems for this point.
        #[arg(long)]
        quiesce: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop replicating (the replica stays at the recovery site).
    Disable {
        /// VM name.
        vm: String,
    },
}

/// `vdc replication enable`.
#[derive(Debug, Args)]
pub struct EnableArgs {
    /// VM name.
    pub vm: String,
    /// The paired site that keeps the replica.
    #[arg(long)]
    pub site: String,
    /// RPO target: seconds, or with a unit (`10s`, `5m`, `1h`).
    #[arg(long, default_value = "60s", value_parser = parse_rpo)]
    pub rpo: u64,
    /// Synchronous replication (RPO 0).
    #[arg(long)]
    pub sync: bool,
    /// Points kept at the recovery site.
    #[arg(long, default_value_t = vdc_types::replication::DEFAULT_RETAIN_LAST)]
    pub retain_last: u32,
    /// Synchronous mode: `pause` the VM or fall back to `async` when the
    /// link drops.
    #[arg(long, default_value = "async", value_parser = parse_policy)]
    pub on_link_loss: LinkLossPolicy,
    /// Quiesced points at most this often (seconds; 0: never).
    #[arg(long, default_value_t = 0)]
    pub quiesce_every: u64,
    /// Datastore of the recovery site for the replica.
    #[arg(long)]
    pub datastore: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vdc replica ...`
#[derive(Debug, Subcommand)]
pub enum ReplicaCmd {
    /// Replicas kept at this site.
    #[command(alias = "ls")]
    List,
    /// One replica with its points.
    Show {
        /// VM name (at the protected site).
        vm: String,
    },
    /// Make a VM here from a point: `--test` (a linked clone, replication
    /// goes on) or `--failover` (the replica takes no more points).
    Recover(RecoverArgs),
    /// Remove a replica no longer replicated.
    #[command(alias = "rm")]
    Delete {
        /// VM name.
        vm: String,
    },
}

/// `vdc replica recover`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["test", "failover"])))]
pub struct RecoverArgs {
    /// VM name (at the protected site).
    pub vm: String,
    /// A test: linked clone, replication untouched.
    #[arg(long)]
    pub test: bool,
    /// A failover: the replica stops taking points.
    #[arg(long)]
    pub failover: bool,
    /// Point id (default: the latest).
    #[arg(long)]
    pub point: Option<u64>,
    /// Name of the VM made (default: the VM's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Network mapping `PROTECTED=RECOVERY` (repeat).
    #[arg(long = "network-map", value_name = "FROM=TO")]
    pub network_map: Vec<String>,
    /// Address of the first NIC, `A.B.C.D/N`.
    #[arg(long)]
    pub ip: Option<String>,
    /// Hostname of the guest.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Host to run it on.
    #[arg(long)]
    pub host: Option<String>,
    /// Leave it powered off.
    #[arg(long)]
    pub no_start: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn parse_rpo(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * mult)
        .ok_or_else(|| format!("'{s}' is not a duration like 10s, 5m or 1h"))
}

fn parse_policy(s: &str) -> Result<LinkLossPolicy, String> {
    match s {
        "pause" => Ok(LinkLossPolicy::Pause),
        "async" => Ok(LinkLossPolicy::Async),
        _ => Err(format!("'{s}': use pause or async")),
    }
}

fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn replication_table(rs: &[Replication]) -> String {
    let mut t = Table::new(&[
        "VM",
        "SITE",
        "MODE",
        "RPO",
        "STATE",
        "LAG",
        "ACHIEVED RPO",
        "POINTS",
        "SENT",
    ]);
    for r in rs {
        t.row(vec![
            r.vm.clone(),
            r.site.clone(),
            word(&r.mode),
            format!("{} s", r.rpo_s),
            word(&r.state),
            r.lag_ms
                .map_or("-".into(), |l| format!("{:.1} s", l as f64 / 1000.0)),
            r.achieved_rpo_ms
                .map_or("-".into(), |l| format!("{:.1} s", l as f64 / 1000.0)),
            r.points.to_string(),
            bytes(r.bytes_sent),
        ]);
    }
    t.render()
}

fn replica_table(rs: &[Replica]) -> String {
    let now = vdc_types::now_ms();
    let mut t = Table::new(&["VM", "FROM SITE", "STATE", "POINTS", "LATEST", "DATASTORE"]);
    for r in rs {
        t.row(vec![
            r.vm.clone(),
            r.source_site.clone(),
            word(&r.state),
            r.points.len().to_string(),
            r.latest_point_ms.map_or("-".into(), |m| age(m, now)),
            r.datastore.clone(),
        ]);
    }
    t.render()
}

/// Runs `vdc replication ...`.
pub(crate) async fn replication(ctx: &Ctx, cmd: ReplicationCmd) -> Result<(), CliError> {
    match cmd {
        ReplicationCmd::Enable(a) => {
            let enabled = ctx
                .client
                .enable_replication(&EnableReplicationRequest {
                    vm: a.vm.clone(),
                    site: a.site,
                    rpo_s: a.rpo,
                    mode: if a.sync {
                        ReplicationMode::Sync
                    } else {
                        ReplicationMode::Async
                    },
                    retain_last: a.retain_last,
                    on_link_loss: a.on_link_loss,
                    quiesce_every_s: a.quiesce_every,
                    datastore: a.datastore,
                })
                .await?;
            if a.wait.no_wait {
                return print_started(ctx, &enabled.task);
            }
            wait_task(&ctx.client, &enabled.task, a.wait.timeout()).await?;
            let r = ctx.client.get_replication(&a.vm).await?;
            if ctx.json() {
                return out_json(&r);
            }
            out(&replication_table(std::slice::from_ref(&r)))
        }
        ReplicationCmd::List => {
            let rs = ctx.client.list_replications().await?;
            if ctx.json() {
                return out_json(&rs);
            }
            out(&replication_table(&rs))
        }
        ReplicationCmd::Show { vm } => {
            let r = ctx.client.get_replication(&vm).await?;
            if ctx.json() {
                return out_json(&r);
            }
            out(&(replication_table(std::slice::from_ref(&r))
                + &key_values(&[
                    ("last point", r.last_point_ms.map_or("-".into(), utc_time)),
                    ("last point bytes", bytes(r.last_point_bytes)),
                    ("retain last", r.retain_last.to_string()),
                    (
                        "full copy reason",
                        r.full_reason.clone().unwrap_or_else(|| "-".into()),
                    ),
                    ("error", r.error.clone().unwrap_or_else(|| "-".into())),
                ])))
        }
        ReplicationCmd::Sync { vm, quiesce, wait } => {
            let task = ctx.client.sync_replication(&vm, quiesce).await?;
            if wait.no_wait {
                return print_started(ctx, &task);
            }
            wait_task(&ctx.client, &task, wait.timeout()).await?;
            let r = ctx.client.get_replication(&vm).await?;
            if ctx.json() {
                return out_json(&r);
            }
            out(&replication_table(std::slice::from_ref(&r)))
        }
        ReplicationCmd::Disable { vm } => {
            ctx.client.disable_replication(&vm).await?;
            if ctx.json() {
                return out_json(&serde_json::json!({"disabled": vm}));
            }
            out(&format!(
                "replication of {vm} disabled; its replica stays at the recovery site\n"
            ))
        }
    }
}

/// Runs `vdc replica ...`.
pub(crate) async fn replica(ctx: &Ctx, cmd: ReplicaCmd) -> Result<(), CliError> {
    match cmd {
        ReplicaCmd::List => {
            let rs = ctx.client.list_replicas().await?;
            if ctx.json() {
                return out_json(&rs);
            }
            out(&replica_table(&rs))
        }
        ReplicaCmd::Show { vm } => {
            let r = ctx.client.get_replica(&vm).await?;
            if ctx.json() {
                return out_json(&r);
            }
            let mut t = Table::new(&["POINT", "TIME", "CONSISTENCY", "BYTES", "PINNED BY"]);
            for p in &r.points {
                t.row(vec![
                    p.id.to_string(),
                    utc_time(p.time_ms),
                    word(&p.consistency),
                    bytes(p.bytes),
                    r.pins
                        .iter()
                        .filter(|x| x.point == p.id)
                        .map(|x| x.vm.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                ]);
            }
            out(&(replica_table(std::slice::from_ref(&r)) + "\n" + &t.render()))
        }
        ReplicaCmd::Recover(a) => {
            let mut map = BTreeMap::new();
            for m in &a.network_map {
                let Some((from, to)) = m.split_once('=') else {
                    return Err(CliError::Usage(format!(
                        "--network-map '{m}': use PROTECTED=RECOVERY"
                    )));
                };
                map.insert(from.to_string(), to.to_string());
            }
            let name = a.name.clone().unwrap_or_else(|| a.vm.clone());
            let task = ctx
                .client
                .recover_replica(
                    &a.vm,
                    &RecoverRequest {
                        point: a.point,
                        name: a.name,
                        mode: if a.failover {
                            RecoverMode::Failover
                        } else {
                            RecoverMode::Test
                        },
                        network_map: map,
                        ip: a.ip,
                        hostname: a.hostname,
                        host: a.host,
                        start: !a.no_start,
                    },
                )
                .await?;
            if a.wait.no_wait {
                return print_started(ctx, &task);
            }
            wait_task(&ctx.client, &task, a.wait.timeout()).await?;
            let vm = ctx.client.get_vm(&name).await?;
            if ctx.json() {
                return out_json(&vm);
            }
            out(&format!(
                "VM {name} made from the replica of {} ({})\n",
                a.vm,
                word(&vm.state)
            ))
        }
        ReplicaCmd::Delete { vm } => {
            ctx.client.delete_replica(&vm).await?;
            if ctx.json() {
                return out_json(&serde_json::json!({"deleted": vm}));
            }
            out(&format!("replica of {vm} removed\n"))
        }
    }
}
