//! Live migration with storage: a running VM moves to a host that cannot
//! reach its datastore, its disks mirrored over NBD into a datastore of
//! the destination while it runs (libvirt's "migration with non-shared
//! storage"). The agents' halves are in `vdc-agent/src/migration/`
//! (`incoming_storage`, `outgoing_storage`).
//!
//! Which datastore (pure, `crate::moves::plan::plan_files`): `--datastore
//! DS` when given; otherwise none when the destination reaches every
//! datastore of the VM (a plain live migration), else — only for a VM
//! whose datastores are all host-local — a shared datastore the
//! destination reaches, else one of its own. A VM on shared storage the
//! destination cannot reach is refused unless `--datastore` names where
//! its disks go (leaving shared storage is never a side effect). Without
//! `--to`, placement first looks for a host reaching the VM's datastores,
//! then (host-local VMs) for one with a datastore that has room for the
//! disks.
//!
//! ```text
//!  server                          destination               source
//!  checks, claim migrating{s,t}
//!  job migrate_in(config on DS,  ► dir, vm.json, empty images
//!      copy_storage)                QEMU -incoming defer -S
//!                                   NBD exports, migrate-incoming
//!  ◄──────────────── uri, nbd
//!  job migrate_out(uri, nbd) ─────────────────────────────► mirrors (write-blocking)
//!  disk progress ◄──────────────────────────────────────── ready; memory stream
//!                                   stream completed,       completed (paused);
//!                                   paused; takes the new   mirrors finished
//!                                   directory's lease       (block-job-cancel)
//!  disks_synced ◄───────────────────────────────────────── waits
//!  proceed ─────────────────────► exports stopped, cont
//!  ◄──────────────── runs (VmRuntime)
//!  commit: owner = t, config on DS (one CAS), vm.migrated {datastore}
//!  proceed ───────────────────────────────────────────────► old QEMU stopped,
//!                                                           lease released
//!  destroy (old config) ──────────────────────────────────► old directory and
//!                                                           images removed
//! ```
//!
//! Failure or cancel before the destination's `proceed`: the destination
//! kills its QEMU and removes what it made; the source aborts its mirrors
//! (or, after the stream, `cont`s the guest, which never ran elsewhere).
//! The one case left paused: the destination stops answering just after
//! `proceed` was sent: it may run the guest, so the source must not, and
//! the task says so.

use std::time::Instant;

use vdc_types::agent::VmRuntime;
use vdc_types::job::{Job, JobResult, JobState};
use vdc_types::migration::{MigrateRequest, MigrationReport};
use vdc_types::{ApiError, ErrorCode, VmConfig};

use super::live_jobs::{job_error, CANCEL_LIMIT};
use crate::moves::plan::{plan_files, DatastoreFact, FilesPlan};
use crate::tasks::TaskCtx;
use crate::{Cluster, VmRecord};

impl Cluster {
    /// Where a live migration of `rec` goes: the destination host and, when
    /// it cannot reach the VM's datastores, the datastore its disks move to
    /// (see the module doc).
    pub(super) async fn live_destination(
        &self,
        name: &str,
        rec: &VmRecord,
        source: &str,
        req: &MigrateRequest,
    ) -> Result<(String, Option<String>), ApiError> {
        let known: Vec<DatastoreFact> = self
            .list_datastores()
            .await?
            .into_iter()
            .map(|d| DatastoreFact {
                name: d.name,
                kind: d.kind,
            })
            .collect();
        let host_local = std::iter::once(&rec.config.datastore)
            .chain(rec.config.disks.iter().map(|d| &d.datastore))
            .all(|ds| {
                known
                    .iter()
                    .any(|k| &k.name == ds && k.kind != vdc_types::DatastoreKind::Shared)
            });
        if let Some(to) = req.to.as_deref() {
            if to == source {
                // The refusal names the host.
                return self
                    .pick_target(name, rec, source, Some(to), None)
                    .await
                    .map(|t| (t, None));
            }
            self.agent_url(to).await?;
            let reaches = self.host_datastores(to).await;
            let ds = match plan_files(
                &rec.config,
                false,
                to,
                &reaches,
                req.datastore.as_deref(),
                &known,
            )? {
                FilesPlan::OwnershipOnly => None,
                FilesPlan::Copy { .. } if req.datastore.is_none() && !host_local => None,
                FilesPlan::Copy { datastore } => Some(datastore),
            };
            let target = self
                .pick_target(name, rec, source, Some(to), ds.as_deref())
                .await?;
            return Ok((target, ds));
        }
        let first = match self.pick_target(name, rec, source, None, None).await {
            Ok(t) => return Ok((t, None)),
            Err(e) if host_local => e,
            Err(e) => return Err(e),
        };
        let mut hosts: Vec<_> = self
            .capacities()
            .await
            .into_iter()
            .filter(|c| c.available && c.name != source)
            .collect();
        hosts.sort_by(|a, b| {
            b.memory_free_mib
                .cmp(&a.memory_free_mib)
                .then(a.name.cmp(&b.name))
        });
        for h in hosts {
            let Ok(FilesPlan::Copy { datastore }) =
                plan_files(&rec.config, false, &h.name, &h.datastores, None, &known)
            else {
                continue;
            };
            if self.storage_room(name, rec, &datastore).await.is_err() {
                continue;
            }
            if let Ok(t) = self
                .pick_target(name, rec, source, Some(&h.name), Some(&datastore))
                .await
            {
                return Ok((t, Some(datastore)));
            }
        }
        Err(first)
    }

    /// Refusals of a live migration with storage to `datastore`, before
    /// anything moves: post-copy asked for (400), no room for the disks
    /// (409).
    pub(super) async fn check_storage_move(
        &self,
        name: &str,
        rec: &VmRecord,
        datastore: &str,
        req: &MigrateRequest,
    ) -> Result<(), ApiError> {
        if req.allow_postcopy == Some(true) {
            return Err(ApiError::invalid(format!(
                "post-copy cannot be used while the disks of VM '{name}' move to datastore '{datastore}' (the source must keep every disk block until the end); leave allow_postcopy out or false"
            )));
        }
        self.storage_room(name, rec, datastore).await
    }

    /// 409 `insufficient_capacity` when `datastore` has less free space
    /// than the virtual sizes of the VM's disks.
    pub(crate) async fn storage_room(
        &self,
        name: &str,
        rec: &VmRecord,
        datastore: &str,
    ) -> Result<(), ApiError> {
        let free = self.get_datastore(datastore).await?.free_bytes;
        let need: u64 = rec.config.disks.iter().map(|d| d.size_bytes).sum();
        if need > free {
            return Err(ApiError::new(
                ErrorCode::InsufficientCapacity,
                format!(
                    "datastore '{datastore}' has {free} bytes free; the disks of VM '{name}' may grow to {need} bytes; free space there or choose another datastore"
                ),
            ));
        }
        Ok(())
    }

    /// Every disk synced and the guest paused on the source: the
    /// destination is told to run it. Returns its runtime there. A failure
    /// where the destination surely did not run the guest cancels the
    /// source's job (the guest runs on there).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn switch_over_storage(
        &self,
        ctx: &TaskCtx,
        name: &str,
        source: &str,
        src_url: &str,
        out_id: &str,
        target: &str,
        dst_url: &str,
        in_id: &str,
        report: &mut MigrationReport,
    ) -> Result<VmRuntime, ApiError> {
        ctx.set_migration(report).await;
        if let Err(e) = ctx.check_cancel() {
            self.cancel_and_wait(target, dst_url, in_id).await;
            self.cancel_and_wait(source, src_url, out_id).await;
            return Err(e);
        }
        ctx.progress(95, "the destination runs the guest").await;
        let began = Instant::now();
        let ran = match self.agents.proceed_job(target, dst_url, in_id).await {
            Ok(_) => self.follow_to_end(ctx, target, dst_url, in_id).await,
            Err(e) => Err(e),
        };
        let failed = match ran {
            Ok(d) => {
                self.journal_end(ctx, in_id, d.state).await;
                if let (JobState::Succeeded, Some(JobResult::Vm(rt))) = (&d.state, &d.result) {
                    if let Some(o) = &mut report.outcome {
                        o.downtime_ms += began.elapsed().as_millis() as u64;
                    }
                    return Ok(rt.clone());
                }
                job_error(target, &d)
            }
            Err(e) => {
                // Did the destination surely not run it? Only an ended,
                // failed job says so.
                self.cancel_and_wait(target, dst_url, in_id).await;
                let vm_id = self.record(name).await?.config.id;
                let runs_there = self
                    .runtime(target, &vm_id)
                    .await
                    .is_some_and(|rt| rt.state.has_process());
                match self.agents.job(target, dst_url, in_id, 0).await {
                    Ok(d) if d.state.is_final() && d.state != JobState::Succeeded => e,
                    // Its agent restarted: it removed a guest that had not
                    // run (the incoming mark), and reports one that had.
                    Err(j) if j.code == ErrorCode::NotFound && !runs_there => e,
                    _ => {
                        tracing::error!(vm = %name, %target, error = %e, "the destination stopped answering after it was told to run the guest; the guest stays paused on the source");
                        return Err(ApiError::new(
                            ErrorCode::HostUnavailable,
                            format!(
                                "host '{target}' stopped answering just after it was told to run VM '{name}' ({}); the VM stays paused on host '{source}' so that it never runs twice; check host '{target}'",
                                e.message
                            ),
                        ));
                    }
                }
            }
        };
        tracing::warn!(vm = %name, error = %failed.message, "the destination did not run the guest; it runs on at the source");
        self.cancel_and_wait(source, src_url, out_id).await;
        Err(failed)
    }

    /// A job followed to its end (a silent host fails after the
    /// migration's silence limit).
    async fn follow_to_end(
        &self,
        ctx: &TaskCtx,
        host: &str,
        url: &str,
        id: &str,
    ) -> Result<Job, ApiError> {
        loop {
            let j = self.follow(ctx, host, url, id, 5).await?;
            if j.state.is_final() {
                return Ok(j);
            }
        }
    }

    /// After the commit: the source stops its old (paused) QEMU and its
    /// directory and images go. Failures are logged and published
    /// (`vm.files_left`).
    pub(super) async fn clean_source(
        &self,
        name: &str,
        source: &str,
        src_url: &str,
        out_id: &str,
        old: &VmConfig,
    ) {
        if let Err(e) = self.agents.proceed_job(source, src_url, out_id).await {
            tracing::warn!(vm = %name, %source, error = %e, "cannot tell the source to stop its old QEMU; its lease lapses and its supervisor stops it");
        }
        let since = Instant::now();
        while since.elapsed() < CANCEL_LIMIT {
            match self.agents.job(source, src_url, out_id, 5).await {
                Ok(j) if j.state.is_final() => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(vm = %name, %source, error = %e, "cannot follow the source's end of the migration");
                    break;
                }
            }
        }
        self.destroy_old_files(name, source, src_url, old).await;
    }
}
