//! Snapshot calls of the REST API.

use vdc_types::snapshot::{
    CreateSnapshotRequest, InstantCloneRequest, RunningCloneRequest, SnapshotList,
};
use vdc_types::Task;

use crate::{seg, Client, ClientError};

impl Client {
    /// `GET /vms/{name}/snapshots`.
    pub async fn list_snapshots(&self, vm: &str) -> Result<SnapshotList, ClientError> {
        self.get(&format!("/vms/{}/snapshots", seg(vm))).await
    }

    /// `POST /vms/{name}/snapshots` (a `snapshot.create` task).
    pub async fn create_snapshot(
        &self,
        vm: &str,
        req: &CreateSnapshotRequest,
    ) -> Result<Task, ClientError> {
        self.post(&format!("/vms/{}/snapshots", seg(vm)), req).await
    }

    /// `POST /vms/{name}/snapshots/{snapshot}/revert` (a `snapshot.revert`
    /// task).
    pub async fn revert_snapshot(&self, vm: &str, snapshot: &str) -> Result<Task, ClientError> {
        self.post(
            &format!("/vms/{}/snapshots/{}/revert", seg(vm), seg(snapshot)),
            &serde_json::json!({}),
        )
        .await
    }

    /// `DELETE /vms/{name}/snapshots/{snapshot}` (a `snapshot.delete` task).
    pub async fn delete_snapshot(&self, vm: &str, snapshot: &str) -> Result<Task, ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/vms/{}/snapshots/{}", seg(vm), seg(snapshot)),
        ))
        .await
    }

    /// `POST /vms/{name}/instant-clone` (a `vm.instant_clone` task).
    pub async fn instant_clone(&self, vm: &str, name: &str) -> Result<Task, ClientError> {
        self.post(
            &format!("/vms/{}/instant-clone", seg(vm)),
            &InstantCloneRequest {
                name: name.to_string(),
            },
        )
        .await
    }

    /// `POST /vms/{name}/clone-running` (a `vm.clone` task).
    pub async fn clone_running(
        &self,
        vm: &str,
        name: &str,
        linked: bool,
    ) -> Result<Task, ClientError> {
        self.post(
            &format!("/vms/{}/clone-running", seg(vm)),
            &RunningCloneRequest {
                name: name.to_string(),
                linked,
            },
        )
        .await
    }
}
