//! Replication calls of the REST API: protected side (replications) and
//! recovery side (replicas and their points).

use vdc_types::replication::{
    BeginPointRequest, BeginPointResponse, CommitPointRequest, EnableReplicationRequest,
    RecoverRequest, Replica, ReplicaPoint, Replication, SyncReplicationRequest,
};
use vdc_types::Task;

use crate::{seg, Client, ClientError};

/// `POST /replications` answers the record and the initial sync task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EnabledReplication {
    /// The replication.
    pub replication: Replication,
    /// The task of the first full copy.
    pub task: Task,
}

impl Client {
    /// `POST /replications`.
    pub async fn enable_replication(
        &self,
        req: &EnableReplicationRequest,
    ) -> Result<EnabledReplication, ClientError> {
        self.post("/replications", req).await
    }
    /// `GET /replications`.
    pub async fn list_replications(&self) -> Result<Vec<Replication>, ClientError> {
        self.get("/replications").await
    }
    /// `GET /replications/{vm}`.
    pub async fn get_replication(&self, vm: &str) -> Result<Replication, ClientError> {
        self.get(&format!("/replications/{}", seg(vm))).await
    }
    /// `POST /replications/{vm}/sync`: a point now (a task).
    pub async fn sync_replication(&self, vm: &str, quiesce: bool) -> Result<Task, ClientError> {
        self.post(
            &format!("/replications/{}/sync", seg(vm)),
            &SyncReplicationRequest { quiesce },
        )
        .await
    }
    /// `DELETE /replications/{vm}`.
    pub async fn disable_replication(&self, vm: &str) -> Result<(), ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/replications/{}", seg(vm)),
        ))
        .await
    }
    /// `GET /replicas`.
    pub async fn list_replicas(&self) -> Result<Vec<Replica>, ClientError> {
        self.get("/replicas").await
    }
    /// `GET /replicas/{vm}`.
    pub async fn get_replica(&self, vm: &str) -> Result<Replica, ClientError> {
        self.get(&format!("/replicas/{}", seg(vm))).await
    }
    /// `POST /replicas/{vm}/recover`: the `vm.create` task of the VM made.
    pub async fn recover_replica(
        &self,
        vm: &str,
        req: &RecoverRequest,
    ) -> Result<Task, ClientError> {
        self.post(&format!("/replicas/{}/recover", seg(vm)), req)
            .await
    }
    /// `DELETE /replicas/{vm}`.
    pub async fn delete_replica(&self, vm: &str) -> Result<(), ClientError> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/replicas/{}", seg(vm))))
            .await
    }
    /// `POST /replicas/{vm}/points`: (protected site) starts a point.
    pub async fn begin_replica_point(
        &self,
        vm: &str,
        req: &BeginPointRequest,
    ) -> Result<BeginPointResponse, ClientError> {
        self.post(&format!("/replicas/{}/points", seg(vm)), req)
            .await
    }
    /// `POST /replicas/{vm}/points/{id}/commit`.
    pub async fn commit_replica_point(
        &self,
        vm: &str,
        id: u64,
        req: &CommitPointRequest,
    ) -> Result<ReplicaPoint, ClientError> {
        self.post(&format!("/replicas/{}/points/{id}/commit", seg(vm)), req)
            .await
    }
    /// `DELETE /replicas/{vm}/points/{id}`.
    pub async fn abort_replica_point(&self, vm: &str, id: u64) -> Result<(), ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/replicas/{}/points/{id}", seg(vm)),
        ))
        .await
    }
    /// `POST /replicas/{vm}/stopped`: the protected site stopped.
    pub async fn replica_stopped(&self, vm: &str) -> Result<Replica, ClientError> {
        self.post(
            &format!("/replicas/{}/stopped", seg(vm)),
            &serde_json::json!({}),
        )
        .await
    }
}
