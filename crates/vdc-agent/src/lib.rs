//! `vdc agent`: the per-host daemon that runs a host's VMs.
//!
//! The agent launches and supervises QEMU processes (through `vdc-qemu`),
//! creates disks and VM directories on datastores (`vdc-disk`) and tap
//! devices on bridges (`vdc-net`), and reports the host and its VMs to the
//! server every second. It decides nothing cluster-wide: the server tells
//! it what to run over a small HTTP API (`/agent/v1`, see
//! `docs/contracts.md`).
//!
//! # Running
//! 1. [`AgentArgs::into_config`] turns the flags into an [`AgentConfig`].
//! 2. [`run`] checks the datastores, probes QEMU, re-attaches to the VMs
//!    still running from a previous agent process (QEMU runs detached, so
//!    killing the agent never stops a VM), starts the reporter and serves
//!    the API until the server fails.
//!
//! # Modules
//! - `agent`: the agent's state (datastores, VM slots) and host report
//! - `power`: start, shutdown, power off, reset, pause, resume, suspend
//! - `prelaunch`: a failover start prepares QEMU (vCPUs stopped) while the
//!   lease is awaited
//! - `migration`: live migration jobs (destination, source) and the pure
//!   convergence policy
//! - `provision`: VM directories and disks, destroy, image import
//! - `recover`: re-attach to running VMs on agent start
//! - `supervisor`: one task per running VM (events, guest, stats) and the
//!   VM's supervisor process beside QEMU (lease, fencing; `vdc-supervisor`)
//! - `state`: the pure power state machine
//! - `console`: the serial console (input over the console socket)
//! - `console_log`: the console log, rotated, read by offset
//! - `api`: the HTTP routes, token check and JSON errors
//! - `reporter`: the heartbeat to the server
//! - `heartbeat`: the datastore heartbeat (HA's second signal)
//! - `isolation`: the isolation response of a cut-off host
//! - `lease_watch`: watching other hosts' VM leases before a failover
//! - `vm_monitor`: VM monitoring (reset of a hung guest)
//! - `hoststats`: `/proc` measurements
//! - `tls`: the host's certificate of the cluster CA (migration stream)

#![warn(missing_docs)]

mod agent;
mod api;
mod backup;
mod config;
mod console;
mod console_log;
mod error;
mod ha_settings;
mod heartbeat;
mod hoststats;
mod images;
mod instant;
mod instant_clone;
mod isolation;
mod jobs;
mod lease_watch;
mod migration;
mod nics;
mod ova;
mod ova_read;
mod port_rules;
mod power;
mod prelaunch;
mod provision;
mod qemu_nbd;
mod recover;
mod replica;
mod reporter;
mod restore;
mod slot;
mod snapshot;
pub mod state;
mod storage;
mod storage_chain;
mod supervisor;
mod switches;
mod templates;
mod tls;
mod transfer;
mod transfer_chain;
pub mod vm_monitor;

pub use config::{AccelArg, AgentArgs, AgentConfig, DatastoreConfig, Isolation, Supervision};
pub use error::AgentError;
pub use vm_monitor::VmMonitoring;

/// Runs the agent: binds `config.listen` and serves until the API server
/// fails. See [`run_with_listener`].
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: config.listen,
            source,
        })?;
    run_with_listener(config, listener).await
}

/// Runs the agent on an already bound listener (tests bind port 0 and read
/// the address back; `config.listen` should name the same address, it is
/// what the agent reports as its URL).
pub async fn run_with_listener(
    config: AgentConfig,
    listener: tokio::net::TcpListener,
) -> Result<(), AgentError> {
    let agent = agent::Agent::new(config).await?;
    tracing::info!(
        host = %agent.config.name,
        agent_id = %agent.agent_id,
        accelerator = agent.accelerator.as_str(),
        qemu = %agent.qemu_version,
        url = %agent.agent_url(),
        "agent starting"
    );
    agent.recover().await;
    heartbeat::start(
        &agent.config.name,
        agent.started_ms,
        agent
            .config
            .datastores
            .iter()
            .filter(|d| d.shared)
            .map(|d| (d.name.clone(), d.path.clone()))
            .collect(),
    );
    if let Some(m) = agent.config.vm_monitoring {
        tokio::spawn(vm_monitor::run(agent.clone(), m));
    }
    tokio::spawn(lease_watch::run(agent.clone()));
    tokio::spawn(reporter::run(agent.clone()));
    tokio::spawn(switches::run(agent.clone()));
    axum::serve(listener, api::router(agent))
        .await
        .map_err(AgentError::Serve)
}
