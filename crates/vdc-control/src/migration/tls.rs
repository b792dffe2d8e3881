//! TLS of the live migration stream: the cluster setting (stored at
//! `/migration/settings`, versioned; `GET/PUT /api/v1/migration/settings`),
//! the choice for one migration ([`use_tls`], pure: the request's `tls`
//! wins over the setting) and the check that both hosts hold a
//! certificate of the same cluster CA that has not expired
//! ([`check_certificates`], pure), each refusal a 409 saying what to do.

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::auth::HostCertificate;
use vdc_types::migration::{
    HostTlsStatus, MigrationClusterSettings, MigrationEncryption, SetMigrationSettingsRequest,
    MIGRATION_SETTINGS_VERSION,
};
use vdc_types::ApiError;

use crate::{store_err, Cluster};

const SETTINGS_KEY: &str = "/migration/settings";

/// Whether a live migration's stream is TLS: the request's choice, else
/// the cluster's setting.
pub fn use_tls(setting: MigrationEncryption, asked: Option<bool>) -> bool {
    asked.unwrap_or(setting == MigrationEncryption::On)
}

/// Checks that `source` and `target` (host name, the certificate its agent
/// reports) can run a TLS stream at `now_ms`.
pub fn check_certificates(
    source: (&str, Option<&HostCertificate>),
    target: (&str, Option<&HostCertificate>),
    now_ms: u64,
) -> Result<(), ApiError> {
    let mut cas = Vec::new();
    for (host, cert) in [source, target] {
        let Some(cert) = cert else {
            return Err(ApiError::invalid_state(format!(
                "host '{host}' has no migration certificate yet: its agent gets one from the cluster CA when it joins; restart it (it joins again), or migrate without TLS (--no-tls)"
            )));
        };
        if cert.not_after_ms <= now_ms {
            return Err(ApiError::invalid_state(format!(
                "the migration certificate of host '{host}' expired (at {} ms since the epoch); restart its agent so that it joins again and gets a new one, or migrate without TLS (--no-tls)",
                cert.not_after_ms
            )));
        }
        cas.push(cert.ca_fingerprint.clone());
    }
    if cas[0] != cas[1] {
        return Err(ApiError::invalid_state(format!(
            "hosts '{}' and '{}' hold certificates of different CAs; restart the agent whose certificate is not from this cluster's CA, or migrate without TLS (--no-tls)",
            source.0, target.0
        )));
    }
    Ok(())
}

impl Cluster {
    /// The cluster's migration settings (the default, encryption off,
    /// when none were stored).
    pub async fn migration_cluster_settings(&self) -> Result<MigrationClusterSettings, ApiError> {
        let s: Option<MigrationClusterSettings> =
            self.store.get_json(SETTINGS_KEY).await.map_err(store_err)?;
        match s {
            Some(s) if s.version > MIGRATION_SETTINGS_VERSION => Err(ApiError::internal(format!(
                "the stored migration settings have version {}; this server reads version {MIGRATION_SETTINGS_VERSION}",
                s.version
            ))),
            Some(s) => Ok(s),
            None => Ok(MigrationClusterSettings::default()),
        }
    }

    /// `PUT /api/v1/migration/settings` (and `vdc server --migration-tls`):
    /// stores the settings; event `migration.settings_changed`.
    pub async fn set_migration_cluster_settings(
        &self,
        req: &SetMigrationSettingsRequest,
    ) -> Result<MigrationClusterSettings, ApiError> {
        let s = MigrationClusterSettings {
            version: MIGRATION_SETTINGS_VERSION,
            encryption: req.encryption,
        };
        self.store
            .put_json(SETTINGS_KEY, &s)
            .await
            .map_err(store_err)?;
        self.events
            .publish(
                "migration.settings_changed",
                "cluster",
                format!("live migration encryption: {}", s.encryption.as_str()),
                json!({ "encryption": s.encryption }),
            )
            .await;
        Ok(s)
    }

    /// Each known host and the migration certificate its agent reports.
    pub async fn host_certificates(&self) -> Result<Vec<HostTlsStatus>, ApiError> {
        Ok(self
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| HostTlsStatus {
                host: h.name,
                certificate: h.tls,
            })
            .collect())
    }

    /// Whether this live migration's stream is TLS, checked: both hosts
    /// hold valid certificates of one CA when it is.
    pub(crate) async fn tls_for(
        &self,
        source: &str,
        target: &str,
        asked: Option<bool>,
    ) -> Result<bool, ApiError> {
        let setting = self.migration_cluster_settings().await?.encryption;
        if !use_tls(setting, asked) {
            return Ok(false);
        }
        let live = self.live.read().await;
        let cert = |h: &str| live.get(h).and_then(|l| l.report.tls.clone());
        let (s, t) = (cert(source), cert(target));
        check_certificates(
            (source, s.as_ref()),
            (target, t.as_ref()),
            vdc_types::now_ms(),
        )?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::ErrorCode;

    fn cert(ca: &str, not_after_ms: u64) -> HostCertificate {
        HostCertificate {
            not_after_ms,
            fingerprint: "f".into(),
            ca_fingerprint: ca.into(),
            sans: vec![],
        }
    }

    #[test]
    fn the_request_wins_over_the_setting() {
        use MigrationEncryption::{Off, On};
        assert!(!use_tls(Off, None));
        assert!(use_tls(On, None));
        assert!(use_tls(Off, Some(true)));
        assert!(!use_tls(On, Some(false)));
    }

    #[test]
    fn both_hosts_need_a_valid_certificate_of_one_ca() {
        let good = cert("ca1", 2_000);
        assert!(check_certificates(("a", Some(&good)), ("b", Some(&good)), 1_000).is_ok());
        let e = check_certificates(("a", Some(&good)), ("b", None), 1_000).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidState);
        assert!(
            e.message.contains("host 'b' has no migration certificate"),
            "{}",
            e.message
        );
        assert!(e.message.contains("--no-tls"));
        let e = check_certificates(("a", Some(&cert("ca1", 500))), ("b", Some(&good)), 1_000)
            .unwrap_err();
        assert!(e.message.contains("of host 'a' expired"), "{}", e.message);
        let e = check_certificates(("a", Some(&good)), ("b", Some(&cert("ca2", 2_000))), 1_000)
            .unwrap_err();
        assert!(e.message.contains("different CAs"), "{}", e.message);
    }

    #[test]
    fn settings_read_and_refuse_unknown_values() {
        let s: SetMigrationSettingsRequest =
            serde_json::from_str(r#"{"encryption":"on"}"#).unwrap();
        assert_eq!(s.encryption, MigrationEncryption::On);
        assert!(
            serde_json::from_str::<SetMigrationSettingsRequest>(r#"{"encryption":"yes"}"#).is_err()
        );
        assert!(serde_json::from_str::<SetMigrationSettingsRequest>(
            r#"{"encryption":"on","x":1}"#
        )
        .is_err());
        assert_eq!(
            "off".parse::<MigrationEncryption>(),
            Ok(MigrationEncryption::Off)
        );
        assert!("maybe".parse::<MigrationEncryption>().is_err());
    }
}
