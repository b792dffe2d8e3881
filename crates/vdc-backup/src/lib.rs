//! The backup store of vdc: a directory holding a deduplicated chunk store
//! and one manifest per backup, and the pure rules around it (retention,
//! garbage collection), with no QEMU in sight. The agent reads a VM's disks
//! over NBD ([`nbd`]) and feeds them to a [`session::BackupSession`]; a
//! restore ([`restore`]) writes them back, reading chunks in parallel.
//!
//! ```text
//!  DIR/vdc-backup-store.json      header: magic, version, chunk size, key check
//!  DIR/chunks/ab/abcdef…          one file per chunk, named by its digest
//!  DIR/backups/ID.json            one manifest per complete backup (written last)
//!  DIR/backups/ID.damaged         left by a verify that found a bad chunk
//!  DIR/writers/ID.json            a backup being written (start time, host)
//! ```
//!
//! The on-disk formats are frozen in [`format`]; every file written is
//! written to a temporary name, fsynced and renamed, and the manifest only
//! after every chunk it names (and the directories holding them) is synced:
//! a backup killed half-way has no manifest and never lists as complete.

pub mod chunk;
pub mod error;
pub mod files;
pub mod format;
pub mod gc;
pub mod incremental;
pub mod key;
pub mod nbd;
pub mod nbd_server;
pub mod restore;
pub mod retention;
pub mod session;
pub mod store;
pub mod sync;
pub mod verify;

pub use error::BackupError;
pub use store::Store;
