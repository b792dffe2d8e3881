//! Host networking for VM NICs: one tap device per NIC, enslaved to the
//! Linux bridge of the NIC's network.
//!
//! Tap names are derived from the VM id and the NIC index ([`tap_name`]), so
//! an agent restarted after a crash finds the taps of the VMs it re-attaches
//! to, and a start that failed half-way can clean up without bookkeeping.
//!
//! All functions run `ip` (iproute2) in the current network namespace: the
//! agent runs inside its host's namespace. Each failure keeps the command
//! and its stderr in the error ([`NetError::Command`]).
//!
//! Creating a tap: `ip tuntap add dev NAME mode tap`, then
//! `ip link set NAME master BRIDGE up`; if the second step fails the tap is
//! deleted again.

#![warn(missing_docs)]

pub mod plan;
pub mod ports;
pub mod switch;

pub use switch::{attach_port, TapPort};

use tokio::process::Command;

/// The program run; found on `PATH`.
const IP: &str = "ip";

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Errors of host networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip` could not be started.
    #[error("cannot run ip, bridge or tc")]
    Spawn(#[source] std::io::Error),
    /// An `ip` command failed; its stderr is in `stderr`.
    #[error("'{command}' failed")]
    Command {
        /// The command line.
        command: String,
        /// Exit code, if it exited normally.
        status: Option<i32>,
        /// What `ip` wrote to stderr.
        stderr: String,
    },
    /// `ip -j` printed something that is not the expected JSON.
    #[error("cannot parse the output of '{command}'")]
    Output {
        /// The command line.
        command: String,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Not a usable interface name.
    #[error("'{0}' is not a valid interface name")]
    InvalidName(String),
    /// The bridge a NIC should join does not exist on this host.
    #[error("bridge '{0}' does not exist on this host")]
    NoBridge(String),
}

/// Name of the tap device of NIC `nic_index` of VM `vm_id`: `vt`, 8 hex
/// digits of a hash of the id, and the index (at most 15 characters for
/// indexes below 100000). Stable across agent restarts and builds.
pub fn tap_name(vm_id: &str, nic_index: u32) -> String {
    format!("vt{:08x}{}", fnv1a32(vm_id.as_bytes()), nic_index)
}

/// FNV-1a, 32 bits: tiny, and fixed forever (unlike std's hasher).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Checks that `name` is acceptable to the kernel as an interface name.
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidName(name.to_string()))
    }
}

/// Runs `ip ARGS`; stdout on success.
pub(crate) async fn ip(args: &[&str]) -> Result<Vec<u8>, NetError> {
    let out = Command::new(IP)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(NetError::Spawn)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(NetError::Command {
            command: format!("{IP} {}", args.join(" ")),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Looks interface `name` up: `None` if it does not exist, otherwise
/// `Some(kind)` with its `linkinfo.info_kind` (`bridge`, `tun`, … or `None`
/// for a plain device).
async fn link_kind(name: &str) -> Result<Option<Option<String>>, NetError> {
    validate_ifname(name)?;
    let args = ["-j", "-d", "link", "show", "dev", name];
    let out = match ip(&args).await {
        Ok(out) => out,
        Err(NetError::Command { stderr, .. }) if stderr.contains("does not exist") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|source| NetError::Output {
        command: format!("{IP} {}", args.join(" ")),
        source,
    })?;
    let kind = v
        .get(0)
        .and_then(|l| l.get("linkinfo"))
        .and_then(|li| li.get("info_kind"))
        .and_then(|k| k.as_str())
        .map(str::to_string);
    Ok(Some(kind))
}

/// Whether a Linux bridge named `name` exists in this network namespace.
pub async fn bridge_exists(name: &str) -> Result<bool, NetError> {
    Ok(matches!(link_kind(name).await?, Some(Some(k)) if k == "bridge"))
}

/// Whether an interface named `name` exists in this network namespace.
pub async fn link_exists(name: &str) -> Result<bool, NetError> {
    Ok(link_kind(name).await?.is_some())
}

/// Creates tap device `tap` (or reuses it if it exists, e.g. after an agent
/// restart), enslaves it to `bridge` and sets it up. A tap this call created
/// is deleted again if enslaving fails.
pub async fn create_tap(tap: &str, bridge: &str) -> Result<(), NetError> {
    validate_ifname(tap)?;
    if !bridge_exists(bridge).await? {
        return Err(NetError::NoBridge(bridge.to_string()));
    }
    pin_bridge_mac(bridge).await;
    let created = if link_exists(tap).await? {
        false
    } else {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
        true
    };
    if let Err(e) = ip(&["link", "set", tap, "master", bridge, "up"]).await {
        if created {
            let _ = delete_tap(tap).await;
        }
        return Err(e);
    }
    Ok(())
}

/// `addr_assign_type` of a device whose MAC address was set explicitly.
const NET_ADDR_SET: &str = "3";

/// Fixes `bridge`'s MAC address to its current value unless it was set
/// explicitly. A Linux bridge left alone takes the lowest MAC among its
/// ports; VM taps have random MACs, so a tap joining or leaving could change
/// the bridge's MAC, and with it cut the host's own address on that bridge
/// off its neighbours until their ARP entries go stale (tens of seconds).
/// Best effort: a failure is logged and the tap is still attached.
async fn pin_bridge_mac(bridge: &str) {
    let sys = std::path::Path::new("/sys/class/net").join(bridge);
    let assign = tokio::fs::read_to_string(sys.join("addr_assign_type")).await;
    let mac = tokio::fs::read_to_string(sys.join("address")).await;
    match (assign, mac) {
        (Ok(assign), _) if assign.trim() == NET_ADDR_SET => {}
        (Ok(_), Ok(mac)) => {
            let mac = mac.trim();
            match ip(&["link", "set", "dev", bridge, "address", mac]).await {
                Ok(_) => {
                    tracing::info!(%bridge, %mac, "bridge MAC address fixed, so VM taps cannot change it")
                }
                Err(e) => {
                    tracing::warn!(%bridge, error = %e, "cannot fix the bridge's MAC address; a VM tap joining or leaving may change it")
                }
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(%bridge, error = %e, "cannot read the bridge's MAC address assignment")
        }
    }
}

/// Deletes tap device `tap`; a tap that does not exist is not an error.
pub async fn delete_tap(tap: &str) -> Result<(), NetError> {
    validate_ifname(tap)?;
    match ip(&["link", "del", "dev", tap]).await {
        Ok(_) => Ok(()),
        Err(NetError::Command { stderr, .. })
            if stderr.contains("Cannot find device") || stderr.contains("does not exist") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_short_stable_and_distinct() {
        let id = "0b6f1f5e-1111-2222-3333-444455556666";
        let a = tap_name(id, 0);
        assert_eq!(a, tap_name(id, 0));
        assert!(a.starts_with("vt") && a.ends_with('0'));
        assert_eq!(a.len(), 11);
        assert_ne!(a, tap_name(id, 1));
        assert_ne!(a, tap_name("another-vm", 0));
        assert!(tap_name(id, 99_999).len() <= MAX_IFNAME_LEN);
        validate_ifname(&tap_name(id, 99_999)).unwrap();
        // Fixed forever: FNV-1a of "a" is e40c292c.
        assert_eq!(tap_name("a", 3), "vte40c292c3");
    }

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", "a/b", "a b", "way-too-long-name", "x:1", ".."] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        validate_ifname("br0").unwrap();
    }

    #[tokio::test]
    async fn missing_links_and_bridges() {
        assert!(!bridge_exists("vdcnobr0").await.unwrap());
        assert!(!link_exists("vdcnolink0").await.unwrap());
        // The loopback device exists but is no bridge.
        assert!(link_exists("lo").await.unwrap());
        assert!(!bridge_exists("lo").await.unwrap());
        delete_tap("vdcnotap0").await.unwrap();
        assert!(matches!(
            create_tap("vdcnotap0", "vdcnobr0").await,
            Err(NetError::NoBridge(_))
        ));
    }

    /// Needs root (CAP_NET_ADMIN); skipped otherwise.
    #[tokio::test]
    async fn tap_on_a_bridge() {
        let br = "vdctestbr9";
        // A run killed half-way leaves the bridge: without this the test
        // would be skipped from then on.
        let _ = ip(&["link", "del", br]).await;
        if ip(&["link", "add", br, "type", "bridge"]).await.is_err() {
            eprintln!("skipping: cannot create a bridge (not root?)");
            return;
        }
        let tap = tap_name("net-test-vm", 0);
        let sys = std::path::Path::new("/sys/class/net").join(br);
        let read = |f: &str| {
            std::fs::read_to_string(sys.join(f))
                .unwrap()
                .trim()
                .to_string()
        };
        let mac = read("address");
        let result = async {
            create_tap(&tap, br).await?;
            // The bridge's MAC is pinned to what it was: the tap cannot
            // change it.
            assert_eq!(read("addr_assign_type"), NET_ADDR_SET);
            assert_eq!(read("address"), mac);
            // Idempotent on re-attach.
            create_tap(&tap, br).await?;
            let out = ip(&["-j", "link", "show", "dev", &tap]).await?;
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v[0]["master"], br);
            delete_tap(&tap).await?;
            assert!(!link_exists(&tap).await?);
            Ok::<_, NetError>(())
        }
        .await;
        let _ = delete_tap(&tap).await;
        let _ = ip(&["link", "del", br]).await;
        result.unwrap();
    }
}
