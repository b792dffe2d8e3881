//! HA order groups: created, changed and deleted through the API, kept in
//! one store key (`/ha/groups`, versioned) so that every change is checked
//! against all groups at once (no cycle, no unknown group) and written by
//! compare-and-swap: two concurrent changes cannot make a cycle together.
//!
//! A VM joins a group through its HA settings (`VmHa::group`, at create
//! or with `PATCH /api/v1/vms/{name}`); a group with VMs, or that another
//! group starts after, cannot be deleted. A VM naming a group that no
//! longer exists (a delete that raced with a join) counts as in no group.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use vdc_sched::ha_order::{check_groups, ranks, GroupRule};
use vdc_store::{StoreError, StoreExt};
use vdc_types::ha_group::{
    CreateHaGroupRequest, HaGroup, DEFAULT_READY_TIMEOUT_S, HA_GROUP_VERSION, MAX_GROUP_AFTER,
    MAX_READY_TIMEOUT_S,
};
use vdc_types::names::validate_name;
use vdc_types::{now_ms, ApiError, ErrorCode, UnixMillis};

use crate::{store_err, Cluster, VmRecord};

const GROUPS_KEY: &str = "/ha/groups";

/// One stored group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredGroup {
    pub name: String,
    #[serde(default)]
    pub after: Vec<String>,
    pub ready_timeout_s: u64,
    pub created_ms: UnixMillis,
}

/// `/ha/groups`: every order group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupsDoc {
    /// [`HA_GROUP_VERSION`].
    pub version: u32,
    pub groups: Vec<StoredGroup>,
}

impl GroupsDoc {
    pub fn rules(&self) -> Vec<GroupRule> {
        self.groups
            .iter()
            .map(|g| GroupRule {
                name: g.name.clone(),
                after: g.after.clone(),
                ready_timeout: Duration::from_secs(g.ready_timeout_s),
            })
            .collect()
    }
}

/// Errors of a change to the groups, carried through the CAS update.
enum Change {
    Api(ApiError),
    Store(StoreError),
}

impl From<StoreError> for Change {
    fn from(e: StoreError) -> Self {
        Change::Store(e)
    }
}

impl From<Change> for ApiError {
    fn from(c: Change) -> Self {
        match c {
            Change::Api(e) => e,
            Change::Store(e) => store_err(e),
        }
    }
}

fn check_version(doc: &GroupsDoc) -> Result<(), ApiError> {
    if doc.version > HA_GROUP_VERSION {
        return Err(ApiError::internal(format!(
            "the stored HA groups have version {}; this server reads version {HA_GROUP_VERSION}",
            doc.version
        )));
    }
    Ok(())
}

/// Checks a request's fields (not yet against the other groups).
fn check_request(req: &CreateHaGroupRequest) -> Result<u64, ApiError> {
    validate_name("group", &req.name).map_err(ApiError::invalid)?;
    if req.after.len() > MAX_GROUP_AFTER {
        return Err(ApiError::invalid(format!(
            "a group starts after at most {MAX_GROUP_AFTER} groups, not {}",
            req.after.len()
        )));
    }
    for a in &req.after {
        validate_name("group", a).map_err(ApiError::invalid)?;
    }
    let t = req.ready_timeout_s.unwrap_or(DEFAULT_READY_TIMEOUT_S);
    if !(1..=MAX_READY_TIMEOUT_S).contains(&t) {
        return Err(ApiError::invalid(format!(
            "ready_timeout_s must be between 1 and {MAX_READY_TIMEOUT_S} seconds, not {t}"
        )));
    }
    Ok(t)
}

impl Cluster {
    /// Every order group as stored (empty when none was created).
    pub(crate) async fn ha_groups_doc(&self) -> Result<GroupsDoc, ApiError> {
        let doc: GroupsDoc = self
            .store
            .get_json(GROUPS_KEY)
            .await
            .map_err(store_err)?
            .unwrap_or(GroupsDoc {
                version: HA_GROUP_VERSION,
                groups: Vec::new(),
            });
        check_version(&doc)?;
        Ok(doc)
    }

    /// `GET /api/v1/ha/groups`: every group with its VMs and its rank in
    /// the restart order, by rank then name.
    pub async fn list_ha_groups(&self) -> Result<Vec<HaGroup>, ApiError> {
        let doc = self.ha_groups_doc().await?;
        let rank = ranks(&doc.rules());
        let records: Vec<VmRecord> = self.list_values("/vms/").await?;
        let mut out: Vec<HaGroup> = doc
            .groups
            .into_iter()
            .map(|g| HaGroup {
                version: HA_GROUP_VERSION,
                vms: records
                    .iter()
                    .filter(|r| r.config.ha.group.as_deref() == Some(g.name.as_str()))
                    .map(|r| r.config.name.clone())
                    .collect(),
                rank: rank.get(&g.name).copied().unwrap_or(0),
                name: g.name,
                after: g.after,
                ready_timeout_s: g.ready_timeout_s,
                created_ms: g.created_ms,
            })
            .collect();
        out.sort_by(|a, b| a.rank.cmp(&b.rank).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// `GET /api/v1/ha/groups/{name}`.
    pub async fn get_ha_group(&self, name: &str) -> Result<HaGroup, ApiError> {
        self.list_ha_groups()
            .await?
            .into_iter()
            .find(|g| g.name == name)
            .ok_or_else(|| ApiError::not_found("HA group", name))
    }

    /// Writes the groups after `change`, checked as a whole (CAS retried).
    async fn change_groups(
        &self,
        change: impl Fn(&mut GroupsDoc) -> Result<(), ApiError> + Send + Sync,
    ) -> Result<(), ApiError> {
        // Make sure the key exists for the CAS update.
        match self
            .store
            .create_json(
                GROUPS_KEY,
                &GroupsDoc {
                    version: HA_GROUP_VERSION,
                    groups: Vec::new(),
                },
            )
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(store_err(e)),
        }
        self.store
            .update_json::<GroupsDoc, Change, _>(GROUPS_KEY, |mut doc| {
                check_version(&doc).map_err(Change::Api)?;
                change(&mut doc).map_err(Change::Api)?;
                check_groups(&doc.rules())
                    .map_err(|e| Change::Api(ApiError::invalid(e.to_string())))?;
                doc.version = HA_GROUP_VERSION;
                Ok(doc)
            })
            .await?;
        Ok(())
    }

    /// `POST /api/v1/ha/groups`: a new group.
    pub async fn create_ha_group(&self, req: &CreateHaGroupRequest) -> Result<HaGroup, ApiError> {
        let timeout = check_request(req)?;
        let new = StoredGroup {
            name: req.name.clone(),
            after: req.after.clone(),
            ready_timeout_s: timeout,
            created_ms: now_ms(),
        };
        self.change_groups(|doc| {
            if doc.groups.iter().any(|g| g.name == new.name) {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "an HA group named '{}' already exists; choose another name",
                        new.name
                    ),
                ));
            }
            doc.groups.push(new.clone());
            Ok(())
        })
        .await?;
        self.publish_group("ha.group_created", &new).await;
        self.get_ha_group(&req.name).await
    }

    /// `PUT /api/v1/ha/groups/{name}`: changes what a group starts after
    /// and its readiness timeout.
    pub async fn update_ha_group(
        &self,
        name: &str,
        req: &CreateHaGroupRequest,
    ) -> Result<HaGroup, ApiError> {
        if req.name != name {
            return Err(ApiError::invalid(format!(
                "the body names group '{}' but the path '{name}'; a group cannot be renamed",
                req.name
            )));
        }
        let timeout = check_request(req)?;
        self.change_groups(|doc| {
            let g = doc
                .groups
                .iter_mut()
                .find(|g| g.name == name)
                .ok_or_else(|| ApiError::not_found("HA group", name))?;
            g.after = req.after.clone();
            g.ready_timeout_s = timeout;
            Ok(())
        })
        .await?;
        let doc = self.ha_groups_doc().await?;
        if let Some(g) = doc.groups.iter().find(|g| g.name == name) {
            self.publish_group("ha.group_changed", g).await;
        }
        self.get_ha_group(name).await
    }

    /// `DELETE /api/v1/ha/groups/{name}`: refused while VMs are in it or
    /// another group starts after it.
    pub async fn delete_ha_group(&self, name: &str) -> Result<(), ApiError> {
        let members: Vec<String> = self
            .list_values::<VmRecord>("/vms/")
            .await?
            .into_iter()
            .filter(|r| r.config.ha.group.as_deref() == Some(name))
            .map(|r| r.config.name)
            .collect();
        self.change_groups(|doc| {
            if !doc.groups.iter().any(|g| g.name == name) {
                return Err(ApiError::not_found("HA group", name));
            }
            if !members.is_empty() {
                return Err(ApiError::invalid_state(format!(
                    "HA group '{name}' still has VMs ({}); move them out first (vdc vm update NAME --no-ha-group)",
                    members.join(", ")
                )));
            }
            let dependents: Vec<&str> = doc
                .groups
                .iter()
                .filter(|g| g.after.iter().any(|a| a == name))
                .map(|g| g.name.as_str())
                .collect();
            if !dependents.is_empty() {
                return Err(ApiError::invalid_state(format!(
                    "groups {} start after HA group '{name}'; change them first",
                    dependents.join(", ")
                )));
            }
            doc.groups.retain(|g| g.name != name);
            Ok(())
        })
        .await?;
        self.events
            .publish(
                "ha.group_deleted",
                name,
                format!("HA group {name} deleted"),
                json!({}),
            )
            .await;
        Ok(())
    }

    /// Checks that group `name` exists (for a VM joining it).
    pub(crate) async fn known_ha_group(
        &self,
        name: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        let Some(name) = name else { return Ok(None) };
        let doc = self.ha_groups_doc().await?;
        if doc.groups.iter().any(|g| g.name == name) {
            Ok(Some(name.to_string()))
        } else {
            Err(ApiError::invalid(format!(
                "there is no HA group '{name}'; create it first (vdc ha group create {name})"
            )))
        }
    }

    async fn publish_group(&self, topic: &str, g: &StoredGroup) {
        let after = if g.after.is_empty() {
            "no other group".to_string()
        } else {
            g.after.join(", ")
        };
        self.events
            .publish(
                topic,
                &g.name,
                format!(
                    "HA group {} starts after {after}, waiting up to {} s for them to be ready",
                    g.name, g.ready_timeout_s
                ),
                json!({"after": g.after, "ready_timeout_s": g.ready_timeout_s}),
            )
            .await;
    }
}
