//! Switch and port group calls of the REST API.

use vdc_types::switch::{Switch, SwitchView};
use vdc_types::Network;

use crate::{seg, Client, ClientError};

impl Client {
    /// `GET /networks`.
    pub async fn list_networks(&self) -> Result<Vec<Network>, ClientError> {
        self.get("/networks").await
    }

    /// `POST /networks`.
    pub async fn create_network(&self, n: &Network) -> Result<Network, ClientError> {
        self.post("/networks", n).await
    }

    /// `GET /switches`: every switch with each host's realization.
    pub async fn list_switches(&self) -> Result<Vec<SwitchView>, ClientError> {
        self.get("/switches").await
    }

    /// `GET /switches/{name}`.
    pub async fn get_switch(&self, name: &str) -> Result<SwitchView, ClientError> {
        self.get(&format!("/switches/{}", seg(name))).await
    }

    /// `POST /switches`.
    pub async fn create_switch(&self, s: &Switch) -> Result<Switch, ClientError> {
        self.post("/switches", s).await
    }

    /// `DELETE /switches/{name}`.
    pub async fn delete_switch(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/switches/{}", seg(name))))
            .await
    }

    /// `GET /networks/{name}`.
    pub async fn get_network(&self, name: &str) -> Result<Network, ClientError> {
        self.get(&format!("/networks/{}", seg(name))).await
    }

    /// `DELETE /networks/{name}`.
    pub async fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/networks/{}", seg(name))))
            .await
    }
}
