//! The cluster CA on the server and the routes of the migration stream's
//! encryption: the CA is made at the server's first start in
//! `<data-dir>/ca/` (`vdc_pki::files::CaDir`), signs each host's
//! certificate when its agent joins with a certificate request, and its
//! summary is shown with the cluster setting
//! (`GET/PUT /api/v1/migration/settings`).

use std::net::IpAddr;
use std::path::Path;

use axum::extract::State;
use axum::Json;
use vdc_pki::files::{CaDir, CaMetadata};
use vdc_pki::ClusterCa;
use vdc_types::auth::{HostTlsBundle, JoinRequest};
use vdc_types::migration::{CaSummary, MigrationSettingsView, SetMigrationSettingsRequest};
use vdc_types::ApiError;

use crate::error::{ApiJson, ApiResult};
use crate::routes::AppState;

/// The cluster CA as the server holds it.
pub struct CaState {
    ca: ClusterCa,
    meta: CaMetadata,
}

impl CaState {
    /// Loads the CA from `<data_dir>/ca`, or makes it (first start).
    pub async fn open(data_dir: &Path) -> Result<CaState, vdc_pki::PkiError> {
        let dir = CaDir::new(data_dir.join("ca"));
        let (ca, meta) =
            tokio::task::spawn_blocking(move || dir.open_or_create(vdc_types::now_ms()))
                .await
                .map_err(|e| vdc_pki::PkiError::Io {
                    what: "open",
                    path: "the CA directory".into(),
                    source: std::io::Error::other(e),
                })??;
        Ok(CaState { ca, meta })
    }

    /// What users see of the CA.
    pub fn summary(&self) -> CaSummary {
        CaSummary {
            created_ms: self.meta.created_ms,
            not_after_ms: self.meta.not_after_ms,
            fingerprint: self.meta.fingerprint.clone(),
        }
    }

    /// Signs the certificate a join asks for: the host's name and its
    /// migration address (when it is an IP address) as names.
    pub fn issue_for_join(&self, req: &JoinRequest) -> Result<Option<HostTlsBundle>, ApiError> {
        let Some(csr) = &req.csr else {
            return Ok(None);
        };
        let mut addresses = Vec::new();
        if let Some(a) = &req.migration_address {
            let ip: IpAddr = a.parse().map_err(|_| {
                ApiError::invalid(format!(
                    "migration_address '{a}' is not an IP address; start the agent with --migration-address set to the host's address"
                ))
            })?;
            addresses.push(ip);
        }
        let issued = self
            .ca
            .issue_host(&req.host, &addresses, csr, vdc_types::now_ms())
            .map_err(|e| {
                ApiError::invalid(format!(
                    "cannot sign a certificate for host '{}': {e}",
                    req.host
                ))
            })?;
        Ok(Some(HostTlsBundle {
            ca_cert_pem: self.ca.cert_pem().to_string(),
            cert_pem: issued.cert_pem,
            not_after_ms: issued.not_after_ms,
        }))
    }
}

async fn view(st: &AppState) -> Result<MigrationSettingsView, ApiError> {
    Ok(MigrationSettingsView {
        encryption: st.cluster.migration_cluster_settings().await?.encryption,
        ca: st.ca.as_ref().map(|c| c.summary()),
        hosts: st.cluster.host_certificates().await?,
    })
}

/// The cluster's live migration settings: whether streams are encrypted
/// (TLS) by default, the cluster CA and each host's certificate with its
/// expiry.
#[utoipa::path(get, path = "/api/v1/migration/settings",
    responses((status = 200, body = MigrationSettingsView)))]
pub(crate) async fn get_settings(
    State(st): State<AppState>,
) -> ApiResult<Json<MigrationSettingsView>> {
    Ok(Json(view(&st).await?))
}

/// Sets whether live migration streams are encrypted (TLS) by default; a
/// migration request may say otherwise (`tls`).
#[utoipa::path(put, path = "/api/v1/migration/settings", request_body = SetMigrationSettingsRequest,
    responses((status = 200, body = MigrationSettingsView), (status = 400, body = ApiError)))]
pub(crate) async fn set_settings(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<SetMigrationSettingsRequest>,
) -> ApiResult<Json<MigrationSettingsView>> {
    st.cluster.set_migration_cluster_settings(&req).await?;
    Ok(Json(view(&st).await?))
}
