//! Lease watches before a failover (pure plan:
//! [`vdc_sched::lease_watch`]): as soon as a host's reports are late, the
//! hosts a failover would restart its VMs on begin watching those VMs'
//! leases (`PUT /agent/v1/lease-watches`), so that when the host is judged
//! failed the restart waits only what is left of the lease's TTL, not a
//! whole TTL after detection.
//!
//! Each HA tick: compute the plan from the hosts' report ages and the VM
//! records, send each connected host its set when it changed (and again
//! every [`RESEND`] while not empty, for an agent that restarted), and
//! publish `ha.lease_watch` when a host becomes suspect (with who watches
//! what) and when it reports again before it was judged failed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vdc_sched::lease_watch::{is_suspect, watch_plan, LeaseHolderVm};
use vdc_types::lease_watch::{LeaseWatchRequest, LeaseWatchState, LeaseWatchTarget};
use vdc_types::{ApiError, VmOperation, VmPowerState};

use crate::agents::AgentClient;
use crate::{Cluster, VmRecord};

/// A non-empty watch set is sent again this often.
const RESEND: Duration = Duration::from_secs(3);
/// Longest wait for an agent to take its watch set.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the HA manager remembers of the watches (memory only).
#[derive(Default)]
pub(crate) struct WatchMemory {
    /// Per host: the set sent last and when.
    sent: HashMap<String, (BTreeSet<LeaseWatchTarget>, Instant)>,
    /// Hosts suspect at the last tick.
    suspects: HashSet<String>,
}

impl AgentClient {
    /// `PUT /agent/v1/lease-watches` on `host`.
    pub async fn set_lease_watches(
        &self,
        host: &str,
        url: &str,
        req: &LeaseWatchRequest,
    ) -> Result<Vec<LeaseWatchState>, ApiError> {
        self.call(
            host,
            reqwest::Method::PUT,
            format!("{url}/agent/v1/lease-watches"),
            Some(req),
            CALL_TIMEOUT,
        )
        .await
    }
}

fn holder_vm(r: &VmRecord) -> Option<LeaseHolderVm> {
    let (holder, failover_to) = match r.operation.as_ref().map(|o| &o.operation) {
        Some(VmOperation::FailingOver { from }) => (from.clone(), r.owner.clone()),
        _ => {
            let owner = r.owner.clone()?;
            if !(r.state.has_process() || r.state == VmPowerState::Unknown) {
                return None;
            }
            (owner, None)
        }
    };
    Some(LeaseHolderVm {
        name: r.config.name.clone(),
        holder,
        failover_to,
        demand: crate::migration::live::demand_of(r),
        protected: super::priority_of(r) != vdc_sched::ha::RestartPriority::Disabled,
    })
}

impl Cluster {
    /// One tick of the lease watches (see the module documentation);
    /// `network_ages` is each host's report age.
    pub(crate) async fn update_lease_watches(
        self: &Arc<Self>,
        network_ages: &[(String, Option<Duration>)],
    ) {
        let settings = self.ha_settings();
        let suspects: HashSet<String> = network_ages
            .iter()
            .filter(|(_, age)| settings.enabled && is_suspect(*age, &settings.timeouts))
            .map(|(h, _)| h.clone())
            .collect();
        let records: Vec<VmRecord> = if suspects.is_empty() {
            Vec::new()
        } else {
            self.list_values("/vms/").await.unwrap_or_default()
        };
        let vms: Vec<LeaseHolderVm> = records.iter().filter_map(holder_vm).collect();
        let plan = if vms.is_empty() {
            BTreeMap::new()
        } else {
            watch_plan(&vms, |h| suspects.contains(h), &self.capacities().await)
        };
        let by_name: HashMap<&str, &VmRecord> = records
            .iter()
            .map(|r| (r.config.name.as_str(), r))
            .collect();
        let connected: Vec<(String, String)> = self
            .live
            .read()
            .await
            .iter()
            .filter(|(_, l)| l.connected)
            .map(|(n, l)| {
                (
                    n.clone(),
                    l.report.agent_url.trim_end_matches('/').to_string(),
                )
            })
            .collect();
        let now = Instant::now();
        let mut sends = Vec::new();
        let (began, ended) = {
            let Ok(mut m) = self.ha.lock() else { return };
            let w = &mut m.watches;
            for (host, url) in &connected {
                let want: BTreeSet<LeaseWatchTarget> = plan
                    .get(host)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| by_name.get(n.as_str()))
                    .map(|r| LeaseWatchTarget {
                        id: r.config.id.clone(),
                        name: r.config.name.clone(),
                        datastore: r.config.datastore.clone(),
                        dir: r.config.dir.clone(),
                    })
                    .collect();
                let due = match w.sent.get(host) {
                    None => !want.is_empty(),
                    Some((last, at)) => {
                        *last != want || (!want.is_empty() && now.duration_since(*at) >= RESEND)
                    }
                };
                if due {
                    w.sent.insert(host.clone(), (want.clone(), now));
                    sends.push((host.clone(), url.clone(), want));
                }
            }
            let began: Vec<String> = suspects.difference(&w.suspects).cloned().collect();
            let ended: Vec<String> = w.suspects.difference(&suspects).cloned().collect();
            w.suspects = suspects.clone();
            (began, ended)
        };
        for (host, url, want) in sends {
            let agents = self.agents.clone();
            let req = LeaseWatchRequest {
                vms: want.into_iter().collect(),
            };
            tokio::spawn(async move {
                if let Err(e) = agents.set_lease_watches(&host, &url, &req).await {
                    tracing::warn!(%host, error = %e.message, "cannot set the host's lease watches");
                }
            });
        }
        let age_of = |h: &str| {
            network_ages
                .iter()
                .find(|(n, _)| n == h)
                .and_then(|(_, a)| a.map(|a| a.as_millis() as u64))
        };
        for host in began {
            let watching: BTreeMap<&String, Vec<&String>> = plan
                .iter()
                .map(|(w, vms)| {
                    (
                        w,
                        vms.iter()
                            .filter(|v| vms_of(&records, &host).contains(v.as_str()))
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, v)| !v.is_empty())
                .collect();
            let ms = age_of(&host).unwrap_or(0);
            self.events
                .publish(
                    "ha.lease_watch",
                    &host,
                    format!(
                        "host {host} is suspect (no report for {ms} ms): {} host(s) watch its VMs' leases",
                        watching.len()
                    ),
                    json!({"suspect": true, "network_heartbeat_age_ms": ms, "watchers": watching}),
                )
                .await;
        }
        for host in ended {
            self.events
                .publish(
                    "ha.lease_watch",
                    &host,
                    format!(
                        "host {host} reports again: the watches of its VMs' leases are dropped"
                    ),
                    json!({"suspect": false, "network_heartbeat_age_ms": age_of(&host)}),
                )
                .await;
        }
    }
}

/// Names of the VMs whose lease `host` holds (or held, failing over).
fn vms_of<'a>(records: &'a [VmRecord], host: &str) -> HashSet<&'a str> {
    records
        .iter()
        .filter_map(|r| {
            holder_vm(r)
                .filter(|v| v.holder == host)
                .map(|_| r.config.name.as_str())
        })
        .collect()
}
