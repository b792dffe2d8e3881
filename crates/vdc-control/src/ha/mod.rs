//! The HA manager: judges every host from its two heartbeats and restarts
//! the protected VMs of failed hosts elsewhere.
//!
//! Each HA tick ([`HA_TICK`], 200 ms):
//! 1. read the datastore heartbeat file of every known host on every
//!    shared datastore (on the blocking pool, bounded: a hung mount delays
//!    nothing else) and note, on the server's monotonic clock, when each
//!    last changed;
//! 2. judge each host with [`vdc_sched::ha::judge_host`] from the age of
//!    its last report and of its datastore heartbeat; publish
//!    `ha.host_state_changed` when the verdict changes, with its reason;
//!    a host whose reports are late has its VMs' leases watched by the
//!    hosts that would restart them (`watch`), before any verdict;
//! 3. a *failed* host is disconnected at once and its VMs with a process
//!    become `unknown`;
//! 4. the VMs lost by failed hosts, protected and free of other
//!    operations ([`vdc_sched::ha::restart_plan`]), are failed over in
//!    restart order (`order`: order groups with their dependencies, then
//!    priority within a group; [`vdc_sched::ha_order::restart_order`]):
//!    each a `vm.failover` task (see `failover`). A VM whose restart failed
//!    (its lease still renewing) is tried again after [`RETRY_AFTER`]; one
//!    that no surviving host can run is deferred with an alarm and retried
//!    as soon as it would fit.
//!
//! Where the server reads the heartbeats: the shared datastore's path as
//! the hosts report it. In the lab the server runs on the same machine and
//! sees the same directory; a server that cannot read it (no such path)
//! sees no datastore heartbeat, and a host whose reports stop is then
//! judged failed at once (still safe: every restart waits for the VM's
//! lease).

mod admission;
mod alarms;
mod failover;
mod groups;
mod order;
mod settings;
mod watch;

pub use admission::MAX_TOLERATED;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vdc_sched::ha::{judge_host, HeartbeatTimeouts, HostVerdict, RestartPriority};
use vdc_types::ha::{
    heartbeat_file_name, DatastoreHeartbeat, HaHost, HaHostState, HaPriority, HaStatus,
    DATASTORE_HEARTBEAT_VERSION, HEARTBEAT_DIR,
};
use vdc_types::{ApiError, Datastore, DatastoreKind};

use crate::{Cluster, HostRecord, VmRecord};

/// How often the HA manager judges the hosts (and updates the lease
/// watches): a fifth of a second adds at most that to detection.
pub const HA_TICK: Duration = Duration::from_millis(200);

/// A VM whose failover failed is tried again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(3);

/// Longest wait for one round of heartbeat file reads.
const READ_WAIT: Duration = Duration::from_secs(2);

/// A datastore heartbeat as last seen (its value, if any) and when it
/// changed.
pub type SeenHeartbeat = (Option<(u64, u64)>, Instant);

/// HA settings of the server (`vdc server --ha-…` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaSettings {
    /// Restart the protected VMs of failed hosts.
    pub enabled: bool,
    /// Heartbeat timeouts.
    pub timeouts: HeartbeatTimeouts,
}

impl Default for HaSettings {
    fn default() -> Self {
        HaSettings {
            enabled: true,
            timeouts: HeartbeatTimeouts::default(),
        }
    }
}

/// A heartbeat file's identity: (`seq`, `agent_started_ms`).
pub(crate) type Beat = (u64, u64);

/// What the HA manager remembers between ticks (memory only).
#[derive(Default)]
pub(crate) struct HaMemory {
    pub settings: HaSettings,
    /// When the server started watching (ages of signals never seen count
    /// from here).
    pub since: Option<Instant>,
    /// Per (host, datastore): the last heartbeat seen and when it changed.
    pub heartbeats: HashMap<(String, String), SeenHeartbeat>,
    /// Last verdict per host.
    pub verdicts: HashMap<String, HostVerdict>,
    /// Per VM: when its last failover attempt ended without success.
    pub failed_at: HashMap<String, Instant>,
    /// VMs whose restart is deferred for want of a host (event and alarm
    /// raised once, until restarted).
    pub no_room: std::collections::HashSet<String>,
    /// Lease watches before a failover (see `watch`).
    pub watches: watch::WatchMemory,
    /// Per VM held back by the restart order: the last reason published.
    pub held: HashMap<String, String>,
}

fn to_state(v: HostVerdict) -> HaHostState {
    match v {
        HostVerdict::Connected => HaHostState::Connected,
        HostVerdict::IsolatedOrPartitioned => HaHostState::IsolatedOrPartitioned,
        HostVerdict::Failed => HaHostState::Failed,
    }
}

/// The restart priority of a VM record.
pub(crate) fn priority_of(rec: &VmRecord) -> RestartPriority {
    match rec.config.ha.priority {
        HaPriority::High => RestartPriority::High,
        HaPriority::Medium => RestartPriority::Medium,
        HaPriority::Low => RestartPriority::Low,
        HaPriority::Disabled => RestartPriority::Disabled,
    }
}

/// Reads one heartbeat file: `Some((seq, agent_started_ms))`, or `None`
/// when missing, unreadable or of a newer version.
fn read_heartbeat(path: &std::path::Path) -> Option<Beat> {
    let bytes = std::fs::read(path).ok()?;
    let hb: DatastoreHeartbeat = serde_json::from_slice(&bytes).ok()?;
    (hb.version <= DATASTORE_HEARTBEAT_VERSION).then_some((hb.seq, hb.agent_started_ms))
}

impl Cluster {
    /// Sets the HA settings (before [`Cluster::spawn_monitor`]).
    pub fn configure_ha(&self, settings: HaSettings) {
        if let Ok(mut m) = self.ha.lock() {
            m.settings = settings;
        }
    }

    fn ha_settings(&self) -> HaSettings {
        self.ha.lock().map(|m| m.settings).unwrap_or_default()
    }

    /// Reads every host's heartbeat files and notes which changed.
    async fn observe_heartbeats(&self, hosts: &[String]) {
        let shared: Vec<Datastore> = self
            .list_values::<Datastore>("/datastores/")
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.kind == DatastoreKind::Shared)
            .collect();
        let paths: Vec<(String, String, PathBuf)> = hosts
            .iter()
            .flat_map(|h| {
                shared.iter().map(move |d| {
                    (
                        h.clone(),
                        d.name.clone(),
                        PathBuf::from(&d.path)
                            .join(HEARTBEAT_DIR)
                            .join(heartbeat_file_name(h)),
                    )
                })
            })
            .collect();
        let read = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .map(|(h, d, p)| (h, d, read_heartbeat(&p)))
                .collect::<Vec<_>>()
        });
        let seen = match tokio::time::timeout(READ_WAIT, read).await {
            Ok(Ok(v)) => v,
            _ => {
                tracing::warn!("reading the datastore heartbeats did not finish in time");
                return;
            }
        };
        let now = Instant::now();
        let Ok(mut m) = self.ha.lock() else { return };
        for (h, d, hb) in seen {
            let e = m.heartbeats.entry((h, d)).or_insert((hb, now));
            if e.0 != hb {
                *e = (hb, now);
            }
        }
    }

    /// Each known host's verdict with its heartbeats' ages.
    async fn judge_hosts(&self) -> Vec<(String, HostVerdict, Option<Duration>, Option<Duration>)> {
        let recorded: Vec<HostRecord> = self.list_values("/hosts/").await.unwrap_or_default();
        let live: HashMap<String, Instant> = self
            .live
            .read()
            .await
            .iter()
            .map(|(n, l)| (n.clone(), l.seen))
            .collect();
        let Ok(mut m) = self.ha.lock() else {
            return Vec::new();
        };
        let since = *m.since.get_or_insert_with(Instant::now);
        let timeouts = m.settings.timeouts;
        let judged: Vec<_> = recorded
            .iter()
            .map(|h| {
                let net = Some(live.get(&h.name).copied().unwrap_or(since).elapsed());
                // The freshest change on any shared datastore; a file never
                // seen counts from when the server first looked.
                let ds = m
                    .heartbeats
                    .iter()
                    .filter(|((host, _), (hb, _))| host == &h.name && hb.is_some())
                    .map(|(_, (_, at))| at.elapsed())
                    .min();
                let ds_judged = ds.or_else(|| Some(since.elapsed()));
                (
                    h.name.clone(),
                    judge_host(net, ds_judged, &timeouts),
                    net,
                    ds,
                )
            })
            .collect();
        for (name, v, _, _) in &judged {
            m.verdicts.entry(name.clone()).or_insert(*v);
        }
        judged
    }

    /// One tick of the HA manager (see the module documentation).
    pub(crate) async fn check_ha(self: &Arc<Self>) {
        let hosts: Vec<String> = self
            .list_values::<HostRecord>("/hosts/")
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.name)
            .collect();
        self.observe_heartbeats(&hosts).await;
        let judged = self.judge_hosts().await;
        let ages: Vec<_> = judged
            .iter()
            .map(|(h, _, net, _)| (h.clone(), *net))
            .collect();
        self.update_lease_watches(&ages).await;
        let mut changed = Vec::new();
        if let Ok(mut m) = self.ha.lock() {
            for (name, v, net, ds) in &judged {
                let before = m.verdicts.insert(name.clone(), *v);
                if before.is_some_and(|b| b != *v) {
                    changed.push((name.clone(), before, *v, *net, *ds));
                }
            }
        }
        for (host, before, now, net, ds) in changed {
            let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
            let reason = match now {
                HostVerdict::Connected => "its reports arrive again".to_string(),
                HostVerdict::IsolatedOrPartitioned => format!(
                    "no report for {} ms but its datastore heartbeat goes on: isolated or partitioned; its VMs are not restarted while they hold their leases",
                    ms(net).unwrap_or(0)
                ),
                HostVerdict::Failed => format!(
                    "no report for {} ms and no datastore heartbeat for {}: failed; its protected VMs restart elsewhere once their leases expire",
                    ms(net).unwrap_or(0),
                    ms(ds).map(|d| format!("{d} ms")).unwrap_or_else(|| "ever".into())
                ),
            };
            self.events
                .publish(
                    "ha.host_state_changed",
                    &host,
                    format!("host {host} is {}: {reason}", to_state(now)),
                    json!({
                        "from": before.map(to_state),
                        "to": to_state(now),
                        "reason": reason,
                        "network_heartbeat_age_ms": ms(net),
                        "datastore_heartbeat_age_ms": ms(ds),
                    }),
                )
                .await;
        }
        let failed: Vec<String> = judged
            .iter()
            .filter(|(_, v, _, _)| *v == HostVerdict::Failed)
            .map(|(n, _, _, _)| n.clone())
            .collect();
        for host in &failed {
            self.lose_host(host).await;
        }
        if self.ha_settings().enabled {
            self.restart_in_order(&judged).await;
        }
    }

    /// Publishes `ha.vm_reset` for each VM whose host's VM monitoring
    /// reset it since the host's previous report.
    pub(crate) async fn note_vm_monitor_resets(
        &self,
        host: &str,
        before: &HashMap<String, u32>,
        vms: &[vdc_types::agent::VmRuntime],
    ) {
        for v in vms {
            // Only against a previous report of the same host: a restarted
            // server does not publish old resets again.
            let Some(was) = before.get(&v.id).copied() else {
                continue;
            };
            if v.monitor_resets > was {
                let reason = v.monitor_reason.clone().unwrap_or_default();
                self.events
                    .publish(
                        "ha.vm_reset",
                        &v.name,
                        format!("VM {} was reset on {host}: {reason}", v.name),
                        json!({"host": host, "reason": reason, "resets": v.monitor_resets}),
                    )
                    .await;
            }
        }
    }

    /// `GET /api/v1/ha`.
    pub async fn ha_status(&self) -> Result<HaStatus, ApiError> {
        let judged = self.judge_hosts().await;
        let settings = self.ha_settings();
        let policy = self.ha_policy().await?;
        let (host_mib, protected_mib) = self.admission_view().await;
        let live = self.live.read().await;
        let hosts: Vec<HaHost> = judged
            .into_iter()
            .map(|(name, v, net, ds)| HaHost {
                memory_free_mib: match (v, live.get(&name)) {
                    (HostVerdict::Connected, Some(l)) => l.report.memory_free_mib,
                    _ => 0,
                },
                name,
                state: to_state(v),
                network_heartbeat_age_ms: net.map(|d| d.as_millis() as u64),
                datastore_heartbeat_age_ms: ds.map(|d| d.as_millis() as u64),
            })
            .collect();
        Ok(HaStatus {
            enabled: settings.enabled,
            network_timeout_ms: settings.timeouts.network.as_millis() as u64,
            datastore_timeout_ms: settings.timeouts.datastore.as_millis() as u64,
            failover_capacity_mib: hosts.iter().map(|h| h.memory_free_mib).sum(),
            tolerate_host_failures: policy.tolerate_host_failures,
            tolerated_failures_now: vdc_sched::ha::tolerated_failures(&host_mib, protected_mib),
            protected_mib,
            hosts,
        })
    }
}
