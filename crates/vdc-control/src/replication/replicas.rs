//! The recovery side: replicas of VMs of a paired site, their points, and
//! VMs made from them.
//!
//! # A point (state of `applying`)
//! ```text
//!   begin ──► applying = Some(id) ──► commit ──► listed in points (store and replica.json)
//!                 │                      (agent: qemu-nbd SIGTERM, fsync,
//!                 │                       retention merges, replica.json)
//!                 └──► abort / next begin / restart ──► image removed, never listed
//! ```
//! The store record `/replicas/<vm>` (v1) lists only committed points; the
//! agent removes any image not listed before it makes the next one.
//!
//! # Recovery
//! A VM made from a point is a linked clone on the point's image (relative
//! backing name), created like any VM (`vm.create`); the point is pinned
//! while the VM exists (retention never merges it away). `failover` also
//! stops the replica: no further point is applied.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::agent::DiskSource;
use vdc_types::api::CreateVmRequest;
use vdc_types::replication::{
    BeginPointRequest, BeginPointResponse, CommitPointRequest, EndPointRequest, RecoverMode,
    RecoverRequest, Replica, ReplicaPin, ReplicaPoint, ReplicaState, ServePointRequest,
    ServePointResponse, REPLICA_VERSION,
};
use vdc_types::{ApiError, DatastoreKind, ErrorCode, Task};

use super::relay::Relay;
use crate::clones::Origin;
use crate::{store_err, Cluster};

/// Store prefix of the replicas.
pub const REPLICAS_PREFIX: &str = "/replicas/";

fn replica_key(vm: &str) -> String {
    format!("{REPLICAS_PREFIX}{vm}")
}

fn point_file(id: u64) -> String {
    format!("p{id:08}.qcow2")
}

/// Relays of points being applied, by VM.
#[derive(Debug, Default)]
pub(crate) struct Applying {
    relays: std::sync::Mutex<HashMap<String, Relay>>,
}

/// How many of the oldest points to merge away so that at most `retain`
/// stay once a new one is added. A VM made from any point has the whole
/// chain up to it open (QEMU holds its image locks), so while a point is
/// pinned nothing is merged; the newest listed point is never merged into
/// the one being added.
pub fn retention_merges(points: &[ReplicaPoint], pins: &[ReplicaPin], retain: u32) -> usize {
    if !pins.is_empty() {
        return 0;
    }
    let keep = retain.max(1) as usize;
    (points.len() + 1)
        .saturating_sub(keep)
        .min(points.len().saturating_sub(1))
}

impl Cluster {
    /// `GET /api/v1/replicas`.
    pub async fn list_replicas(&self) -> Result<Vec<Replica>, ApiError> {
        self.list_values(REPLICAS_PREFIX).await
    }

    /// `GET /api/v1/replicas/{vm}`.
    pub async fn get_replica(&self, vm: &str) -> Result<Replica, ApiError> {
        let r: Replica = self
            .store
            .get_json(&replica_key(vm))
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("replica", vm))?;
        if r.version > REPLICA_VERSION {
            return Err(ApiError::internal(format!(
                "replica record '{vm}' has version {}; this server reads up to {REPLICA_VERSION}",
                r.version
            )));
        }
        Ok(r)
    }

    async fn put_replica(&self, r: &Replica) -> Result<(), ApiError> {
        self.store
            .put_json(&replica_key(&r.vm), r)
            .await
            .map(drop)
            .map_err(store_err)
    }

    /// A new replica's datastore and host.
    async fn replica_place(&self, asked: Option<&str>) -> Result<(String, String), ApiError> {
        let ds = match asked {
            Some(d) => self.get_datastore(d).await?,
            None => self
                .list_datastores()
                .await?
                .into_iter()
                .find(|d| d.kind == DatastoreKind::Shared)
                .ok_or_else(|| {
                    ApiError::invalid("this site has no shared datastore for the replica; name one")
                })?,
        };
        let host = self
            .capacities()
            .await
            .into_iter()
            .find(|c| c.available && c.datastores.contains(&ds.name))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::HostUnavailable,
                    format!(
                        "no connected host of this site mounts datastore '{}'",
                        ds.name
                    ),
                )
            })?;
        Ok((ds.name, host.name))
    }

    /// `POST /api/v1/replicas/{vm}/points`: the protected site starts a
    /// point (module docs).
    pub async fn begin_point(
        &self,
        vm: &str,
        req: BeginPointRequest,
    ) -> Result<BeginPointResponse, ApiError> {
        vdc_types::names::validate_name("VM", vm).map_err(ApiError::invalid)?;
        let relay_ip = self.relay_address().ok_or_else(|| {
            ApiError::invalid_state(
                "this server has no --relay-address: peer hosts cannot reach it for replication",
            )
        })?;
        let mut r = match self.get_replica(vm).await {
            Ok(r) => r,
            Err(e) if e.code == ErrorCode::NotFound => {
                let (datastore, host) = self.replica_place(req.datastore.as_deref()).await?;
                Replica {
                    version: REPLICA_VERSION,
                    vm: vm.to_string(),
                    source_site: req.source_site.clone(),
                    mode: req.mode,
                    state: ReplicaState::Replicating,
                    config: req.config.clone(),
                    datastore,
                    dir: format!("replicas/{}-{vm}", req.source_site),
                    host,
                    points: Vec::new(),
                    latest_point_ms: None,
                    pins: Vec::new(),
                    applying: None,
                    last_begun: 0,
                }
            }
            Err(e) => return Err(e),
        };
        if r.source_site != req.source_site {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "a replica of a VM '{vm}' from site '{}' exists here",
                    r.source_site
                ),
            ));
        }
        if r.state == ReplicaState::FailedOver {
            return Err(ApiError::invalid_state(format!(
                "the replica of '{vm}' was failed over here; it takes no more points"
            )));
        }
        let last = r.points.last();
        if !req.full && last.is_none() {
            return Err(ApiError::invalid_state(format!(
                "the replica of '{vm}' has no point yet: the first point must be a full copy"
            )));
        }
        let id = r
            .points
            .last()
            .map(|p| p.id)
            .max(r.applying)
            .unwrap_or(0)
            .max(r.last_begun)
            + 1;
        let file = point_file(id);
        let backing = if req.full {
            None
        } else {
            last.map(|p| p.file.clone())
        };
        self.drop_relay(vm);
        let url = self.agent_url(&r.host).await?;
        let served: ServePointResponse = self
            .agents
            .call(
                &r.host,
                reqwest::Method::POST,
                format!("{url}/agent/v1/replica-points"),
                Some(&ServePointRequest {
                    datastore: r.datastore.clone(),
                    dir: r.dir.clone(),
                    file: file.clone(),
                    backing,
                    size_bytes: req.config.disks.first().copied().unwrap_or(0),
                    keep: r.points.iter().map(|p| p.file.clone()).collect(),
                }),
                std::time::Duration::from_secs(60),
            )
            .await?;
        let to: SocketAddr = format!("{}:{}", served.host, served.port)
            .parse()
            .map_err(|e| ApiError::internal(format!("host address {}: {e}", served.host)))?;
        let relay = super::relay::start(relay_ip, to).await?;
        let port = relay.port;
        self.replication
            .applying
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm.to_string(), relay);
        r.applying = Some(id);
        r.last_begun = id;
        r.config = req.config;
        r.mode = req.mode;
        if r.state == ReplicaState::Stopped {
            r.state = ReplicaState::Replicating;
        }
        self.put_replica(&r).await?;
        Ok(BeginPointResponse {
            point: id,
            host: relay_ip.to_string(),
            port,
            export: file,
        })
    }

    fn drop_relay(&self, vm: &str) {
        self.replication
            .applying
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm);
    }

    /// `POST /api/v1/replicas/{vm}/points/{id}/commit`: lists the point
    /// once the agent has flushed it and written `replica.json`.
    pub async fn commit_point(
        &self,
        vm: &str,
        id: u64,
        req: CommitPointRequest,
    ) -> Result<ReplicaPoint, ApiError> {
        let mut r = self.get_replica(vm).await?;
        if r.applying != Some(id) {
            return Err(ApiError::invalid_state(format!(
                "point {id} of '{vm}' is not being applied"
            )));
        }
        self.drop_relay(vm);
        let point = ReplicaPoint {
            id,
            time_ms: req.time_ms,
            consistency: req.consistency,
            bytes: req.bytes,
            file: point_file(id),
        };
        // Pins of VMs deleted since go.
        let mut live = Vec::new();
        for p in &r.pins {
            if self.record(&p.vm).await.is_ok() {
                live.push(p.clone());
            }
        }
        r.pins = live;
        let n = retention_merges(&r.points, &r.pins, req.retain_last);
        let merge: Vec<(String, String)> = (0..n)
            .map(|i| (r.points[i].file.clone(), r.points[i + 1].file.clone()))
            .collect();
        let mut next = r.clone();
        next.points.drain(..n);
        next.points.push(point.clone());
        next.latest_point_ms = Some(point.time_ms);
        next.applying = None;
        let url = self.agent_url(&r.host).await?;
        let ended: Result<serde_json::Value, ApiError> = self
            .agents
            .call(
                &r.host,
                reqwest::Method::POST,
                format!("{url}/agent/v1/replica-points/end"),
                Some(&EndPointRequest {
                    datastore: r.datastore.clone(),
                    dir: r.dir.clone(),
                    file: point.file.clone(),
                    replica: Some(next.clone()),
                    merge,
                }),
                std::time::Duration::from_secs(300),
            )
            .await;
        if let Err(e) = ended {
            r.applying = None;
            if let Err(e2) = self.put_replica(&r).await {
                tracing::warn!(vm, error = %e2, "cannot record the dropped point");
            }
            return Err(e);
        }
        self.put_replica(&next).await?;
        self.events
            .publish(
                "replica.point",
                vm,
                format!(
                    "point {id} of {vm} from site {} applied ({} bytes)",
                    r.source_site, req.bytes
                ),
                json!({"vm": vm, "point": id, "time_ms": req.time_ms, "bytes": req.bytes,
                       "consistency": req.consistency, "merged": n}),
            )
            .await;
        Ok(point)
    }

    /// `DELETE /api/v1/replicas/{vm}/points/{id}`: drops a point being
    /// applied (its image goes; it was never listed).
    pub async fn abort_point(&self, vm: &str, id: u64) -> Result<(), ApiError> {
        let mut r = self.get_replica(vm).await?;
        if r.applying != Some(id) {
            return Ok(());
        }
        self.drop_relay(vm);
        let url = self.agent_url(&r.host).await?;
        let ended: Result<serde_json::Value, ApiError> = self
            .agents
            .call(
                &r.host,
                reqwest::Method::POST,
                format!("{url}/agent/v1/replica-points/end"),
                Some(&EndPointRequest {
                    datastore: r.datastore.clone(),
                    dir: r.dir.clone(),
                    file: point_file(id),
                    replica: None,
                    merge: Vec::new(),
                }),
                std::time::Duration::from_secs(60),
            )
            .await;
        if let Err(e) = ended {
            tracing::warn!(vm, point = id, error = %e, "cannot remove an abandoned point's image; the next point removes it");
        }
        r.applying = None;
        self.put_replica(&r).await
    }

    /// `POST /api/v1/replicas/{vm}/stopped`: the protected site stopped
    /// replicating (the replica and its points stay).
    pub async fn replica_stopped(&self, vm: &str) -> Result<Replica, ApiError> {
        let mut r = self.get_replica(vm).await?;
        self.drop_relay(vm);
        if r.state == ReplicaState::Replicating {
            r.state = ReplicaState::Stopped;
        }
        r.applying = None;
        self.put_replica(&r).await?;
        Ok(r)
    }

    /// `POST /api/v1/replicas/{vm}/recover` (module docs): the `vm.create`
    /// task of the VM made.
    pub async fn recover_replica(
        self: &Arc<Self>,
        vm: &str,
        req: RecoverRequest,
    ) -> Result<Task, ApiError> {
        let mut r = self.get_replica(vm).await?;
        let point = match req.point {
            Some(id) => r
                .points
                .iter()
                .find(|p| p.id == id)
                .cloned()
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::NotFound,
                        format!(
                            "the replica of '{vm}' has no point {id}; its points are {:?}",
                            r.points.iter().map(|p| p.id).collect::<Vec<_>>()
                        ),
                    )
                })?,
            None => r.points.last().cloned().ok_or_else(|| {
                ApiError::invalid_state(format!("the replica of '{vm}' has no applied point yet"))
            })?,
        };
        if req.mode == RecoverMode::Failover && r.state == ReplicaState::FailedOver {
            return Err(ApiError::invalid_state(format!(
                "the replica of '{vm}' was already failed over"
            )));
        }
        let name = req.name.clone().unwrap_or_else(|| vm.to_string());
        let network = match r.config.nics.first() {
            Some(nic) => match req.network_map.get(&nic.network) {
                Some(n) => Some(n.clone()),
                None => match self.get_network(&nic.network).await {
                    Ok(_) => Some(nic.network.clone()),
                    Err(_) => None,
                },
            },
            None => None,
        };
        for (from, to) in &req.network_map {
            if !r.config.nics.iter().any(|n| &n.network == from) {
                return Err(ApiError::invalid(format!(
                    "network_map names '{from}', which VM '{vm}' is not on"
                )));
            }
            self.get_network(to).await?;
        }
        let create = CreateVmRequest {
            name: name.clone(),
            cpus: Some(r.config.cpus),
            memory_mib: Some(r.config.memory_mib),
            datastore: Some(r.datastore.clone()),
            network,
            host: req.host.clone(),
            start: req.start,
            hostname: req.hostname.clone().or(Some(r.config.hostname.clone())),
            ip: req.ip.clone(),
            ..Default::default()
        };
        let origin = Origin {
            boot: Some(DiskSource::Template {
                datastore: r.datastore.clone(),
                path: format!("{}/{}", r.dir, point.file),
                linked: true,
            }),
            boot_bytes: r.config.disks.first().copied(),
            data: Vec::new(),
            data_images: Vec::new(),
            more_networks: Vec::new(),
        };
        // Pinned before the VM exists: retention must not merge the point
        // away under the create.
        r.pins.push(ReplicaPin {
            point: point.id,
            vm: name.clone(),
            mode: req.mode,
        });
        if req.mode == RecoverMode::Failover {
            r.state = ReplicaState::FailedOver;
            self.drop_relay(vm);
        }
        self.put_replica(&r).await?;
        match self.create_vm_from(create, origin).await {
            Ok(task) => {
                self.events
                    .publish(
                        "replica.recovered",
                        vm,
                        format!(
                            "VM {name} made from point {} of {vm} ({:?})",
                            point.id, req.mode
                        ),
                        json!({"vm": vm, "recovered_vm": name, "point": point.id,
                               "point_ms": point.time_ms, "mode": req.mode, "site": r.source_site,
                               "task": task.id}),
                    )
                    .await;
                Ok(task)
            }
            Err(e) => {
                let mut back = self.get_replica(vm).await?;
                back.pins.retain(|p| p.vm != name);
                if req.mode == RecoverMode::Failover {
                    back.state = ReplicaState::Replicating;
                }
                if let Err(e2) = self.put_replica(&back).await {
                    tracing::warn!(vm, error = %e2, "cannot unpin the point of a failed recovery");
                }
                Err(e)
            }
        }
    }

    /// `DELETE /api/v1/replicas/{vm}`: removes a replica's record (refused
    /// while replicating or while VMs made from it exist). Its directory
    /// stays on the datastore.
    pub async fn delete_replica(&self, vm: &str) -> Result<(), ApiError> {
        let mut r = self.get_replica(vm).await?;
        if r.state == ReplicaState::Replicating {
            return Err(ApiError::invalid_state(format!(
                "'{vm}' is still replicated here from site {}; disable it there first",
                r.source_site
            )));
        }
        let mut live = Vec::new();
        for p in &r.pins {
            if self.record(&p.vm).await.is_ok() {
                live.push(p.vm.clone());
            }
        }
        r.pins.retain(|p| live.contains(&p.vm));
        if !live.is_empty() {
            self.put_replica(&r).await?;
            return Err(ApiError::invalid_state(format!(
                "VMs {} were made from the replica of '{vm}'; delete them first",
                live.join(", ")
            )));
        }
        self.store
            .delete(&replica_key(vm))
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::replication::PointConsistency;

    fn points(n: u64) -> Vec<ReplicaPoint> {
        (1..=n)
            .map(|id| ReplicaPoint {
                id,
                time_ms: id * 1000,
                consistency: PointConsistency::Crash,
                bytes: 1,
                file: point_file(id),
            })
            .collect()
    }

    #[test]
    fn retention_keeps_the_last_n_and_never_a_pinned_oldest() {
        assert_eq!(retention_merges(&points(2), &[], 3), 0);
        assert_eq!(retention_merges(&points(3), &[], 3), 1);
        assert_eq!(retention_merges(&points(5), &[], 3), 3);
        assert_eq!(retention_merges(&points(1), &[], 1), 0);
        let pin = ReplicaPin {
            point: 1,
            vm: "t".into(),
            mode: RecoverMode::Test,
        };
        assert_eq!(retention_merges(&points(5), &[pin], 3), 0);
        assert_eq!(retention_merges(&points(4), &[], 1), 3);
    }
}
