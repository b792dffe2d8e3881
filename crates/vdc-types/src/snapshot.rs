//! VM snapshots: the tree kept in the VM's directory (`snapshots.json`),
//! the API's words for it, and the pure rules that plan each change.
//!
//! A disk is a chain of qcow2 files, each backed by the one below it. Taking
//! snapshot S freezes the image the guest was writing (it becomes S's
//! *image*) and puts a new empty *active* image on top. So S's image is
//! backed by the image of S's parent (the snapshot that was *current* when
//! S was taken), and the active image by the current snapshot's image:
//!
//! ```text
//!   template ◄── disk0.qcow2 (S1) ◄── disk0.3f2a….qcow2 (S2) ◄── disk0.9c41….qcow2 (active)
//!                      ▲
//!                      └──────────── disk0.77d0….qcow2 (S3, taken after a revert to S1)
//! ```
//!
//! - create: the active images become the new snapshot's images, new
//!   active images on top; current = the new snapshot.
//! - revert to S: new active images on S's images (the old active images
//!   are dropped: what was not snapshotted is gone, as a revert means);
//!   current = S. With memory, S's state file is loaded too.
//! - delete S: each image backed by S's image (its children's images, and
//!   the active image when S is current) takes S's data in (a live
//!   `block-stream`, or `qemu-img rebase` at rest), then S's image and
//!   state file go; S's children get S's parent; current moves to S's
//!   parent if it was S.
//!
//! The chain the guest reads through is as long as the current
//! snapshot's depth plus one; past [`CHAIN_WARNING`] images every create
//! warns, at [`MAX_CHAIN_LENGTH`] it is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Version of `snapshots.json`; a newer one is refused.
pub const SNAPSHOT_TREE_VERSION: u32 = 1;
/// File name of the tree in the VM's directory.
pub const SNAPSHOT_TREE_FILE: &str = "snapshots.json";
/// Longest chain of images a disk may have (active image included).
pub const MAX_CHAIN_LENGTH: usize = 16;
/// Chain length from which a create warns.
pub const CHAIN_WARNING: usize = 12;
/// Longest snapshot name.
pub const MAX_SNAPSHOT_NAME: usize = 64;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 1024;

/// How consistent a snapshot's disks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// The guest agent froze the file systems around the snapshot, or the
    /// VM was stopped (no guest wrote to its disks).
    Quiesced,
    /// Taken while the guest ran without its help (no agent answered; the
    /// reason is in [`Snapshot::quiesce_note`]): what a power cut leaves.
    CrashConsistent,
}

/// One snapshot of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// Name, unique in the VM.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// When it was taken.
    pub created_ms: UnixMillis,
    /// Quiesced or crash-consistent.
    pub consistency: Consistency,
    /// Why it is crash-consistent (no agent answered, …), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce_note: Option<String>,
    /// The VM was running and its memory was saved with it.
    pub memory: bool,
    /// The VM was running when it was taken.
    pub running: bool,
    /// Parent snapshot (None: the root of the tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Frozen image of each disk: disk name → file name in the disk's
    /// directory.
    pub images: BTreeMap<String, String>,
    /// Memory state file in the VM's directory, if `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    /// VMs whose disks are overlays on this snapshot's images (instant
    /// clones): it cannot be deleted while one of them exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clones: Vec<String>,
}

/// The snapshot tree of a VM (`snapshots.json` in its directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTree {
    /// Format version, [`SNAPSHOT_TREE_VERSION`].
    pub version: u32,
    /// Snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// The snapshot the VM's present state descends from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Active image of each disk: disk name → file name in the disk's
    /// directory (absent disk: the configured file).
    #[serde(default)]
    pub active: BTreeMap<String, String>,
}

/// `POST /api/v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshotRequest {
    /// Snapshot name: letters, digits, '-', '_', '.'; at most 64.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Save the running VM's memory too (revert brings it back running).
    #[serde(default)]
    pub memory: bool,
}

/// What a snapshot job does (server → agent).
// A message type, built once per request: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum SnapshotAction {
    /// Take a snapshot.
    Create(CreateSnapshotRequest),
    /// Revert to a snapshot (the VM must be stopped).
    Revert {
        /// Snapshot name.
        name: String,
    },
    /// Delete a snapshot (merging its data into its children).
    Delete {
        /// Snapshot name.
        name: String,
    },
    /// Fork the running VM into `clone` (an instant clone): the VM's disks
    /// frozen as snapshot `name` (the clone's base), its memory saved into
    /// the clone's directory as `suspend.state`, overlays for both.
    InstantClone {
        /// Name of the base snapshot in the source's tree.
        name: String,
        /// The clone's configuration (its directory exists).
        clone: Box<crate::VmConfig>,
        /// Save the memory for the clone to resume from (an instant
        /// clone); false: the guest is quiesced instead and the clone
        /// boots (a clone of a running VM).
        #[serde(default = "yes")]
        memory: bool,
        /// Copy the whole chain into the clone's own image (a full clone,
        /// independent of the base); false: the clone reads the base.
        #[serde(default)]
        full: bool,
    },
}

fn yes() -> bool {
    true
}

/// `POST /api/v1/vms/{name}/clone-running`: a clone of a running VM that
/// boots with its own identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunningCloneRequest {
    /// Name of the new VM.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Linked clone (an overlay on the source's frozen image, which stays
    /// as snapshot `clone-NAME` while the clone exists); default: a full
    /// copy, independent of the source.
    #[serde(default)]
    pub linked: bool,
}

/// `POST /api/v1/vms/{name}/instant-clone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstantCloneRequest {
    /// Name of the new VM.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
}

/// `POST /agent/v1/vms/{id}/guest-identity`: tell a running guest its new
/// identity through the guest agent channel (`vdc-set-identity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestIdentityRequest {
    /// Hostname.
    pub hostname: String,
    /// Address of the first NIC, `A.B.C.D/N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// MAC address of the first NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A snapshot job (`JobOp::Snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotJobRequest {
    /// The VM's configuration.
    pub config: crate::VmConfig,
    /// What to do.
    pub action: SnapshotAction,
}

/// `POST /agent/v1/vms/{id}/snapshots`: read the VM's tree (the host need
/// not know the VM: the configuration locates its directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTreeRequest {
    /// The VM's configuration.
    pub config: crate::VmConfig,
}

/// The API's view of a VM's snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// VM name.
    pub vm: String,
    /// Snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// The snapshot the VM's present state descends from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Images in each disk's chain now (active image included).
    pub chain_length: usize,
    /// Longest chain allowed.
    pub max_chain_length: usize,
    /// Set when the chain is long: delete snapshots before the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Why a snapshot change is refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefusal {
    /// Bad name.
    #[error("snapshot name '{0}' must be 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'")]
    BadName(String),
    /// Description too long.
    #[error("description is longer than 1024 characters")]
    LongDescription,
    /// The name is taken.
    #[error("snapshot '{0}' already exists")]
    Taken(String),
    /// No such snapshot.
    #[error("VM has no snapshot '{0}'")]
    Unknown(String),
    /// The chain is as long as allowed.
    #[error("the disk chain has {0} images, the most allowed; delete a snapshot first")]
    ChainFull(usize),
    /// Memory asked for a VM that does not run.
    #[error("only a running VM's memory can be saved; take a disk-only snapshot")]
    MemoryNotRunning,
    /// The snapshot is the base of instant clones.
    #[error("snapshot '{0}' is the base of VM(s) {1}; delete them first")]
    InUse(String, String),
}

/// Checks a snapshot name.
pub fn validate_name(name: &str) -> Result<(), SnapshotRefusal> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SNAPSHOT_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SnapshotRefusal::BadName(name.to_string()))
    }
}

impl SnapshotTree {
    /// An empty tree of the current version.
    pub fn new() -> SnapshotTree {
        SnapshotTree {
            version: SNAPSHOT_TREE_VERSION,
            ..Default::default()
        }
    }

    /// The snapshot named `name`.
    pub fn get(&self, name: &str) -> Option<&Snapshot> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// Depth of `name` (a root is 1).
    pub fn depth(&self, name: &str) -> usize {
        let mut n = 0;
        let mut at = self.get(name);
        while let Some(s) = at {
            n += 1;
            if n > self.snapshots.len() {
                break;
            }
            at = s.parent.as_deref().and_then(|p| self.get(p));
        }
        n
    }

    /// Images in each disk's chain now, the active image included (the
    /// configured image below the first snapshot counts as its image).
    pub fn chain_length(&self) -> usize {
        self.current.as_deref().map_or(0, |c| self.depth(c)) + 1
    }

    /// A warning when the chain is long.
    pub fn warning(&self) -> Option<String> {
        let n = self.chain_length();
        (n >= CHAIN_WARNING).then(|| {
            format!(
                "the disk chain has {n} images (at most {MAX_CHAIN_LENGTH}); reads slow down as it grows: delete snapshots you no longer need"
            )
        })
    }

    /// Children of `name`.
    pub fn children(&self, name: &str) -> Vec<&Snapshot> {
        self.snapshots
            .iter()
            .filter(|s| s.parent.as_deref() == Some(name))
            .collect()
    }

    /// The API's view of the tree for VM `vm`.
    pub fn list(&self, vm: &str) -> SnapshotList {
        SnapshotList {
            vm: vm.to_string(),
            snapshots: self.snapshots.clone(),
            current: self.current.clone(),
            chain_length: self.chain_length(),
            max_chain_length: MAX_CHAIN_LENGTH,
            warning: self.warning(),
        }
    }

    /// Checks that `req` may be taken now on a VM that is `running`.
    pub fn check_create(
        &self,
        req: &CreateSnapshotRequest,
        running: bool,
    ) -> Result<(), SnapshotRefusal> {
        validate_name(&req.name)?;
        if req.description.chars().count() > MAX_DESCRIPTION {
            return Err(SnapshotRefusal::LongDescription);
        }
        if self.get(&req.name).is_some() {
            return Err(SnapshotRefusal::Taken(req.name.clone()));
        }
        if req.memory && !running {
            return Err(SnapshotRefusal::MemoryNotRunning);
        }
        let n = self.chain_length();
        if n >= MAX_CHAIN_LENGTH {
            return Err(SnapshotRefusal::ChainFull(n));
        }
        Ok(())
    }

    /// Checks that snapshot `name` exists (revert, delete).
    pub fn check_known(&self, name: &str) -> Result<&Snapshot, SnapshotRefusal> {
        self.get(name)
            .ok_or_else(|| SnapshotRefusal::Unknown(name.to_string()))
    }

    /// The tree after taking `snap` with `active` as the new active images.
    pub fn created(&self, mut snap: Snapshot, active: BTreeMap<String, String>) -> SnapshotTree {
        let mut t = self.clone();
        snap.parent = self.current.clone();
        t.current = Some(snap.name.clone());
        t.snapshots.push(snap);
        t.active = active;
        t
    }

    /// The tree after reverting to `name` with `active` as the new active
    /// images.
    pub fn reverted(&self, name: &str, active: BTreeMap<String, String>) -> SnapshotTree {
        let mut t = self.clone();
        t.current = Some(name.to_string());
        t.active = active;
        t
    }

    /// The tree after deleting `name`.
    pub fn deleted(&self, name: &str) -> SnapshotTree {
        let mut t = self.clone();
        let parent = self.get(name).and_then(|s| s.parent.clone());
        t.snapshots.retain(|s| s.name != name);
        for s in &mut t.snapshots {
            if s.parent.as_deref() == Some(name) {
                s.parent = parent.clone();
            }
        }
        if t.current.as_deref() == Some(name) {
            t.current = parent;
        }
        t
    }

    /// Every file the tree owns (images and state files, the active
    /// images included), by bare name.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = self.active.values().cloned().collect();
        for s in &self.snapshots {
            v.extend(s.images.values().cloned());
            v.extend(s.state_file.clone());
        }
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, image: &str) -> Snapshot {
        Snapshot {
            name: name.into(),
            description: String::new(),
            created_ms: 1,
            consistency: Consistency::Quiesced,
            quiesce_note: None,
            memory: false,
            running: true,
            parent: None,
            images: [("disk0".to_string(), image.to_string())].into(),
            state_file: None,
            clones: Vec::new(),
        }
    }

    fn active(f: &str) -> BTreeMap<String, String> {
        [("disk0".to_string(), f.to_string())].into()
    }

    fn req(name: &str) -> CreateSnapshotRequest {
        CreateSnapshotRequest {
            name: name.into(),
            description: String::new(),
            memory: false,
        }
    }

    #[test]
    fn create_revert_delete_keep_the_tree_linked() {
        let t = SnapshotTree::new();
        assert_eq!(t.chain_length(), 1);
        let t = t.created(snap("s1", "disk0.qcow2"), active("a1"));
        let t = t.created(snap("s2", "a1"), active("a2"));
        assert_eq!(t.get("s2").unwrap().parent.as_deref(), Some("s1"));
        assert_eq!(t.chain_length(), 3);
        let t = t.reverted("s1", active("r1"));
        let t = t.created(snap("s3", "r1"), active("a3"));
        assert_eq!(t.get("s3").unwrap().parent.as_deref(), Some("s1"));
        assert_eq!(t.children("s1").len(), 2);
        // Delete the root: both children become roots.
        let t = t.deleted("s1");
        assert!(t.snapshots.iter().all(|s| s.parent.is_none()));
        assert_eq!(t.current.as_deref(), Some("s3"));
        // Delete the current one: current moves to its parent (none).
        let t = t.deleted("s3");
        assert_eq!(t.current, None);
        assert_eq!(t.files(), vec!["a1", "a3"]);
    }

    #[test]
    fn refusals() {
        let t = SnapshotTree::new().created(snap("s1", "disk0.qcow2"), active("a1"));
        assert_eq!(
            t.check_create(&req("s1"), true),
            Err(SnapshotRefusal::Taken("s1".into()))
        );
        for bad in ["", ".x", "a b", "a/b", &"x".repeat(65)] {
            assert!(matches!(
                t.check_create(&req(bad), true),
                Err(SnapshotRefusal::BadName(_))
            ));
        }
        let mut m = req("m");
        m.memory = true;
        assert_eq!(
            t.check_create(&m, false),
            Err(SnapshotRefusal::MemoryNotRunning)
        );
        assert!(t.check_create(&m, true).is_ok());
        assert_eq!(
            t.check_known("nope").err(),
            Some(SnapshotRefusal::Unknown("nope".into()))
        );
    }

    #[test]
    fn chain_limit_and_warning() {
        let mut t = SnapshotTree::new();
        for i in 1..MAX_CHAIN_LENGTH {
            assert!(t.check_create(&req(&format!("s{i}")), false).is_ok());
            t = t.created(
                snap(&format!("s{i}"), &format!("i{i}")),
                active(&format!("a{i}")),
            );
            assert_eq!(t.chain_length(), i + 1);
            assert_eq!(t.warning().is_some(), i + 1 >= CHAIN_WARNING, "{i}");
        }
        assert_eq!(
            t.check_create(&req("last"), false),
            Err(SnapshotRefusal::ChainFull(MAX_CHAIN_LENGTH))
        );
        // Deleting one makes room again.
        let t = t.deleted("s3");
        assert!(t.check_create(&req("last"), false).is_ok());
    }

    #[test]
    fn the_tree_reads_back() {
        let t = SnapshotTree::new().created(snap("s1", "disk0.qcow2"), active("a1"));
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<SnapshotTree>(&s).unwrap(), t);
    }
}
