//! Events published on the event stream.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMillis;

/// Something that happened in the cluster.
///
/// Topics are dotted, object kind first: `vm.created`, `vm.state_changed`,
/// `vm.guest_ready`, `host.connected`, `host.disconnected`, `task.finished`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Sequence number, increasing by one per event; resume a stream after it.
    pub seq: u64,
    /// Time.
    pub time_ms: UnixMillis,
    /// Topic, e.g. `vm.state_changed`.
    pub topic: String,
    /// Name of the object concerned.
    pub object: String,
    /// Human-readable sentence.
    pub message: String,
    /// Structured payload (`null` when the event has none).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: serde_json::Value,
}

/// Whether `topic` matches a filter pattern: `*` matches everything,
/// `vm.*` every topic under `vm.`, anything else matches exactly.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            topic.len() > prefix.len() + 1
                && topic.starts_with(prefix)
                && topic.as_bytes()[prefix.len()] == b'.'
        }
        None => pattern == topic,
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn patterns() {
        assert!(topic_matches("*", "vm.created"));
        assert!(topic_matches("vm.*", "vm.created"));
        assert!(topic_matches("vm.*", "vm.guest.ready"));
        assert!(!topic_matches("vm.*", "vmx.created"));
        assert!(!topic_matches("vm.*", "host.connected"));
        assert!(topic_matches("host.connected", "host.connected"));
        assert!(!topic_matches("host.connected", "host.connected2"));
    }
}
