//! Maintenance mode calls of the REST API.

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
