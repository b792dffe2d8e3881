//! Typed views of the QMP messages vdc uses most.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// QEMU version from the QMP greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

impl std::fmt::Display for QmpVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// An asynchronous QMP event, e.g. `STOP`, `RESUME`, `SHUTDOWN`,
/// `MIGRATION`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    /// Event name as QEMU spells it (`SHUTDOWN`).
    pub name: String,
    /// The event's `data` member (`Value::Null` when absent).
    pub data: Value,
    /// When QEMU emitted it, milliseconds since the Unix epoch.
    pub timestamp: u64,
}

impl QmpEvent {
    /// Builds an event from a decoded QMP line that has an `event` member.
    pub(crate) fn from_message(msg: &Value) -> Option<QmpEvent> {
        let name = msg.get("event")?.as_str()?.to_string();
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        let ts = msg.get("timestamp");
        let secs = ts
            .and_then(|t| t.get("seconds"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let micros = ts
            .and_then(|t| t.get("microseconds"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Some(QmpEvent {
            name,
            data,
            timestamp: secs.saturating_mul(1000).saturating_add(micros / 1000),
        })
    }
}

/// Answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs run.
    pub running: bool,
    /// QEMU's run state name (`running`, `paused`, `inmigrate`, …).
    pub status: String,
}

/// RAM statistics of a migration (part of `query-migrate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationRamStats {
    /// Bytes sent so far.
    #[serde(default)]
    pub transferred: u64,
    /// Bytes left to send.
    #[serde(default)]
    pub remaining: u64,
    /// Guest RAM size.
    #[serde(default)]
    pub total: u64,
    /// Pages the guest dirties per second.
    #[serde(default, rename = "dirty-pages-rate")]
    pub dirty_pages_rate: u64,
    /// Transfer rate of the stream, megabits per second.
    #[serde(default)]
    pub mbps: f64,
    /// Passes over memory (dirty bitmap syncs) so far.
    #[serde(default, rename = "dirty-sync-count")]
    pub dirty_sync_count: u64,
}

/// Answer of `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, …;
    /// absent before any migration.
    #[serde(default)]
    pub status: Option<String>,
    /// RAM statistics, while and after migrating.
    #[serde(default)]
    pub ram: Option<MigrationRamStats>,
    /// Why the migration failed.
    #[serde(default, rename = "error-desc")]
    pub error_desc: Option<String>,
    /// Total time, ms (after completion).
    #[serde(default, rename = "total-time")]
    pub total_time: Option<u64>,
    /// Downtime, ms (after completion).
    #[serde(default)]
    pub downtime: Option<u64>,
    /// Downtime QEMU expects if it switched over now, ms.
    #[serde(default, rename = "expected-downtime")]
    pub expected_downtime: Option<u64>,
    /// vCPU throttle applied by auto-converge, percent.
    #[serde(default, rename = "cpu-throttle-percentage")]
    pub cpu_throttle_percentage: Option<u64>,
}

impl MigrationInfo {
    /// Progress in percent (0–100) from the RAM statistics.
    pub fn percent(&self) -> u8 {
        match (&self.status, &self.ram) {
            (Some(s), _) if s == "completed" => 100,
            (_, Some(ram)) if ram.total > 0 => {
                let done = ram.total.saturating_sub(ram.remaining);
                ((done.saturating_mul(100) / ram.total).min(99)) as u8
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_timestamp_is_in_millis() {
        let ev = QmpEvent::from_message(&json!({
            "event": "STOP",
            "timestamp": {"seconds": 1700000000, "microseconds": 123456}
        }))
        .expect("event");
        assert_eq!(ev.name, "STOP");
        assert_eq!(ev.data, Value::Null);
        assert_eq!(ev.timestamp, 1_700_000_000_123);
    }

    #[test]
    fn migration_percent() {
        let mut info: MigrationInfo = serde_json::from_value(json!({
            "status": "active",
            "ram": {"transferred": 10, "remaining": 75, "total": 100}
        }))
        .expect("decode");
        assert_eq!(info.percent(), 25);
        info.status = Some("completed".into());
        assert_eq!(info.percent(), 100);
        assert_eq!(MigrationInfo::default().percent(), 0);
    }
}
