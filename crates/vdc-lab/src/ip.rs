//! A small wrapper around the `ip` command (iproute2).
//!
//! The lab changes the network with `ip` rather than netlink: every step is
//! then a command an administrator can read in an error message and replay
//! by hand. Failures keep `ip`'s own standard error, which names the cause
//! ("File exists", "Cannot find device").

use std::process::Command;

use crate::error::{LabError, Result};

/// Runs `ip ARGS...`; returns its standard output.
pub fn ip(args: &[&str]) -> Result<String> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(LabError::Ip {
            command,
            stderr: if stderr.is_empty() {
                format!("exit status {}", out.status)
            } else {
                stderr
            },
        })
    }
}

/// Runs `ip -n NETNS ARGS...` (the command inside a namespace).
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Like [`ip`], but a "does not exist" failure counts as success: used by
/// teardown, which must be idempotent.
pub fn ip_delete(args: &[&str]) -> Result<()> {
    match ip(args) {
        Ok(_) => Ok(()),
        Err(LabError::Ip { stderr, .. }) if is_missing(&stderr) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_missing(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("cannot find device")
        || s.contains("no such file")
        || s.contains("does not exist")
        || s.contains("not found")
}

/// Names of the network namespaces on the machine.
pub fn netns_list() -> Result<Vec<String>> {
    Ok(crate::plan::parse_netns_list(&ip(&["netns", "list"])?))
}

/// Names of the interfaces in the root namespace.
pub fn link_names() -> Result<Vec<String>> {
    Ok(crate::plan::parse_link_names(&ip(&["-o", "link", "show"])?))
}

/// Whether interface `name` exists in the root namespace.
pub fn link_exists(name: &str) -> Result<bool> {
    Ok(link_names()?.iter().any(|n| n == name))
}

/// Pids of the processes inside namespace `netns` (`ip netns pids`).
pub fn netns_pids(netns: &str) -> Result<Vec<i32>> {
    Ok(ip(&["netns", "pids", netns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_objects_are_recognised() {
        assert!(is_missing("Cannot find device \"x\""));
        assert!(is_missing(
            "Cannot remove namespace file \"/run/netns/x\": No such file or directory"
        ));
        assert!(!is_missing("RTNETLINK answers: Operation not permitted"));
    }

    #[test]
    fn failures_keep_stderr() {
        let err = ip(&["link", "show", "dev", "vdc-no-such-link"]).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("ip link show dev vdc-no-such-link"), "{text}");
        assert!(
            text.contains("does not exist") || text.contains("Cannot find"),
            "{text}"
        );
    }
}
