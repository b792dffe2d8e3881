//! This site's replicas and replications as a DR run drives them
//! in-process (the replication part's calls, answered in the JSON shapes
//! of the API so one reader serves the local and the remote side), and
//! the paired site's client.

use std::sync::Arc;

use serde_json::Value;
use vdc_types::replication::{EnableReplicationRequest, RecoverRequest, SyncReplicationRequest};
use vdc_types::{ApiError, Task};

use crate::Cluster;

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(format!("encoding a replica: {e}")))
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

impl Cluster {
    /// This site's name.
    pub(crate) fn dr_site_name(&self) -> String {
        self.local_site().name
    }

    /// A client of paired site `site`.
    pub(crate) async fn dr_peer(&self, site: &str) -> Result<vdc_client::Client, ApiError> {
        self.site_client(site).await
    }

    /// `GET /replicas`.
    pub(crate) async fn dr_local_replicas(&self) -> Result<Value, ApiError> {
        to_value(&self.list_replicas().await?)
    }

    /// `GET /replicas/{vm}`.
    pub(crate) async fn dr_local_replica(&self, vm: &str) -> Result<Value, ApiError> {
        to_value(&self.get_replica(vm).await?)
    }

    /// `POST /replicas/{vm}/recover`.
    pub(crate) async fn dr_local_recover(
        self: &Arc<Self>,
        vm: &str,
        body: Value,
    ) -> Result<Task, ApiError> {
        let req: RecoverRequest = from_value(body, "recover request")?;
        self.recover_replica(vm, req).await
    }

    /// `POST /replications/{vm}/sync`.
    pub(crate) async fn dr_local_sync(self: &Arc<Self>, vm: &str) -> Result<Task, ApiError> {
        self.sync_replication(vm, SyncReplicationRequest { quiesce: false })
            .await
    }

    /// `POST /replications`.
    pub(crate) async fn dr_local_replicate(
        self: &Arc<Self>,
        body: Value,
    ) -> Result<Task, ApiError> {
        let req: EnableReplicationRequest = from_value(body, "replication request")?;
        Ok(self.enable_replication(req).await?.1)
    }

    /// `DELETE /replications/{vm}`.
    pub(crate) async fn dr_local_stop_replication(&self, vm: &str) -> Result<(), ApiError> {
        self.disable_replication(vm).await
    }

    /// `DELETE /replicas/{vm}`.
    pub(crate) async fn dr_local_delete_replica(&self, vm: &str) -> Result<(), ApiError> {
        self.delete_replica(vm).await
    }
}
