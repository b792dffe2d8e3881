//! Hosts: folding agent reports into cluster state, host liveness, and the
//! capacity view placement works from.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::json;
use vdc_sched::HostCapacity;
use vdc_store::StoreExt;
use vdc_types::agent::{HostReport, VmRuntime};
use vdc_types::{now_ms, ApiError, Datastore, DatastoreKind, ErrorCode, Host, HostState};

use crate::{ownership, store_err, Cluster, HostLive, HostRecord, VmRecord, HOST_TIMEOUT};

fn host_key(name: &str) -> String {
    format!("/hosts/{name}")
}

impl Cluster {
    /// Folds one agent report into the cluster state.
    pub async fn ingest_report(&self, report: HostReport) -> Result<(), ApiError> {
        vdc_types::names::validate_name("host", &report.name).map_err(ApiError::invalid)?;
        let name = report.name.clone();
        let record = HostRecord {
            name: name.clone(),
            address: report.address.clone(),
            agent_url: report.agent_url.trim_end_matches('/').to_string(),
            accelerator: report.accelerator,
            qemu_version: report.qemu_version.clone(),
            cpus: report.cpus,
            memory_mib: report.memory_mib,
            datastores: report.datastores.iter().map(|d| d.name.clone()).collect(),
            last_seen_ms: now_ms(),
        };
        let (was_connected, changed) = {
            let live = self.live.read().await;
            match live.get(&name) {
                Some(l) => {
                    let p = &l.report;
                    let changed = p.address != report.address
                        || p.agent_url != report.agent_url
                        || p.accelerator != report.accelerator
                        || p.qemu_version != report.qemu_version
                        || p.cpus != report.cpus
                        || p.memory_mib != report.memory_mib
                        || p.datastores
                            .iter()
                            .map(|d| (&d.name, &d.path, d.shared))
                            .ne(report
                                .datastores
                                .iter()
                                .map(|d| (&d.name, &d.path, d.shared)));
                    (l.connected, changed)
                }
                None => (false, true),
            }
        };
        if !was_connected || changed {
            self.store
                .put_json(&host_key(&name), &record)
                .await
                .map_err(store_err)?;
            for ds in &report.datastores {
                let d = Datastore {
                    name: ds.name.clone(),
                    kind: if ds.shared {
                        DatastoreKind::Shared
                    } else {
                        DatastoreKind::Local { host: name.clone() }
                    },
                    path: ds.path.clone(),
                    capacity_bytes: ds.capacity_bytes,
                    free_bytes: ds.free_bytes,
                    cache_mode: ds.cache_mode,
                    cache_reason: ds.cache_reason.clone(),
                };
                self.store
                    .put_json(&format!("/datastores/{}", ds.name), &d)
                    .await
                    .map_err(store_err)?;
            }
        }
        let vms = report.vms.clone();
        let reset_before: HashMap<String, u32> = {
            let live = self.live.read().await;
            live.get(&name)
                .map(|l| {
                    l.report
                        .vms
                        .iter()
                        .map(|v| (v.id.clone(), v.monitor_resets))
                        .collect()
                })
                .unwrap_or_default()
        };
        let switches_now = report.switches.clone();
        let switches_before = {
            let mut live = self.live.write().await;
            let before = live.get(&name).map(|l| l.report.switches.clone());
            live.insert(
                name.clone(),
                HostLive {
                    report,
                    seen: Instant::now(),
                    seen_ms: now_ms(),
                    connected: true,
                },
            );
            before
        };
        self.note_switch_states(&name, switches_before.as_deref(), &switches_now)
            .await;
        if !was_connected {
            self.events
                .publish(
                    "host.connected",
                    &name,
                    format!("host {name} connected"),
                    json!({"address": record.address}),
                )
                .await;
            self.note_cpu_baseline(&name).await;
        }
        self.note_vm_monitor_resets(&name, &reset_before, &vms)
            .await;
        self.reconcile_vms(&name, &vms).await
    }

    /// Brings VM records in line with what their host reports, by the
    /// rules of [`ownership::fold_report`]; each change is a
    /// compare-and-swap write, the fold redone on fresh data on conflict.
    async fn reconcile_vms(&self, host: &str, vms: &[VmRuntime]) -> Result<(), ApiError> {
        let by_id: HashMap<&str, &VmRuntime> = vms.iter().map(|v| (v.id.as_str(), v)).collect();
        let records = self.records_for_report(host, vms).await?;
        for snapshot in records {
            let name = snapshot.config.name.clone();
            let rt = by_id.get(snapshot.config.id.as_str()).copied();
            let (folded, conflict) = ownership::fold_report(&snapshot, rt, host);
            self.note_conflict(&snapshot, host, conflict).await;
            if folded == snapshot {
                continue;
            }
            let changed = self
                .change_record(&name, |cur| {
                    let (new, _) = ownership::fold_report(cur, rt, host);
                    (new != *cur).then_some(new)
                })
                .await?;
            let Some((rec, new)) = changed else { continue };
            if new.state != rec.state {
                self.publish_state_change(&name, rec.state, &new).await;
                // Why its host's supervisor stopped it, if it did.
                if let Some(reason) = rt
                    .and_then(|r| r.fenced.clone())
                    .filter(|_| !new.state.has_process())
                {
                    self.events
                        .publish(
                            "vm.fenced",
                            &name,
                            format!("VM {name} was stopped on {host}: {reason}"),
                            json!({"host": host, "reason": reason}),
                        )
                        .await;
                }
            }
            if new.guest.ready && !rec.guest.ready {
                self.events
                    .publish(
                        "vm.guest_ready",
                        &name,
                        format!(
                            "guest of VM {name} is ready{}",
                            new.guest
                                .address
                                .as_deref()
                                .map(|a| format!(" at {a}"))
                                .unwrap_or_default()
                        ),
                        json!({"address": new.guest.address, "boot_id": new.guest.boot_id}),
                    )
                    .await;
            }
        }
        Ok(())
    }

    /// The records a report of `host` listing `vms` may change or flag:
    /// from the per-host index when it is built, else every record.
    async fn records_for_report(
        &self,
        host: &str,
        vms: &[VmRuntime],
    ) -> Result<Vec<VmRecord>, ApiError> {
        let flagged: Vec<String> = match self.conflicts.lock() {
            Ok(seen) => seen
                .iter()
                .filter(|(_, h)| h == host)
                .map(|(id, _)| id.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        let ids = vms
            .iter()
            .map(|v| v.id.as_str())
            .chain(flagged.iter().map(String::as_str));
        if let Some(records) = self.vm_index.for_host(host, ids) {
            return Ok(records);
        }
        let all: Vec<(String, VmRecord)> =
            self.store.list_json("/vms/").await.map_err(store_err)?;
        Ok(all.into_iter().map(|(_, r)| r).collect())
    }

    /// Logs and publishes (once, until it clears) a host reporting a QEMU
    /// process for a VM it does not own.
    async fn note_conflict(
        &self,
        rec: &VmRecord,
        host: &str,
        conflict: Option<ownership::Conflict>,
    ) {
        let pair = (rec.config.id.clone(), host.to_string());
        let new = {
            let Ok(mut seen) = self.conflicts.lock() else {
                return;
            };
            match &conflict {
                Some(_) => seen.insert(pair),
                None => {
                    seen.remove(&pair);
                    false
                }
            }
        };
        let (Some(c), true) = (conflict, new) else {
            return;
        };
        let name = &rec.config.name;
        let owner = c.owner.as_deref().unwrap_or("no host");
        tracing::warn!(vm = %name, %host, %owner, state = %c.state, "a host reports a process for a VM it does not own; ignored");
        self.events
            .publish(
                "vm.ownership_conflict",
                name,
                format!(
                    "host {host} reports VM {name} {} but {owner} owns it; the report is ignored",
                    c.state
                ),
                json!({"host": host, "state": c.state, "owner": c.owner}),
            )
            .await;
    }

    /// Marks hosts without recent reports as disconnected, and the VMs they
    /// own with a process as unknown (compare-and-swap).
    pub(crate) async fn check_hosts(&self) {
        let lost: Vec<String> = {
            let live = self.live.read().await;
            live.iter()
                .filter(|(_, l)| l.connected && l.seen.elapsed() > HOST_TIMEOUT)
                .map(|(n, _)| n.clone())
                .collect()
        };
        for host in lost {
            self.lose_host(&host).await;
        }
    }

    /// Marks `host` disconnected (publishing `host.disconnected` if it was
    /// connected) and the VMs it owns with a process as unknown.
    pub(crate) async fn lose_host(&self, host: &str) {
        let was_connected = {
            let mut live = self.live.write().await;
            match live.get_mut(host) {
                Some(l) if l.connected => {
                    l.connected = false;
                    true
                }
                _ => false,
            }
        };
        if was_connected {
            self.events
                .publish(
                    "host.disconnected",
                    host,
                    format!("host {host} stopped reporting"),
                    serde_json::Value::Null,
                )
                .await;
        }
        let records = match self.records_for_report(host, &[]).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%host, error = %e, "cannot read VM records to mark the host's VMs unknown");
                return;
            }
        };
        for snapshot in records {
            if ownership::host_lost(&snapshot, host).is_none() {
                continue;
            }
            let name = snapshot.config.name.clone();
            let r = self
                .change_record(&name, |cur| ownership::host_lost(cur, host))
                .await;
            match r {
                Ok(Some((before, rec))) => {
                    self.events
                        .publish(
                            "vm.state_changed",
                            &name,
                            format!("VM {name} is unknown: host {host} stopped reporting"),
                            json!({"from": before.state, "to": rec.state, "host": host, "owner": host}),
                        )
                        .await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(vm = %name, %host, error = %e, "cannot mark the VM unknown")
                }
            }
        }
    }

    fn host_view(rec: &HostRecord, live: Option<&HostLive>) -> Host {
        let connected = live.map(|l| l.connected).unwrap_or(false);
        let r = live.map(|l| &l.report);
        Host {
            name: rec.name.clone(),
            address: rec.address.clone(),
            agent_url: rec.agent_url.clone(),
            state: if connected {
                HostState::Connected
            } else {
                HostState::Disconnected
            },
            accelerator: rec.accelerator,
            qemu_version: rec.qemu_version.clone(),
            cpus: rec.cpus,
            memory_mib: rec.memory_mib,
            memory_free_mib: r.map(|r| r.memory_free_mib).unwrap_or(0),
            cpu_percent: r.map(|r| r.cpu_percent).unwrap_or(0.0),
            vm_count: r
                .map(|r| r.vms.iter().filter(|v| v.state.has_process()).count() as u32)
                .unwrap_or(0),
            datastores: rec.datastores.clone(),
            last_seen_ms: live.map(|l| l.seen_ms).unwrap_or(rec.last_seen_ms),
            maintenance: None,
            cpu_baseline: None,
            tls: r.and_then(|r| r.tls.clone()),
            switches: r.map(|r| r.switches.clone()).unwrap_or_default(),
            migration_address: r.and_then(|r| r.migration_address.clone()),
        }
    }

    /// Every known host.
    pub async fn list_hosts(&self) -> Result<Vec<Host>, ApiError> {
        let recs: Vec<(String, HostRecord)> =
            self.store.list_json("/hosts/").await.map_err(store_err)?;
        let maintenance = self.maintenance_states().await;
        let model = self.vm_cpu_model().await;
        let live = self.live.read().await;
        Ok(recs
            .iter()
            .map(|(_, r)| {
                let l = live.get(&r.name);
                let mut h = Self::host_view(r, l);
                h.maintenance = maintenance.get(&r.name).copied();
                h.cpu_baseline = l.and_then(|l| self.host_cpu_fit(&l.report, model));
                h
            })
            .collect())
    }

    /// One host.
    pub async fn get_host(&self, name: &str) -> Result<Host, ApiError> {
        let rec: HostRecord = self
            .store
            .get_json(&host_key(name))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("Host", name))?;
        let maintenance = self.maintenance_states().await;
        let model = self.vm_cpu_model().await;
        let live = self.live.read().await;
        let l = live.get(name);
        let mut h = Self::host_view(&rec, l);
        h.maintenance = maintenance.get(name).copied();
        h.cpu_baseline = l.and_then(|l| self.host_cpu_fit(&l.report, model));
        Ok(h)
    }

    /// The agent URL of a connected host, or why it can't be used.
    pub(crate) async fn agent_url(&self, host: &str) -> Result<String, ApiError> {
        let live = self.live.read().await;
        match live.get(host) {
            Some(l) if l.connected => Ok(l.report.agent_url.trim_end_matches('/').to_string()),
            Some(_) => Err(ApiError::new(
                ErrorCode::HostUnavailable,
                format!(
                    "host '{host}' is disconnected; wait for it to come back or use another host"
                ),
            )),
            None => {
                if self
                    .store
                    .get(&host_key(host))
                    .await
                    .map_err(store_err)?
                    .is_some()
                {
                    Err(ApiError::new(
                        ErrorCode::HostUnavailable,
                        format!("host '{host}' is not connected"),
                    ))
                } else {
                    Err(ApiError::not_found("Host", host))
                }
            }
        }
    }

    /// Capacity of every known host, for placement.
    pub(crate) async fn capacities(&self) -> Vec<HostCapacity> {
        let pending = self.pending_mib.lock().await.clone();
        let mut vcpus: HashMap<String, u32> = HashMap::new();
        let records: Vec<(String, VmRecord)> =
            self.store.list_json("/vms/").await.unwrap_or_default();
        for (_, r) in records {
            if let (Some(h), true) = (r.owner, r.state.has_process()) {
                *vcpus.entry(h).or_default() += r.config.cpus;
            }
        }
        let maintenance = self.maintenance_states().await;
        let live = self.live.read().await;
        live.values()
            .map(|l| HostCapacity {
                name: l.report.name.clone(),
                available: l.connected && !maintenance.contains_key(&l.report.name),
                cpus: l.report.cpus,
                memory_mib: l.report.memory_mib,
                memory_free_mib: l.report.memory_free_mib,
                memory_pending_mib: pending.get(&l.report.name).copied().unwrap_or(0),
                vcpus_committed: vcpus.get(&l.report.name).copied().unwrap_or(0),
                datastores: l.report.datastores.iter().map(|d| d.name.clone()).collect(),
                cpu: crate::cpu_baseline::host_cpu(&l.report),
                switches: Cluster::realized_switches(&l.report),
            })
            .collect()
    }

    /// Every datastore, with the latest free-space figures.
    pub async fn list_datastores(&self) -> Result<Vec<Datastore>, ApiError> {
        let mut v: Vec<Datastore> = self.list_values::<Datastore>("/datastores/").await?;
        let live = self.live.read().await;
        for d in &mut v {
            if let Some(r) = live
                .values()
                .filter(|l| l.connected)
                .flat_map(|l| l.report.datastores.iter())
                .find(|r| r.name == d.name)
            {
                d.capacity_bytes = r.capacity_bytes;
                d.free_bytes = r.free_bytes;
                d.cache_mode = r.cache_mode;
                d.cache_reason = r.cache_reason.clone();
            }
        }
        Ok(v)
    }

    /// One datastore.
    pub async fn get_datastore(&self, name: &str) -> Result<Datastore, ApiError> {
        self.list_datastores()
            .await?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ApiError::not_found("Datastore", name))
    }

    /// Connected hosts that reach `datastore`, best first (most free memory).
    pub(crate) async fn hosts_reaching(&self, datastore: &str) -> Vec<String> {
        let live = self.live.read().await;
        let mut v: Vec<(&String, u64)> = live
            .iter()
            .filter(|(_, l)| l.connected && l.report.datastores.iter().any(|d| d.name == datastore))
            .map(|(n, l)| (n, l.report.memory_free_mib))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.into_iter().map(|(n, _)| n.clone()).collect()
    }

    /// Live runtime data of a VM from its host's latest report.
    pub(crate) async fn runtime(&self, host: &str, id: &str) -> Option<VmRuntime> {
        let live = self.live.read().await;
        live.get(host)
            .and_then(|l| l.report.vms.iter().find(|v| v.id == id).cloned())
    }
}
