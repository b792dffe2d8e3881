//! The client verbs: each one calls the REST API through [`Client`] and
//! prints the answer as a table or as the API's own JSON.
//!
//! Operations that start a task wait for it unless `--no-wait` is given
//! (see [`crate::wait`]); with `-o json` a waited VM operation prints the VM
//! as it is after the task, other waited operations print the task.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use vdc_client::Client;
use vdc_types::api::{CreateTemplateRequest, Template};
use vdc_types::names::validate_name;
use vdc_types::{now_ms, Datastore, DatastoreKind, DiskCacheMode, Event, Host, Network, Task};

use crate::cli::{
    Command, DatastoreCmd, EventsArgs, HostCmd, NetworkCmd, NetworkCreateArgs, Output, TaskCmd,
    TemplateCmd, TemplateImportArgs, WaitArgs,
};
use crate::error::CliError;
use crate::format::{age, bytes, check_cidr, key_values, mib, or_dash, utc_time, Table};
use crate::vm_commands::vm;
use crate::wait::{state_word, wait_task};

/// What every client verb needs: the API client and the output format.
pub struct Ctx {
    /// REST API client.
    pub client: Client,
    /// Output format.
    pub output: Output,
}

impl Ctx {
    /// Whether JSON output was asked for.
    pub(crate) fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// Runs one client verb. `server`, `agent`, `lab` and `bench` are handled by the
/// caller and never reach here.
pub async fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    match command {
        Command::Host(HostCmd::List) => host_list(ctx).await,
        Command::Host(HostCmd::Show { name }) => host_show(ctx, &name).await,
        Command::Host(HostCmd::Add {
            name,
            credential_file,
            replace,
        }) => crate::join::host_add(ctx, &name, credential_file.as_deref(), replace).await,
        Command::Host(HostCmd::Agents) => crate::join::host_agents(ctx).await,
        Command::Host(HostCmd::CpuBaseline) => crate::maintenance::cpu_baseline(ctx).await,
        Command::Host(HostCmd::Maintenance { action, name, wait }) => {
            crate::maintenance::host_maintenance(ctx, action, &name, wait).await
        }
        Command::Ha(crate::cli::HaCmd::Status) => crate::ha::ha_status(ctx).await,
        Command::Ha(crate::cli::HaCmd::Set {
            tolerate_host_failures,
        }) => crate::ha::ha_set(ctx, tolerate_host_failures).await,
        Command::Ha(crate::cli::HaCmd::Group(cmd)) => crate::ha_groups::ha_group(ctx, cmd).await,
        Command::Alarm(cmd) => crate::ha_groups::alarm(ctx, cmd).await,
        Command::Backup(cmd) => crate::backup::backup(ctx, cmd).await,
        Command::BackupStore(cmd) => crate::backup::backup_store(ctx, cmd).await,
        Command::BackupJob(cmd) => crate::backup::backup_job(ctx, cmd).await,
        Command::Migration(cmd) => crate::migration_tls::run(ctx, cmd).await,
        Command::Datastore(DatastoreCmd::List) => datastore_list(ctx).await,
        Command::Network(NetworkCmd::List) => network_list(ctx).await,
        Command::Network(NetworkCmd::Create(a)) => network_create(ctx, a).await,
        Command::Network(NetworkCmd::More(c)) => crate::switches::network_more(ctx, c).await,
        Command::Switch(c) => crate::switches::switch(ctx, c).await,
        Command::Plan(c) => crate::plan::plan(ctx, c).await,
        Command::Site(c) => crate::site::site(ctx, c).await,
        Command::Replication(c) => crate::replication::replication(ctx, c).await,
        Command::Replica(c) => crate::replication::replica(ctx, c).await,
        Command::Template(TemplateCmd::List) => template_list(ctx).await,
        Command::Template(TemplateCmd::Import(a)) => template_import(ctx, a).await,
        Command::Template(TemplateCmd::Show { name }) => {
            crate::clone_cli::template_show(ctx, &name).await
        }
        Command::Template(TemplateCmd::Delete { name }) => {
            crate::clone_cli::template_delete(ctx, &name).await
        }
        Command::Vm(cmd) => vm(ctx, cmd).await,
        Command::Task(cmd) => task(ctx, cmd).await,
        Command::Events(a) => events(ctx, a).await,
        Command::Version => version(ctx).await,
        Command::Server(_)
        | Command::Agent(_)
        | Command::Lab(_)
        | Command::Bench(_)
        | Command::VmSupervisor(_) => Err(CliError::Usage(
            "server, agent, lab and vm-supervisor are not client verbs".to_string(),
        )),
    }
}

/// Writes `text` to standard output.
pub fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .map_err(|e| CliError::Io("write to standard output", e))
}

/// Prints `value` as pretty JSON followed by a newline.
pub fn out_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(CliError::Json)?;
    out(&format!("{text}\n"))
}

/// The API's word for a serde enum value (`connected`, `kvm`…).
pub(crate) fn word<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), CliError> {
    validate_name(kind, name).map_err(CliError::Usage)
}

// ---- hosts, datastores, networks, templates ----

async fn host_list(ctx: &Ctx) -> Result<(), CliError> {
    let mut hosts = ctx.client.list_hosts().await?;
    if ctx.json() {
        return out_json(&hosts);
    }
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    out(&host_table(&hosts))
}

/// `host list` as a table.
pub fn host_table(hosts: &[Host]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "MAINTENANCE",
        "ADDRESS",
        "ACCEL",
        "CPUS",
        "MEMORY",
        "FREE",
        "VMS",
        "CPU BASELINE",
        "CERT-EXPIRES",
    ]);
    let now = now_ms();
    for h in hosts {
        t.row(vec![
            h.name.clone(),
            word(&h.state),
            h.maintenance.map_or("-", |m| m.as_str()).to_string(),
            h.address.clone(),
            h.accelerator.as_str().to_string(),
            h.cpus.to_string(),
            mib(h.memory_mib),
            mib(h.memory_free_mib),
            h.vm_count.to_string(),
            cpu_fit(h.cpu_baseline.as_ref()),
            crate::migration_tls::expiry(h.tls.as_ref(), now),
        ]);
    }
    t.render()
}

/// A host's CPU baseline cell: `meets`, `emulated`, `lacks f1, f2`, or `-`.
pub fn cpu_fit(fit: Option<&vdc_types::HostCpuFit>) -> String {
    match fit {
        None => "-".into(),
        Some(f) if !f.meets => format!("lacks {}", f.missing_flags.join(", ")),
        Some(f) if f.emulated => "emulated".into(),
        Some(_) => "meets".into(),
    }
}

async fn host_show(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let h = ctx.client.get_host(name).await?;
    if ctx.json() {
        return out_json(&h);
    }
    out(&key_values(&[
        ("name", h.name.clone()),
        ("state", word(&h.state)),
        (
            "maintenance",
            h.maintenance.map_or("-", |m| m.as_str()).to_string(),
        ),
        ("address", h.address.clone()),
        (
            "migration network",
            h.migration_address.clone().unwrap_or_else(|| "-".into()),
        ),
        ("agent", h.agent_url.clone()),
        ("accelerator", h.accelerator.as_str().to_string()),
        ("qemu", h.qemu_version.clone()),
        ("cpus", format!("{} ({:.0}% used)", h.cpus, h.cpu_percent)),
        (
            "memory",
            format!("{} ({} free)", mib(h.memory_mib), mib(h.memory_free_mib)),
        ),
        ("vms", h.vm_count.to_string()),
        ("datastores", h.datastores.join(", ")),
        ("switches", crate::switches::host_switches(&h.switches)),
        (
            "cpu baseline",
            h.cpu_baseline
                .as_ref()
                .map_or("not reported".to_string(), |f| f.reason.clone()),
        ),
        (
            "migration certificate",
            crate::migration_tls::certificate_text(h.tls.as_ref(), now_ms()),
        ),
        (
            "last seen",
            format!("{} ago", age(h.last_seen_ms, now_ms())),
        ),
    ]))
}

async fn datastore_list(ctx: &Ctx) -> Result<(), CliError> {
    let mut ds = ctx.client.list_datastores().await?;
    if ctx.json() {
        return out_json(&ds);
    }
    ds.sort_by(|a, b| a.name.cmp(&b.name));
    out(&datastore_table(&ds))
}

/// `datastore list` as a table.
pub fn datastore_table(ds: &[Datastore]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "KIND",
        "HOST",
        "PATH",
        "CAPACITY",
        "FREE",
        "CACHE",
        "DIRECT-IO",
    ]);
    for d in ds {
        let (kind, host) = match &d.kind {
            DatastoreKind::Shared => ("shared", "-".to_string()),
            DatastoreKind::Local { host } => ("local", host.clone()),
        };
        t.row(vec![
            d.name.clone(),
            kind.to_string(),
            host,
            d.path.clone(),
            bytes(d.capacity_bytes),
            bytes(d.free_bytes),
            d.cache_mode.to_string(),
            match (&d.cache_mode, &d.cache_reason) {
                (DiskCacheMode::None, _) => "yes".to_string(),
                (_, Some(reason)) => format!("no: {reason}"),
                (_, None) => "no".to_string(),
            },
        ]);
    }
    t.render()
}

async fn network_list(ctx: &Ctx) -> Result<(), CliError> {
    let mut nets = ctx.client.list_networks().await?;
    if ctx.json() {
        return out_json(&nets);
    }
    nets.sort_by(|a, b| a.name.cmp(&b.name));
    out(&network_table(&nets))
}

/// `network list` as a table.
pub fn network_table(nets: &[Network]) -> String {
    let mut t = Table::new(&[
        "NAME", "SWITCH", "BRIDGE", "VLAN", "SHAPING", "SUBNET", "GATEWAY", "POOL",
    ]);
    for n in nets {
        let vlan = n.vlan.map_or("-".to_string(), |v| v.to_string());
        t.row(vec![
            n.name.clone(),
            or_dash(n.switch.as_deref()),
            n.bridge.clone(),
            vlan,
            crate::switches::shaping_cell(n.shaping.as_ref()),
            n.subnet.clone(),
            or_dash(n.gateway.as_deref()),
            format!("{}-{}", n.pool_start, n.pool_end),
        ]);
    }
    t.render()
}

async fn network_create(ctx: &Ctx, a: NetworkCreateArgs) -> Result<(), CliError> {
    check_name("network", &a.name)?;
    check_cidr(&a.subnet).map_err(CliError::Usage)?;
    let (outbound_shaping, security) = crate::switches::network_policy(&a);
    let net = Network {
        outbound_shaping,
        security,
        name: a.name,
        bridge: a.bridge.unwrap_or_default(),
        switch: a.switch,
        vlan: a.vlan,
        shaping: a
            .average_kbit
            .map(|average_kbit| vdc_types::switch::Shaping {
                average_kbit,
                peak_kbit: a.peak_kbit,
                burst_kib: a.burst_kib.unwrap_or_default(),
            }),
        subnet: a.subnet,
        gateway: a.gateway.map(|g| g.to_string()),
        pool_start: a.pool.0,
        pool_end: a.pool.1,
        ..Default::default()
    };
    let created = ctx.client.create_network(&net).await?;
    if ctx.json() {
        return out_json(&created);
    }
    out(&network_table(std::slice::from_ref(&created)))
}

async fn template_list(ctx: &Ctx) -> Result<(), CliError> {
    let mut ts = ctx.client.list_templates().await?;
    if ctx.json() {
        return out_json(&ts);
    }
    ts.sort_by(|a, b| a.name.cmp(&b.name));
    out(&template_table(&ts))
}

/// `template list` as a table.
pub fn template_table(ts: &[Template]) -> String {
    let mut t = Table::new(&["NAME", "DATASTORE", "PATH", "SIZE", "FROM", "CREATED"]);
    for tp in ts {
        t.row(vec![
            tp.name.clone(),
            tp.datastore.clone(),
            tp.path.clone(),
            bytes(tp.size_bytes),
            tp.source_format
                .map(|f| f.to_string())
                .unwrap_or_else(|| "-".into()),
            utc_time(tp.created_ms),
        ]);
    }
    t.render()
}

async fn template_import(ctx: &Ctx, a: TemplateImportArgs) -> Result<(), CliError> {
    check_name("template", &a.name)?;
    let source =
        std::path::absolute(&a.source).map_err(|e| CliError::Io("resolve the image path", e))?;
    let source = source
        .to_str()
        .ok_or_else(|| {
            CliError::Usage(format!(
                "image path '{}' is not valid UTF-8",
                source.display()
            ))
        })?
        .to_string();
    let req = CreateTemplateRequest {
        name: a.name,
        datastore: a.datastore,
        source,
        format: a.format.map(Into::into),
        host: a.host,
    };
    let task = ctx.client.create_template(&req).await?;
    finish_task(ctx, task, a.wait).await
}

/// Waits for `task` (unless told not to) and prints the task.
pub(crate) async fn finish_task(ctx: &Ctx, task: Task, wait: WaitArgs) -> Result<(), CliError> {
    if wait.no_wait {
        return print_started(ctx, &task);
    }
    let done = wait_task(&ctx.client, &task, wait.timeout()).await?;
    if ctx.json() {
        out_json(&done)
    } else {
        Ok(())
    }
}

pub(crate) fn print_started(ctx: &Ctx, task: &Task) -> Result<(), CliError> {
    if ctx.json() {
        out_json(task)
    } else {
        out(&format!("{}\n", task.id))
    }
}

// ---- VMs ----

async fn task(ctx: &Ctx, cmd: TaskCmd) -> Result<(), CliError> {
    match cmd {
        TaskCmd::List => {
            let mut tasks = ctx.client.list_tasks().await?;
            if ctx.json() {
                return out_json(&tasks);
            }
            tasks.sort_by_key(|t| t.created_ms);
            out(&task_table(&tasks, now_ms()))
        }
        TaskCmd::Show { id } => {
            let t = ctx.client.get_task(&id).await?;
            print_task(ctx, &t)
        }
        TaskCmd::Wait { id, wait_timeout } => {
            let t = ctx.client.get_task(&id).await?;
            let done = wait_task(&ctx.client, &t, Duration::from_secs(wait_timeout)).await?;
            print_task(ctx, &done)
        }
        TaskCmd::Cancel { id } => {
            let t = ctx.client.cancel_task(&id).await?;
            print_task(ctx, &t)
        }
    }
}

fn print_task(ctx: &Ctx, t: &Task) -> Result<(), CliError> {
    if ctx.json() {
        out_json(t)
    } else {
        out(&task_details(t))
    }
}

/// `task list` as a table.
pub fn task_table(tasks: &[Task], now: u64) -> String {
    let mut t = Table::new(&["ID", "KIND", "TARGET", "STATE", "PROGRESS", "AGE", "STAGE"]);
    for task in tasks {
        t.row(vec![
            task.id.clone(),
            task.kind.clone(),
            task.target.clone(),
            state_word(task.state).to_string(),
            format!("{}%", task.progress),
            age(task.created_ms, now),
            or_dash(task.stage.as_deref()),
        ]);
    }
    t.render()
}

/// `task show` as `key: value` lines.
pub fn task_details(t: &Task) -> String {
    let mut pairs: Vec<(&str, String)> = vec![
        ("id", t.id.clone()),
        ("kind", t.kind.clone()),
        ("target", format!("{} {}", t.target_kind, t.target)),
        ("state", state_word(t.state).to_string()),
        ("progress", format!("{}%", t.progress)),
        ("stage", or_dash(t.stage.as_deref())),
    ];
    if let Some(e) = &t.error {
        pairs.push(("error", format!("{} ({})", e.message, word(&e.code))));
    }
    if t.cancel_requested {
        pairs.push(("cancel", "requested".to_string()));
    }
    pairs.push(("created", utc_time(t.created_ms)));
    if let Some(s) = t.started_ms {
        pairs.push(("started", utc_time(s)));
    }
    if let Some(f) = t.finished_ms {
        pairs.push(("finished", utc_time(f)));
    }
    let mut text = key_values(&pairs);
    if let Some(j) = t.journal.as_ref().filter(|j| !j.steps.is_empty()) {
        text.push_str("steps:\n");
        for s in &j.steps {
            text.push_str(&format!("  {}  {}\n", utc_time(s.at_ms), s.step));
        }
    }
    text
}

// ---- events, version ----

async fn events(ctx: &Ctx, a: EventsArgs) -> Result<(), CliError> {
    for t in &a.topics {
        if t.is_empty() || t.contains(',') || t.chars().any(char::is_whitespace) {
            return Err(CliError::Usage(format!(
                "topic pattern '{t}' is not valid; use e.g. 'vm.*' or 'host.connected'"
            )));
        }
    }
    let stream = ctx.client.events(&a.topics).await?;
    tokio::pin!(stream);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            n = stream.next() => n,
        };
        match next {
            None => return Err(CliError::StreamClosed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(ev)) => {
                if ctx.json() {
                    let line = serde_json::to_string(&ev).map_err(CliError::Json)?;
                    out(&format!("{line}\n"))?;
                } else {
                    out(&event_line(&ev))?;
                }
            }
        }
    }
}

/// One event as a line: time, topic, object, message.
pub fn event_line(ev: &Event) -> String {
    format!(
        "{}  {:<20}  {:<16}  {}\n",
        utc_time(ev.time_ms),
        ev.topic,
        ev.object,
        ev.message.replace('\n', " ")
    )
}

async fn version(ctx: &Ctx) -> Result<(), CliError> {
    let client_version = env!("CARGO_PKG_VERSION");
    let server = ctx.client.version().await;
    if ctx.json() {
        let server = server.as_ref().ok();
        return out_json(&serde_json::json!({
            "client": { "version": client_version },
            "server": server,
        }));
    }
    let mut text = format!("client: vdc {client_version}\n");
    match server {
        Ok(v) => text.push_str(&format!("server: vdc {} (api {})\n", v.version, v.api)),
        Err(e) => text.push_str(&format!("server: unknown ({e})\n")),
    }
    out(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_commands::{vm_details, vm_table};
    use vdc_types::{Accelerator, GuestInfo, HostState, Vm, VmAction, VmOperation, VmPowerState};

    fn vm(name: &str, state: VmPowerState, addr: Option<&str>) -> Vm {
        Vm {
            id: format!("id-{name}"),
            name: name.into(),
            state,
            owner: addr.map(|_| "host-1".to_string()),
            target: None,
            operation: None,
            actions: vec![],
            cpus: 2,
            memory_mib: 1536,
            datastore: "shared".into(),
            disks: vec![],
            nics: vec![],
            guest: GuestInfo {
                ready: addr.is_some(),
                address: addr.map(str::to_string),
                ..GuestInfo::default()
            },
            stats: None,
            template: None,
            fenced: None,
            created_ms: 0,
            machine_type: "pc-q35-10.0".into(),
            cpu_model: "Nehalem-v1".into(),
            ha: Default::default(),
        }
    }

    #[test]
    fn task_show_lists_the_journaled_steps() {
        use vdc_types::job::JobKind;
        use vdc_types::{Step, TaskJournal, TaskParams, TaskState, TaskStep};
        let mut journal = TaskJournal::new(TaskParams::VmDelete { vm_id: "x".into() });
        journal.steps = vec![
            TaskStep {
                at_ms: 0,
                step: Step::AddressAllocated {
                    network: "lab".into(),
                    address: "10.0.0.5/24".into(),
                },
            },
            TaskStep {
                at_ms: 1000,
                step: Step::JobSubmitted {
                    host: "host-2".into(),
                    operation_id: "t.0".into(),
                    job: JobKind::Provision,
                },
            },
        ];
        let t = Task {
            id: "t".into(),
            kind: "vm.create".into(),
            target_kind: "vm".into(),
            target: "web-1".into(),
            state: TaskState::Running,
            progress: 10,
            stage: None,
            error: None,
            cancel_requested: false,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            journal: Some(journal),
            migration: None,
        };
        let out = task_details(&t);
        let steps: Vec<&str> = out.lines().skip_while(|l| *l != "steps:").collect();
        assert_eq!(steps.len(), 3, "{out}");
        assert!(
            steps[1].ends_with("address 10.0.0.5/24 allocated on network lab"),
            "{out}"
        );
        assert!(
            steps[2].ends_with("agent job t.0 (provision) started on host-2"),
            "{out}"
        );
    }

    #[test]
    fn vm_table_columns() {
        let out = vm_table(&[
            vm("web-1", VmPowerState::Running, Some("10.77.0.100")),
            vm("db", VmPowerState::Stopped, None),
        ]);
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAME",
                "STATE",
                "OWNER",
                "OPERATION",
                "CPUS",
                "MEMORY",
                "IP",
                "READY"
            ]
        );
        assert_eq!(
            lines[1],
            [
                "web-1",
                "running",
                "host-1",
                "-",
                "2",
                "1.5G",
                "10.77.0.100",
                "yes"
            ]
        );
        assert_eq!(
            lines[2],
            ["db", "stopped", "-", "-", "2", "1.5G", "-", "no"]
        );
    }

    #[test]
    fn host_table_columns() {
        let h = Host {
            switches: vec![],
            name: "host-1".into(),
            address: "10.77.0.11".into(),
            agent_url: "http://10.77.0.11:8600".into(),
            state: HostState::Connected,
            accelerator: Accelerator::Tcg,
            qemu_version: "10.0".into(),
            cpus: 2,
            memory_mib: 4096,
            memory_free_mib: 3000,
            cpu_percent: 3.0,
            vm_count: 1,
            datastores: vec!["shared".into()],
            last_seen_ms: 0,
            maintenance: None,
            cpu_baseline: Some(vdc_types::HostCpuFit {
                meets: false,
                emulated: false,
                missing_flags: vec!["avx2".into(), "fma".into()],
                reason: "CPU lacks flags of Haswell-noTSX-v1: avx2, fma".into(),
            }),
            tls: None,
            migration_address: None,
        };
        let out = host_table(&[h]);
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAME",
                "STATE",
                "MAINTENANCE",
                "ADDRESS",
                "ACCEL",
                "CPUS",
                "MEMORY",
                "FREE",
                "VMS",
                "CPU",
                "BASELINE",
                "CERT-EXPIRES"
            ]
        );
        assert_eq!(
            lines[1],
            [
                "host-1",
                "connected",
                "-",
                "10.77.0.11",
                "tcg",
                "2",
                "4G",
                "2.9G",
                "1",
                "lacks",
                "avx2,",
                "fma",
                "-"
            ]
        );
    }

    #[test]
    fn a_move_in_flight_shows_owner_target_and_operation() {
        let mut v = vm("web-1", VmPowerState::Running, Some("10.77.0.100"));
        v.operation = Some(vdc_types::InFlight {
            operation: VmOperation::Migrating {
                source: "host-1".into(),
                target: "host-2".into(),
            },
            task: Some("t-1".into()),
            since_ms: 0,
        });
        v.target = Some("host-2".into());
        let table = vm_table(std::slice::from_ref(&v));
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .expect("row")
            .split_whitespace()
            .collect();
        assert_eq!(row[2..4], ["host-1", "migrating→host-2"]);
        let text = vm_details(&v, &[], 0);
        for want in [
            "owner:",
            "target:",
            "migrating from host-1 to host-2 (task t-1)",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        v.operation = None;
        v.actions = vec![VmAction::Stop, VmAction::Pause];
        assert!(vm_details(&v, &[], 0)
            .lines()
            .any(|l| l.starts_with("actions:") && l.ends_with("stop, pause")));
    }

    #[test]
    fn vm_details_show_guest_hardware_and_cache() {
        let mut v = vm("web-1", VmPowerState::Running, Some("10.77.0.100"));
        v.disks.push(vdc_types::DiskSpec {
            name: "disk0".into(),
            datastore: "shared".into(),
            path: "web-1/disk0.qcow2".into(),
            size_bytes: 1 << 30,
        });
        let ds = Datastore {
            name: "shared".into(),
            kind: DatastoreKind::Shared,
            path: "/srv/shared".into(),
            capacity_bytes: 0,
            free_bytes: 0,
            cache_mode: DiskCacheMode::None,
            cache_reason: None,
        };
        let text = vm_details(&v, &[ds], 0);
        assert!(text.contains("state:"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("machine:") && l.ends_with("pc-q35-10.0")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("cpu model:") && l.ends_with("Nehalem-v1")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("disk:") && l.contains("cache none")),
            "{text}"
        );
        assert!(text
            .lines()
            .any(|l| l.starts_with("guest address:") && l.ends_with("10.77.0.100")));
        assert!(!text.contains("fenced"), "{text}");
    }

    #[test]
    fn vm_details_show_why_a_vm_was_fenced() {
        let mut v = vm("db-1", VmPowerState::Crashed, None);
        v.fenced = Some("lease not renewed for 7000 ms".into());
        let text = vm_details(&v, &[], 0);
        assert!(
            text.lines()
                .any(|l| l.starts_with("fenced:") && l.ends_with("lease not renewed for 7000 ms")),
            "{text}"
        );
    }

    #[test]
    fn event_lines() {
        let ev = Event {
            seq: 1,
            time_ms: 0,
            topic: "vm.state_changed".into(),
            object: "web-1".into(),
            message: "web-1 is running\non host-1".into(),
            data: serde_json::Value::Null,
        };
        let line = event_line(&ev);
        assert!(line.starts_with("1970-01-01T00:00:00.000Z  vm.state_changed"));
        assert!(line.ends_with("web-1 is running on host-1\n"));
        assert_eq!(line.matches('\n').count(), 1);
    }
}
