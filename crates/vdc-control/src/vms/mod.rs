//! VM operations, by concern: the records and their operations
//! (`records`), create (`create`), the power actions and start
//! (`power`), and delete (`delete`).
//!
//! Each operation validates its input synchronously (so a bad request gets
//! a 4xx at once and nothing is created), claims the VM through the
//! lifecycle ([`crate::lifecycle`]) in one compare-and-swap write of its
//! record, and runs the work as a task that releases the claim when it
//! ends.

mod create;
mod delete;
mod power;
pub(crate) mod records;

use vdc_sched::PlacementError;
use vdc_store::{StoreError, StoreExt};
use vdc_types::{ApiError, ErrorCode};

use crate::{store_err, Cluster, VmRecord};

fn placement_err(e: PlacementError) -> ApiError {
    let code = match e {
        PlacementError::NoHosts => ErrorCode::HostUnavailable,
        PlacementError::NoDatastoreAccess(_) => ErrorCode::InvalidInput,
        _ => ErrorCode::InsufficientCapacity,
    };
    ApiError::new(code, e.to_string())
}

impl Cluster {
    /// A connected host that can reach the VM's files: its owner, else any
    /// host reaching its datastore. Returns it with its agent URL.
    pub(crate) async fn host_for_files(
        &self,
        rec: &VmRecord,
    ) -> Result<(String, String), ApiError> {
        if let Some(h) = &rec.owner {
            if let Ok(url) = self.agent_url(h).await {
                return Ok((h.clone(), url));
            }
        }
        let host = self
            .hosts_reaching(&rec.config.datastore)
            .await
            .into_iter()
            .next()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::HostUnavailable,
                    format!(
                        "no connected host reaches datastore '{}' holding VM '{}'",
                        rec.config.datastore, rec.config.name
                    ),
                )
            })?;
        let url = self.agent_url(&host).await?;
        Ok((host, url))
    }

    /// Writes a new record, or fails with `AlreadyExists` and `message`.
    pub(crate) async fn create_unique<T: serde::Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        message: String,
    ) -> Result<(), ApiError> {
        match self.store.create_json(key, value).await {
            Ok(_) => Ok(()),
            Err(StoreError::AlreadyExists(_)) => {
                Err(ApiError::new(ErrorCode::AlreadyExists, message))
            }
            Err(e) => Err(store_err(e)),
        }
    }
}
