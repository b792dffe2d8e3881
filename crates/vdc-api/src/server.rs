//! `vdc server`: opens the store, starts the control plane and serves the
//! API on every `--listen` address.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::routes::{router, AppState};

/// Flags of `vdc server`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ServerArgs {
    /// Instead of serving: a maintenance command on the server's store.
    #[command(subcommand)]
    pub command: Option<crate::store_url::ServerCommand>,
    /// Address to serve the API on (repeat for several).
    #[arg(long = "listen", default_value = "127.0.0.1:8500")]
    pub listen: Vec<SocketAddr>,
    /// Directory of the server's state (the embedded store, the CA).
    #[arg(long, default_value = "/var/lib/vdc/server")]
    pub data_dir: PathBuf,
    /// Where the cluster state lives: `redb:PATH` (embedded, default
    /// `redb:<data-dir>/state.redb`) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]`.
    #[arg(long, env = "VDC_STORE")]
    pub store: Option<crate::store_url::StoreUrl>,
    /// File holding the administrator's user token (one line, at least 16
    /// characters). Agents use their own credentials (`vdc host add`).
    #[arg(long, required = true)]
    pub token_file: Option<PathBuf>,
    /// Live migrations at once per host, as source or target; more wait as
    /// queued tasks.
    #[arg(long, env = "VDC_MIGRATIONS_PER_HOST", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub migrations_per_host: u64,
    /// Live migrations at once in the cluster; more wait as queued tasks.
    #[arg(long, env = "VDC_MIGRATIONS_PER_CLUSTER", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub migrations_per_cluster: u64,
    /// Bandwidth limit of a live migration's stream, MiB/s (0: unlimited).
    #[arg(long, env = "VDC_MIGRATION_BANDWIDTH_MIB_S", default_value_t = 0)]
    pub migration_bandwidth_mib_s: u64,
    /// Downtime target of a live migration, ms.
    #[arg(long, env = "VDC_MIGRATION_DOWNTIME_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub migration_downtime_ms: u64,
    /// Whether a live migration that does not converge may switch to
    /// post-copy (a VM whose link breaks during post-copy is lost); a
    /// request may say otherwise.
    #[arg(long, env = "VDC_MIGRATION_POSTCOPY", default_value_t = true, action = clap::ArgAction::Set)]
    pub migration_postcopy: bool,
    /// Sets the cluster's live migration encryption at start (`on`: TLS
    /// between the hosts' certificates of the cluster CA); without it the
    /// stored setting stays (`off` on a new cluster). Also `PUT
    /// /api/v1/migration/settings`.
    #[arg(long, env = "VDC_MIGRATION_TLS")]
    pub migration_tls: Option<vdc_types::migration::MigrationEncryption>,
    /// HA: longest silence of a host's reports before it counts as
    /// isolated or failed, milliseconds.
    #[arg(long, default_value_t = vdc_sched::ha::DEFAULT_NETWORK_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub ha_network_timeout_ms: u64,
    /// HA: longest silence of a host's datastore heartbeat before it
    /// counts as failed (with its reports silent too), milliseconds.
    #[arg(long, default_value_t = vdc_sched::ha::DEFAULT_DATASTORE_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub ha_datastore_timeout_ms: u64,
    /// CPU baseline new VMs get: `auto` (the newest QEMU CPU model every
    /// host with hardware virtualization can run; a cluster of emulated
    /// hosts keeps Nehalem-v1) or a model name such as `Haswell-noTSX-v1`.
    #[arg(long, env = "VDC_CPU_BASELINE", default_value = "auto", value_parser = parse_cpu_baseline)]
    pub cpu_baseline: vdc_sched::cpu_baseline::BaselineMode,
    /// HA: do not restart the VMs of failed hosts (states are still judged).
    #[arg(long)]
    pub ha_disabled: bool,
    /// This server's id in the control plane (default: a random one).
    #[arg(long, env = "VDC_SERVER_ID", value_parser = parse_server_id)]
    pub server_id: Option<String>,
    /// Where the other servers reach this one's API, for forwarding
    /// (default: `http://` and the first `--listen` address).
    #[arg(long, env = "VDC_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// On etcd: how long a dead leader holds the role, milliseconds (its
    /// lease's TTL; the leader renews it four times as often).
    #[arg(long, env = "VDC_LEADER_LEASE_MS", default_value_t = 4000, value_parser = clap::value_parser!(u64).range(2000..=60_000))]
    pub leader_lease_ms: u64,
    /// This installation's site name (replication and DR between sites).
    #[arg(long, env = "VDC_SITE_NAME", default_value = vdc_types::site::DEFAULT_SITE_NAME)]
    pub site_name: String,
    /// The URL paired sites call this server at.
    #[arg(long, env = "VDC_SITE_URL")]
    pub site_url: Option<String>,
    /// The address of this server that peer sites' hosts reach: replication
    /// streams from them are relayed there to this site's hosts.
    #[arg(long, env = "VDC_RELAY_ADDRESS")]
    pub relay_address: Option<std::net::IpAddr>,
}

fn parse_server_id(s: &str) -> Result<String, String> {
    vdc_types::names::validate_name("server id", s).map(|_| s.to_string())
}

fn parse_cpu_baseline(s: &str) -> Result<vdc_sched::cpu_baseline::BaselineMode, String> {
    vdc_sched::cpu_baseline::BaselineMode::parse(s)
}

/// Runs the server until the process is stopped.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    if let Some(command) = &args.command {
        return crate::store_url::run_command(command).await;
    }
    let token_file = args
        .token_file
        .clone()
        .context("--token-file is required")?;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read token file {}", token_file.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(
        token.len() >= 16,
        "the token in {} is shorter than 16 characters",
        token_file.display()
    );
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| crate::store_url::StoreUrl::default_for(&args.data_dir));
    // The embedded store is one process's file: its server is the only
    // one and leads at once. On etcd the servers elect a leader.
    let (kind, single) = match &store_url {
        crate::store_url::StoreUrl::Redb(_) => ("redb", true),
        crate::store_url::StoreUrl::Etcd(_) => ("etcd", false),
    };
    let store = store_url
        .open()
        .await
        .context("cannot open the cluster store")?;
    let ca = crate::tls::CaState::open(&args.data_dir)
        .await
        .context("cannot open or make the cluster CA")?;
    let id = args
        .server_id
        .clone()
        .unwrap_or_else(|| format!("server-{:08x}", rand::random::<u32>()));
    let url = match (&args.advertise_url, args.listen.first()) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(addr)) => format!("http://{addr}"),
        (None, None) => anyhow::bail!("give --listen or --advertise-url"),
    };
    let cp = vdc_control::control_plane::ControlPlane::new(&id, &url, kind);
    let state = AppState::open_in(store, &token, cp, single)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the control plane: {e}"))?
        .with_ca(ca);
    if let Some(encryption) = args.migration_tls {
        state
            .cluster
            .set_migration_cluster_settings(&vdc_types::migration::SetMigrationSettingsRequest {
                encryption,
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot set the migration encryption: {e}"))?;
    }
    let defaults = vdc_control::migration::MigrationSettings::default();
    state
        .cluster
        .set_migration_settings(vdc_control::migration::MigrationSettings {
            policy: vdc_types::migration::MigrationPolicy {
                max_bandwidth_mib_s: args.migration_bandwidth_mib_s,
                downtime_limit_ms: args.migration_downtime_ms,
                max_downtime_limit_ms: defaults
                    .policy
                    .max_downtime_limit_ms
                    .max(args.migration_downtime_ms),
                allow_postcopy: args.migration_postcopy,
                ..defaults.policy
            },
            per_host: args.migrations_per_host as usize,
            per_cluster: args.migrations_per_cluster as usize,
        });
    state
        .cluster
        .set_cpu_baseline_mode(args.cpu_baseline.clone());
    state.cluster.configure_ha(vdc_control::ha::HaSettings {
        enabled: !args.ha_disabled,
        timeouts: vdc_sched::ha::HeartbeatTimeouts {
            network: std::time::Duration::from_millis(args.ha_network_timeout_ms),
            datastore: std::time::Duration::from_millis(args.ha_datastore_timeout_ms),
        },
    });
    vdc_types::names::validate_name("site", &args.site_name)
        .map_err(|e| anyhow::anyhow!("--site-name: {e}"))?;
    state
        .cluster
        .set_local_site(&args.site_name, args.site_url.clone());
    state.cluster.set_relay_address(args.relay_address);
    if single {
        state.cluster.spawn_monitor();
    } else {
        let cluster = state.cluster.clone();
        let ttl = std::time::Duration::from_millis(args.leader_lease_ms);
        tokio::spawn(async move {
            if let Err(e) = cluster.run_control_plane(ttl).await {
                tracing::error!(error = %e, "cannot take the lead; exiting");
                std::process::exit(vdc_control::control_plane::LOST_LEADERSHIP_EXIT);
            }
        });
    }
    let app = router(state);
    let mut servers = Vec::new();
    for addr in &args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, "API listening");
        let app = app.clone();
        servers.push(tokio::spawn(
            async move { axum::serve(listener, app).await },
        ));
    }
    for s in servers {
        s.await
            .context("server task failed")?
            .context("server failed")?;
    }
    Ok(())
}
