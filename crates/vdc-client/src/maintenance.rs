//! Host placement calls of the REST API: maintenance mode and the CPU
//! baseline.

use vdc_types::{Host, Task};

use crate::{seg, Client, ClientError};

impl Client {
    /// `POST /hosts/{name}/maintenance/enter`: the evacuation task.
    pub async fn enter_maintenance(&self, host: &str) -> Result<Task, ClientError> {
        self.post(
            &format!("/hosts/{}/maintenance/enter", seg(host)),
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /hosts/{name}/maintenance/exit`: the host, back in placement.
    pub async fn exit_maintenance(&self, host: &str) -> Result<Host, ClientError> {
        self.post(
            &format!("/hosts/{}/maintenance/exit", seg(host)),
            &serde_json::json!({}),
        )
        .await
    }
}

impl Client {
    /// `GET /cpu-baseline`: the cluster's CPU baseline and each host's fit.
    pub async fn cpu_baseline(&self) -> Result<vdc_types::CpuBaseline, ClientError> {
        self.get("/cpu-baseline").await
    }
}
