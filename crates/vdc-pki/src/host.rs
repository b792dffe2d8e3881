//! A host's key pair and signing request, and what a certificate says.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::PkiError;

/// A host's key pair (ECDSA P-256), made once by its agent.
pub struct HostKey {
    key: KeyPair,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey").finish_non_exhaustive()
    }
}

impl HostKey {
    /// A new key pair.
    pub fn generate() -> Result<HostKey, PkiError> {
        Ok(HostKey {
            key: KeyPair::generate().map_err(PkiError::Generate)?,
        })
    }

    /// The key pair kept as PEM (PKCS#8).
    pub fn from_pem(pem: &str) -> Result<HostKey, PkiError> {
        Ok(HostKey {
            key: KeyPair::from_pem(pem).map_err(|_| PkiError::BadCertificate)?,
        })
    }

    /// The private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The raw public key (the bits of the subject public key).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public_key_raw().to_vec()
    }

    /// A certificate signing request for `host`, signed with this key.
    pub fn csr_pem(&self, host: &str) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params
            .serialize_request(&self.key)
            .and_then(|r| r.pem())
            .map_err(PkiError::Generate)
    }
}

/// What a certificate says, for display and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name.
    pub subject_cn: Option<String>,
    /// Issuer common name.
    pub issuer_cn: Option<String>,
    /// Subject alternative names, `DNS:name` or `IP:address`.
    pub sans: Vec<String>,
    /// Start of validity, ms since the Unix epoch.
    pub not_before_ms: u64,
    /// End of validity, ms since the Unix epoch.
    pub not_after_ms: u64,
    /// SHA-256 of the certificate (DER), lower-case hex.
    pub fingerprint: String,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
    /// Usable as a TLS server.
    pub server_auth: bool,
    /// Usable as a TLS client.
    pub client_auth: bool,
    /// The raw public key.
    pub public_key_der: Vec<u8>,
}

fn parse<T>(pem: &str, f: impl FnOnce(&X509Certificate<'_>, &[u8]) -> T) -> Result<T, PkiError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| PkiError::BadCertificate)?;
    let cert = pem.parse_x509().map_err(|_| PkiError::BadCertificate)?;
    Ok(f(&cert, &pem.contents))
}

fn ms(t: x509_parser::time::ASN1Time) -> u64 {
    (t.timestamp().max(0) as u64).saturating_mul(1000)
}

/// Reads a PEM certificate.
pub fn cert_info(pem: &str) -> Result<CertInfo, PkiError> {
    parse(pem, |cert, der| {
        let cn = |name: &x509_parser::x509::X509Name<'_>| {
            name.iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())
                .map(str::to_string)
        };
        let sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => Some(format!(
                                "IP:{}",
                                std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])
                            )),
                            16 => <[u8; 16]>::try_from(*b)
                                .ok()
                                .map(|a| format!("IP:{}", std::net::Ipv6Addr::from(a))),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
        CertInfo {
            subject_cn: cn(cert.subject()),
            issuer_cn: cn(cert.issuer()),
            sans,
            not_before_ms: ms(cert.validity().not_before),
            not_after_ms: ms(cert.validity().not_after),
            fingerprint: Sha256::digest(der)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            is_ca: cert.is_ca(),
            server_auth: eku.is_some_and(|e| e.server_auth),
            client_auth: eku.is_some_and(|e| e.client_auth),
            public_key_der: cert.public_key().subject_public_key.data.to_vec(),
        }
    })
}

/// Whether certificate `cert_pem` carries a valid signature of the CA of
/// `ca_pem`.
pub fn verify_issued_by(cert_pem: &str, ca_pem: &str) -> Result<bool, PkiError> {
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|_| PkiError::BadCertificate)?;
    let ca = ca.parse_x509().map_err(|_| PkiError::BadCertificate)?;
    parse(cert_pem, |cert, _| {
        cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
    })
}
