//! TLS of the migration stream, as QMP commands: both QEMUs get a
//! `tls-creds-x509` object reading the host's certificate directory
//! (`crate::tls`) and the migration parameter `tls-creds` naming it. The
//! destination is the TLS server and verifies the source's certificate
//! (`verify-peer`); the source is the client and checks that the
//! destination's certificate names the destination host (`tls-hostname`).
//! Once `tls-creds` is set on the incoming side, QEMU refuses a plain
//! stream; both sides refuse a peer whose certificate another CA signed.

use serde_json::json;
use vdc_qemu::QmpError;

/// Id of the credentials object in QEMU.
pub(super) const OBJECT_ID: &str = "vdc-migration-tls";

/// Which end of the TLS session a QEMU is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// The destination: accepts the stream.
    Server,
    /// The source: connects to `hostname`.
    Client {
        /// The destination host's name, as in its certificate.
        hostname: String,
    },
}

/// The `object-add` arguments of the credentials.
pub(super) fn object_args(dir: &std::path::Path, endpoint: &Endpoint) -> serde_json::Value {
    json!({
        "qom-type": "tls-creds-x509",
        "id": OBJECT_ID,
        "dir": dir.display().to_string(),
        "endpoint": match endpoint { Endpoint::Server => "server", Endpoint::Client { .. } => "client" },
        "verify-peer": true,
    })
}

/// The migration parameters that turn TLS on.
pub(super) fn parameters(endpoint: &Endpoint) -> serde_json::Value {
    match endpoint {
        Endpoint::Server => json!({ "tls-creds": OBJECT_ID }),
        Endpoint::Client { hostname } => {
            json!({ "tls-creds": OBJECT_ID, "tls-hostname": hostname })
        }
    }
}

/// Arms TLS on `vm`: the credentials (re-made, so files replaced since
/// are read again) and the parameters.
pub(super) async fn arm(
    vm: &vdc_qemu::Vm,
    dir: &std::path::Path,
    endpoint: &Endpoint,
) -> Result<(), QmpError> {
    // A previous migration of this QEMU may have left its object.
    disarm(vm).await;
    vm.qmp()
        .execute("object-add", object_args(dir, endpoint))
        .await?;
    vm.qmp().migrate_set_parameters(parameters(endpoint)).await
}

/// Turns TLS off on `vm` (parameters emptied, credentials removed);
/// failures are logged (a QEMU that never had them answers with an error
/// for the object).
pub(super) async fn disarm(vm: &vdc_qemu::Vm) {
    plain(vm).await;
    if let Err(e) = vm
        .qmp()
        .execute("object-del", json!({ "id": OBJECT_ID }))
        .await
    {
        tracing::debug!(pid = vm.pid(), error = %e, "no migration TLS credentials to remove");
    }
}

impl crate::agent::Agent {
    /// The certificate directory for a TLS stream; a clear error when this
    /// host has no certificate yet.
    pub(super) fn migration_tls_dir(&self) -> Result<std::path::PathBuf, vdc_types::ApiError> {
        if self.tls.installed().is_none() {
            return Err(vdc_types::ApiError::invalid_state(format!(
                "host '{}' has no migration certificate yet; restart its agent so that it joins again and gets one, or migrate without TLS",
                self.config.name
            )));
        }
        Ok(self.tls.dir())
    }
}

/// Empties the TLS parameters (a plain stream), in case a migration of
/// this QEMU that failed left them set; a failure is logged.
pub(super) async fn plain(vm: &vdc_qemu::Vm) {
    if let Err(e) = vm
        .qmp()
        .migrate_set_parameters(json!({ "tls-creds": "", "tls-hostname": "" }))
        .await
    {
        tracing::warn!(pid = vm.pid(), error = %e, "cannot clear the migration's TLS parameters");
    }
}

/// Whether `vm`'s migration parameters name TLS credentials now (QEMU's
/// own answer, kept on the task as `encrypted`).
pub(super) async fn encrypted(vm: &vdc_qemu::Vm) -> bool {
    match vm
        .qmp()
        .execute("query-migrate-parameters", json!({}))
        .await
    {
        Ok(v) => v
            .get("tls-creds")
            .and_then(|c| c.as_str())
            .is_some_and(|c| !c.is_empty()),
        Err(e) => {
            tracing::warn!(pid = vm.pid(), error = %e, "cannot read the migration parameters");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_verifies_its_peer_and_the_source_names_the_destination() {
        let dir = std::path::Path::new("/state/tls");
        let server = object_args(dir, &Endpoint::Server);
        assert_eq!(server["endpoint"], "server");
        assert_eq!(server["verify-peer"], true);
        assert_eq!(server["dir"], "/state/tls");
        let client = Endpoint::Client {
            hostname: "host-2".into(),
        };
        assert_eq!(object_args(dir, &client)["endpoint"], "client");
        assert_eq!(parameters(&client)["tls-hostname"], "host-2");
        assert_eq!(parameters(&client)["tls-creds"], OBJECT_ID);
        assert!(parameters(&Endpoint::Server).get("tls-hostname").is_none());
    }
}
