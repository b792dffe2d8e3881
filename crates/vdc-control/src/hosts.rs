//! Hosts: folding agent reports into cluster state, host liveness, and the
//! capacity view placement works from.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::json;
use vdc_sched::HostCapacity;
use vdc_store::{StoreError, StoreExt};
use vdc_types::agent::{HostReport, VmRuntime};
use vdc_types::{
    now_ms, ApiError, Datastore, DatastoreKind, ErrorCode, Host, HostState, VmPowerState,
};

use crate::{store_err, Cluster, HostLive, HostRecord, VmRecord, HOST_TIMEOUT};

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
        {
            let mut live = self.live.write().await;
            live.insert(
                name.clone(),
                HostLive {
                    report,
                    seen: Instant::now(),
                    seen_ms: now_ms(),
                    connected: true,
                },
            );
        }
        if !was_connected {
            self.events
                .publish(
                    "host.connected",
                    &name,
                    format!("host {name} connected"),
                    json!({"address": record.address}),
                )
                .await;
        }
        self.reconcile_vms(&name, &vms).await
    }

    /// Brings VM records in line with what their host reports.
    async fn reconcile_vms(&self, host: &str, vms: &[VmRuntime]) -> Result<(), ApiError> {
        let by_id: HashMap<&str, &VmRuntime> = vms.iter().map(|v| (v.id.as_str(), v)).collect();
        let records: Vec<(String, VmRecord)> =
            self.store.list_json("/vms/").await.map_err(store_err)?;
        for (key, snapshot) in records {
            let name = snapshot.config.name.clone();
            let rt = by_id.get(snapshot.config.id.as_str()).copied();
            if fold_report(&snapshot, rt, host, self.is_busy(&name)) == snapshot {
                continue;
            }
            // Compare-and-swap: a task may have written the record since the
            // snapshot; the fold is redone on what is there now.
            let mut before = None;
            let r: Result<VmRecord, Unchanged> = self
                .store
                .update_json(&key, |cur: VmRecord| {
                    let new = fold_report(&cur, rt, host, self.is_busy(&name));
                    if new == cur {
                        return Err(Unchanged::Yes);
                    }
                    before = Some(cur);
                    Ok(new)
                })
                .await;
            let new = match r {
                Ok(new) => new,
                Err(Unchanged::Yes) => continue,
                Err(Unchanged::Store(StoreError::NotFound(_))) => continue,
                Err(Unchanged::Store(e)) => return Err(store_err(e)),
            };
            let Some(rec) = before else { continue };
            if new.state != rec.state {
                // Why its host's supervisor stopped it, if it did.
                let fenced = rt
                    .and_then(|r| r.fenced.clone())
                    .filter(|_| !new.state.has_process());
                let why = fenced
                    .as_ref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default();
                self.events
                    .publish(
                        "vm.state_changed",
                        &name,
                        format!("VM {name} is {} on {host}{why}", new.state),
                        json!({"from": rec.state, "to": new.state, "host": host, "fenced": fenced}),
                    )
                    .await;
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

    fn is_busy(&self, name: &str) -> bool {
        self.busy
            .lock()
            .map(|b| b.contains_key(name))
            .unwrap_or(false)
    }

    /// Marks hosts without recent reports as disconnected.
    pub(crate) async fn check_hosts(&self) {
        let lost: Vec<String> = {
            let mut live = self.live.write().await;
            live.iter_mut()
                .filter(|(_, l)| l.connected && l.seen.elapsed() > HOST_TIMEOUT)
                .map(|(n, l)| {
                    l.connected = false;
                    n.clone()
                })
                .collect()
        };
        for host in lost {
            self.events
                .publish(
                    "host.disconnected",
                    &host,
                    format!("host {host} stopped reporting"),
                    serde_json::Value::Null,
                )
                .await;
            let Ok(records) = self.store.list_json::<VmRecord>("/vms/").await else {
                continue;
            };
            for (key, mut rec) in records {
                if rec.host.as_deref() == Some(host.as_str()) && rec.state.has_process() {
                    let from = rec.state;
                    rec.state = VmPowerState::Unknown;
                    if self.store.put_json(&key, &rec).await.is_ok() {
                        self.events
                            .publish(
                                "vm.state_changed",
                                &rec.config.name,
                                format!(
                                    "VM {} is unknown: host {host} stopped reporting",
                                    rec.config.name
                                ),
                                json!({"from": from, "to": rec.state, "host": host}),
                            )
                            .await;
                    }
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
        }
    }

    /// Every known host.
    pub async fn list_hosts(&self) -> Result<Vec<Host>, ApiError> {
        let recs: Vec<(String, HostRecord)> =
            self.store.list_json("/hosts/").await.map_err(store_err)?;
        let live = self.live.read().await;
        Ok(recs
            .iter()
            .map(|(_, r)| Self::host_view(r, live.get(&r.name)))
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
        let live = self.live.read().await;
        Ok(Self::host_view(&rec, live.get(name)))
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
            if let (Some(h), true) = (r.host, r.state.has_process()) {
                *vcpus.entry(h).or_default() += r.config.cpus;
            }
        }
        let live = self.live.read().await;
        live.values()
            .map(|l| HostCapacity {
                name: l.report.name.clone(),
                available: l.connected,
                cpus: l.report.cpus,
                memory_mib: l.report.memory_mib,
                memory_free_mib: l.report.memory_free_mib,
                memory_pending_mib: pending.get(&l.report.name).copied().unwrap_or(0),
                vcpus_committed: vcpus.get(&l.report.name).copied().unwrap_or(0),
                datastores: l.report.datastores.iter().map(|d| d.name.clone()).collect(),
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

/// Why a report changed nothing in a VM record.
enum Unchanged {
    /// The record already says what the report says.
    Yes,
    /// The store failed (or the record is gone).
    Store(StoreError),
}

impl From<StoreError> for Unchanged {
    fn from(e: StoreError) -> Self {
        Unchanged::Store(e)
    }
}

/// The VM record after one host's report (pure).
///
/// - A host with a QEMU process for the VM is authoritative (the datastore
///   lock makes it the only one); a host that merely remembers the VM
///   stopped or suspended speaks only if the record names it (or no host).
/// - A report about a state older than the one recorded (by the host's own
///   clock) is stale: it was sent before a task's answer and arrived after.
/// - While a task works on the VM (`busy`) only guest information is taken.
/// - A VM the record places on this host with a process, but that the
///   report does not list, has stopped.
pub(crate) fn fold_report(
    rec: &VmRecord,
    rt: Option<&VmRuntime>,
    host: &str,
    busy: bool,
) -> VmRecord {
    let mut new = rec.clone();
    let here = rec.host.as_deref() == Some(host);
    match rt {
        Some(rt) => {
            let speaks = rt.state.has_process() || rec.host.is_none() || here;
            let fresh = rt.since_ms >= rec.since_ms || !here;
            if speaks && fresh && !busy {
                new.since_ms = rt.since_ms;
                new.state = rt.state;
                new.host = Some(host.to_string());
            }
            if speaks {
                let mut g = rt.guest.clone();
                g.last_heartbeat_ms = None;
                new.guest = g;
            }
            if !new.state.has_process() {
                // No process, no guest: whatever the host still remembers.
                new.guest = Default::default();
            }
        }
        None => {
            if here && !busy && (rec.state.has_process() || rec.state == VmPowerState::Unknown) {
                new.state = VmPowerState::Stopped;
                new.guest = Default::default();
            }
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::fold_report;
    use crate::VmRecord;
    use vdc_types::agent::VmRuntime;
    use vdc_types::vm::VM_CONFIG_VERSION;
    use vdc_types::{VmConfig, VmPowerState as S};

    fn rec(state: S, host: Option<&str>, since: u64) -> VmRecord {
        VmRecord {
            config: VmConfig {
                version: VM_CONFIG_VERSION,
                id: "id".into(),
                name: "vm".into(),
                cpus: 1,
                memory_mib: 128,
                datastore: "shared".into(),
                dir: "vm".into(),
                disks: vec![],
                nics: vec![],
                hostname: "vm".into(),
                template: None,
                created_ms: 0,
                machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
                cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
            },
            state,
            host: host.map(str::to_string),
            guest: Default::default(),
            since_ms: since,
        }
    }

    fn rt(state: S, since: u64) -> VmRuntime {
        VmRuntime {
            id: "id".into(),
            name: "vm".into(),
            state,
            pid: None,
            guest: Default::default(),
            stats: None,
            since_ms: since,
            fenced: None,
        }
    }

    #[test]
    fn fresh_reports_from_the_vms_host_apply() {
        let r = fold_report(
            &rec(S::Running, Some("a"), 10),
            Some(&rt(S::Paused, 20)),
            "a",
            false,
        );
        assert_eq!((r.state, r.since_ms), (S::Paused, 20));
    }

    #[test]
    fn stale_reports_do_not() {
        let r = fold_report(
            &rec(S::Stopped, Some("a"), 30),
            Some(&rt(S::Running, 20)),
            "a",
            false,
        );
        assert_eq!(r.state, S::Stopped);
    }

    #[test]
    fn a_host_remembering_a_stopped_vm_does_not_speak_for_another() {
        let r = fold_report(
            &rec(S::Running, Some("b"), 10),
            Some(&rt(S::Stopped, 50)),
            "a",
            false,
        );
        assert_eq!((r.state, r.host.as_deref()), (S::Running, Some("b")));
    }

    #[test]
    fn a_host_with_a_process_wins_whatever_the_clock() {
        let r = fold_report(
            &rec(S::Stopped, Some("b"), 1000),
            Some(&rt(S::Running, 5)),
            "a",
            false,
        );
        assert_eq!((r.state, r.host.as_deref()), (S::Running, Some("a")));
    }

    #[test]
    fn a_vm_without_a_process_has_no_guest() {
        let mut report = rt(S::Suspended, 20);
        report.guest.ready = true;
        report.guest.address = Some("10.0.0.5".into());
        let r = fold_report(&rec(S::Running, Some("a"), 10), Some(&report), "a", false);
        assert_eq!(r.state, S::Suspended);
        assert!(!r.guest.ready && r.guest.address.is_none());
    }

    #[test]
    fn busy_vms_keep_their_state_and_missing_ones_stop() {
        let r = fold_report(
            &rec(S::Starting, Some("a"), 1),
            Some(&rt(S::Running, 5)),
            "a",
            true,
        );
        assert_eq!(r.state, S::Starting);
        let r = fold_report(&rec(S::Running, Some("a"), 1), None, "a", false);
        assert_eq!(r.state, S::Stopped);
        let r = fold_report(&rec(S::Suspended, Some("a"), 1), None, "a", false);
        assert_eq!(r.state, S::Suspended);
        let r = fold_report(&rec(S::Running, Some("b"), 1), None, "a", false);
        assert_eq!(r.state, S::Running);
    }
}
