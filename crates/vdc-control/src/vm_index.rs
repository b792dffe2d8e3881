//! The per-host index of VM records: what a host report needs, found in
//! O(VMs of that host) instead of a walk of every record.
//!
//! Why: every host reports once a second. Folding a report
//! ([`crate::ownership::fold_report`]) only changes records the host owns
//! or is a move party of, and only flags conflicts for VMs it lists; every
//! other record folds to itself. With 500 hosts and 10,000 VMs a walk per
//! report would be 5 million record reads a second.
//!
//! How it stays right: the index is a cache of the `/vms/` records kept
//! by a store watch (list, then apply every later change; a watch that
//! lagged or lost history is dropped and the index rebuilt). It only
//! *selects* records: every write still goes through `change_record`,
//! a compare-and-swap on the record as stored, folded again on fresh data.
//! A snapshot a few milliseconds behind can at worst make a report skip a
//! change the next report makes. Until the first listing is done, or
//! while it is rebuilt, callers walk the records as before.
//!
//! [`VmIndex`] is the pure part (a function of the changes applied);
//! [`spawn`] drives it from the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use vdc_store::{Store, WatchEvent};
use vdc_types::VmOperation;

use crate::record::VmRecord;

/// Prefix of the VM records.
pub const PREFIX: &str = "/vms/";

/// Pause before rebuilding after the store failed.
const RETRY: Duration = Duration::from_millis(500);

/// VM records by name, with who they concern.
#[derive(Debug, Default, Clone)]
pub struct VmIndex {
    /// name → (mod revision, record).
    records: BTreeMap<String, (u64, VmRecord)>,
    /// host → names of the VMs it owns or is a move party of.
    by_host: HashMap<String, BTreeSet<String>>,
    /// VM id → name.
    by_id: HashMap<String, String>,
}

/// The hosts a record concerns: its owner and the parties of a move.
fn hosts_of(rec: &VmRecord) -> Vec<&str> {
    let mut hosts: Vec<&str> = rec.owner.iter().map(String::as_str).collect();
    match rec.operation.as_ref().map(|o| &o.operation) {
        Some(VmOperation::Migrating { source, target }) => {
            hosts.extend([source.as_str(), target.as_str()]);
        }
        Some(VmOperation::FailingOver { from }) => hosts.push(from.as_str()),
        _ => {}
    }
    hosts
}

impl VmIndex {
    /// The index of `records` (`(name, mod revision, record)`), as listed.
    pub fn from_records(records: impl IntoIterator<Item = (String, u64, VmRecord)>) -> Self {
        let mut index = VmIndex::default();
        for (name, revision, rec) in records {
            index.put(&name, revision, rec);
        }
        index
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if there is no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A record was written at `revision`; ignored if the index already
    /// holds a newer or equal one (a change seen by the listing too).
    pub fn put(&mut self, name: &str, revision: u64, rec: VmRecord) {
        if self.records.get(name).is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        self.unlink(name);
        for host in hosts_of(&rec) {
            self.by_host
                .entry(host.to_string())
                .or_default()
                .insert(name.to_string());
        }
        self.by_id.insert(rec.config.id.clone(), name.to_string());
        self.records.insert(name.to_string(), (revision, rec));
    }

    /// A record was deleted at `revision`; ignored if the index holds a
    /// newer one.
    pub fn delete(&mut self, name: &str, revision: u64) {
        if self.records.get(name).is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        self.unlink(name);
        self.records.remove(name);
    }

    fn unlink(&mut self, name: &str) {
        let Some((_, old)) = self.records.get(name) else {
            return;
        };
        for host in hosts_of(old) {
            if let Some(names) = self.by_host.get_mut(host) {
                names.remove(name);
                if names.is_empty() {
                    self.by_host.remove(host);
                }
            }
        }
        if self.by_id.get(&old.config.id).map(String::as_str) == Some(name) {
            self.by_id.remove(&old.config.id);
        }
    }

    /// The records a report of `host` may change or flag: those it owns
    /// or is a move party of, and those with an id in `ids` (the VMs it
    /// lists, and those with a conflict to clear). In name order.
    pub fn for_host<'a>(
        &self,
        host: &str,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<VmRecord> {
        let mut names: BTreeSet<&str> = self
            .by_host
            .get(host)
            .map(|n| n.iter().map(String::as_str).collect())
            .unwrap_or_default();
        names.extend(
            ids.into_iter()
                .filter_map(|id| self.by_id.get(id))
                .map(String::as_str),
        );
        names
            .into_iter()
            .filter_map(|n| self.records.get(n).map(|(_, rec)| rec.clone()))
            .collect()
    }
}

/// The index shared with the report path: `None` while (re)built.
#[derive(Debug, Default)]
pub struct SharedIndex {
    state: RwLock<Option<VmIndex>>,
}

impl SharedIndex {
    /// The records a report of `host` may change (see
    /// [`VmIndex::for_host`]); `None` if the index is not built yet.
    pub fn for_host<'a>(
        &self,
        host: &str,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Option<Vec<VmRecord>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.as_ref().map(|index| index.for_host(host, ids))
    }

    /// Whether the index is built (and followed by a watch).
    pub fn is_ready(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn set(&self, index: Option<VmIndex>) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = index;
    }

    fn apply(&self, event: &WatchEvent) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let Some(index) = state.as_mut() else { return };
        match event {
            WatchEvent::Put(kv) => {
                let Some(name) = kv.key.strip_prefix(PREFIX) else {
                    return;
                };
                match serde_json::from_slice::<VmRecord>(&kv.value) {
                    Ok(rec) => index.put(name, kv.mod_revision, rec),
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "VM record not indexed: cannot decode it");
                        index.delete(name, kv.mod_revision);
                    }
                }
            }
            WatchEvent::Delete { key, mod_revision } => {
                if let Some(name) = key.strip_prefix(PREFIX) {
                    index.delete(name, *mod_revision);
                }
            }
        }
    }
}

/// Keep `index` in step with the store's VM records until the store is
/// dropped.
pub fn spawn(store: &Arc<dyn Store>, index: Arc<SharedIndex>) {
    let store = Arc::downgrade(store);
    tokio::spawn(async move { follow(store, index).await });
}

async fn follow(store: Weak<dyn Store>, index: Arc<SharedIndex>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        // Watch first, then list: a change between the two shows in both,
        // and the revisions keep the newer.
        let built = async {
            let watch = s.watch(PREFIX).await?;
            let listed = s.list(PREFIX).await?;
            Ok::<_, vdc_store::StoreError>((watch, listed))
        }
        .await;
        drop(s);
        let (mut watch, listed) = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the VM index; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let records = listed.into_iter().filter_map(|kv| {
            let name = kv.key.strip_prefix(PREFIX)?.to_string();
            match serde_json::from_slice::<VmRecord>(&kv.value) {
                Ok(rec) => Some((name, kv.mod_revision, rec)),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "VM record not indexed: cannot decode it");
                    None
                }
            }
        });
        index.set(Some(VmIndex::from_records(records)));
        loop {
            match watch.recv().await {
                Some(Ok(event)) => index.apply(&event),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "VM index watch failed; rebuilding");
                    break;
                }
                None => break,
            }
        }
        index.set(None);
        if store.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::vm::VM_CONFIG_VERSION;
    use vdc_types::{InFlight, VmConfig, VmPowerState};

    fn rec(name: &str, owner: Option<&str>) -> VmRecord {
        let config = VmConfig {
            version: VM_CONFIG_VERSION,
            id: format!("id-{name}"),
            name: name.into(),
            cpus: 1,
            memory_mib: 128,
            datastore: "shared".into(),
            dir: name.into(),
            disks: vec![],
            nics: vec![],
            hostname: name.into(),
            template: None,
            created_ms: 0,
            machine_type: vdc_types::vm::DEFAULT_MACHINE_TYPE.into(),
            cpu_model: vdc_types::vm::DEFAULT_CPU_MODEL.into(),
            ha: Default::default(),
            linked_clone: false,
            guest_agent: false,
            hotplug_ports: 0,
        };
        VmRecord::new(config, VmPowerState::Running, owner.map(str::to_string))
    }

    fn names(v: Vec<VmRecord>) -> Vec<String> {
        v.into_iter().map(|r| r.config.name).collect()
    }

    #[test]
    fn selects_owned_moving_and_listed_records_only() {
        let mut index = VmIndex::from_records([
            ("a".to_string(), 1, rec("a", Some("h1"))),
            ("b".to_string(), 2, rec("b", Some("h2"))),
            ("c".to_string(), 3, rec("c", Some("h2"))),
            ("d".to_string(), 4, rec("d", None)),
        ]);
        assert_eq!(names(index.for_host("h1", [])), ["a"]);
        assert_eq!(names(index.for_host("h1", ["id-c", "id-zz"])), ["a", "c"]);
        assert!(index.for_host("h3", []).is_empty());

        // b moves from h2 to h1: both hosts see it until it commits.
        let mut moving = rec("b", Some("h2"));
        moving.operation = Some(InFlight {
            operation: VmOperation::Migrating {
                source: "h2".into(),
                target: "h1".into(),
            },
            task: Some("t".into()),
            since_ms: 1,
        });
        index.put("b", 5, moving);
        assert_eq!(names(index.for_host("h1", [])), ["a", "b"]);
        assert_eq!(names(index.for_host("h2", [])), ["b", "c"]);
        index.put("b", 6, rec("b", Some("h1")));
        assert_eq!(names(index.for_host("h2", [])), ["c"]);

        index.delete("a", 7);
        assert_eq!(names(index.for_host("h1", [])), ["b"]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn older_changes_never_undo_newer_ones() {
        let mut index = VmIndex::default();
        index.put("a", 5, rec("a", Some("h1")));
        // A change the listing already showed, then seen again by the watch.
        index.put("a", 4, rec("a", Some("h2")));
        index.delete("a", 5);
        assert_eq!(names(index.for_host("h1", [])), ["a"]);
        assert!(index.for_host("h2", []).is_empty());
        index.delete("a", 6);
        assert!(index.is_empty());
        index.put("a", 7, rec("a", Some("h2")));
        assert_eq!(names(index.for_host("h2", ["id-a"])), ["a"]);
    }
}
