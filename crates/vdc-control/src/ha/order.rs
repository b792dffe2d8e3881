//! The restart order: which VMs lost by failed (or isolated) hosts the HA
//! manager restarts now, by order group and priority
//! ([`vdc_sched::ha_order::restart_order`]), and the ones deferred for want
//! of a host to run them.
//!
//! Each VM awaiting its restart has a durable entry, `/ha/restarts/<vm>`
//! (`{version, vm, group, since_ms}`), written when the VM first enters the
//! plan and removed once it runs again with its guest ready (or is deleted,
//! stopped, disabled, or its host takes it back). So a server restarted
//! mid-way knows which VMs of a dependency group are restarted but not yet
//! ready, and how long each VM has waited (server wall clock): the order
//! resumes where it was.
//!
//! A deferred restart, drawn:
//!
//! ```text
//!  lost ──place?──► no host to run it ──► deferred (ha.restart_deferred, alarm raised)
//!    ▲                                      │ each tick: would it fit now? (a host joins or
//!    │                                      │ reconnects, leaves maintenance, a VM stops or is
//!    │                                      │ deleted)
//!    └──────── yes (ha.restart_retry) ◄─────┘
//!  lost ──► restarting ──► started ──► ready: entry removed; alarm cleared once it runs
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vdc_sched::ha::{HostVerdict, Protected};
use vdc_sched::ha_order::{restart_order, Awaiting, Hold, Phase, Step};
use vdc_store::StoreExt;
use vdc_types::ha_group::{AlarmSeverity, DEFAULT_READY_TIMEOUT_S};
use vdc_types::{now_ms, UnixMillis, VmOperation, VmPowerState};

use super::{priority_of, RETRY_AFTER};
use crate::{store_err, Cluster, VmRecord};

const PREFIX: &str = "/ha/restarts/";

/// Version of a `/ha/restarts/<vm>` entry.
pub const RESTART_ENTRY_VERSION: u32 = 1;

/// The kind of the alarm raised for a deferred restart.
pub const DEFERRED_ALARM: &str = "ha.restart_deferred";

/// A VM awaiting its restart (durable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RestartEntry {
    pub version: u32,
    pub vm: String,
    pub since_ms: UnixMillis,
}

/// A host verdict by name.
pub(crate) type Judged = [(String, HostVerdict, Option<Duration>, Option<Duration>)];

fn verdict_in(judged: &Judged, host: &str) -> HostVerdict {
    judged
        .iter()
        .find(|(n, _, _, _)| n == host)
        .map(|(_, v, _, _)| *v)
        .unwrap_or(HostVerdict::Connected)
}

impl Cluster {
    /// One tick of the restart order (see the module documentation).
    pub(crate) async fn restart_in_order(self: &Arc<Self>, judged: &Judged) {
        if let Err(e) = self.order_tick(judged).await {
            tracing::warn!(error = %e, "HA restart order");
        }
    }

    async fn order_tick(self: &Arc<Self>, judged: &Judged) -> Result<(), vdc_types::ApiError> {
        let troubled = judged
            .iter()
            .any(|(_, v, _, _)| *v != HostVerdict::Connected);
        let entries: Vec<RestartEntry> = self
            .store
            .list_json::<RestartEntry>(PREFIX)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.version <= RESTART_ENTRY_VERSION)
            .collect();
        if !troubled && entries.is_empty() {
            return Ok(());
        }
        let records: Vec<VmRecord> = self.list_values("/vms/").await?;
        let by_name: HashMap<&str, &VmRecord> = records
            .iter()
            .map(|r| (r.config.name.as_str(), r))
            .collect();
        // The plan: lost, protected VMs of failed hosts (or of isolated ones
        // whose isolation response stops them).
        let protected: Vec<Protected> = records
            .iter()
            .filter_map(|r| {
                Some(Protected {
                    name: r.config.name.clone(),
                    priority: priority_of(r),
                    owner: r.owner.clone()?,
                    lost_and_free: r.state == VmPowerState::Unknown && r.operation.is_none(),
                    leaves_when_isolated: r.config.ha.isolation_response
                        != vdc_types::ha::IsolationResponse::KeepRunning,
                })
            })
            .collect();
        let plan: HashSet<String> =
            vdc_sched::ha::restart_plan(&protected, |h| verdict_in(judged, h))
                .into_iter()
                .map(|p| p.name.clone())
                .collect();
        let mut since: HashMap<String, UnixMillis> =
            entries.iter().map(|e| (e.vm.clone(), e.since_ms)).collect();
        for name in &plan {
            if !since.contains_key(name) {
                let e = RestartEntry {
                    version: RESTART_ENTRY_VERSION,
                    vm: name.clone(),
                    since_ms: now_ms(),
                };
                self.store
                    .put_json(&format!("{PREFIX}{name}"), &e)
                    .await
                    .map_err(store_err)?;
                since.insert(name.clone(), e.since_ms);
            }
        }
        let doc = self.ha_groups_doc().await?;
        let rules = doc.rules();
        let timeout_of = |g: Option<&str>| {
            rules
                .iter()
                .find(|r| Some(r.name.as_str()) == g)
                .map(|r| r.ready_timeout)
                .unwrap_or(Duration::from_secs(DEFAULT_READY_TIMEOUT_S))
        };
        let now = now_ms();
        let instant = Instant::now();
        let (failed_at, deferred): (HashMap<String, Instant>, HashSet<String>) = self
            .ha
            .lock()
            .map(|m| (m.failed_at.clone(), m.no_room.clone()))
            .unwrap_or_default();
        let mut awaiting = Vec::new();
        let mut done: Vec<(String, Option<String>)> = Vec::new();
        for (name, since_ms) in &since {
            let waited = Duration::from_millis(now.saturating_sub(*since_ms));
            let Some(r) = by_name.get(name.as_str()) else {
                done.push((name.clone(), Some("the VM was deleted".into())));
                continue;
            };
            let group = r.config.ha.group.clone();
            let failing_over = matches!(
                r.operation.as_ref().map(|o| &o.operation),
                Some(VmOperation::FailingOver { .. })
            );
            let phase = if failing_over {
                Phase::Restarting
            } else if plan.contains(name) {
                let backing_off = failed_at
                    .get(name)
                    .is_some_and(|t| instant.duration_since(*t) < RETRY_AFTER);
                if backing_off || deferred.contains(name) {
                    Phase::Deferred
                } else {
                    Phase::Lost
                }
            } else if r.state == VmPowerState::Running
                && r.owner
                    .as_deref()
                    .is_some_and(|o| verdict_in(judged, o) == HostVerdict::Connected)
            {
                if r.guest.ready {
                    done.push((name.clone(), None));
                    continue;
                }
                // A guest that never reports ready holds its dependents
                // until their timeouts; its entry goes after twice its own.
                if waited >= timeout_of(group.as_deref()) * 2 {
                    done.push((name.clone(), None));
                    continue;
                }
                Phase::Started
            } else if r.state.has_process() || r.state == VmPowerState::Unknown {
                // Starting, or lost on a host not judged failed (yet or
                // any more): it keeps its place.
                if r.state == VmPowerState::Unknown && r.operation.is_none() {
                    Phase::Deferred
                } else {
                    Phase::Started
                }
            } else {
                done.push((
                    name.clone(),
                    Some(format!("the VM is {} and not restarted", r.state)),
                ));
                continue;
            };
            awaiting.push(Awaiting {
                name: name.clone(),
                group,
                priority: priority_of(r),
                waited,
                phase,
            });
        }
        for (name, why) in done {
            self.end_awaiting(&name, why.as_deref()).await;
        }
        // Deferred for want of a host: retried as soon as it would fit.
        let caps = self.capacities().await;
        for a in awaiting.iter_mut() {
            if a.phase == Phase::Deferred && deferred.contains(&a.name) {
                let Some(r) = by_name.get(a.name.as_str()) else {
                    continue;
                };
                let from = r.owner.clone().unwrap_or_default();
                let others: Vec<_> = caps.iter().filter(|c| c.name != from).cloned().collect();
                if let Ok(host) = vdc_sched::place(&super::failover::demand_of(r), &others) {
                    if let Ok(mut m) = self.ha.lock() {
                        m.no_room.remove(&a.name);
                        m.failed_at.remove(&a.name);
                    }
                    self.events
                        .publish(
                            "ha.restart_retry",
                            &a.name,
                            format!("room appeared for VM {} on {host}: restarting it", a.name),
                            json!({"host": host, "reason": "room appeared"}),
                        )
                        .await;
                    a.phase = Phase::Lost;
                }
            }
        }
        for step in restart_order(&awaiting, &rules) {
            match step {
                Step::Hold { vm, why } => self.note_hold(&vm, &why).await,
                Step::Start { vm, late } => {
                    let Some(r) = by_name.get(vm.as_str()) else {
                        continue;
                    };
                    if let Some(why) = self.no_host_for(r, &caps) {
                        self.defer_restart(&vm, &why).await;
                        continue;
                    }
                    if !late.is_empty() {
                        self.note_late(&vm, r.config.ha.group.as_deref(), &late, &rules)
                            .await;
                    }
                    if let Ok(mut m) = self.ha.lock() {
                        m.held.remove(&vm);
                    }
                    if let Err(e) = self
                        .failover_vm(&vm, "its host failed or was isolated")
                        .await
                    {
                        tracing::info!(vm = %vm, error = %e, "failover not started");
                        self.note_failover_failed(&vm);
                    }
                }
            }
        }
        Ok(())
    }

    /// Why no surviving host can run `rec` now, if none can.
    fn no_host_for(&self, rec: &VmRecord, caps: &[vdc_sched::HostCapacity]) -> Option<String> {
        let from = rec.owner.clone().unwrap_or_default();
        let others: Vec<_> = caps.iter().filter(|c| c.name != from).cloned().collect();
        let e = vdc_sched::place(&super::failover::demand_of(rec), &others).err()?;
        let reason = match e {
            vdc_sched::PlacementError::NoHosts => {
                "no surviving host is connected and out of maintenance".to_string()
            }
            vdc_sched::PlacementError::NoDatastoreAccess(d) => {
                format!("no surviving host reaches datastore(s) {d}")
            }
            e => format!("no surviving host has room: {e}"),
        };
        Some(reason)
    }

    /// Defers a restart for want of a host: an event and an alarm, once,
    /// until it restarts.
    pub(crate) async fn defer_restart(&self, name: &str, why: &str) {
        let first = self
            .ha
            .lock()
            .map(|mut m| m.no_room.insert(name.to_string()))
            .unwrap_or(true);
        if !first {
            return;
        }
        let reason = format!(
            "VM {name} cannot be restarted: {why}; it is restarted as soon as room appears (a host joins or reconnects, leaves maintenance, or a VM stops)"
        );
        self.events
            .publish(
                "ha.restart_deferred",
                name,
                reason.clone(),
                json!({"reason": why}),
            )
            .await;
        if let Err(e) = self
            .raise_alarm(DEFERRED_ALARM, name, AlarmSeverity::Critical, &reason)
            .await
        {
            tracing::warn!(vm = %name, error = %e, "cannot raise the deferred-restart alarm");
        }
    }

    /// The VM runs again (or no longer awaits a restart): its entry goes
    /// and its alarm clears.
    pub(crate) async fn end_awaiting(&self, name: &str, why: Option<&str>) {
        if let Err(e) = self.store.delete(&format!("{PREFIX}{name}")).await {
            tracing::warn!(vm = %name, error = %e, "cannot remove the VM's restart entry");
        }
        if let Ok(mut m) = self.ha.lock() {
            m.no_room.remove(name);
            m.held.remove(name);
        }
        let why = why.unwrap_or("the VM runs again");
        if let Err(e) = self.clear_alarms(DEFERRED_ALARM, name, why).await {
            tracing::warn!(vm = %name, error = %e, "cannot clear the deferred-restart alarm");
        }
    }

    /// Publishes `ha.restart_waiting` when a VM's reason to wait changes.
    async fn note_hold(&self, vm: &str, why: &Hold) {
        let (text, data) = match why {
            Hold::Dependencies(deps) => {
                let names: Vec<String> = deps
                    .iter()
                    .map(|(g, left)| format!("{g} (up to {} s more)", left.as_secs()))
                    .collect();
                (
                    format!(
                        "VM {vm} waits for the VMs of group(s) {} to report ready",
                        names.join(", ")
                    ),
                    json!({"waiting_for_groups": deps.iter().map(|(g, _)| g).collect::<Vec<_>>()}),
                )
            }
            Hold::HigherPriority(other) => (
                format!("VM {vm} waits for VM {other} of a higher priority in its group"),
                json!({"waiting_for_vm": other}),
            ),
        };
        let key = data.to_string();
        let new = self
            .ha
            .lock()
            .map(|mut m| m.held.insert(vm.to_string(), key.clone()) != Some(key))
            .unwrap_or(false);
        if new {
            let mut data = data;
            data["reason"] = json!(text);
            self.events
                .publish("ha.restart_waiting", vm, text, data)
                .await;
        }
    }

    /// Publishes that `vm` starts without its dependencies ready.
    async fn note_late(
        &self,
        vm: &str,
        group: Option<&str>,
        late: &[String],
        rules: &[vdc_sched::ha_order::GroupRule],
    ) {
        let timeouts: Vec<String> = late
            .iter()
            .map(|g| {
                let t = rules
                    .iter()
                    .find(|r| &r.name == g)
                    .map(|r| r.ready_timeout.as_secs())
                    .unwrap_or(0);
                format!("{g} ({t} s)")
            })
            .collect();
        let reason = format!(
            "VM {vm} of group {} starts without its dependencies ready: the VMs of group(s) {} did not report ready within their readiness timeout",
            group.unwrap_or("-"),
            timeouts.join(", ")
        );
        self.events
            .publish(
                "ha.dependency_timeout",
                vm,
                reason.clone(),
                json!({"group": group, "groups_not_ready": late, "reason": reason}),
            )
            .await;
    }

    pub(crate) fn note_failover_failed(&self, name: &str) {
        if let Ok(mut m) = self.ha.lock() {
            m.failed_at.insert(name.to_string(), Instant::now());
        }
    }
}
