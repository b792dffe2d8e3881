//! The manifest of an OVF package: `ALGO(file)= hex` per line.

use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use crate::OvfError;

/// A digest algorithm a manifest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-256 (OVF 2.x, and what vdc writes).
    Sha256,
    /// SHA-1 (OVF 1.x tools).
    Sha1,
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Algorithm.
    pub algorithm: DigestAlgorithm,
    /// File name inside the package.
    pub file: String,
    /// Lower-case hex digest.
    pub hex: String,
}

/// A running digest of one algorithm.
pub enum Digest {
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-1.
    Sha1(Sha1),
}

impl Digest {
    /// A new digest of `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Digest::Sha256(Sha256::new()),
            DigestAlgorithm::Sha1 => Digest::Sha1(Sha1::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Digest::Sha256(d) => d.update(data),
            Digest::Sha1(d) => d.update(data),
        }
    }

    /// Lower-case hex of the digest.
    pub fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Digest::Sha256(d) => d.finalize().to_vec(),
            Digest::Sha1(d) => d.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The manifest of `(file, sha256 hex)` pairs, in order.
pub fn manifest(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(f, h)| format!("SHA256({f})= {h}\n"))
        .collect()
}

/// Reads a manifest (SHA256 and SHA1 lines; blank lines skipped).
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, OvfError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || OvfError::BadManifestLine {
            line: i + 1,
            text: raw.chars().take(200).collect(),
        };
        let (algo, rest) = line.split_once('(').ok_or_else(bad)?;
        let (file, hex) = rest.split_once(")=").ok_or_else(bad)?;
        let algorithm = match algo.trim() {
            "SHA256" => DigestAlgorithm::Sha256,
            "SHA1" => DigestAlgorithm::Sha1,
            _ => return Err(bad()),
        };
        let hex = hex.trim().to_ascii_lowercase();
        let len = match algorithm {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha1 => 40,
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        out.push(ManifestEntry {
            algorithm,
            file: file.to_string(),
            hex,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_read_sha1() {
        let mut d = Digest::new(DigestAlgorithm::Sha256);
        d.update(b"abc");
        let h = d.hex();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let m = manifest(&[("a.ovf".into(), h.clone())]);
        assert_eq!(m, format!("SHA256(a.ovf)= {h}\n"));
        let e = parse_manifest(&m).unwrap();
        assert_eq!(e[0].file, "a.ovf");
        assert_eq!(e[0].algorithm, DigestAlgorithm::Sha256);
        let mut d = Digest::new(DigestAlgorithm::Sha1);
        d.update(b"abc");
        let sha1 = d.hex();
        assert_eq!(sha1, "a9993e364706816aba3e25717850c26c9cd0d89d");
        let e =
            parse_manifest(&format!("SHA1(disk1.vmdk)= {}\r\n\n", sha1.to_uppercase())).unwrap();
        assert_eq!(e[0].hex, sha1);
        assert_eq!(e[0].algorithm, DigestAlgorithm::Sha1);
        for bad in [
            "MD5(x)= 00",
            "SHA256(x) 00",
            "SHA256(x)= zz",
            "SHA1(x)= abc",
        ] {
            assert!(parse_manifest(bad).is_err(), "{bad}");
        }
    }
}
