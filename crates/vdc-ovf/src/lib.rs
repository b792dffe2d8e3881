//! OVF (DMTF DSP0243, versions 1.x and 2.x): the descriptor vdc writes for
//! a VM it exports, the descriptors other platforms write (VMware,
//! VirtualBox) read back into what vdc can make of them, and the manifest
//! (`.mf`) of an OVA. Pure: strings in, strings out; the agent does the
//! file and tar work.
//!
//! An OVA is a tar whose first member is the descriptor (`NAME.ovf`), then
//! the manifest (`NAME.mf`: one `SHA256(file)= hex` line per other member;
//! `SHA1` from older tools), then the disks (streamOptimized VMDK).
//!
//! Reading a descriptor keeps what a vdc VM has (name, vCPUs, memory,
//! disks with their capacity, NICs with their network) and lists every
//! other thing it saw as *ignored* (controllers, CD drives, USB, sound,
//! video, `vmw:`/`vbox:` extensions, sections vdc has no use for), so an
//! import can say what it left behind. Resource types (CIM
//! `ResourceType`): 3 processor, 4 memory, 10 Ethernet adapter, 17 disk
//! drive; allocation units in the DMTF programmatic form (`byte * 2^20`)
//! or the older words (`MegaBytes`). Elements are matched by local name,
//! so OVF 2.x's `epasd:`/`sasd:` items read as 1.x's `rasd:` ones.

mod manifest;
mod read;
mod write;

pub use manifest::{manifest, parse_manifest, Digest, DigestAlgorithm, ManifestEntry};
pub use read::{allocation_units, parse_descriptor, Parsed};
pub use write::write_descriptor;

/// Longest descriptor read, bytes.
pub const MAX_DESCRIPTOR_BYTES: usize = 4 << 20;

/// The virtual machine an OVF describes, as far as vdc makes VMs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OvfSystem {
    /// `VirtualSystem`'s name (its `Name`, else its `ovf:id`).
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Disks in the order of the hardware section.
    pub disks: Vec<OvfDisk>,
    /// NICs in the order of the hardware section.
    pub nics: Vec<OvfNic>,
}

/// A disk of an [`OvfSystem`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OvfDisk {
    /// File name inside the package (the `File`'s `href`).
    pub file: String,
    /// Size of that file, bytes, if stated.
    pub file_size: Option<u64>,
    /// Capacity the guest sees, bytes.
    pub capacity_bytes: u64,
}

/// A NIC of an [`OvfSystem`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OvfNic {
    /// Network name (`Connection`).
    pub network: String,
    /// MAC address, if stated.
    pub mac: Option<String>,
}

/// Why a descriptor or manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvfError {
    /// Not well-formed XML.
    #[error("the descriptor is not well-formed XML: {0}")]
    Xml(String),
    /// The root is not an OVF `Envelope`.
    #[error("the descriptor's root is <{0}>, not an OVF <Envelope>")]
    NotAnEnvelope(String),
    /// No `VirtualSystem` (or only a `VirtualSystemCollection`).
    #[error("the descriptor has no VirtualSystem (collections of several VMs are not imported)")]
    NoVirtualSystem,
    /// A number that is not one.
    #[error("{what} '{value}' is not a number")]
    BadNumber {
        /// Which field.
        what: String,
        /// What it held.
        value: String,
    },
    /// Allocation units vdc cannot read.
    #[error("allocation units '{0}' are not understood (expected e.g. 'byte * 2^20')")]
    BadUnits(String),
    /// A disk drive naming a disk the DiskSection lacks, or a disk naming a
    /// file the References lack.
    #[error("{0}")]
    Dangling(String),
    /// No processor or memory item.
    #[error("the hardware section has no {0} item")]
    Missing(&'static str),
    /// A manifest line vdc cannot read.
    #[error("manifest line {line} is not 'ALGO(file)= hex': {text:?}")]
    BadManifestLine {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}
