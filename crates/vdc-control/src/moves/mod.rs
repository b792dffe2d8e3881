//! Moves of a VM's files, for the migration kinds that are not live:
//!
//! - **cold** (stopped VM) and **suspended** migration (the saved memory
//!   state moves too) to another host: when the destination reaches the
//!   VM's datastores only the owner changes; otherwise the files are copied
//!   agent to agent to a datastore of the destination (`files`), then the
//!   record moves, then the source copy is removed;
//! - a stopped or suspended VM's move to another datastore of the same
//!   host: the same copy, from the host to itself;
//! - **storage migration** of a running VM on its host: its disks are
//!   mirrored to the new datastore while it runs (`storage`).
//!
//! Where the files go is planned by pure rules (`plan`). Every move claims
//! the VM with the operation `migrating {source, target}` (a move on one
//! host names that host twice) and is a `vm.migrate` task.
//!
//! ```text
//!  cold / suspended, copy:
//!   claim ─► export on source ─► receive_vm job on destination ─► record:
//!   config', owner = destination ─► close export ─► destroy source copy
//!     └─ any failure or cancel before the record moves: export closed,
//!        the destination's job removed what it made; the VM is where it was
//!  storage (running):
//!   claim ─► mirror_disks job (per disk: create, mirror, ready, complete,
//!   vm.json, old image removed) ─► record: config'
//!     └─ failure or cancel before a disk's switch: the new image is
//!        removed, the VM runs on the old one
//! ```

mod files;
pub mod plan;
mod restart;
mod storage;

use serde_json::json;
use vdc_types::{now_ms, ApiError, InFlight, VmAction, VmOperation};

use crate::lifecycle::Step;

use crate::{Cluster, VmRecord};

/// The journal parameters of a move's `vm.migrate` task.
pub(crate) fn move_params(
    rec: &VmRecord,
    kind: vdc_types::migration::MigrationKind,
    source: &str,
    target: &str,
    datastore: Option<&str>,
) -> vdc_types::TaskParams {
    vdc_types::TaskParams::VmMigrate {
        vm_id: rec.config.id.clone(),
        migration: kind,
        source: source.to_string(),
        target: target.to_string(),
        datastore: datastore.map(str::to_string),
        allow_postcopy: false,
    }
}

/// A host name no host can have (names start with a letter or digit),
/// used to ask the lifecycle whether a move may begin at all.
const ANY_OTHER_HOST: &str = "-";

impl Cluster {
    /// Claims a move of VM `name` to host `target` (its own host for a
    /// datastore move on one host): the lifecycle decides as for any
    /// migration; the operation records `migrating {source, target}`.
    pub(crate) async fn claim_move(
        &self,
        name: &str,
        target: &str,
    ) -> Result<(VmRecord, Step), ApiError> {
        let rec = self.record(name).await?;
        if rec.owner.as_deref() != Some(target) {
            return self
                .begin_operation(name, VmAction::Migrate, Some(target))
                .await;
        }
        let mut step = None;
        let (_, after) = self
            .update_record(name, |mut rec| {
                let mut s = rec.decide(VmAction::Migrate, Some(ANY_OTHER_HOST))?;
                s.operation = VmOperation::Migrating {
                    source: target.to_string(),
                    target: target.to_string(),
                };
                rec.operation = Some(InFlight {
                    operation: s.operation.clone(),
                    task: None,
                    since_ms: now_ms(),
                });
                step = Some(s);
                Ok(rec)
            })
            .await?;
        let step = step.ok_or_else(|| ApiError::internal("move claimed without a step"))?;
        Ok((after, step))
    }

    /// Publishes `vm.migrated` for a move that is not live.
    pub(crate) async fn publish_moved(
        &self,
        name: &str,
        kind: &str,
        source: &str,
        target: &str,
        datastore: Option<&str>,
    ) {
        let where_to = match datastore {
            Some(ds) if source == target => format!("datastore {ds}"),
            Some(ds) => format!("host {target}, datastore {ds}"),
            None => format!("host {target}"),
        };
        self.events
            .publish(
                "vm.migrated",
                name,
                format!("VM {name} moved ({kind}) to {where_to}"),
                json!({"kind": kind, "source": source, "target": target, "datastore": datastore}),
            )
            .await;
    }
}
