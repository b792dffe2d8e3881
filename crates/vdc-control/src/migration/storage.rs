//! Storage migration of a VM's disks to another datastore: a running VM's
//! disks are mirrored on its host while it runs, or, with a host move, to
//! the destination over NBD (a live migration with storage,
//! `live_storage`); a stopped or suspended
//! VM's files are copied (to its own host's datastore, or with a host
//! move). The flows are in `crate::moves`.

use std::sync::Arc;

use vdc_types::migration::MigrateRequest;
use vdc_types::{ApiError, Task, VmPowerState};

use crate::{Cluster, VmRecord};

impl Cluster {
    /// Moves VM `name`'s disks to `req.datastore` (a `vm.migrate` task).
    pub(crate) async fn storage_migration(
        self: &Arc<Self>,
        name: &str,
        rec: VmRecord,
        req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        let Some(datastore) = req.datastore.clone() else {
            return Err(ApiError::invalid("a storage migration names a datastore"));
        };
        // Each path below refuses a VM with snapshots after its own
        // checks of the request (`refuse_disk_copy_with_snapshots`).
        match rec.state {
            VmPowerState::Running | VmPowerState::Paused
                if req.to.is_some() && req.to != rec.owner =>
            {
                // A host move too: live migration with storage.
                self.live_migration(name, rec, req).await
            }
            VmPowerState::Running | VmPowerState::Paused => {
                self.move_vm_storage(name, req.to, &datastore).await
            }
            _ => self.move_vm_files(name, req.to, Some(datastore)).await,
        }
    }
}
