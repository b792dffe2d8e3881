//! NIC calls of the REST API: add and remove (hot plug on a running VM).

use vdc_types::nic::{AddNicRequest, NicChange};

use crate::{seg, Client, ClientError};

impl Client {
    /// `POST /vms/{name}/nics`: the `vm.reconfigure` task and the NIC.
    pub async fn add_nic(&self, vm: &str, req: &AddNicRequest) -> Result<NicChange, ClientError> {
        self.post(&format!("/vms/{}/nics", seg(vm)), req).await
    }

    /// `DELETE /vms/{name}/nics/{nic}` (`nic`: its id or MAC).
    pub async fn remove_nic(&self, vm: &str, nic: &str) -> Result<NicChange, ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/vms/{}/nics/{}", seg(vm), seg(nic)),
        ))
        .await
    }
}
