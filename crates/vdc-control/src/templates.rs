//! Templates: image import as a task, list and lookup.

use std::sync::Arc;

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::agent::ImportImageRequest;
use vdc_types::api::{CreateTemplateRequest, ImageFormat, Template};
use vdc_types::job::{JobOp, JobResult};
use vdc_types::names::validate_name;
use vdc_types::{now_ms, ApiError, DatastoreKind, ErrorCode, Task, TaskParams};

use crate::tasks::TaskCtx;
use crate::{store_err, Cluster};

impl Cluster {
    /// Every template.
    pub async fn list_templates(&self) -> Result<Vec<Template>, ApiError> {
        self.list_values("/templates/").await
    }

    pub(crate) async fn get_template(&self, name: &str) -> Result<Template, ApiError> {
        self.store
            .get_json(&format!("/templates/{name}"))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("Template", name))
    }

    /// Imports an image file as a template (a task).
    pub async fn create_template(
        self: &Arc<Self>,
        req: CreateTemplateRequest,
    ) -> Result<Task, ApiError> {
        validate_name("template", &req.name).map_err(ApiError::invalid)?;
        let ds = self.get_datastore(&req.datastore).await?;
        if ds.kind != DatastoreKind::Shared {
            return Err(ApiError::invalid(format!(
                "datastore '{}' is local to one host; keep templates on a shared datastore so every host can deploy them",
                req.datastore
            )));
        }
        if !req.source.starts_with('/') {
            return Err(ApiError::invalid(format!(
                "source '{}' must be an absolute path of an image file on the importing host, inside one of its import directories or datastores",
                req.source
            )));
        }
        let host = match &req.host {
            Some(h) => {
                self.agent_url(h).await?;
                h.clone()
            }
            None => self
                .hosts_reaching(&req.datastore)
                .await
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::HostUnavailable,
                        "no connected host reaches that datastore",
                    )
                })?,
        };
        let path = format!("templates/{}.qcow2", req.name);
        let tpl = Template {
            name: req.name.clone(),
            datastore: req.datastore.clone(),
            path: path.clone(),
            size_bytes: 0,
            created_ms: now_ms(),
            source_format: None,
            from_vm: None,
            base: None,
        };
        let key = format!("/templates/{}", req.name);
        self.create_unique(
            &key,
            &tpl,
            format!(
                "template '{}' already exists; choose another name",
                req.name
            ),
        )
        .await?;
        let me = self.clone();
        let tname = req.name.clone();
        let params = TaskParams::TemplateImport {
            host: host.clone(),
            source: req.source.clone(),
            format: req.format,
        };
        self.tasks
            .spawn_journaled(
                "template.import",
                "template",
                &req.name,
                Some(params),
                move |ctx| async move {
                    me.import_body(&ctx, &tname, &host, &req.source, req.format)
                        .await
                },
            )
            .await
    }

    /// The body of `template.import` (also run again by a restarted server,
    /// attaching to its job): copy the image as an agent job, then record
    /// its size; on failure or cancel the template record is deleted.
    pub(crate) async fn import_body(
        &self,
        ctx: &TaskCtx,
        name: &str,
        host: &str,
        source: &str,
        format: Option<ImageFormat>,
    ) -> Result<(), ApiError> {
        let key = format!("/templates/{name}");
        ctx.progress(5, "copying the image into the datastore")
            .await;
        let r = async {
            let tpl = self.get_template(name).await?;
            let url = self.agent_url(host).await?;
            let request = ImportImageRequest {
                source: source.to_string(),
                source_datastore: None,
                format,
                datastore: tpl.datastore.clone(),
                path: tpl.path.clone(),
            };
            let image = match self
                .agent_job(ctx, host, &url, JobOp::ImportImage { request }, (5, 95))
                .await?
            {
                JobResult::Image(i) => i,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::HostError,
                        "the host answered an image import with something else",
                    ))
                }
            };
            let t = Template {
                size_bytes: image.size_bytes,
                source_format: Some(image.format),
                ..tpl
            };
            self.store.put_json(&key, &t).await.map_err(store_err)?;
            Ok::<(), ApiError>(())
        }
        .await;
        match r {
            Ok(()) => {
                self.events
                    .publish(
                        "template.created",
                        name,
                        format!("template {name} imported"),
                        json!({}),
                    )
                    .await;
                Ok(())
            }
            Err(e) => {
                self.forget_template(name).await;
                Err(e)
            }
        }
    }

    /// Deletes a template record whose import did not complete.
    pub(crate) async fn forget_template(&self, name: &str) {
        if let Err(e) = self.store.delete(&format!("/templates/{name}")).await {
            tracing::warn!(template = %name, error = %e, "cannot delete the record of a failed import");
        }
    }
}
