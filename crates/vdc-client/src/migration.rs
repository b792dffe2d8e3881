//! Migration calls of the REST API.

use vdc_types::migration::MigrateRequest;
use vdc_types::Task;

use crate::{seg, Client, ClientError};

impl Client {
    /// `POST /vms/{name}/migrate` (a `vm.migrate` task).
    pub async fn migrate_vm(&self, name: &str, req: &MigrateRequest) -> Result<Task, ClientError> {
        self.post(&format!("/vms/{}/migrate", seg(name)), req).await
    }
}
