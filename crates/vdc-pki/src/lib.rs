//! The cluster's certificate authority and the host certificates it signs,
//! for the TLS of the live migration stream.
//!
//! # Trust model
//! - The server makes one cluster CA at its first start (an ECDSA P-256
//!   key and a self-signed certificate, [`CA_VALIDITY_DAYS`] days) and keeps
//!   it in its state directory ([`files::CaDir`]; the key file 0600).
//! - Each agent makes its own key pair once (kept 0600 in its state
//!   directory; the private key never leaves the host) and sends a
//!   certificate signing request with every join. The server signs a
//!   certificate for the credential's host only, with the host's name and
//!   migration address as subject alternative names, usable as TLS server
//!   and client ([`HOST_VALIDITY_DAYS`] days); the requested names in the
//!   CSR are ignored.
//! - The agent lays the CA certificate, its certificate and key out as
//!   QEMU's `tls-creds-x509` wants them ([`files::HostTlsDir`]).
//!
//! Generation and parsing are in [`ca`] and [`host`]; file I/O in
//! [`files`].

pub mod ca;
pub mod files;
pub mod host;

pub use ca::{ClusterCa, IssuedCert};
pub use host::{cert_info, verify_issued_by, CertInfo, HostKey};

/// Days a cluster CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Days a host certificate is valid; the agent asks for a new one at its
/// next join, or by itself when less than [`RENEW_BEFORE_DAYS`] are left.
pub const HOST_VALIDITY_DAYS: i64 = 365;
/// An agent renews its certificate when fewer days than this are left.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// How far back `not_before` is set, for clocks slightly behind.
pub const BACKDATE_SECS: i64 = 3600;

/// Errors of the CA and host certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating or signing failed.
    #[error("certificate generation failed")]
    Generate(#[source] rcgen::Error),
    /// A certificate signing request could not be read or its signature is
    /// wrong.
    #[error("the certificate signing request is not valid")]
    BadRequest(#[source] rcgen::Error),
    /// A PEM certificate could not be read.
    #[error("the certificate is not a readable PEM X.509 certificate")]
    BadCertificate,
    /// A name or address cannot go into a certificate.
    #[error("'{0}' cannot be a subject alternative name")]
    BadName(String),
    /// A file could not be read or written.
    #[error("cannot {what} {path}")]
    Io {
        /// What was tried.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A metadata file written by a newer version.
    #[error("{path} has version {found}; this version reads up to {supported}")]
    NewerVersion {
        /// The file.
        path: String,
        /// Version found.
        found: u32,
        /// Highest version understood.
        supported: u32,
    },
    /// A metadata file that is not understood.
    #[error("{path} is not understood")]
    BadMetadata {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Milliseconds since the Unix epoch of an X.509 time.
pub(crate) fn unix_ms(t: time::OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// An X.509 time from milliseconds since the Unix epoch, to the second
/// (certificates hold whole seconds).
pub(crate) fn offset_time(ms: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
