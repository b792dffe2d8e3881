//! HA order groups and alarms calls of the REST API.

use vdc_types::ha_group::{Alarm, CreateHaGroupRequest, HaGroup};

use crate::{seg, Client, ClientError};

impl Client {
    /// `GET /ha/groups`: every order group, in restart order.
    pub async fn list_ha_groups(&self) -> Result<Vec<HaGroup>, ClientError> {
        self.get("/ha/groups").await
    }

    /// `POST /ha/groups`: a new order group.
    pub async fn create_ha_group(
        &self,
        req: &CreateHaGroupRequest,
    ) -> Result<HaGroup, ClientError> {
        self.post("/ha/groups", req).await
    }

    /// `PUT /ha/groups/{name}`: changes a group's dependencies and timeout.
    pub async fn update_ha_group(
        &self,
        req: &CreateHaGroupRequest,
    ) -> Result<HaGroup, ClientError> {
        self.send(
            self.req(
                reqwest::Method::PUT,
                &format!("/ha/groups/{}", seg(&req.name)),
            )
            .json(req),
        )
        .await
    }

    /// `DELETE /ha/groups/{name}`.
    pub async fn delete_ha_group(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/ha/groups/{}", seg(name)),
        ))
        .await
    }

    /// `GET /alarms`: every alarm, newest first.
    pub async fn list_alarms(&self) -> Result<Vec<Alarm>, ClientError> {
        self.get("/alarms").await
    }

    /// `POST /alarms/{id}/ack`.
    pub async fn ack_alarm(&self, id: &str) -> Result<Alarm, ClientError> {
        self.post(&format!("/alarms/{}/ack", seg(id)), &serde_json::json!({}))
            .await
    }
}
