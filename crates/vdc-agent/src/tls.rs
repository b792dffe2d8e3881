//! The host's certificate for the migration stream: its key made once and
//! kept in `<state-dir>/tls/` (0600), a certificate signing request sent
//! with every join, and the certificate of the cluster CA the server
//! answers with, laid out as QEMU's `tls-creds-x509` reads it (see
//! `vdc_pki::files::HostTlsDir`). The migration jobs point QEMU at that
//! directory (`migration::tls`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vdc_pki::files::HostTlsDir;
use vdc_types::auth::{HostCertificate, HostTlsBundle};

/// The host's TLS directory and the certificate installed there (clones
/// share it: file work runs on the blocking pool).
#[derive(Clone)]
pub(crate) struct HostTls {
    dir: HostTlsDir,
    installed: Arc<Mutex<Option<HostCertificate>>>,
}

/// What the agent reports of a certificate.
fn report_of(info: &vdc_pki::CertInfo, ca_pem: Option<&str>) -> HostCertificate {
    HostCertificate {
        not_after_ms: info.not_after_ms,
        fingerprint: info.fingerprint.clone(),
        ca_fingerprint: ca_pem
            .and_then(|p| vdc_pki::cert_info(p).ok())
            .map(|c| c.fingerprint)
            .unwrap_or_default(),
        sans: info.sans.clone(),
    }
}

impl HostTls {
    /// The directory `<state-dir>/tls` and what it holds now.
    pub fn open(state_dir: &std::path::Path) -> HostTls {
        let dir = HostTlsDir::new(state_dir.join("tls"));
        let installed = match dir.installed() {
            Ok(Some(info)) => {
                let ca =
                    std::fs::read_to_string(dir.path().join(vdc_pki::files::names::CA_CERT)).ok();
                Some(report_of(&info, ca.as_deref()))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot read the host's migration certificate; the next join asks for a new one");
                None
            }
        };
        HostTls {
            dir,
            installed: Arc::new(Mutex::new(installed)),
        }
    }

    /// The directory QEMU reads (`tls-creds-x509`'s `dir`).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The certificate installed, as reported to the server.
    pub fn installed(&self) -> Option<HostCertificate> {
        self.installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the installed certificate is missing or ends within
    /// `vdc_pki::RENEW_BEFORE_DAYS` of `now_ms`.
    pub fn needs_certificate(&self, now_ms: u64) -> bool {
        self.installed().is_none_or(|c| {
            c.not_after_ms < now_ms + vdc_pki::RENEW_BEFORE_DAYS as u64 * 86_400_000
        })
    }

    /// A signing request for `host` over the kept key (made now if none).
    pub fn csr(&self, host: &str) -> Result<String, vdc_pki::PkiError> {
        self.dir.host_key()?.csr_pem(host)
    }

    /// Installs the certificate a join brought.
    pub fn install(&self, bundle: &HostTlsBundle) -> Result<HostCertificate, vdc_pki::PkiError> {
        let key = self.dir.host_key()?;
        let info = self
            .dir
            .install(&key, &bundle.cert_pem, &bundle.ca_cert_pem)?;
        let cert = report_of(&info, Some(&bundle.ca_cert_pem));
        *self.installed.lock().unwrap_or_else(|p| p.into_inner()) = Some(cert.clone());
        Ok(cert)
    }
}
