//! Templates made from VMs, and a template's life after: show and delete.
//!
//! - **Convert** (`POST /vms/{name}/to-template`): instant. The VM is
//!   claimed (`converting_to_template`: it must be stopped and have only a
//!   boot disk), its host renames the boot disk to
//!   `templates/NAME.qcow2` on the VM's (shared) datastore, read-only, and
//!   removes the VM's other files; the VM's addresses and record go and
//!   the template record is complete. A boot disk that was a linked clone
//!   of template B stays one: the new template records `base: B`, and B
//!   cannot be deleted while it exists.
//! - **Clone to a template** (`keep_vm`): the VM is claimed (`cloning`)
//!   and its boot disk copied by an image-import job into
//!   `templates/NAME.qcow2` (flattened, read-only); the VM stays.
//! - **Delete** (`DELETE /templates/{name}`): refused while a VM's boot
//!   disk is a linked clone of it or a template is based on it (the error
//!   names them); else a host reaching its datastore removes the image and
//!   the record goes.
//!
//! In both makes the template record is created first (the name is
//! taken at once, `size_bytes` 0 while it is being made) and removed if
//! the make fails; the VM is untouched by a failed make.

use std::sync::Arc;

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::agent::{DestroyVmRequest, ImportImageRequest, RemoveImageRequest};
use vdc_types::api::{ImageFormat, Template};
use vdc_types::clone::{TemplateDetails, VmToTemplateRequest};
use vdc_types::job::{JobOp, JobResult};
use vdc_types::names::validate_name;
use vdc_types::{now_ms, ApiError, DatastoreKind, ErrorCode, Task, VmAction, VmOperation};

use crate::tasks::TaskCtx;
use crate::vms::records::holds;
use crate::{store_err, Cluster, VmRecord};

/// The VMs and templates that depend on template `name`, from the VM
/// records and templates: (linked clones, dependent templates, full
/// clones).
pub fn dependents(
    name: &str,
    vms: &[VmRecord],
    templates: &[Template],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut linked = Vec::new();
    let mut full = Vec::new();
    for r in vms {
        if r.config.may_use_template(name) {
            linked.push(r.config.name.clone());
        } else if r.config.template.as_deref() == Some(name) {
            full.push(r.config.name.clone());
        }
    }
    let based: Vec<String> = templates
        .iter()
        .filter(|t| t.base.as_deref() == Some(name))
        .map(|t| t.name.clone())
        .collect();
    linked.sort();
    full.sort();
    (linked, based, full)
}

impl Cluster {
    /// One template with the VMs and templates that read it.
    pub async fn template_details(&self, name: &str) -> Result<TemplateDetails, ApiError> {
        let template = self.get_template(name).await?;
        let vms: Vec<VmRecord> = self.list_values("/vms/").await?;
        let templates = self.list_templates().await?;
        let (linked_clones, dependent_templates, full_clones) = dependents(name, &vms, &templates);
        Ok(TemplateDetails {
            template,
            linked_clones,
            dependent_templates,
            full_clones,
        })
    }

    /// Deletes a template no VM or template reads.
    pub async fn delete_template(&self, name: &str) -> Result<(), ApiError> {
        let d = self.template_details(name).await?;
        if d.template.size_bytes == 0 {
            return Err(ApiError::invalid_state(format!(
                "template '{name}' is still being made; wait for its task to end"
            )));
        }
        let mut users: Vec<String> = d
            .linked_clones
            .iter()
            .map(|v| format!("VM '{v}'"))
            .collect();
        users.extend(
            d.dependent_templates
                .iter()
                .map(|t| format!("template '{t}'")),
        );
        if !users.is_empty() {
            return Err(ApiError::invalid_state(format!(
                "template '{name}' is in use: linked clones read its image: {}; delete them (or make full copies) first",
                users.join(", ")
            )));
        }
        let t = d.template;
        let host = self
            .hosts_reaching(&t.datastore)
            .await
            .into_iter()
            .next()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::HostUnavailable,
                    format!(
                        "no connected host reaches datastore '{}' holding template '{name}'",
                        t.datastore
                    ),
                )
            })?;
        let url = self.agent_url(&host).await?;
        self.agents
            .remove_image(
                &host,
                &url,
                &RemoveImageRequest {
                    datastore: t.datastore.clone(),
                    path: t.path.clone(),
                },
            )
            .await?;
        self.store
            .delete(&format!("/templates/{name}"))
            .await
            .map_err(store_err)?;
        self.events
            .publish(
                "template.deleted",
                name,
                format!("template {name} deleted"),
                json!({}),
            )
            .await;
        Ok(())
    }

    /// Makes a template of powered-off VM `vm`: converts it, or (with
    /// `keep_vm`) copies its boot disk.
    pub async fn vm_to_template(
        self: &Arc<Self>,
        vm: &str,
        req: VmToTemplateRequest,
    ) -> Result<Task, ApiError> {
        let rec = self.record(vm).await?;
        let tname = req.name.clone().unwrap_or_else(|| vm.to_string());
        validate_name("template", &tname).map_err(ApiError::invalid)?;
        let action = if req.keep_vm {
            VmAction::Clone
        } else {
            VmAction::ConvertToTemplate
        };
        rec.decide(action, None)?;
        if !req.keep_vm {
            self.refuse_convert_with_snapshots(&rec).await?;
        }
        let boot = rec
            .config
            .disks
            .first()
            .ok_or_else(|| ApiError::invalid_state(format!("VM '{vm}' has no disk")))?;
        let datastore = if req.keep_vm {
            match self.get_datastore(&boot.datastore).await? {
                d if d.kind == DatastoreKind::Shared => d.name,
                _ => self
                    .list_datastores()
                    .await?
                    .into_iter()
                    .find(|d| d.kind == DatastoreKind::Shared)
                    .map(|d| d.name)
                    .ok_or_else(|| {
                        ApiError::invalid("no shared datastore exists to keep the template on")
                    })?,
            }
        } else {
            if rec.config.disks.len() > 1 {
                return Err(ApiError::invalid_state(format!(
                    "VM '{vm}' has data disks and a template holds one boot disk; clone it to a template instead ('--keep-vm'), which copies the boot disk only"
                )));
            }
            let ds = self.get_datastore(&boot.datastore).await?;
            if ds.kind != DatastoreKind::Shared {
                return Err(ApiError::invalid(format!(
                    "VM '{vm}' is on datastore '{}', local to one host; templates live on shared datastores: clone it to a template instead ('--keep-vm')",
                    ds.name
                )));
            }
            ds.name
        };
        let tpl = Template {
            name: tname.clone(),
            datastore,
            path: format!("templates/{tname}.qcow2"),
            size_bytes: 0,
            created_ms: now_ms(),
            source_format: Some(ImageFormat::Qcow2),
            from_vm: Some(vm.to_string()),
            base: match &rec.config.template {
                Some(t) if !req.keep_vm && rec.config.may_use_template(t) => Some(t.clone()),
                _ => None,
            },
        };
        let key = format!("/templates/{tname}");
        self.create_unique(
            &key,
            &tpl,
            format!("template '{tname}' already exists; choose another name"),
        )
        .await?;
        let (claimed, step) = match self.begin_operation(vm, action, None).await {
            Ok(s) => s,
            Err(e) => {
                self.forget_template(&tname).await;
                return Err(e);
            }
        };
        let params = vdc_types::TaskParams::VmCopy {
            vm_id: claimed.config.id.clone(),
        };
        let me = self.clone();
        let v = vm.to_string();
        let spawned = self
            .spawn_operation(
                vm,
                step.operation.task_kind(),
                Some(params),
                move |ctx| async move {
                    let r = if req.keep_vm {
                        me.copy_to_template(&ctx, &v, &tpl).await
                    } else {
                        me.convert_to_template(&ctx, &v, &tpl).await
                    };
                    match r {
                        Ok(size) => {
                            let done = Template {
                                size_bytes: size,
                                ..tpl
                            };
                            me.store
                                .put_json(&format!("/templates/{}", done.name), &done)
                                .await
                                .map_err(store_err)?;
                            me.events
                                .publish(
                                    "template.created",
                                    &done.name,
                                    format!("template {} made from VM {v}", done.name),
                                    json!({"from_vm": v, "converted": !req.keep_vm}),
                                )
                                .await;
                            Ok(())
                        }
                        Err(e) => {
                            me.forget_template(&tpl.name).await;
                            Err(e)
                        }
                    }
                },
            )
            .await;
        if spawned.is_err() {
            self.forget_template(&tname).await;
        }
        spawned
    }

    /// The body of a convert: the VM's host keeps its boot disk as the
    /// template's image and removes the rest; the VM's record goes.
    async fn convert_to_template(
        &self,
        ctx: &TaskCtx,
        vm: &str,
        tpl: &Template,
    ) -> Result<u64, ApiError> {
        let rec = self.record(vm).await?;
        ctx.progress(10, "moving the boot disk into the templates")
            .await;
        let (host, url) = self.host_for_files(&rec).await?;
        self.agents
            .destroy(
                &host,
                &url,
                &DestroyVmRequest {
                    config: rec.config.clone(),
                    keep_boot_disk_as: Some(tpl.path.clone()),
                },
            )
            .await?;
        self.release_ips(&rec.config.nics).await;
        let task = ctx.id().to_string();
        let gone = self
            .delete_record_if(vm, |r| {
                holds(r, &VmOperation::ConvertingToTemplate, Some(&task))
            })
            .await?;
        if !gone {
            tracing::warn!(vm = %vm, "the record of a VM made a template changed meanwhile");
        }
        self.events
            .publish(
                "vm.deleted",
                vm,
                format!("VM {vm} became template {}", tpl.name),
                json!({"id": rec.config.id, "template": tpl.name}),
            )
            .await;
        Ok(rec.config.disks[0].size_bytes)
    }

    /// The body of a clone to a template: an image-import job copies the
    /// VM's boot disk (flattened) into the template's image.
    async fn copy_to_template(
        &self,
        ctx: &TaskCtx,
        vm: &str,
        tpl: &Template,
    ) -> Result<u64, ApiError> {
        let rec = self.record(vm).await?;
        // The current image (flattened through its snapshot chain).
        let disks = self.current_disks(&rec).await?;
        let boot = disks
            .first()
            .ok_or_else(|| ApiError::invalid_state(format!("VM '{vm}' has no disk")))?;
        let reach_template = self.hosts_reaching(&tpl.datastore).await;
        let host = self
            .hosts_reaching(&boot.datastore)
            .await
            .into_iter()
            .find(|h| reach_template.contains(h));
        let host = host.ok_or_else(|| {
            ApiError::new(
                ErrorCode::HostUnavailable,
                format!(
                    "no connected host reaches both datastore '{}' and '{}'",
                    boot.datastore, tpl.datastore
                ),
            )
        })?;
        let url = self.agent_url(&host).await?;
        ctx.progress(5, "copying the boot disk").await;
        let request = ImportImageRequest {
            source: boot.path.clone(),
            source_datastore: Some(boot.datastore.clone()),
            format: Some(ImageFormat::Qcow2),
            datastore: tpl.datastore.clone(),
            path: tpl.path.clone(),
        };
        match self
            .agent_job(ctx, &host, &url, JobOp::ImportImage { request }, (5, 95))
            .await?
        {
            JobResult::Image(i) => Ok(i.size_bytes),
            _ => Err(ApiError::new(
                ErrorCode::HostError,
                "the host answered an image copy with something else",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::{VmConfig, VmPowerState};

    fn vm(name: &str, template: Option<&str>, linked: bool, version: u32) -> VmRecord {
        let config: VmConfig = serde_json::from_value(json!({
            "version": version, "id": name, "name": name, "cpus": 1, "memory_mib": 64,
            "datastore": "s", "dir": name, "disks": [], "nics": [], "hostname": name,
            "template": template, "linked_clone": linked, "created_ms": 1
        }))
        .unwrap();
        VmRecord::new(config, VmPowerState::Stopped, None)
    }

    #[test]
    fn linked_clones_and_based_templates_depend() {
        let vms = vec![
            vm("a", Some("t"), true, 5),
            vm("b", Some("t"), false, 5),
            vm("c", Some("t"), false, 4),
            vm("d", Some("u"), true, 5),
            vm("e", None, false, 5),
        ];
        let t: Template = serde_json::from_value(json!({
            "name": "t2", "datastore": "s", "path": "templates/t2.qcow2",
            "size_bytes": 1, "created_ms": 1, "base": "t"
        }))
        .unwrap();
        let (linked, based, full) = dependents("t", &vms, &[t]);
        assert_eq!(linked, vec!["a", "c"], "a version 4 VM may be linked");
        assert_eq!(based, vec!["t2"]);
        assert_eq!(full, vec!["b"]);
        let (linked, based, full) = dependents("x", &vms, &[]);
        assert!(linked.is_empty() && based.is_empty() && full.is_empty());
    }
}
