//! Files of the CA (server) and of a host's certificate (agent), each
//! written to a temporary file, fsynced, renamed and the directory fsynced;
//! private keys with mode 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{cert_info, ClusterCa, PkiError};

/// Version of `ca.json`.
pub const CA_METADATA_VERSION: u32 = 1;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.display().to_string();
    move |source| PkiError::Io { what, path, source }
}

/// Writes `data` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        // The mode of an existing temporary file is not changed by open.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("set the mode of", &tmp))?;
        f.write_all(data).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("rename into", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// `ca.json`: what the CA directory holds, for people and version checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaMetadata {
    /// Format version ([`CA_METADATA_VERSION`]).
    pub version: u32,
    /// When the CA was made, ms since the Unix epoch.
    pub created_ms: u64,
    /// End of the CA certificate's validity, ms.
    pub not_after_ms: u64,
    /// SHA-256 of the CA certificate.
    pub fingerprint: String,
}

/// The server's CA directory: `ca-cert.pem`, `ca-key.pem` (0600),
/// `ca.json`.
#[derive(Debug, Clone)]
pub struct CaDir {
    dir: PathBuf,
}

impl CaDir {
    /// The CA directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> CaDir {
        CaDir { dir: dir.into() }
    }

    /// Loads the CA, or makes and writes one when the directory holds none
    /// (the server's first start). The key is written before the
    /// certificate and the metadata last, so a crash half-way leaves no
    /// certificate without its key; a directory with a key but no
    /// certificate is made afresh.
    pub fn open_or_create(&self, now_ms: u64) -> Result<(ClusterCa, CaMetadata), PkiError> {
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", &self.dir))?;
        let meta_path = self.dir.join("ca.json");
        if let Some(meta) = read(&meta_path)? {
            let meta: CaMetadata =
                serde_json::from_str(&meta).map_err(|source| PkiError::BadMetadata {
                    path: meta_path.display().to_string(),
                    source,
                })?;
            if meta.version > CA_METADATA_VERSION {
                return Err(PkiError::NewerVersion {
                    path: meta_path.display().to_string(),
                    found: meta.version,
                    supported: CA_METADATA_VERSION,
                });
            }
        }
        let cert_path = self.dir.join("ca-cert.pem");
        let key_path = self.dir.join("ca-key.pem");
        if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) {
            let ca = ClusterCa::from_pem(&cert, &key)?;
            let info = cert_info(&cert)?;
            let meta = CaMetadata {
                version: CA_METADATA_VERSION,
                created_ms: info.not_before_ms + crate::BACKDATE_SECS as u64 * 1000,
                not_after_ms: info.not_after_ms,
                fingerprint: info.fingerprint,
            };
            if read(&meta_path)?.is_none() {
                self.write_meta(&meta)?;
            }
            return Ok((ca, meta));
        }
        let ca = ClusterCa::generate(now_ms)?;
        write_atomic(&key_path, ca.key_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path, ca.cert_pem().as_bytes(), 0o644)?;
        let info = cert_info(ca.cert_pem())?;
        let meta = CaMetadata {
            version: CA_METADATA_VERSION,
            created_ms: now_ms,
            not_after_ms: info.not_after_ms,
            fingerprint: info.fingerprint,
        };
        self.write_meta(&meta)?;
        Ok((ca, meta))
    }

    fn write_meta(&self, meta: &CaMetadata) -> Result<(), PkiError> {
        let json = serde_json::to_vec_pretty(meta).unwrap_or_default();
        write_atomic(&self.dir.join("ca.json"), &json, 0o644)
    }
}

/// Names of the files QEMU's `tls-creds-x509` reads from its `dir`.
pub mod names {
    /// The CA certificate.
    pub const CA_CERT: &str = "ca-cert.pem";
    /// The certificate presented as TLS server (destination).
    pub const SERVER_CERT: &str = "server-cert.pem";
    /// Its key.
    pub const SERVER_KEY: &str = "server-key.pem";
    /// The certificate presented as TLS client (source).
    pub const CLIENT_CERT: &str = "client-cert.pem";
    /// Its key.
    pub const CLIENT_KEY: &str = "client-key.pem";
    /// The host's own key, kept between joins.
    pub const HOST_KEY: &str = "host-key.pem";
}

/// A host's TLS directory, in the layout QEMU's `tls-creds-x509` wants:
/// `ca-cert.pem`, `server-cert.pem`, `server-key.pem`, `client-cert.pem`,
/// `client-key.pem` (the same certificate and key for both roles; keys
/// 0600), and `host-key.pem`, the key kept between joins.
#[derive(Debug, Clone)]
pub struct HostTlsDir {
    dir: PathBuf,
}

impl HostTlsDir {
    /// The directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> HostTlsDir {
        HostTlsDir { dir: dir.into() }
    }

    /// Its path (QEMU's `dir`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The host's key: the kept one, or a new one written now.
    pub fn host_key(&self) -> Result<crate::HostKey, PkiError> {
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", &self.dir))?;
        let path = self.dir.join(names::HOST_KEY);
        if let Some(pem) = read(&path)? {
            return crate::HostKey::from_pem(&pem);
        }
        let key = crate::HostKey::generate()?;
        write_atomic(&path, key.key_pem().as_bytes(), 0o600)?;
        Ok(key)
    }

    /// Installs a certificate signed for `key`, with the CA that signed it.
    /// Refuses one that does not chain to `ca_pem`.
    pub fn install(
        &self,
        key: &crate::HostKey,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<crate::CertInfo, PkiError> {
        if !crate::verify_issued_by(cert_pem, ca_pem)? {
            return Err(PkiError::BadCertificate);
        }
        let info = cert_info(cert_pem)?;
        let key_pem = key.key_pem();
        write_atomic(&self.dir.join(names::SERVER_KEY), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.dir.join(names::CLIENT_KEY), key_pem.as_bytes(), 0o600)?;
        write_atomic(
            &self.dir.join(names::SERVER_CERT),
            cert_pem.as_bytes(),
            0o644,
        )?;
        write_atomic(
            &self.dir.join(names::CLIENT_CERT),
            cert_pem.as_bytes(),
            0o644,
        )?;
        write_atomic(&self.dir.join(names::CA_CERT), ca_pem.as_bytes(), 0o644)?;
        Ok(info)
    }

    /// The installed certificate, if the directory holds a complete set.
    pub fn installed(&self) -> Result<Option<crate::CertInfo>, PkiError> {
        for n in [
            names::CA_CERT,
            names::SERVER_KEY,
            names::CLIENT_CERT,
            names::CLIENT_KEY,
        ] {
            if read(&self.dir.join(n))?.is_none() {
                return Ok(None);
            }
        }
        match read(&self.dir.join(names::SERVER_CERT))? {
            Some(pem) => cert_info(&pem).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_with_a_private_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::new(tmp.path().join("ca"));
        let (ca, meta) = dir.open_or_create(1_800_000_000_000).unwrap();
        let mode = std::fs::metadata(tmp.path().join("ca/ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, meta2) = dir.open_or_create(1_900_000_000_000).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        assert_eq!(meta, meta2);
        std::fs::write(
            tmp.path().join("ca/ca.json"),
            r#"{"version":9,"created_ms":0,"not_after_ms":0,"fingerprint":""}"#,
        )
        .unwrap();
        assert!(matches!(
            dir.open_or_create(0),
            Err(PkiError::NewerVersion { found: 9, .. })
        ));
    }

    #[test]
    fn a_host_directory_has_qemus_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(1_800_000_000_000).unwrap();
        let other = ClusterCa::generate(1_800_000_000_000).unwrap();
        let dir = HostTlsDir::new(tmp.path().join("tls"));
        assert_eq!(dir.installed().unwrap(), None);
        let key = dir.host_key().unwrap();
        let csr = key.csr_pem("h1").unwrap();
        let cert = ca.issue_host("h1", &[], &csr, 1_800_000_000_000).unwrap();
        assert!(dir.install(&key, &cert.cert_pem, other.cert_pem()).is_err());
        let info = dir.install(&key, &cert.cert_pem, ca.cert_pem()).unwrap();
        assert_eq!(dir.installed().unwrap(), Some(info));
        for (n, mode) in [
            (names::CA_CERT, 0o644),
            (names::SERVER_CERT, 0o644),
            (names::SERVER_KEY, 0o600),
            (names::CLIENT_CERT, 0o644),
            (names::CLIENT_KEY, 0o600),
            (names::HOST_KEY, 0o600),
        ] {
            let m = std::fs::metadata(tmp.path().join("tls").join(n)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, mode, "{n}");
        }
        // The kept key is reused.
        assert_eq!(
            dir.host_key().unwrap().public_key_der(),
            key.public_key_der()
        );
    }
}
