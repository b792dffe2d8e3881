//! Clones of VMs and templates made from VMs.

use vdc_types::clone::{CloneVmRequest, TemplateDetails, VmToTemplateRequest};
use vdc_types::Task;

use crate::{seg, Client, ClientError};

impl Client {
    /// `GET /templates`.
    pub async fn list_templates(&self) -> Result<Vec<vdc_types::api::Template>, ClientError> {
        self.get("/templates").await
    }

    /// `POST /templates` (a task).
    pub async fn create_template(
        &self,
        req: &vdc_types::api::CreateTemplateRequest,
    ) -> Result<vdc_types::Task, ClientError> {
        self.post("/templates", req).await
    }

    /// `POST /vms/{name}/clone`: the source's `vm.clone` task.
    pub async fn clone_vm(&self, source: &str, req: &CloneVmRequest) -> Result<Task, ClientError> {
        self.post(&format!("/vms/{}/clone", seg(source)), req).await
    }

    /// `POST /vms/{name}/to-template`: the convert (or copy) task.
    pub async fn vm_to_template(
        &self,
        vm: &str,
        req: &VmToTemplateRequest,
    ) -> Result<Task, ClientError> {
        self.post(&format!("/vms/{}/to-template", seg(vm)), req)
            .await
    }

    /// `GET /templates/{name}`: the template and what reads it.
    pub async fn template(&self, name: &str) -> Result<TemplateDetails, ClientError> {
        self.get(&format!("/templates/{}", seg(name))).await
    }

    /// `POST /imports/disk`: the new VM's `vm.create` task.
    pub async fn import_disk(
        &self,
        req: &vdc_types::clone::ImportDiskRequest,
    ) -> Result<Task, ClientError> {
        self.post("/imports/disk", req).await
    }

    /// `POST /vms/{name}/export`: the `vm.export` task.
    pub async fn export_vm(
        &self,
        vm: &str,
        req: &vdc_types::ova::ExportVmRequest,
    ) -> Result<Task, ClientError> {
        self.post(&format!("/vms/{}/export", seg(vm)), req).await
    }

    /// `POST /imports/ova`: the new VM's task and what was ignored.
    pub async fn import_ova(
        &self,
        req: &vdc_types::ova::ImportOvaRequest,
    ) -> Result<vdc_types::ova::ImportOvaResponse, ClientError> {
        self.post("/imports/ova", req).await
    }

    /// `DELETE /templates/{name}`.
    pub async fn delete_template(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.req(
            reqwest::Method::DELETE,
            &format!("/templates/{}", seg(name)),
        ))
        .await
    }
}
