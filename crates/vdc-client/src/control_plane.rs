//! The control plane's own state.

use vdc_types::control_plane::ControlPlaneStatus;

use crate::{Client, ClientError};

impl Client {
    /// `GET /cluster/control-plane`: the servers, the leader, the store.
    pub async fn control_plane(&self) -> Result<ControlPlaneStatus, ClientError> {
        self.get("/cluster/control-plane").await
    }
}
