//! This site's replicas and replications as a DR run drives them
//! in-process (the replication part's calls, in the JSON shapes of the
//! API, so one reader serves the local and the remote side), and the
//! paired site's client.

use serde_json::Value;
use vdc_types::{ApiError, ErrorCode, Task};

use crate::Cluster;

fn no_replication() -> ApiError {
    ApiError::new(
        ErrorCode::HostUnavailable,
        "replication is not available at this site",
    )
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
        Ok(Value::Array(vec![]))
    }

    /// `GET /replicas/{vm}`.
    pub(crate) async fn dr_local_replica(&self, vm: &str) -> Result<Value, ApiError> {
        Err(ApiError::not_found("replica", vm))
    }

    /// `POST /replicas/{vm}/recover`.
    pub(crate) async fn dr_local_recover(&self, _vm: &str, _body: Value) -> Result<Task, ApiError> {
        Err(no_replication())
    }

    /// `POST /replications/{vm}/sync`.
    pub(crate) async fn dr_local_sync(&self, _vm: &str) -> Result<Task, ApiError> {
        Err(no_replication())
    }

    /// `POST /replications`.
    pub(crate) async fn dr_local_replicate(&self, _body: Value) -> Result<(), ApiError> {
        Err(no_replication())
    }

    /// `DELETE /replications/{vm}`.
    pub(crate) async fn dr_local_stop_replication(&self, vm: &str) -> Result<(), ApiError> {
        Err(ApiError::not_found("replication", vm))
    }

    /// `DELETE /replicas/{vm}`.
    pub(crate) async fn dr_local_delete_replica(&self, vm: &str) -> Result<(), ApiError> {
        Err(ApiError::not_found("replica", vm))
    }
}
