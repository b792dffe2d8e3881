//! Templates: image import as a task, list and lookup.

use std::sync::Arc;

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::agent::ImportImageRequest;
use vdc_types::api::{CreateTemplateRequest, Template};
use vdc_types::names::validate_name;
use vdc_types::{now_ms, ApiError, DatastoreKind, ErrorCode, Task};

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
        self.tasks
            .spawn(
                "template.import",
                "template",
                &tname,
                move |ctx| async move {
                    ctx.progress(5, "copying the image into the datastore")
                        .await;
                    let r = async {
                        let url = me.agent_url(&host).await?;
                        let resp = me
                            .agents
                            .import_image(
                                &host,
                                &url,
                                &ImportImageRequest {
                                    source: req.source.clone(),
                                    format: req.format,
                                    datastore: req.datastore.clone(),
                                    path: path.clone(),
                                },
                            )
                            .await?;
                        let mut t = tpl.clone();
                        t.size_bytes = resp.size_bytes;
                        t.source_format = Some(resp.format);
                        me.store.put_json(&key, &t).await.map_err(store_err)?;
                        Ok::<(), ApiError>(())
                    }
                    .await;
                    match r {
                        Ok(()) => {
                            me.events
                                .publish(
                                    "template.created",
                                    &req.name,
                                    format!("template {} imported", req.name),
                                    json!({}),
                                )
                                .await;
                            Ok(())
                        }
                        Err(e) => {
                            if let Err(de) = me.store.delete(&key).await {
                                tracing::warn!(template = %req.name, error = %de, "cannot remove the record of a failed import");
                            }
                            Err(e)
                        }
                    }
                },
            )
            .await
    }
}
