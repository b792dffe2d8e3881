//! Where a stopped or suspended VM's files go when it moves (pure): the
//! destination host may reach the VM's datastores (only ownership moves)
//! or not (the files are copied to a datastore it has).

use vdc_types::{ApiError, DatastoreKind, VmConfig};

/// One datastore as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreFact {
    /// Name.
    pub name: String,
    /// Shared or local.
    pub kind: DatastoreKind,
}

/// What a move of a stopped or suspended VM does with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesPlan {
    /// The destination reaches every datastore of the VM: only the owner
    /// changes.
    OwnershipOnly,
    /// The files are copied to `datastore` on the destination (the
    /// directory and every disk), then removed from the source.
    Copy {
        /// Datastore on the destination.
        datastore: String,
    },
}

/// Plans the files of `config` for a move to a host that reaches
/// `target_reaches` (datastore names), with `requested` the datastore the
/// user asked for. `known` lists every datastore of the cluster.
///
/// Refusals: an unknown datastore (404), one the destination does not
/// reach (400), a destination that reaches no datastore (400), a copy onto
/// the datastore that already holds the VM's directory (400).
pub fn plan_files(
    config: &VmConfig,
    same_host: bool,
    target: &str,
    target_reaches: &[String],
    requested: Option<&str>,
    known: &[DatastoreFact],
) -> Result<FilesPlan, ApiError> {
    let reaches = |ds: &str| target_reaches.iter().any(|d| d == ds);
    let all_reached =
        reaches(&config.datastore) && config.disks.iter().all(|d| reaches(&d.datastore));
    let on = |ds: &str| config.datastore == ds && config.disks.iter().all(|d| d.datastore == ds);
    if let Some(ds) = requested {
        if !known.iter().any(|k| k.name == ds) {
            return Err(ApiError::not_found("Datastore", ds));
        }
        if !reaches(ds) {
            return Err(ApiError::invalid(format!(
                "datastore '{ds}' is not present on host '{target}'; choose one of: {}",
                target_reaches.join(", ")
            )));
        }
        if on(ds) {
            return if same_host {
                Err(ApiError::invalid(format!(
                    "VM '{}' is already on datastore '{ds}' on host '{target}'; nothing to move",
                    config.name
                )))
            } else {
                Ok(FilesPlan::OwnershipOnly)
            };
        }
        if config.datastore == ds {
            return Err(ApiError::invalid(format!(
                "VM '{}' has its directory on datastore '{ds}' already and some disks elsewhere; choose another datastore",
                config.name
            )));
        }
        return Ok(FilesPlan::Copy {
            datastore: ds.to_string(),
        });
    }
    if all_reached {
        return if same_host {
            Err(ApiError::invalid(format!(
                "VM '{}' is already on host '{target}'; give another host or a datastore",
                config.name
            )))
        } else {
            Ok(FilesPlan::OwnershipOnly)
        };
    }
    // The default: a shared datastore the destination reaches, else one
    // of its own.
    let mut candidates: Vec<&DatastoreFact> = known
        .iter()
        .filter(|k| reaches(&k.name) && k.name != config.datastore)
        .collect();
    candidates.sort_by_key(|k| (k.kind != DatastoreKind::Shared, k.name.clone()));
    match candidates.first() {
        Some(k) => Ok(FilesPlan::Copy {
            datastore: k.name.clone(),
        }),
        None => Err(ApiError::invalid(format!(
            "host '{target}' reaches no datastore that could hold VM '{}'; give --datastore",
            config.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::ErrorCode;

    fn config(ds: &str) -> VmConfig {
        serde_json::from_value(serde_json::json!({
            "version": 2, "id": "id", "name": "web", "cpus": 1, "memory_mib": 64,
            "datastore": ds, "dir": "web",
            "disks": [{"name": "disk0", "datastore": ds, "path": "web/disk0.qcow2", "size_bytes": 1}],
            "nics": [], "hostname": "web", "created_ms": 0
        }))
        .expect("config")
    }

    fn known() -> Vec<DatastoreFact> {
        [
            ("shared", DatastoreKind::Shared),
            (
                "local-host-1",
                DatastoreKind::Local {
                    host: "host-1".into(),
                },
            ),
            (
                "local-host-2",
                DatastoreKind::Local {
                    host: "host-2".into(),
                },
            ),
        ]
        .into_iter()
        .map(|(n, kind)| DatastoreFact {
            name: n.into(),
            kind,
        })
        .collect()
    }

    fn reaches(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_shared_vm_moves_by_ownership_only() {
        let p = plan_files(
            &config("shared"),
            false,
            "host-2",
            &reaches(&["shared", "local-host-2"]),
            None,
            &known(),
        );
        assert_eq!(p.expect("plan"), FilesPlan::OwnershipOnly);
    }

    #[test]
    fn a_local_vm_is_copied_to_the_requested_or_a_shared_datastore() {
        let h2 = reaches(&["shared", "local-host-2"]);
        let c = config("local-host-1");
        assert_eq!(
            plan_files(&c, false, "host-2", &h2, Some("local-host-2"), &known()).expect("plan"),
            FilesPlan::Copy {
                datastore: "local-host-2".into()
            }
        );
        assert_eq!(
            plan_files(&c, false, "host-2", &h2, None, &known()).expect("plan"),
            FilesPlan::Copy {
                datastore: "shared".into()
            }
        );
        let only_local = reaches(&["local-host-2"]);
        assert_eq!(
            plan_files(&c, false, "host-2", &only_local, None, &known()).expect("plan"),
            FilesPlan::Copy {
                datastore: "local-host-2".into()
            }
        );
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let h2 = reaches(&["shared", "local-host-2"]);
        let c = config("local-host-1");
        let unknown = plan_files(&c, false, "host-2", &h2, Some("nope"), &known());
        assert_eq!(unknown.expect_err("unknown").code, ErrorCode::NotFound);
        let absent = plan_files(&c, false, "host-2", &h2, Some("local-host-1"), &known())
            .expect_err("absent");
        assert_eq!(absent.code, ErrorCode::InvalidInput);
        assert!(absent.message.contains("not present on host 'host-2'"));
        let same = plan_files(
            &config("shared"),
            true,
            "host-1",
            &h2,
            Some("shared"),
            &known(),
        );
        assert_eq!(
            same.expect_err("nothing to move").code,
            ErrorCode::InvalidInput
        );
        let none = plan_files(&c, false, "host-2", &[], None, &known());
        assert_eq!(
            none.expect_err("no datastore").code,
            ErrorCode::InvalidInput
        );
    }

    #[test]
    fn a_same_host_move_to_another_datastore_copies() {
        let h1 = reaches(&["shared", "local-host-1"]);
        assert_eq!(
            plan_files(
                &config("local-host-1"),
                true,
                "host-1",
                &h1,
                Some("shared"),
                &known()
            )
            .expect("plan"),
            FilesPlan::Copy {
                datastore: "shared".into()
            }
        );
    }
}
