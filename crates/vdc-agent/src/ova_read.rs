//! OVA import, the host's part: read an OVA (a tar) once, check it, and
//! later read its disks in place.
//!
//! Inspection, in one pass over the tar: the first member must be the
//! descriptor (`*.ovf`, at most 4 MiB), which `vdc_ovf` reads; every
//! member is digested (SHA-256 and SHA-1) as it passes; the manifest
//! (`*.mf`), if present, must name members that exist with the digests
//! they have; every disk the descriptor names must be a member. A tar
//! that ends early or is not one, a digest that differs, a missing disk, a
//! disk that is not a single-file VMDK is refused (400) with what was
//! wrong; nothing is written.
//!
//! The disks are then read in place by `qemu-img` through QEMU's raw
//! driver with the member's offset and size
//! ([`vdc_disk::qemu_img::vmdk_slice`]), so nothing is extracted.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use vdc_ovf::{Digest, DigestAlgorithm};
use vdc_types::ova::{InspectOvaRequest, OvaInspection, OvaMember};
use vdc_types::{ApiError, ErrorCode};

use crate::agent::Agent;
use crate::error::{disk_error, host_error};

struct Member {
    offset: u64,
    size: u64,
    sha256: String,
    sha1: String,
}

impl Agent {
    /// Resolves an OVA path: absolute, a regular file inside an import
    /// directory or datastore.
    pub(crate) fn checked_ova(&self, source: &str) -> Result<PathBuf, ApiError> {
        let p = PathBuf::from(source);
        if !p.is_absolute() {
            return Err(ApiError::invalid(format!(
                "OVA '{source}' must be an absolute path on host '{}'",
                self.config.name
            )));
        }
        let real = std::fs::canonicalize(&p).map_err(|_| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("OVA '{source}' not found on host '{}'", self.config.name),
            )
        })?;
        let allowed: Vec<PathBuf> = self
            .datastore_roots()
            .into_iter()
            .chain(self.import_roots())
            .collect();
        if !vdc_disk::image::within(&real, &allowed) || !real.is_file() {
            return Err(ApiError::invalid(format!(
                "OVA '{source}' must be a file inside an import directory of host '{}'",
                self.config.name
            )));
        }
        Ok(real)
    }

    /// `POST /ova/inspect`: reads and verifies an OVA (module docs).
    pub async fn inspect_ova(&self, req: &InspectOvaRequest) -> Result<OvaInspection, ApiError> {
        let path = self.checked_ova(&req.source)?;
        let source = req.source.clone();
        let p = path.clone();
        let (descriptor, manifest, members) =
            tokio::task::spawn_blocking(move || read_tar(&p, &source))
                .await
                .map_err(|e| ApiError::internal(format!("the OVA read stopped: {e}")))??;
        let parsed = vdc_ovf::parse_descriptor(&descriptor)
            .map_err(|e| ApiError::invalid(format!("OVA '{}': {e}", req.source)))?;
        if let Some(text) = manifest {
            let entries = vdc_ovf::parse_manifest(&text)
                .map_err(|e| ApiError::invalid(format!("OVA '{}': {e}", req.source)))?;
            for e in entries {
                let m = members.get(&e.file).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "OVA '{}': its manifest names '{}', which the OVA lacks",
                        req.source, e.file
                    ))
                })?;
                let have = match e.algorithm {
                    DigestAlgorithm::Sha256 => &m.sha256,
                    DigestAlgorithm::Sha1 => &m.sha1,
                };
                if *have != e.hex {
                    return Err(ApiError::invalid(format!(
                        "OVA '{}': the digest of '{}' does not match its manifest (the file is damaged or was changed)",
                        req.source, e.file
                    )));
                }
            }
        }
        let sys = parsed.system;
        let mut disks = Vec::new();
        for d in &sys.disks {
            let m = members.get(&d.file).ok_or_else(|| {
                ApiError::invalid(format!(
                    "OVA '{}': disk '{}' named by its descriptor is missing",
                    req.source, d.file
                ))
            })?;
            let spec = vdc_disk::qemu_img::vmdk_slice(&path, m.offset, m.size);
            check_single_vmdk(&spec, &req.source, &d.file).await?;
            disks.push(OvaMember {
                file: d.file.clone(),
                offset: m.offset,
                size: m.size,
            });
        }
        Ok(OvaInspection {
            name: sys.name,
            cpus: sys.cpus,
            memory_mib: sys.memory_mib,
            capacities: sys.disks.iter().map(|d| d.capacity_bytes).collect(),
            disks,
            networks: sys.nics.iter().map(|n| n.network.clone()).collect(),
            ignored: parsed.ignored,
        })
    }
}

/// Refuses a disk that is not a VMDK reading only itself.
pub(crate) async fn check_single_vmdk(spec: &str, ova: &str, file: &str) -> Result<(), ApiError> {
    let info = vdc_disk::qemu_img::probe(Path::new(spec), vdc_disk::qemu_img::INFO_TIMEOUT)
        .await
        .map_err(|e| disk_error(format!("OVA '{ova}': disk '{file}' cannot be read"), e))?;
    let others: Vec<&String> = info
        .other_files
        .iter()
        .filter(|f| !f.starts_with("json:"))
        .collect();
    if info.format != "vmdk" || !others.is_empty() || info.backing_file.is_some() {
        return Err(ApiError::invalid(format!(
            "OVA '{ova}': disk '{file}' is not a single-file VMDK (it is {}{}); vdc imports streamOptimized or monolithic VMDKs",
            info.format,
            if others.is_empty() { String::new() } else { format!(", reading {others:?}") }
        )));
    }
    Ok(())
}

type TarRead = (String, Option<String>, HashMap<String, Member>);

fn read_tar(path: &Path, source: &str) -> Result<TarRead, ApiError> {
    let bad = |what: String| ApiError::invalid(format!("OVA '{source}' {what}"));
    let file = std::fs::File::open(path).map_err(|e| host_error("cannot open the OVA", &e))?;
    let mut ar = tar::Archive::new(file);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("is not a tar archive: {e}")))?;
    let mut descriptor = None;
    let mut manifest = None;
    let mut members = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| bad(format!("is corrupt or truncated: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(format!("has a bad member name: {e}")))?
            .to_string_lossy()
            .into_owned();
        let offset = entry.raw_file_position();
        let size = entry.size();
        if i == 0 && !name.ends_with(".ovf") {
            return Err(bad(format!(
                "does not start with its OVF descriptor (first member '{name}')"
            )));
        }
        let keep = name.ends_with(".ovf") && i == 0 || name.ends_with(".mf");
        if keep && size > vdc_ovf::MAX_DESCRIPTOR_BYTES as u64 {
            return Err(bad(format!("has a '{name}' larger than 4 MiB")));
        }
        let mut s256 = Digest::new(DigestAlgorithm::Sha256);
        let mut s1 = Digest::new(DigestAlgorithm::Sha1);
        let mut kept = Vec::new();
        let mut read = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("is corrupt or truncated in '{name}': {e}")))?;
            if n == 0 {
                break;
            }
            read += n as u64;
            s256.update(&buf[..n]);
            s1.update(&buf[..n]);
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        if read != size {
            return Err(bad(format!("is truncated in '{name}'")));
        }
        if keep {
            let text = String::from_utf8(kept)
                .map_err(|_| bad(format!("has a '{name}' that is not UTF-8 text")))?;
            if i == 0 {
                descriptor = Some(text);
            } else {
                manifest = Some(text);
            }
        }
        members.insert(
            name,
            Member {
                offset,
                size,
                sha256: s256.hex(),
                sha1: s1.hex(),
            },
        );
    }
    let descriptor = descriptor.ok_or_else(|| bad("is empty".into()))?;
    Ok((descriptor, manifest, members))
}
