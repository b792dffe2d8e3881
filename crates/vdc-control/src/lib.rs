//! The vdc control plane: cluster state, tasks, events and the orchestration
//! of VM operations across hosts.
//!
//! The control plane never touches a QEMU process: it decides (with
//! `vdc-sched`), records (in the [`Store`]) and asks agents to act (over
//! their HTTP API). Agents report every second; [`Cluster::ingest_report`]
//! folds those reports into the VM records, and a monitor marks hosts whose
//! reports stop as disconnected.
//!
//! Layout of the store:
//!
//! | key | value |
//! |---|---|
//! | `/hosts/<name>` | [`HostRecord`] |
//! | `/datastores/<name>` | [`vdc_types::Datastore`] |
//! | `/networks/<name>` | [`vdc_types::Network`] |
//! | `/templates/<name>` | [`vdc_types::api::Template`] |
//! | `/vms/<name>` | [`VmRecord`] (versioned, see [`record`]) |
//! | `/ipam/<network>/<address>` | name of the VM holding the address |
//! | `/tasks/<id>` | [`vdc_types::Task`], with its journal |
//! | `/events/<seq>` | [`vdc_types::Event`] |

pub mod agents;
pub mod answers;
pub mod backup;
pub mod clones;
mod console;
pub mod control_plane;
pub mod cpu_baseline;
pub mod dr;
pub mod events;
pub mod fence;
pub mod ha;
mod hosts;
mod imports;
pub mod ipam;
mod jobs;
pub mod journal;
pub mod leader;
pub mod lifecycle;
pub mod maintenance;
pub mod migration;
mod moves;
mod networks;
mod nics;
mod ova;
pub mod ownership;
pub mod record;
pub mod replication;
pub mod resume;
pub mod sites;
mod snapshots;
pub mod switches;
pub mod tasks;
mod template_vm;
mod templates;
mod undo;
pub mod vm_index;
mod vms;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use vdc_store::{Store, StoreError};
use vdc_types::agent::HostReport;
use vdc_types::{Accelerator, ApiError, UnixMillis};

pub use agents::AgentClient;
pub use console::ConsoleRange;
pub use events::EventBus;
pub use record::VmRecord;
pub use tasks::{TaskCtx, TaskEngine};

/// Monitor ticks (500 ms each) between two looks for VM operations whose
/// task ended without releasing them.
const ORPHAN_SWEEP_TICKS: u64 = 20;

/// A host stops being "connected" when no report came for this long.
pub const HOST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A host as recorded in the store (what changes rarely).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Name.
    pub name: String,
    /// Management address.
    pub address: String,
    /// Agent API base URL.
    pub agent_url: String,
    /// Accelerator.
    pub accelerator: Accelerator,
    /// QEMU version.
    pub qemu_version: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Datastores reached.
    pub datastores: Vec<String>,
    /// Last report time.
    pub last_seen_ms: UnixMillis,
}

/// Live data of a connected host (memory only).
pub(crate) struct HostLive {
    pub report: HostReport,
    pub seen: Instant,
    pub seen_ms: UnixMillis,
    pub connected: bool,
}

/// The control plane.
pub struct Cluster {
    pub(crate) store: Arc<dyn Store>,
    /// Event bus.
    pub events: Arc<EventBus>,
    /// Task engine.
    pub tasks: Arc<TaskEngine>,
    pub(crate) agents: AgentClient,
    pub(crate) live: RwLock<HashMap<String, HostLive>>,
    /// Ownership conflicts seen and not yet cleared: (VM id, host) pairs
    /// whose conflict was already logged and published.
    pub(crate) conflicts: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Memory promised to VMs being started, per host.
    pub(crate) pending_mib: Mutex<HashMap<String, u64>>,
    /// Migrations running and waiting for a slot.
    pub(crate) migrations: std::sync::Mutex<migration::limits::MigrationQueue>,
    /// Wakes migrations waiting for a slot.
    pub(crate) migration_turn: tokio::sync::Notify,
    /// Migration policy and limits.
    pub(crate) migration_settings: std::sync::RwLock<migration::MigrationSettings>,
    /// The HA manager's memory (see [`ha`]).
    pub(crate) ha: std::sync::Mutex<ha::HaMemory>,
    /// How the CPU baseline is chosen (see [`cpu_baseline`]).
    pub(crate) cpu_baseline: std::sync::RwLock<vdc_sched::cpu_baseline::BaselineMode>,
    /// VM records by host, for the reports (see [`vm_index`]).
    pub(crate) vm_index: Arc<vm_index::SharedIndex>,
    /// The store as written through (fenced once this server leads).
    pub(crate) fenced: Arc<fence::FencedStore>,
    /// This server's place among several (see [`control_plane`]).
    pub control_plane: Arc<control_plane::ControlPlane>,
    /// This site's name and its peers' links (see [`sites`]).
    pub(crate) sites: sites::SiteState,
    /// Replications and replicas at run time (see [`replication`]).
    pub(crate) replication: replication::Runtime,
}

pub(crate) fn store_err(e: StoreError) -> ApiError {
    ApiError::internal(format!("cluster store failed: {e}"))
}

impl Cluster {
    /// Every record under `prefix`, decoded, in key order.
    pub(crate) async fn list_values<T: serde::de::DeserializeOwned + Send>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, ApiError> {
        use vdc_store::StoreExt;
        Ok(self
            .store
            .list_json::<T>(prefix)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }
}

impl Cluster {
    /// Opens the control plane on `store` as its only server, leading at
    /// once; `token` authenticates the server to the agents.
    pub async fn open(store: Arc<dyn Store>, token: String) -> Result<Arc<Cluster>, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        let cp = control_plane::ControlPlane::new(&id, "", "redb");
        Cluster::open_leading(store, token, cp).await
    }

    /// Opens the control plane on `store` as its only server (the embedded
    /// store, which one process holds), leading at once.
    pub async fn open_leading(
        store: Arc<dyn Store>,
        token: String,
        cp: control_plane::ControlPlane,
    ) -> Result<Arc<Cluster>, ApiError> {
        let record = leader::LeaderRecord {
            version: leader::LEADER_VERSION,
            id: cp.id.clone(),
            url: cp.url.clone(),
            since_ms: vdc_types::now_ms(),
        };
        let cluster = Cluster::build(store, token, cp).await?;
        cluster.control_plane.set_leading(record);
        cluster.lead().await?;
        Ok(cluster)
    }

    /// Opens the control plane on `store` as one of several servers: a
    /// follower that runs no controller until it wins the election
    /// ([`Cluster::run_control_plane`]).
    pub async fn open_follower(
        store: Arc<dyn Store>,
        token: String,
        cp: control_plane::ControlPlane,
    ) -> Result<Arc<Cluster>, ApiError> {
        let cluster = Cluster::build(store, token, cp).await?;
        cluster.events.clone().follow().await;
        Ok(cluster)
    }

    async fn build(
        store: Arc<dyn Store>,
        token: String,
        cp: control_plane::ControlPlane,
    ) -> Result<Arc<Cluster>, ApiError> {
        let fenced = Arc::new(fence::FencedStore::new(store));
        let store: Arc<dyn Store> = fenced.clone();
        let events = Arc::new(EventBus::open(store.clone()).await.map_err(store_err)?);
        let tasks = Arc::new(
            TaskEngine::open(store.clone(), events.clone())
                .await
                .map_err(store_err)?,
        );
        let index = Arc::new(vm_index::SharedIndex::default());
        vm_index::spawn(&store, index.clone());
        Ok(Arc::new(Cluster {
            store,
            events,
            tasks,
            agents: AgentClient::new(token),
            live: RwLock::new(HashMap::new()),
            conflicts: std::sync::Mutex::new(Default::default()),
            pending_mib: Mutex::new(HashMap::new()),
            migrations: Default::default(),
            migration_turn: tokio::sync::Notify::new(),
            migration_settings: Default::default(),
            cpu_baseline: Default::default(),
            ha: std::sync::Mutex::new(Default::default()),
            vm_index: index,
            fenced,
            control_plane: Arc::new(cp),
            sites: Default::default(),
            replication: Default::default(),
        }))
    }

    /// What a server does when it starts leading: releases the VM
    /// operations no task holds, brings old records up to date, and
    /// resumes or reconciles the tasks left unfinished.
    pub(crate) async fn lead(self: &Arc<Self>) -> Result<(), ApiError> {
        self.release_orphaned_operations(true).await?;
        self.migrate_networks().await?;
        self.events
            .publish(
                "server.started",
                "server",
                "control plane started",
                serde_json::Value::Null,
            )
            .await;
        // Tasks a previous server left unfinished: resumed or reconciled
        // once the hosts have reported (see `resume`).
        self.spawn_resume().await;
        Ok(())
    }

    /// Whether the per-host VM index is built: reports then cost
    /// O(VMs of the reporting host) (see [`vm_index`]).
    pub fn vm_index_ready(&self) -> bool {
        self.vm_index.is_ready()
    }

    /// Runs the host monitor until the process ends: marks hosts whose
    /// reports stopped as disconnected and their VMs as unknown, and
    /// releases VM operations whose task ended without releasing them.
    pub fn spawn_monitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.spawn_backup_jobs();
        self.spawn_site_monitor();
        let me = self.clone();
        tokio::spawn(async move { me.resume_replications().await });
        let ha = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ha::HA_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                ha.check_ha().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                me.check_hosts().await;
                n += 1;
                if n.is_multiple_of(ORPHAN_SWEEP_TICKS) {
                    if let Err(e) = me.release_orphaned_operations(false).await {
                        tracing::warn!(error = %e, "cannot look for left-over VM operations");
                    }
                }
            }
        })
    }
}
