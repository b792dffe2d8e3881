//! The two sides of a DR run, behind one trait: this site in-process
//! ([`Local`]) and the paired site through its API ([`Remote`], a client
//! from [`Cluster::site_client`]). A run picks each side by the plan's
//! site names, so the same steps drive a failover here and a failback
//! whose recovery site is the peer.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use vdc_types::{ApiError, ErrorCode, Task, TaskState, Vm, VmAction};

use crate::Cluster;

/// How often a task or a VM is polled.
const POLL: Duration = Duration::from_millis(250);

/// A replica as the recovery side's `GET /replicas/{vm}` shows it (the
/// fields a run reads).
#[derive(Debug, Clone, Deserialize)]
pub struct ReplicaView {
    /// VM name.
    pub vm: String,
    /// The site it is replicated from.
    pub source_site: String,
    /// `replicating`, `failed_over` or `stopped`.
    #[serde(default)]
    pub state: String,
    /// The VM's configuration (its NICs' networks).
    #[serde(default)]
    pub config: ReplicaConfig,
    /// Fully applied points, oldest first.
    #[serde(default)]
    pub points: Vec<PointView>,
}

/// The part of a replica's configuration a run reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReplicaConfig {
    /// NICs.
    #[serde(default)]
    pub nics: Vec<NicView>,
}

/// A replica's NIC.
#[derive(Debug, Clone, Deserialize)]
pub struct NicView {
    /// Its network at the protected site.
    pub network: String,
}

/// A replica's point in time.
#[derive(Debug, Clone, Deserialize)]
pub struct PointView {
    /// Id.
    pub id: u64,
    /// When it was taken.
    pub time_ms: u64,
}

impl ReplicaView {
    /// The newest point.
    pub fn latest(&self) -> Option<&PointView> {
        self.points.iter().max_by_key(|p| p.time_ms)
    }
}

/// One side of a DR run.
#[async_trait::async_trait]
pub trait SiteOps: Send + Sync {
    /// The site's name.
    fn site(&self) -> &str;
    /// Fails unless the site answers.
    async fn ping(&self) -> Result<(), ApiError>;
    /// Every replica held here.
    async fn replicas(&self) -> Result<Vec<ReplicaView>, ApiError>;
    /// One replica.
    async fn replica(&self, vm: &str) -> Result<ReplicaView, ApiError>;
    /// Starts `replica.recover` for `vm` (the contract's request body).
    async fn recover(&self, vm: &str, body: Value) -> Result<Task, ApiError>;
    /// Starts `replication.sync` of `vm` (a point applied remotely).
    async fn sync(&self, vm: &str) -> Result<Task, ApiError>;
    /// Replicates `vm` to `site`; the task of its first full copy.
    async fn replicate(&self, vm: &str, site: &str) -> Result<Task, ApiError>;
    /// Stops replicating `vm` (false: it was not replicated).
    async fn stop_replication(&self, vm: &str) -> Result<bool, ApiError>;
    /// Deletes the replica of `vm` (false: there was none).
    async fn delete_replica(&self, vm: &str) -> Result<bool, ApiError>;
    /// A VM, if it exists.
    async fn vm(&self, name: &str) -> Result<Option<Vm>, ApiError>;
    /// Starts a VM action (a task).
    async fn vm_action(&self, name: &str, action: VmAction) -> Result<Task, ApiError>;
    /// Starts a VM's deletion (a task).
    async fn delete_vm(&self, name: &str) -> Result<Task, ApiError>;
    /// A task.
    async fn task(&self, id: &str) -> Result<Task, ApiError>;
}

/// Waits until task `id` on `side` ends; its error when it fails.
pub async fn wait_task(side: &dyn SiteOps, id: &str, wait: Duration) -> Result<Task, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let t = side.task(id).await?;
        match t.state {
            TaskState::Succeeded => return Ok(t),
            s if s.is_final() => {
                return Err(t.error.unwrap_or_else(|| {
                    ApiError::internal(format!("task {id} ended {s:?} without an error"))
                }))
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(ApiError::internal(format!(
                    "task {id} at site {} did not end within {} s",
                    side.site(),
                    wait.as_secs()
                )))
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

fn not_found(e: &ApiError) -> bool {
    e.code == ErrorCode::NotFound
}

/// This site, in-process.
pub struct Local {
    /// The control plane.
    pub cluster: Arc<Cluster>,
    /// This site's name.
    pub name: String,
}

/// The paired site, through its API.
pub struct Remote {
    /// The site's name.
    pub name: String,
    /// A client of its API.
    pub client: vdc_client::Client,
}

fn remote_err(site: &str, e: vdc_client::ClientError) -> ApiError {
    match e {
        vdc_client::ClientError::Api(e) => e,
        other => ApiError::new(
            ErrorCode::SiteUnreachable,
            format!("site '{site}' does not answer: {other}; check its server and the link"),
        ),
    }
}

fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[async_trait::async_trait]
impl SiteOps for Remote {
    fn site(&self) -> &str {
        &self.name
    }
    async fn ping(&self) -> Result<(), ApiError> {
        self.client
            .get_value("/sites/local")
            .await
            .map(drop)
            .map_err(|e| remote_err(&self.name, e))
    }
    async fn replicas(&self) -> Result<Vec<ReplicaView>, ApiError> {
        let v = self
            .client
            .get_value("/replicas")
            .await
            .map_err(|e| remote_err(&self.name, e))?;
        serde_json::from_value(v).map_err(|e| ApiError::internal(format!("replicas: {e}")))
    }
    async fn replica(&self, vm: &str) -> Result<ReplicaView, ApiError> {
        let v = self
            .client
            .get_value(&format!("/replicas/{}", seg(vm)))
            .await
            .map_err(|e| remote_err(&self.name, e))?;
        serde_json::from_value(v).map_err(|e| ApiError::internal(format!("replica {vm}: {e}")))
    }
    async fn recover(&self, vm: &str, body: Value) -> Result<Task, ApiError> {
        self.client
            .post_task(&format!("/replicas/{}/recover", seg(vm)), &body)
            .await
            .map_err(|e| remote_err(&self.name, e))
    }
    async fn sync(&self, vm: &str) -> Result<Task, ApiError> {
        self.client
            .post_task(
                &format!("/replications/{}/sync", seg(vm)),
                &json!({"quiesce": false}),
            )
            .await
            .map_err(|e| remote_err(&self.name, e))
    }
    async fn replicate(&self, vm: &str, site: &str) -> Result<Task, ApiError> {
        let v = self
            .client
            .post_value("/replications", &replicate_body(vm, site))
            .await
            .map_err(|e| remote_err(&self.name, e))?;
        serde_json::from_value(v["task"].clone())
            .map_err(|e| ApiError::internal(format!("replication of {vm}: no task: {e}")))
    }
    async fn stop_replication(&self, vm: &str) -> Result<bool, ApiError> {
        match self
            .client
            .delete_value(&format!("/replications/{}", seg(vm)))
            .await
            .map_err(|e| remote_err(&self.name, e))
        {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
    async fn delete_replica(&self, vm: &str) -> Result<bool, ApiError> {
        match self
            .client
            .delete_value(&format!("/replicas/{}", seg(vm)))
            .await
            .map_err(|e| remote_err(&self.name, e))
        {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
    async fn vm(&self, name: &str) -> Result<Option<Vm>, ApiError> {
        match self
            .client
            .get_vm(name)
            .await
            .map_err(|e| remote_err(&self.name, e))
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
    async fn vm_action(&self, name: &str, action: VmAction) -> Result<Task, ApiError> {
        let word = serde_json::to_value(action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.client
            .vm_action(name, word, json!({}))
            .await
            .map_err(|e| remote_err(&self.name, e))
    }
    async fn delete_vm(&self, name: &str) -> Result<Task, ApiError> {
        self.client
            .delete_vm(name)
            .await
            .map_err(|e| remote_err(&self.name, e))
    }
    async fn task(&self, id: &str) -> Result<Task, ApiError> {
        self.client
            .get_task(id)
            .await
            .map_err(|e| remote_err(&self.name, e))
    }
}

/// The body of `POST /replications` a reprotect sends.
pub fn replicate_body(vm: &str, site: &str) -> Value {
    json!({"vm": vm, "site": site, "rpo_s": REPROTECT_RPO_S, "mode": "async"})
}

/// The RPO target of a replication a reprotect creates, seconds.
pub const REPROTECT_RPO_S: u64 = 10;

#[async_trait::async_trait]
impl SiteOps for Local {
    fn site(&self) -> &str {
        &self.name
    }
    async fn ping(&self) -> Result<(), ApiError> {
        Ok(())
    }
    async fn replicas(&self) -> Result<Vec<ReplicaView>, ApiError> {
        let v = self.cluster.dr_local_replicas().await?;
        serde_json::from_value(v).map_err(|e| ApiError::internal(format!("replicas: {e}")))
    }
    async fn replica(&self, vm: &str) -> Result<ReplicaView, ApiError> {
        let v = self.cluster.dr_local_replica(vm).await?;
        serde_json::from_value(v).map_err(|e| ApiError::internal(format!("replica {vm}: {e}")))
    }
    async fn recover(&self, vm: &str, body: Value) -> Result<Task, ApiError> {
        self.cluster.dr_local_recover(vm, body).await
    }
    async fn sync(&self, vm: &str) -> Result<Task, ApiError> {
        self.cluster.dr_local_sync(vm).await
    }
    async fn replicate(&self, vm: &str, site: &str) -> Result<Task, ApiError> {
        self.cluster
            .dr_local_replicate(replicate_body(vm, site))
            .await
    }
    async fn stop_replication(&self, vm: &str) -> Result<bool, ApiError> {
        match self.cluster.dr_local_stop_replication(vm).await {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
    async fn delete_replica(&self, vm: &str) -> Result<bool, ApiError> {
        match self.cluster.dr_local_delete_replica(vm).await {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
    async fn vm(&self, name: &str) -> Result<Option<Vm>, ApiError> {
        match self.cluster.get_vm(name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
    async fn vm_action(&self, name: &str, action: VmAction) -> Result<Task, ApiError> {
        self.cluster.vm_action(name, action, None).await
    }
    async fn delete_vm(&self, name: &str) -> Result<Task, ApiError> {
        self.cluster.delete_vm(name).await
    }
    async fn task(&self, id: &str) -> Result<Task, ApiError> {
        self.cluster.tasks.get(id).await
    }
}
