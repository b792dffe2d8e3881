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
//! | `/vms/<name>` | [`VmRecord`] |
//! | `/ipam/<network>/<address>` | name of the VM holding the address |
//! | `/tasks/<id>` | [`vdc_types::Task`] |
//! | `/events/<seq>` | [`vdc_types::Event`] |

pub mod agents;
pub mod answers;
mod console;
pub mod events;
mod hosts;
pub mod ipam;
mod networks;
pub mod tasks;
mod templates;
mod vms;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use vdc_store::{Store, StoreError};
use vdc_types::agent::HostReport;
use vdc_types::{Accelerator, ApiError, GuestInfo, UnixMillis, VmConfig, VmPowerState};

pub use agents::AgentClient;
pub use console::ConsoleRange;
pub use events::EventBus;
pub use tasks::{TaskCtx, TaskEngine};

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

/// A VM as recorded in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Configuration.
    pub config: VmConfig,
    /// Last known power state.
    pub state: VmPowerState,
    /// Host running it, or that last ran it.
    pub host: Option<String>,
    /// Last known guest report (heartbeat time not persisted).
    pub guest: GuestInfo,
    /// When the host saw `state` begin, in the host's clock (from
    /// [`vdc_types::agent::VmRuntime::since_ms`]); a report about an older
    /// state is stale and ignored.
    #[serde(default)]
    pub since_ms: UnixMillis,
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
    /// VMs an operation is working on (name → task kind).
    pub(crate) busy: std::sync::Mutex<HashMap<String, String>>,
    /// Memory promised to VMs being started, per host.
    pub(crate) pending_mib: Mutex<HashMap<String, u64>>,
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
    /// Opens the control plane on `store`; `token` authenticates the server
    /// to the agents.
    pub async fn open(store: Arc<dyn Store>, token: String) -> Result<Arc<Cluster>, ApiError> {
        let events = Arc::new(EventBus::open(store.clone()).await.map_err(store_err)?);
        let tasks = Arc::new(
            TaskEngine::open(store.clone(), events.clone())
                .await
                .map_err(store_err)?,
        );
        let cluster = Arc::new(Cluster {
            store,
            events,
            tasks,
            agents: AgentClient::new(token),
            live: RwLock::new(HashMap::new()),
            busy: std::sync::Mutex::new(HashMap::new()),
            pending_mib: Mutex::new(HashMap::new()),
        });
        cluster
            .events
            .publish(
                "server.started",
                "server",
                "control plane started",
                serde_json::Value::Null,
            )
            .await;
        Ok(cluster)
    }

    /// Runs the host monitor until the process ends: marks hosts whose
    /// reports stopped as disconnected and their VMs as unknown.
    pub fn spawn_monitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                me.check_hosts().await;
            }
        })
    }
}
