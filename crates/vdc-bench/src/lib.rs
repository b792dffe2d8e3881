//! vdc's benchmarks, each side by side with a peer in one run, on the same
//! guest image: `vdc bench migrate` moves a running guest with vdc's live
//! migration and with libvirt's `virsh migrate --live`, under the same
//! workloads, and prints medians and ratios (see [`migrate`]); `vdc bench
//! ha` kills a host running several VMs, again and again, and times their
//! restart on the other host, detection apart (see [`ha`]); `vdc bench
//! backup` backs up one disk image with vdc, restic and borg (see
//! [`backup`]); `vdc bench control-plane` loads one server with simulated hosts and VMs (see
//! [`control_plane`], [`sim`]).

pub mod backup;
pub mod control_plane;
pub mod error;
pub mod guest;
pub mod ha;
pub mod ha_report;
pub mod libvirt;
pub mod migrate;
pub mod qemu_pair;
pub mod report;
pub mod sim;
pub mod tls_cost;
pub mod vdc_side;

use clap::{Args, Subcommand};

pub use error::BenchError;

/// `vdc bench ...`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Live migration, vdc against libvirt (`virsh migrate --live`), in a
    /// lab of its own (needs root and libvirt: scripts/setup.sh
    /// --bench-deps).
    Migrate(migrate::MigrateArgs),
    /// HA restart time: a host with several VMs killed, each VM's time to
    /// run again on the other host, detection apart, in a lab of its own
    /// (needs root).
    Ha(ha::HaArgs),
    /// The control plane at scale: one server, simulated hosts and VMs
    /// (no QEMU), API latency under load, report ingestion, HA planning
    /// time and server memory.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Backup, vdc against restic and borg, on the same disk image: full,
    /// incremental after a small change, restore; throughputs, store
    /// sizes and ratios (needs root for dropping the page cache, and
    /// restic and borg: scripts/setup.sh --test-deps).
    Backup(backup::BackupBenchArgs),
}

/// Runs a benchmark; `json` prints the figures as JSON instead of tables.
pub async fn run(args: BenchArgs, json: bool) -> Result<(), BenchError> {
    match args.command {
        BenchCommand::Migrate(a) => migrate::run(a, json).await,
        BenchCommand::Ha(a) => ha::run(a, json).await,
        BenchCommand::ControlPlane(a) => control_plane::run(a, json).await,
        BenchCommand::Backup(a) => backup::run(a, json).await,
    }
}
