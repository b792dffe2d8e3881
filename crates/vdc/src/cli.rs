//! The command tree of `vdc`, declared with clap's derive API.
//!
//! Three subcommands start long-running processes (`server`, `agent`, `lab`)
//! and take their arguments from the crates that implement them; every other
//! subcommand is a verb of the REST API client. The connection flags
//! (`--url`, `--token`) and the output format (`-o`) are global, so they are
//! accepted after any subcommand.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::format::parse_memory_mib;

/// Command line of `vdc`.
#[derive(Debug, Parser)]
#[command(
    name = "vdc",
    version,
    about = "vdc: a virtual datacenter with business continuity built in",
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// URL of the vdc server's REST API [default: http://127.0.0.1:8500].
    #[arg(
        long,
        global = true,
        env = "VDC_URL",
        value_name = "URL",
        help_heading = "Client options"
    )]
    pub url: Option<String>,
    /// API token (default: read from the file named by VDC_TOKEN_FILE or the
    /// lab's token file).
    #[arg(
        long,
        global = true,
        env = "VDC_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Client options"
    )]
    pub token: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Client options"
    )]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format: `table` (aligned columns for people) or `json` (the API's
/// own objects, for scripts).
///
/// It is the lab's type on purpose: `vdc lab status` declares its own
/// `-o/--output`, and clap hands the value of a global argument to the
/// subcommand (and back) under the same id, so both must have one type.
pub use vdc_lab::cli::OutputFormat as Output;

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (REST API, tasks, placement).
    Server(Box<vdc_api::ServerArgs>),
    /// Run a host's agent (QEMU supervision, heartbeats).
    Agent(Box<vdc_agent::AgentArgs>),
    /// Run a whole cluster on this machine (server + agents in namespaces).
    Lab(Box<vdc_lab::LabArgs>),
    /// Benchmarks side by side with a peer (live migration against libvirt).
    Bench(Box<vdc_bench::BenchArgs>),
    /// The supervisor beside one VM's QEMU (started by the agent).
    #[command(name = "vm-supervisor", hide = true)]
    VmSupervisor(Box<vdc_supervisor::SupervisorArgs>),
    /// Hypervisor hosts.
    #[command(subcommand)]
    Host(HostCmd),
    /// High availability: host states, heartbeats, failover capacity.
    #[command(subcommand)]
    Ha(HaCmd),
    /// Alarms: conditions to see until they clear.
    #[command(subcommand)]
    Alarm(crate::ha_groups::AlarmCmd),
    /// Live migration settings: stream encryption (TLS), the cluster CA.
    #[command(subcommand)]
    Migration(crate::migration_tls::MigrationCmd),
    /// Datastores.
    #[command(subcommand)]
    Datastore(DatastoreCmd),
    /// Networks (port groups).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Virtual switches realized on every host.
    #[command(subcommand)]
    Switch(crate::switches::SwitchCmd),
    /// Recovery plans and DR runs: test, migrate, failover, reprotect, failback.
    #[command(subcommand)]
    Plan(crate::plan::PlanCmd),
    /// Templates VMs are deployed from.
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Backups of VMs: run, list, show, restore, verify, prune, gc.
    #[command(subcommand)]
    Backup(crate::backup::BackupCmd),
    /// Backup stores: deduplicated chunk stores in directories.
    #[command(subcommand, name = "backup-store")]
    BackupStore(crate::backup::BackupStoreCmd),
    /// Backup jobs: VMs backed up on a schedule, then pruned.
    #[command(subcommand, name = "backup-job")]
    BackupJob(crate::backup::BackupJobCmd),
    /// Sites: this installation and the paired ones.
    #[command(subcommand)]
    Site(crate::site::SiteCmd),
    /// Replication of this site's VMs to a paired site.
    #[command(subcommand)]
    Replication(crate::replication::ReplicationCmd),
    /// Replicas of a paired site's VMs kept here, and recovery from them.
    #[command(subcommand)]
    Replica(crate::replication::ReplicaCmd),
    /// Long-running operations.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Stream cluster events until interrupted.
    Events(EventsArgs),
    /// Print the client's and the server's versions.
    Version,
}

/// `vdc host maintenance enter|exit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaintenanceAction {
    /// Evacuate the host and stop new placements on it.
    Enter,
    /// Return the host to placement.
    Exit,
}

/// `vdc host ...`
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// List hosts.
    #[command(alias = "ls")]
    List,
    /// Maintenance mode: `enter` stops new placements on the host and moves
    /// every VM away (a task; each VM it could not move is named with the
    /// reason); `exit` returns the host to placement.
    Maintenance {
        /// `enter` or `exit`.
        action: MaintenanceAction,
        /// Host name.
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show one host.
    Show {
        /// Host name.
        name: String,
    },
    /// Add a host: make the credential its agent joins with (shown once;
    /// start the agent with `--credential-file`).
    Add {
        /// Host name (the agent's `--name`).
        name: String,
        /// Write the credential to this file (mode 0600) instead of
        /// printing it.
        #[arg(long)]
        credential_file: Option<std::path::PathBuf>,
        /// Make a new credential for a host that has one (the old one
        /// stops working at once; restart the agent with the new one).
        #[arg(long)]
        replace: bool,
    },
    /// List added hosts and whether their agents joined.
    Agents,
    /// The cluster's CPU baseline (the CPU model new VMs get) and how each
    /// host's CPU meets it.
    CpuBaseline,
}

/// A VM's HA restart priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HaPriorityArg {
    /// Restarted first.
    High,
    /// The default.
    Medium,
    /// Restarted last.
    Low,
    /// Never restarted elsewhere.
    Disabled,
}

impl From<HaPriorityArg> for vdc_types::ha::HaPriority {
    fn from(a: HaPriorityArg) -> Self {
        match a {
            HaPriorityArg::High => Self::High,
            HaPriorityArg::Medium => Self::Medium,
            HaPriorityArg::Low => Self::Low,
            HaPriorityArg::Disabled => Self::Disabled,
        }
    }
}

/// What an isolated host does with a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationResponseArg {
    /// Keep it running.
    KeepRunning,
    /// Shut the guest down (it restarts elsewhere).
    Shutdown,
    /// Power it off (it restarts elsewhere).
    PowerOff,
}

impl From<IsolationResponseArg> for vdc_types::ha::IsolationResponse {
    fn from(a: IsolationResponseArg) -> Self {
        match a {
            IsolationResponseArg::KeepRunning => Self::KeepRunning,
            IsolationResponseArg::Shutdown => Self::Shutdown,
            IsolationResponseArg::PowerOff => Self::PowerOff,
        }
    }
}

/// `vdc ha ...`
#[derive(Debug, Subcommand)]
pub enum HaCmd {
    /// Show the HA settings, the failover capacity and each host's state
    /// with the ages of its network and datastore heartbeats.
    Status,
    /// Set the admission policy: a create or power-on that would leave the
    /// protected VMs without room after N host failures is refused.
    Set {
        /// Host failures to tolerate (0 turns admission control off).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=63))]
        tolerate_host_failures: u32,
    },
    /// Order groups: which VMs restart after which.
    #[command(subcommand)]
    Group(crate::ha_groups::HaGroupCmd),
}

/// `vdc datastore ...`
#[derive(Debug, Subcommand)]
pub enum DatastoreCmd {
    /// List datastores.
    #[command(alias = "ls")]
    List,
}

pub use crate::clone_cli::{ImageFormatArg, TemplateCmd, TemplateImportArgs};
pub use crate::switches::{NetworkCmd, NetworkCreateArgs};

/// Whether to wait for the task an operation starts.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Print the task and return at once instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// Longest time to wait for the task, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub wait_timeout: u64,
    /// When the VM ends up running, also wait (within --wait-timeout) until
    /// its guest reports ready.
    #[arg(long, conflicts_with = "no_wait")]
    pub wait_ready: bool,
}

impl WaitArgs {
    /// The wait timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.wait_timeout)
    }
}

/// `vdc vm ...`
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM from a template or with a blank disk.
    Create(VmCreateArgs),
    /// Clone a powered-off VM into a new VM (full copy, new MACs, guest
    /// customization).
    Clone(crate::clone_cli::VmCloneArgs),
    /// Make a template of a powered-off VM (convert, or copy with
    /// --keep-vm).
    ToTemplate(crate::clone_cli::VmToTemplateArgs),
    /// Import a disk image or physical disk as a new VM (V2V/P2V).
    ImportDisk(crate::clone_cli::VmImportDiskArgs),
    /// Export a powered-off VM as an OVA.
    Export(crate::clone_cli::VmExportArgs),
    /// Import an OVA (vdc, VMware, VirtualBox) as a new VM.
    Import(crate::clone_cli::VmImportArgs),
    /// List VMs.
    #[command(alias = "ls")]
    List,
    /// Change a VM's HA settings.
    Update {
        /// VM name.
        name: String,
        /// Restart priority after a host failure.
        #[arg(long, value_enum)]
        ha_priority: Option<HaPriorityArg>,
        /// What an isolated host does with the VM.
        #[arg(long, value_enum)]
        isolation_response: Option<IsolationResponseArg>,
        /// HA order group to join.
        #[arg(long, conflicts_with = "no_ha_group")]
        ha_group: Option<String>,
        /// Leave the VM's HA order group.
        #[arg(long)]
        no_ha_group: bool,
    },
    /// Show one VM.
    Show {
        /// VM name.
        name: String,
    },
    /// Power a VM on (or restore it from its suspended state).
    Start {
        /// VM name.
        name: String,
        /// Host to start on (default: placement decides).
        #[arg(long)]
        host: Option<String>,
        /// Waiting behaviour.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Power a VM off at once (pull the plug).
    Stop(VmNameArgs),
    /// Ask the guest to shut down; power off after the timeout.
    Shutdown {
        /// VM name.
        name: String,
        /// Seconds to wait for the guest before powering it off.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=vdc_types::api::MAX_SHUTDOWN_TIMEOUT_S))]
        timeout: Option<u64>,
        /// Waiting behaviour.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Hard-reset a running VM.
    Reset(VmNameArgs),
    /// Stop a VM's vCPUs, keeping it in memory.
    Pause(VmNameArgs),
    /// Save a VM's memory to its datastore and stop its process.
    Suspend(VmNameArgs),
    /// Continue a paused VM or start a suspended one.
    Resume(VmNameArgs),
    /// Move a VM to another host: live while it runs (`vm.migrate` task).
    Migrate {
        /// VM name.
        name: String,
        /// Destination host (default: placement picks one).
        #[arg(long)]
        to: Option<String>,
        /// Move its disks to this datastore (storage migration; with
        /// `--to`, a running VM moves live with its disks to a datastore of
        /// that host, over NBD). A running VM on host-local storage moving
        /// to a host that cannot see it gets a datastore of that host
        /// without this.
        #[arg(long)]
        datastore: Option<String>,
        /// Whether a live migration that does not converge may switch to
        /// post-copy (default: the server's policy). A VM whose link breaks
        /// during post-copy is lost.
        #[arg(long, value_name = "BOOL")]
        allow_postcopy: Option<bool>,
        /// Bandwidth limit of the stream, MiB/s (default: the server's; 0:
        /// unlimited).
        #[arg(long, value_name = "MIB_S")]
        bandwidth: Option<u64>,
        /// Encrypt the stream with TLS (default: the cluster's setting,
        /// `vdc migration settings`).
        #[arg(long, conflicts_with = "no_tls")]
        tls: bool,
        /// Send the stream in plain TCP whatever the cluster's setting.
        #[arg(long)]
        no_tls: bool,
        /// Waiting behaviour (waits for the task by default).
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Snapshots: create, list, revert, delete.
    #[command(subcommand)]
    Snapshot(crate::snapshot::SnapshotCmd),
    /// NICs: list, add, remove (hot plug while the VM runs).
    #[command(subcommand)]
    Nic(crate::nics::NicCmd),
    /// Fork a running VM into a new running VM (resumed, not booted) that
    /// takes its own hostname, MAC and address.
    InstantClone(crate::snapshot::InstantCloneArgs),
    /// Clone a running VM (full by default, or --linked); the clone boots
    /// with its own identity.
    CloneRunning(crate::snapshot::RunningCloneArgs),
    /// Delete a stopped VM and its disks.
    #[command(alias = "rm")]
    Delete {
        /// VM name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
        /// Waiting behaviour.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Attach to a VM's serial console (on a terminal; detach with Ctrl-]),
    /// or print its tail, follow it, or send a line to it.
    ///
    /// On a terminal, with none of --bytes, --follow or --send, the console
    /// is interactive like `virsh console`: keystrokes go to the guest and
    /// its output is shown until Ctrl-] detaches. Otherwise the end of the
    /// console is printed (`--bytes`), followed (`--follow`), or a line is
    /// sent and the output that comes back within `--wait` seconds printed
    /// (`--send`).
    Console {
        /// VM name.
        name: String,
        /// Print this many bytes of the console's end (default 16384).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024 * 1024))]
        bytes: Option<u64>,
        /// Keep printing new console output until interrupted.
        #[arg(short = 'f', long, conflicts_with = "send")]
        follow: bool,
        /// Type TEXT and a newline on the console, then print the output that
        /// arrives within --wait seconds.
        #[arg(long, value_name = "TEXT", conflicts_with = "bytes")]
        send: Option<String>,
        /// Seconds to collect output after --send.
        #[arg(long, value_name = "S", default_value_t = 3, requires = "send",
              value_parser = clap::value_parser!(u64).range(0..=3600))]
        wait: u64,
    },
}

/// A VM operation that only needs the VM's name.
#[derive(Debug, Args)]
pub struct VmNameArgs {
    /// VM name.
    pub name: String,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vdc vm create`.
#[derive(Debug, Args)]
pub struct VmCreateArgs {
    /// VM name: letters, digits, '-', '_', '.'.
    pub name: String,
    /// Template to deploy from (default: a blank disk).
    #[arg(long, short = 't')]
    pub template: Option<String>,
    /// Deploy as a linked clone of the template.
    #[arg(long, requires = "template")]
    pub linked: bool,
    /// Guest customization.
    #[command(flatten)]
    pub custom: crate::clone_cli::CustomizeArgs,
    /// Virtual CPUs.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=vdc_types::api::MAX_CPUS as i64))]
    pub cpus: Option<u32>,
    /// Memory: MiB, or with a unit (256M, 1G, 1.5G).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_mib)]
    pub memory: Option<u64>,
    /// Boot disk size in GiB.
    #[arg(long, value_name = "GIB", value_parser = clap::value_parser!(u64).range(1..=vdc_types::api::MAX_DISK_GIB))]
    pub disk_gib: Option<u64>,
    /// An extra blank data disk of this many GiB (repeatable).
    #[arg(long = "data-disk", value_name = "GIB", value_parser = clap::value_parser!(u64).range(1..=vdc_types::api::MAX_DISK_GIB))]
    pub data_disks: Vec<u64>,
    /// Datastore for the VM's files.
    #[arg(long)]
    pub datastore: Option<String>,
    /// Network of the first NIC.
    #[arg(long)]
    pub network: Option<String>,
    /// Host to run on (default: placement decides).
    #[arg(long)]
    pub host: Option<String>,
    /// Power the VM on once created.
    #[arg(long)]
    pub start: bool,
    /// Restart priority after a host failure (default medium).
    #[arg(long, value_enum)]
    pub ha_priority: Option<HaPriorityArg>,
    /// What an isolated host does with the VM (default keep-running).
    #[arg(long, value_enum)]
    pub isolation_response: Option<IsolationResponseArg>,
    /// HA order group to join.
    #[arg(long)]
    pub ha_group: Option<String>,
    /// Waiting behaviour.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vdc task ...`
#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// List tasks.
    #[command(alias = "ls")]
    List,
    /// Show one task.
    Show {
        /// Task id.
        id: String,
    },
    /// Wait for a task to end; fails if the task fails.
    Wait {
        /// Task id.
        id: String,
        /// Longest time to wait, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        wait_timeout: u64,
    },
    /// Ask a task to stop; it undoes its partial work.
    Cancel {
        /// Task id.
        id: String,
    },
}

/// `vdc events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Topic filter, e.g. `vm.*` or `host.connected` (repeatable; default all).
    #[arg(long = "topic", short = 't', value_name = "PATTERN")]
    pub topics: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn migrate_parses_its_options() {
        let cli = Cli::try_parse_from([
            "vdc",
            "vm",
            "migrate",
            "web-1",
            "--to",
            "host-2",
            "--allow-postcopy",
            "false",
            "--bandwidth",
            "64",
            "--no-tls",
        ])
        .expect("parses");
        match cli.command {
            Command::Vm(VmCmd::Migrate {
                name,
                to,
                datastore,
                allow_postcopy,
                bandwidth,
                tls,
                no_tls,
                ..
            }) => {
                assert_eq!(name, "web-1");
                assert_eq!(to.as_deref(), Some("host-2"));
                assert_eq!(datastore, None);
                assert_eq!(allow_postcopy, Some(false));
                assert_eq!(bandwidth, Some(64));
                assert!(!tls && no_tls);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["vdc", "vm", "migrate", "w", "--tls", "--no-tls"]).is_err(),
            "--tls and --no-tls exclude each other"
        );
        assert!(
            Cli::try_parse_from(["vdc", "migration", "settings", "--encryption", "maybe"]).is_err()
        );
    }

    #[test]
    fn output_is_accepted_after_any_verb() {
        let cli = Cli::try_parse_from(["vdc", "vm", "list", "-o", "json"]).expect("parses");
        assert_eq!(cli.output, Output::Json);
        let cli = Cli::try_parse_from(["vdc", "-o", "json", "host", "show", "h1"]).expect("parses");
        assert_eq!(cli.output, Output::Json);
    }

    #[test]
    fn lab_status_shares_the_output_flag() {
        for args in [
            &["vdc", "lab", "status", "-o", "json"][..],
            &["vdc", "-o", "json", "lab", "status"],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert_eq!(cli.output, Output::Json, "{args:?}");
            match cli.command {
                Command::Lab(lab) => match lab.command {
                    vdc_lab::LabCommand::Status(s) => assert_eq!(s.output, Output::Json),
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }
        let cli = Cli::try_parse_from(["vdc", "lab", "status"]).expect("parses");
        assert_eq!(cli.output, Output::Table);
    }

    #[test]
    fn create_parses_memory_forms() {
        let cli = Cli::try_parse_from([
            "vdc",
            "vm",
            "create",
            "web-1",
            "--template",
            "t",
            "--linked",
            "--memory",
            "1G",
            "--cpus",
            "2",
            "--start",
        ])
        .expect("parses");
        match cli.command {
            Command::Vm(VmCmd::Create(a)) => {
                assert_eq!(a.memory, Some(1024));
                assert_eq!(a.cpus, Some(2));
                assert!(a.linked && a.start);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["vdc", "vm", "create", "a", "--memory", "lots"][..],
            &["vdc", "vm", "create", "a", "--cpus", "0"],
            &["vdc", "vm", "create", "a", "--linked"],
            &[
                "vdc",
                "network",
                "create",
                "n",
                "--bridge",
                "b",
                "--subnet",
                "10.0.0.0/24",
                "--pool",
                "x",
            ],
            &["vdc", "vm", "list", "-o", "yaml"],
        ] {
            let err = Cli::try_parse_from(args).expect_err("must fail");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
