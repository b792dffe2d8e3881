//! `vdc backup-store …` and `vdc backup …`.

use clap::Subcommand;
use vdc_types::backup::{
    AddBackupStoreRequest, Backup, DiskRead, PruneRequest, RestoreRequest, Retention,
};

use crate::cli::WaitArgs;
use crate::commands::{finish_task, out, out_json, Ctx};
use crate::error::CliError;
use crate::format::{bytes, utc_time, Table};

/// `vdc backup-store ...`
#[derive(Debug, Subcommand)]
pub enum BackupStoreCmd {
    /// Register a backup store: a directory the server and every host see
    /// at the same path (initialised when empty).
    Add {
        /// Store name.
        name: String,
        /// Directory (absolute).
        #[arg(long)]
        path: String,
        /// Key file (32 random bytes or 64 hex digits): chunks are
        /// encrypted and named by a keyed digest.
        #[arg(long, value_name = "FILE")]
        encryption_key: Option<String>,
    },
    /// List the stores.
    #[command(alias = "ls")]
    List,
    /// Forget a store (its directory and backups are kept).
    Remove {
        /// Store name.
        name: String,
    },
}

/// `vdc backup-job ...`
#[derive(Debug, Subcommand)]
pub enum BackupJobCmd {
    /// Create a job: its VMs are backed up into the store on a schedule
    /// (the first run at once), then pruned with its keep rules.
    Create {
        /// Job name.
        name: String,
        /// VMs (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        vm: Vec<String>,
        /// Store.
        #[arg(long)]
        store: String,
        /// Interval between runs: seconds, or with a unit (30s, 15m, 6h, 1d).
        #[arg(long, value_parser = parse_every)]
        every: u64,
        #[command(flatten)]
        keep: KeepArgs,
    },
    /// List the jobs with their last run.
    #[command(alias = "ls")]
    List,
    /// Delete a job (its backups stay).
    Delete {
        /// Job name.
        name: String,
    },
}

/// Keep rules of a retention policy.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct KeepArgs {
    /// Keep the N newest.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep one per hour for N hours.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep one per day for N days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep one per week for N weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep one per month for N months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
}

impl From<KeepArgs> for Retention {
    fn from(k: KeepArgs) -> Retention {
        Retention {
            keep_last: k.keep_last,
            keep_hourly: k.keep_hourly,
            keep_daily: k.keep_daily,
            keep_weekly: k.keep_weekly,
            keep_monthly: k.keep_monthly,
        }
    }
}

/// `30`, `30s`, `15m`, `6h`, `1d` → seconds (at least 1).
fn parse_every(s: &str) -> Result<u64, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not an interval like 30s, 15m, 6h or 1d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in '{s}'; use s, m, h or d")),
    };
    match n.checked_mul(mult) {
        Some(v) if v >= 1 => Ok(v),
        _ => Err(format!("interval '{s}' must be at least 1 second")),
    }
}

/// Runs `vdc backup-job …`.
pub(crate) async fn backup_job(ctx: &Ctx, cmd: BackupJobCmd) -> Result<(), CliError> {
    match cmd {
        BackupJobCmd::Create {
            name,
            vm,
            store,
            every,
            keep,
        } => {
            let j = ctx
                .client
                .create_backup_job(&vdc_types::backup::CreateBackupJobRequest {
                    name,
                    vms: vm,
                    store,
                    every_s: every,
                    retention: keep.into(),
                })
                .await?;
            if ctx.json() {
                return out_json(&j);
            }
            out(&format!(
                "backup job {} created: every {} s into {}\n",
                j.name, j.every_s, j.store
            ))
        }
        BackupJobCmd::List => {
            let list = ctx.client.list_backup_jobs().await?;
            if ctx.json() {
                return out_json(&list);
            }
            let mut t = Table::new(&["NAME", "VMS", "STORE", "EVERY", "LAST RUN", "RESULT"]);
            for j in &list {
                t.row(vec![
                    j.name.clone(),
                    j.vms.join(","),
                    j.store.clone(),
                    format!("{} s", j.every_s),
                    j.last_run_ms.map(utc_time).unwrap_or_else(|| "-".into()),
                    j.last_result.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            out(&t.render())
        }
        BackupJobCmd::Delete { name } => {
            ctx.client.delete_backup_job(&name).await?;
            out(&format!("backup job {name} deleted\n"))
        }
    }
}

/// Which store a backup is in.
#[derive(Debug, clap::Args)]
pub struct StoreArg {
    /// Store (default: the one that has the backup).
    #[arg(long)]
    pub store: Option<String>,
}

/// `vdc backup ...`
#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Back a VM up: a running VM at one instant while it runs, a stopped
    /// VM as it is.
    Run {
        /// VM name.
        vm: String,
        /// Store to back up into.
        #[arg(long)]
        store: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List complete backups, oldest first.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        store: StoreArg,
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
    },
    /// Show a backup: consistency, per disk how it was read and its counts.
    Show {
        /// Backup id.
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Restore a backup as a new VM (--name) or over the original VM,
    /// powered off (whole, or one --disk).
    Restore {
        /// Backup id.
        id: String,
        #[command(flatten)]
        store: StoreArg,
        /// Name of a new VM to restore into.
        #[arg(long)]
        name: Option<String>,
        /// Host of the new VM.
        #[arg(long)]
        host: Option<String>,
        /// Datastore of the new VM.
        #[arg(long)]
        datastore: Option<String>,
        /// Only this disk, over the original VM.
        #[arg(long)]
        disk: Option<String>,
        /// Start the new VM at once from the backup; its disks are copied
        /// while it runs (the task ends when they are).
        #[arg(long, requires = "name")]
        instant: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List a directory of a backed-up guest file system, or extract a
    /// file, without running the VM.
    Files {
        /// Backup id.
        id: String,
        /// Absolute path in the file system (default `/`).
        path: Option<String>,
        #[command(flatten)]
        store: StoreArg,
        /// Disk (default: the first).
        #[arg(long)]
        disk: Option<String>,
        /// Extract this file (absolute path) ...
        #[arg(long, value_name = "FILE", requires = "to")]
        extract: Option<String>,
        /// ... into this directory.
        #[arg(long, value_name = "DIR", requires = "extract")]
        to: Option<String>,
    },
    /// Re-read and re-hash every chunk of a backup; a damaged backup is
    /// marked and the command fails.
    Verify {
        /// Backup id.
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove a backup (its chunks go at the next gc).
    Remove {
        /// Backup id.
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove the backups a retention policy does not keep, per VM.
    Prune {
        /// Store.
        #[arg(long)]
        store: String,
        /// Only this VM's backups.
        #[arg(long)]
        vm: Option<String>,
        /// Keep the N newest.
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        /// Keep one per hour for N hours.
        #[arg(long, default_value_t = 0)]
        keep_hourly: u32,
        /// Keep one per day for N days.
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        /// Keep one per week for N weeks.
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        /// Keep one per month for N months.
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
    },
    /// Remove the chunks no backup needs.
    Gc {
        /// Store.
        #[arg(long)]
        store: String,
    },
    /// Copy the backups another store lacks into it (off-site copy).
    Sync(crate::backup_sync::SyncArgs),
}

/// Runs `vdc backup-store …`.
pub(crate) async fn backup_store(ctx: &Ctx, cmd: BackupStoreCmd) -> Result<(), CliError> {
    match cmd {
        BackupStoreCmd::Add {
            name,
            path,
            encryption_key,
        } => {
            let abs = |p: String| {
                std::path::absolute(&p)
                    .map(|a| a.to_string_lossy().to_string())
                    .unwrap_or(p)
            };
            let s = ctx
                .client
                .add_backup_store(&AddBackupStoreRequest {
                    name,
                    path: abs(path),
                    encryption_key: encryption_key.map(abs),
                })
                .await?;
            if ctx.json() {
                return out_json(&s);
            }
            out(&format!("backup store {} added at {}\n", s.name, s.path))
        }
        BackupStoreCmd::List => {
            let list = ctx.client.list_backup_stores().await?;
            if ctx.json() {
                return out_json(&list);
            }
            let mut t = Table::new(&["NAME", "PATH", "ENCRYPTED"]);
            for s in &list {
                t.row(vec![
                    s.name.clone(),
                    s.path.clone(),
                    if s.encryption_key.is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                ]);
            }
            out(&t.render())
        }
        BackupStoreCmd::Remove { name } => {
            ctx.client.remove_backup_store(&name).await?;
            out(&format!(
                "backup store {name} removed (its files are kept)\n"
            ))
        }
    }
}

fn counts(b: &Backup) -> (u64, u64, u64, u64) {
    b.disks.iter().fold((0, 0, 0, 0), |a, d| {
        (
            a.0 + d.chunks_read,
            a.1 + d.chunks_new,
            a.2 + d.chunks_reused,
            a.3 + d.chunks_zero,
        )
    })
}

fn backup_table(list: &[Backup]) -> String {
    let mut t = Table::new(&[
        "ID",
        "VM",
        "STORE",
        "TIME",
        "CONSISTENCY",
        "SIZE",
        "READ",
        "NEW",
        "STATUS",
    ]);
    for b in list {
        let (read, new, _, _) = counts(b);
        t.row(vec![
            b.id.clone(),
            b.vm.clone(),
            b.store.clone(),
            utc_time(b.started_ms),
            b.consistency.to_string(),
            bytes(b.size_bytes),
            read.to_string(),
            new.to_string(),
            if b.damaged { "DAMAGED" } else { "ok" }.into(),
        ]);
    }
    t.render()
}

fn show(b: &Backup) -> String {
    let mut s = format!(
        "backup {}\n  vm {} (host {}), store {}\n  {} → {} ({} ms), {}{}\n",
        b.id,
        b.vm,
        b.host,
        b.store,
        utc_time(b.started_ms),
        utc_time(b.finished_ms),
        b.finished_ms.saturating_sub(b.started_ms),
        b.consistency,
        if b.damaged { ", DAMAGED" } else { "" }
    );
    let mut t = Table::new(&[
        "DISK", "SIZE", "READ AS", "CHUNKS", "READ", "ZERO", "NEW", "REUSED", "STORED",
    ]);
    for d in &b.disks {
        let how = match &d.read {
            DiskRead::Full { reason } => format!("full ({reason})"),
            DiskRead::Incremental { base, .. } => format!("changed since {base}"),
        };
        t.row(vec![
            d.name.clone(),
            bytes(d.size_bytes),
            how,
            d.chunks.to_string(),
            d.chunks_read.to_string(),
            d.chunks_zero.to_string(),
            d.chunks_new.to_string(),
            d.chunks_reused.to_string(),
            bytes(d.bytes_stored),
        ]);
    }
    s.push_str(&t.render());
    s
}

/// Runs `vdc backup …`.
pub(crate) async fn backup(ctx: &Ctx, cmd: BackupCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        BackupCmd::Run { vm, store, wait } => {
            let task = c.run_backup(&vm, &store).await?;
            finish_task(ctx, task, wait).await
        }
        BackupCmd::List { store, vm } => {
            let list = c
                .list_backups(store.store.as_deref(), vm.as_deref())
                .await?;
            if ctx.json() {
                return out_json(&list);
            }
            out(&backup_table(&list))
        }
        BackupCmd::Show { id, store } => {
            let b = c.get_backup(&id, store.store.as_deref()).await?;
            if ctx.json() {
                return out_json(&b);
            }
            out(&show(&b))
        }
        BackupCmd::Restore {
            id,
            store,
            name,
            host,
            datastore,
            disk,
            instant,
            wait,
        } => {
            let req = RestoreRequest {
                store: store.store,
                name,
                host,
                datastore,
                disk,
                instant,
            };
            let task = c.restore_backup(&id, &req).await?;
            finish_task(ctx, task, wait).await
        }
        BackupCmd::Files {
            id,
            path,
            store,
            disk,
            extract,
            to,
        } => {
            if let (Some(file), Some(dir)) = (extract, to) {
                let data = c
                    .backup_file(&id, store.store.as_deref(), disk.as_deref(), &file)
                    .await?;
                let name = std::path::Path::new(&file)
                    .file_name()
                    .ok_or_else(|| CliError::Usage(format!("'{file}' names no file")))?;
                let dest = std::path::Path::new(&dir).join(name);
                std::fs::write(&dest, &data)
                    .map_err(|e| CliError::Io("write the extracted file", e))?;
                return out(&format!("{} ({} bytes)\n", dest.display(), data.len()));
            }
            let path = path.unwrap_or_else(|| "/".into());
            let list = c
                .backup_files(&id, store.store.as_deref(), disk.as_deref(), &path)
                .await?;
            if ctx.json() {
                return out_json(&list);
            }
            let mut t = Table::new(&["NAME", "KIND", "SIZE"]);
            for e in &list {
                t.row(vec![e.name.clone(), e.kind.clone(), e.size.to_string()]);
            }
            out(&t.render())
        }
        BackupCmd::Verify { id, store } => {
            let r = c.verify_backup(&id, store.store.as_deref()).await?;
            if ctx.json() {
                out_json(&r)?;
            } else {
                out(&format!(
                    "backup {}: {} chunk(s) checked, {}\n",
                    r.backup,
                    r.chunks_checked,
                    if r.damaged {
                        format!("DAMAGED: {}", r.damaged_chunks.join(", "))
                    } else {
                        "all whole".into()
                    }
                ))?;
            }
            if r.damaged {
                return Err(CliError::Usage(format!(
                    "backup {} is damaged; restore another backup",
                    r.backup
                )));
            }
            Ok(())
        }
        BackupCmd::Remove { id, store } => {
            c.remove_backup(&id, store.store.as_deref()).await?;
            out(&format!("backup {id} removed\n"))
        }
        BackupCmd::Prune {
            store,
            vm,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
        } => {
            let req = PruneRequest {
                vm,
                retention: Retention {
                    keep_last,
                    keep_hourly,
                    keep_daily,
                    keep_weekly,
                    keep_monthly,
                },
            };
            let r = c.prune_backups(&store, &req).await?;
            if ctx.json() {
                return out_json(&r);
            }
            out(&format!(
                "{} backup(s) removed{}\n",
                r.removed.len(),
                if r.removed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.removed.join(", "))
                }
            ))
        }
        BackupCmd::Gc { store } => {
            let r = c.gc_backup_store(&store).await?;
            if ctx.json() {
                return out_json(&r);
            }
            out(&format!(
                "{} chunk(s) removed ({}), {} in use, {} kept for running backups\n",
                r.chunks_removed,
                bytes(r.bytes_removed),
                r.chunks_in_use,
                r.chunks_pending
            ))
        }
        BackupCmd::Sync(a) => crate::backup_sync::sync(ctx, a).await,
    }
}
