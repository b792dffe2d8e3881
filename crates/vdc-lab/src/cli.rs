//! `vdc lab up|status|down`: the command-line face of the lab, embedded by
//! the `vdc` binary as its `lab` subcommand.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::lifecycle::{self, LabSpec, DEFAULT_DATA_ROOT, DEFAULT_STATE_ROOT};
use crate::plan::{DEFAULT_LAB_ID, DEFAULT_PORT};
use crate::state::LabInfo;

/// `vdc lab ...`: a whole cluster on this machine.
#[derive(Debug, Clone, Args)]
pub struct LabArgs {
    /// What to do with the lab.
    #[command(subcommand)]
    pub command: LabCommand,
}

/// The lab's subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum LabCommand {
    /// Start a server and N hosts (agents in network namespaces), import the
    /// guest image and start demo VMs.
    Up(UpArgs),
    /// Show the lab's hosts, processes and addresses.
    Status(StatusArgs),
    /// Stop everything the lab started and remove its namespaces, bridges,
    /// state and data.
    Down(DownArgs),
    /// Fail a host: kill all its processes at once, isolate it from the
    /// network (its datastores stay reachable), or heal it.
    Fail(FailArgs),
}

/// Options of `vdc lab fail`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("fault").args(["kill", "isolate", "heal"])))]
pub struct FailArgs {
    /// The host (e.g. host-2), a member of the control plane (`server-N`,
    /// `etcd-N`: killed, or with `--heal` started again), or a whole site
    /// of a two-site lab (`site-a`, `site-b`; only with --kill).
    pub host: String,
    /// Kill the host's agent and every QEMU and supervisor in its namespace at once.
    #[arg(long)]
    pub kill: bool,
    /// Cut the host's links (its datastores stay reachable).
    #[arg(long)]
    pub isolate: bool,
    /// Restore the links and start a killed agent again.
    #[arg(long)]
    pub heal: bool,
    /// Lab id.
    #[arg(long, default_value = DEFAULT_LAB_ID)]
    pub lab_id: String,
    /// State root the lab was started with.
    #[arg(long, default_value = DEFAULT_STATE_ROOT)]
    pub state_root: PathBuf,
}

/// Options of `vdc lab up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of hosts.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Lab id (1–4 characters a-z0-9; part of interface names).
    #[arg(long, default_value = DEFAULT_LAB_ID)]
    pub lab_id: String,
    /// N of the lab subnet 10.77.N.0/24 (default: 0 for lab "lab", derived
    /// from the id otherwise).
    #[arg(long)]
    pub subnet_index: Option<u8>,
    /// Guest image to import as the template (default: the cached image,
    /// built if missing).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Create no demo VMs.
    #[arg(long)]
    pub no_demo: bool,
    /// Number of demo VMs.
    #[arg(long, default_value_t = 2)]
    pub demo_vms: usize,
    /// Port of the REST API and web page.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Directory for pids, token, logs and agent state.
    #[arg(long, default_value = DEFAULT_STATE_ROOT)]
    pub state_root: PathBuf,
    /// Directory for the server's data and the datastores.
    #[arg(long, default_value = DEFAULT_DATA_ROOT)]
    pub data_root: PathBuf,
    /// Longest wait for each start-up step, seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Only create the network (namespaces, bridges, veths).
    #[arg(long, hide = true)]
    pub net_only: bool,
    /// The server's store: `redb:PATH` or `etcd://HOST:PORT[,...]`
    /// (default: the embedded store in the lab's data directory).
    #[arg(long, conflicts_with = "control_plane")]
    pub store: Option<String>,
    /// Give every host a second network for live migration streams
    /// (`mig0`, 10.78.N.0/24): migrations between hosts travel on it.
    #[arg(long)]
    pub migration_network: bool,
    /// Run N etcd members and N servers (one elected leader) instead of
    /// one server on its embedded store.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub control_plane: Option<u64>,
    /// Number of sites: 2 brings up a second installation (lab `<id>b`,
    /// API port + 1) as site `b`, paired with this one as site `a`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub sites: u8,
}

/// Output format of `vdc lab status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable table.
    Table,
    /// JSON with stable field names.
    Json,
}

/// Options of `vdc lab status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Lab id.
    #[arg(long, default_value = DEFAULT_LAB_ID)]
    pub lab_id: String,
    /// State root the lab was started with.
    #[arg(long, default_value = DEFAULT_STATE_ROOT)]
    pub state_root: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Options of `vdc lab down`.
#[derive(Debug, Clone, Args)]
pub struct DownArgs {
    /// Lab id.
    #[arg(long, default_value = DEFAULT_LAB_ID)]
    pub lab_id: String,
    /// State root the lab was started with.
    #[arg(long, default_value = DEFAULT_STATE_ROOT)]
    pub state_root: PathBuf,
}

/// Runs `vdc lab ...` with the current executable as the `vdc` binary.
pub async fn run(args: LabArgs) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up(a) => {
            let vdc = std::env::current_exe()?;
            let sites = a.sites;
            let spec = LabSpec {
                lab_id: a.lab_id,
                hosts: a.hosts,
                subnet_index: a.subnet_index,
                state_root: a.state_root,
                data_root: a.data_root,
                image: a.image,
                import_template: true,
                demo_vms: if a.no_demo { 0 } else { a.demo_vms },
                port: a.port,
                vdc_binary: vdc,
                net_only: a.net_only,
                step_timeout: std::time::Duration::from_secs(a.timeout.max(1)),
                store: a.store,
                migration_network: a.migration_network,
                control_plane: a.control_plane.unwrap_or(0) as usize,
                site_name: (sites > 1).then(|| crate::sites::SITE_NAMES[0].to_string()),
            };
            if sites > 1 {
                return up_two_sites(spec).await;
            }
            eprintln!(
                "starting lab '{}' with {} host(s)...",
                spec.lab_id, spec.hosts
            );
            let info = lifecycle::up(&spec).await?;
            print!("{}", tour(&info, spec.demo_vms, spec.net_only));
        }
        LabCommand::Status(a) => {
            let mut info = lifecycle::status(&a.lab_id, &a.state_root)?;
            if !info.control_plane.is_empty() {
                // Which server leads: any live server answers.
                if let Ok(c) = lifecycle::client(&info) {
                    info.leader = c
                        .control_plane()
                        .await
                        .ok()
                        .and_then(|s| s.leader.map(|l| l.id));
                }
            }
            let second = crate::sites::second_site_lab_id(&a.lab_id);
            let other = match crate::state::LabState::load(&second, &a.state_root) {
                Ok(Some(_)) => Some(lifecycle::status(&second, &a.state_root)?),
                _ => None,
            };
            let text = match (a.output, &other) {
                (OutputFormat::Json, None) => serde_json::to_string_pretty(&info)? + "\n",
                (OutputFormat::Json, Some(b)) => {
                    serde_json::to_string_pretty(&serde_json::json!({"sites": [&info, b]}))? + "\n"
                }
                (OutputFormat::Table, None) => status_table(&info),
                (OutputFormat::Table, Some(b)) => format!(
                    "site a\n{}\nsite b\n{}",
                    status_table(&info),
                    status_table(b)
                ),
            };
            std::io::stdout().write_all(text.as_bytes())?;
        }
        LabCommand::Fail(a) if a.host.starts_with("server-") || a.host.starts_with("etcd-") => {
            if a.isolate {
                anyhow::bail!("a control-plane member can be killed or healed, not isolated");
            }
            let mut state = crate::state::LabState::load(&a.lab_id, &a.state_root)?
                .ok_or_else(|| crate::LabError::NotUp(a.lab_id.clone()))?;
            println!(
                "{}",
                crate::control_plane::fail_member(&mut state, &a.host, a.heal)?
            );
        }
        LabCommand::Fail(a) if a.host.starts_with("site-") => {
            let Some(lab) = crate::sites::site_lab_id(&a.lab_id, &a.host) else {
                anyhow::bail!("'{}' names no site; use site-a or site-b", a.host);
            };
            anyhow::ensure!(
                a.kill,
                "a whole site can only be killed (--kill); heal it with 'vdc lab down' and up"
            );
            println!("{}", crate::sites::kill_site(&lab, &a.state_root)?);
        }
        LabCommand::Fail(a) => {
            if !(a.kill || a.isolate || a.heal) {
                anyhow::bail!(
                    "say what to do with host {}: --kill, --isolate or --heal",
                    a.host
                );
            }
            let fault = if a.kill {
                crate::fail::Fault::Kill
            } else if a.isolate {
                crate::fail::Fault::Isolate
            } else {
                crate::fail::Fault::Heal
            };
            println!(
                "{}",
                crate::fail::fail_host(&a.lab_id, &a.state_root, &a.host, fault)?
            );
        }
        LabCommand::Down(a) => {
            let second = crate::sites::second_site_lab_id(&a.lab_id);
            if let Ok(Some(_)) = crate::state::LabState::load(&second, &a.state_root) {
                crate::teardown::down(&second, &a.state_root).await?;
                println!("lab '{second}' (site b) is down");
            }
            crate::teardown::down(&a.lab_id, &a.state_root).await?;
            println!("lab '{}' is down", a.lab_id);
        }
    }
    Ok(())
}

/// `vdc lab up --sites 2` (see [`crate::sites`]).
async fn up_two_sites(a: LabSpec) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.lab_id.len() < crate::plan::MAX_LAB_ID_LEN,
        "with --sites 2 the lab id must be at most {} characters (site b's lab is '<id>b')",
        crate::plan::MAX_LAB_ID_LEN - 1
    );
    let mut b = a.clone();
    b.lab_id = crate::sites::second_site_lab_id(&a.lab_id);
    b.subnet_index = None;
    b.port = a.port.checked_add(1).unwrap_or(a.port - 1);
    b.demo_vms = 0;
    b.site_name = Some(crate::sites::SITE_NAMES[1].to_string());
    eprintln!(
        "starting site a (lab '{}') with {} host(s)...",
        a.lab_id, a.hosts
    );
    let info_a = lifecycle::up(&a).await?;
    eprintln!(
        "starting site b (lab '{}') with {} host(s)...",
        b.lab_id, b.hosts
    );
    let info_b = match lifecycle::up(&b).await {
        Ok(i) => i,
        Err(e) => {
            if let Err(down) = crate::teardown::down(&a.lab_id, &a.state_root).await {
                eprintln!("tearing down site a: {down}");
            }
            return Err(e.into());
        }
    };
    crate::sites::link(&info_a, &info_b)?;
    crate::sites::pair(&info_a, &info_b).await?;
    print!("site a\n{}", tour(&info_a, a.demo_vms, a.net_only));
    print!("site b\n{}", tour(&info_b, 0, b.net_only));
    println!("the sites are paired: 'vdc site list' at either site");
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn pid(p: Option<u32>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
}

/// The `vdc lab status` table.
pub fn status_table(info: &LabInfo) -> String {
    let mut out = format!(
        "lab {}  subnet {}  bridge {}\nserver  {}  pid {}  alive {}\n\n",
        info.lab_id,
        info.subnet,
        info.bridge,
        info.server.url,
        pid(info.server.pid),
        yes_no(info.server.alive)
    );
    if !info.control_plane.is_empty() {
        out += &format!(
            "control plane  leader {}\n{:<10} {:<24} {:>8}  {}\n",
            info.leader.as_deref().unwrap_or("(none answered)"),
            "MEMBER",
            "URL",
            "PID",
            "ALIVE"
        );
        for m in &info.control_plane {
            out += &format!(
                "{:<10} {:<24} {:>8}  {}\n",
                m.name,
                m.url,
                pid(m.pid),
                yes_no(m.alive)
            );
        }
        out += "\n";
    }
    out += &format!(
        "{:<10} {:<16} {:<14} {:>8}  {}\n",
        "HOST", "NETNS", "ADDRESS", "AGENT", "ALIVE"
    );
    for h in &info.hosts {
        out += &format!(
            "{:<10} {:<16} {:<14} {:>8}  {}\n",
            h.name,
            h.netns,
            h.address,
            pid(h.agent_pid),
            yes_no(h.agent_alive)
        );
    }
    out
}

/// The short tour printed after `vdc lab up`.
pub fn tour(info: &LabInfo, demo_vms: usize, net_only: bool) -> String {
    let token = info.token_file.display();
    let down = if info.lab_id == DEFAULT_LAB_ID {
        "vdc lab down".to_string()
    } else {
        format!("vdc lab down --lab-id {}", info.lab_id)
    };
    let mut out = format!(
        "\nlab '{}' is up: {} host(s) on {} (bridge {})\n",
        info.lab_id,
        info.hosts.len(),
        info.subnet,
        info.bridge
    );
    for h in &info.hosts {
        out += &format!("  {:<8} {:<14} netns {}\n", h.name, h.address, h.netns);
    }
    if net_only {
        out += &format!("\nnetwork only (no server, no agents). Remove it with: {down}\n");
        return out;
    }
    // With several servers: the first for the browser, all for the CLI.
    let first = info.api_url.split(',').next().unwrap_or(&info.api_url);
    out += &format!(
        "\nAPI      {first}/api/v1\nweb page {first}/\ntoken    {token}\n\n\
         Try:\n  export VDC_URL={api} VDC_TOKEN_FILE={token}\n  vdc host list\n  vdc vm list\n",
        api = info.api_url
    );
    if demo_vms > 0 {
        out += "  vdc vm console demo-1\n";
    }
    out += &format!(
        "  curl -H \"Authorization: Bearer $(cat {token})\" {}/api/v1/vms\n  \
         vdc lab status\n\nWhen done: {down}\n",
        first
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(Subcommand)]
    enum Top {
        Lab(LabArgs),
    }

    fn parse(args: &[&str]) -> LabCommand {
        let mut all = vec!["vdc", "lab"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).expect("parses").cmd {
            Top::Lab(l) => l.command,
        }
    }

    #[test]
    fn up_defaults_follow_the_contract() {
        let LabCommand::Up(a) = parse(&["up"]) else {
            panic!("not up")
        };
        assert_eq!(a.hosts, 3);
        assert_eq!(a.lab_id, "lab");
        assert_eq!(a.port, 8500);
        assert_eq!(a.demo_vms, 2);
        assert!(!a.no_demo && !a.net_only);
        assert_eq!(a.state_root, PathBuf::from("/run/vdc"));
        assert_eq!(a.data_root, PathBuf::from("/var/lib/vdc"));
    }

    #[test]
    fn status_and_down_options_parse() {
        let LabCommand::Status(s) = parse(&["status", "-o", "json", "--lab-id", "t1"]) else {
            panic!("not status")
        };
        assert_eq!(s.output, OutputFormat::Json);
        assert_eq!(s.lab_id, "t1");
        let LabCommand::Down(d) = parse(&["down"]) else {
            panic!("not down")
        };
        assert_eq!(d.lab_id, "lab");
    }

    #[test]
    fn tour_names_the_url_token_and_teardown() {
        let dir = std::path::Path::new("/s");
        let plan = crate::plan::LabPlan::new("lab", 2, 0, 8500, dir, dir).expect("plan");
        let info = crate::state::LabState::from_plan(&plan, false).info();
        let t = tour(&info, 2, false);
        assert!(t.contains("export VDC_URL=http://127.0.0.1:8500 VDC_TOKEN_FILE=/s/lab/token"));
        assert!(t.contains("vdc vm console demo-1"));
        assert!(t.contains("When done: vdc lab down\n"));
        let table = status_table(&info);
        assert!(
            table.contains("host-2     vdc-lab-h2       10.77.0.12"),
            "{table}"
        );
    }
}
