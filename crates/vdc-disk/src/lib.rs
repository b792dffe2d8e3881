//! Storage on a host: datastores, VM directories, disk images and the VM lock.
//!
//! A VM is a directory on a datastore (see `docs/contracts.md`): its
//! configuration (`vm.json`), its disks, logs and suspended memory state, and
//! a lease file (`vm.lock`) that says which host may open it. Keeping all of
//! it in one directory makes the datastore a second source of truth and lets
//! any host that mounts a shared datastore take a VM over.
//!
//! - [`datastore`]: a named directory, its free space, and path resolution
//!   that refuses anything escaping the datastore root.
//! - [`image`]: which images from outside vdc may be imported, and as
//!   what format (no foreign backing files, no raw files posing as images).
//! - [`qemu_img`]: the `qemu-img` operations the agent needs (create, full
//!   and linked clone, grow, info).
//! - [`vmdir`]: create a VM directory, write `vm.json` atomically, read it
//!   back, remove the directory.
//! - [`lock`]: the VM lease (format, pure rules, I/O off the async runtime),
//!   race-safe between hosts on a shared directory.

#![warn(missing_docs)]

pub mod datastore;
pub mod error;
pub mod image;
pub mod lock;
pub mod qemu_img;
pub mod snapshots;
pub mod vmdir;

pub use datastore::{Capacity, Datastore};
pub use error::DiskError;
pub use lock::{Lease, LeaseDecision, LeaseIo, LeaseTiming, VmLock};
pub use qemu_img::ImageInfo;
pub use vmdir::VmDir;
