//! Cold migration of a stopped VM and migration of a suspended VM (its
//! saved state moves with it) to another host: only ownership moves when
//! the destination reaches the VM's datastores, else the files are copied
//! agent to agent (the flow is in `crate::moves`).

use std::sync::Arc;

use vdc_types::migration::MigrateRequest;
use vdc_types::{ApiError, Task};

use crate::{Cluster, VmRecord};

impl Cluster {
    /// Moves stopped VM `name` to another host (a `vm.migrate` task).
    pub(crate) async fn cold_migration(
        self: &Arc<Self>,
        name: &str,
        _rec: VmRecord,
        req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        self.move_vm_files(name, req.to, req.datastore).await
    }

    /// Moves suspended VM `name` and its saved state to another host (a
    /// `vm.migrate` task).
    pub(crate) async fn suspended_migration(
        self: &Arc<Self>,
        name: &str,
        _rec: VmRecord,
        req: MigrateRequest,
    ) -> Result<Task, ApiError> {
        self.move_vm_files(name, req.to, req.datastore).await
    }
}
