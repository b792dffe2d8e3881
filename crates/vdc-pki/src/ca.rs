//! The cluster CA: made once, then signs host certificates.

use std::net::IpAddr;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::{offset_time, PkiError, BACKDATE_SECS, CA_VALIDITY_DAYS, HOST_VALIDITY_DAYS};

/// Common name of the cluster CA's certificate.
pub const CA_COMMON_NAME: &str = "vdc cluster CA";

/// The cluster CA: its certificate and key (PEM) and a signer.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// A host certificate just signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// End of its validity, ms since the Unix epoch.
    pub not_after_ms: u64,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Positive: the first bit clear.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

impl ClusterCa {
    /// Makes a new CA valid from `now_ms` (minus [`BACKDATE_SECS`]) for
    /// [`CA_VALIDITY_DAYS`] days.
    pub fn generate(now_ms: u64) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        dn.push(DnType::OrganizationName, "vdc");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = offset_time(now_ms);
        params.not_before = now - time::Duration::seconds(BACKDATE_SECS);
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// The CA from its certificate and key (PEM), as kept on disk.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|_| PkiError::BadCertificate)?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|_| PkiError::BadCertificate)?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM (written only to the server's state
    /// directory).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs a certificate for `host` over the public key of `csr_pem`
    /// (whose signature is checked; the names it asks for are ignored):
    /// subject `CN=host`, subject alternative names the host's name and
    /// each address, usable as TLS server and client, valid from `now_ms`
    /// for [`HOST_VALIDITY_DAYS`] days.
    pub fn issue_host(
        &self,
        host: &str,
        addresses: &[IpAddr],
        csr_pem: &str,
        now_ms: u64,
    ) -> Result<IssuedCert, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadRequest)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        dn.push(DnType::OrganizationName, "vdc");
        params.distinguished_name = dn;
        let dns = host
            .to_string()
            .try_into()
            .map_err(|_| PkiError::BadName(host.to_string()))?;
        params.subject_alt_names = std::iter::once(SanType::DnsName(dns))
            .chain(addresses.iter().map(|a| SanType::IpAddress(*a)))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = offset_time(now_ms);
        params.not_before = now - time::Duration::seconds(BACKDATE_SECS);
        params.not_after = now + time::Duration::days(HOST_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(PkiError::Generate)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            not_after_ms: crate::unix_ms(params.not_after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cert_info, verify_issued_by, HostKey};

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_host_certificate_names_the_host_and_chains_to_the_ca() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let key = HostKey::generate().unwrap();
        let csr = key.csr_pem("host-2").unwrap();
        let addr: IpAddr = "10.77.3.12".parse().unwrap();
        let issued = ca.issue_host("host-2", &[addr], &csr, NOW).unwrap();
        let info = cert_info(&issued.cert_pem).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("host-2"));
        assert_eq!(info.issuer_cn.as_deref(), Some(CA_COMMON_NAME));
        assert_eq!(
            info.sans,
            vec!["DNS:host-2".to_string(), "IP:10.77.3.12".to_string()]
        );
        assert!(info.server_auth && info.client_auth && !info.is_ca);
        assert_eq!(info.not_after_ms, issued.not_after_ms);
        let days = (info.not_after_ms - NOW) / 86_400_000;
        assert_eq!(days as i64, HOST_VALIDITY_DAYS);
        assert!(info.not_before_ms < NOW);
        assert!(verify_issued_by(&issued.cert_pem, ca.cert_pem()).unwrap());
        // The certificate carries the host's own public key.
        assert_eq!(info.public_key_der, key.public_key_der());
    }

    #[test]
    fn another_ca_does_not_verify_and_a_reloaded_ca_still_does() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let other = ClusterCa::generate(NOW).unwrap();
        let csr = HostKey::generate().unwrap().csr_pem("h1").unwrap();
        let issued = ca.issue_host("h1", &[], &csr, NOW).unwrap();
        assert!(!verify_issued_by(&issued.cert_pem, other.cert_pem()).unwrap());
        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let csr = HostKey::generate().unwrap().csr_pem("h2").unwrap();
        let second = again.issue_host("h2", &[], &csr, NOW).unwrap();
        assert!(verify_issued_by(&second.cert_pem, ca.cert_pem()).unwrap());
        let ca_info = cert_info(ca.cert_pem()).unwrap();
        assert!(ca_info.is_ca);
        assert_eq!(
            ((ca_info.not_after_ms - NOW) / 86_400_000) as i64,
            CA_VALIDITY_DAYS
        );
    }

    #[test]
    fn a_forged_or_garbled_request_is_refused() {
        let ca = ClusterCa::generate(NOW).unwrap();
        assert!(matches!(
            ca.issue_host("h1", &[], "not a csr", NOW),
            Err(PkiError::BadRequest(_))
        ));
        let csr = HostKey::generate().unwrap().csr_pem("h1").unwrap();
        // Flip one character inside the base64 body: signature or parse fails.
        let mut bytes = csr.into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let garbled = String::from_utf8(bytes).unwrap();
        assert!(ca.issue_host("h1", &[], &garbled, NOW).is_err());
    }
}
