//! NIC hot plug: adding a NIC to a VM and removing one, while it runs or
//! while it is powered off.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::VmConfig;

/// `POST /api/v1/vms/{name}/nics`: a NIC to add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddNicRequest {
    /// Port group (network) the NIC connects to.
    pub network: String,
    /// MAC address (`xx:xx:xx:xx:xx:xx`, unicast); a random
    /// `52:54:00:xx:xx:xx` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// What `POST /api/v1/vms/{name}/nics` and `DELETE
/// /api/v1/vms/{name}/nics/{nic}` answer: the task doing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NicChange {
    /// The `vm.reconfigure` task.
    pub task: crate::Task,
    /// Device id of the NIC (`hpnet0`, `net1`).
    pub nic: String,
    /// Its MAC address.
    pub mac: String,
}

/// `POST /agent/v1/vms/{id}/nics/plug` and `…/nics/unplug`: the VM's
/// configuration after the change and the hot-plug port of the NIC that
/// comes or goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicHotplug {
    /// The configuration with the NIC (plug) or without it (unplug).
    pub config: VmConfig,
    /// The NIC's hot-plug port.
    pub port: u32,
    /// The NIC's MAC (unplug: the NIC that goes).
    pub mac: String,
}

/// Checks a MAC address given by a user: six pairs of hex digits separated
/// by `:`, not multicast (the low bit of the first byte) and not all
/// zeros. Returns it in lower case.
pub fn check_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let bytes: Option<Vec<u8>> = parts
        .iter()
        .map(|p| {
            (p.len() == 2)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect();
    match bytes {
        Some(b) if b.len() == 6 => {
            if b[0] & 1 == 1 {
                Err(format!(
                    "MAC address '{mac}' is a multicast address; a NIC needs a unicast one (even first byte)"
                ))
            } else if b.iter().all(|x| *x == 0) {
                Err(format!("MAC address '{mac}' is all zeros"))
            } else {
                Ok(mac.to_ascii_lowercase())
            }
        }
        _ => Err(format!(
            "'{mac}' is not a MAC address; write six pairs of hex digits, e.g. 52:54:00:12:34:56"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_checked() {
        assert_eq!(
            check_mac("52:54:00:AB:cd:01").as_deref(),
            Ok("52:54:00:ab:cd:01")
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52-54-00-ab-cd-01",
            "52:54:00:ab:cd:0g",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "525:4:00:ab:cd:01",
        ] {
            assert!(check_mac(bad).is_err(), "{bad}");
        }
    }
}
