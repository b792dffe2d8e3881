//! Alarms: a condition an administrator must see until it ends (today: a
//! protected VM whose restart is deferred for want of a host to run it).
//!
//! Stored at `/alarms/<id>` (versioned; ids sort by the time raised). At
//! most one alarm of a kind is raised per object at a time: raising it
//! again while it is raised does nothing. Clearing sets `cleared_ms` and
//! keeps the alarm for the record; the oldest cleared alarms beyond
//! [`KEEP_CLEARED`] are deleted. Each change is an event: `alarm.raised`,
//! `alarm.cleared`, `alarm.acknowledged`.

use serde_json::json;
use vdc_store::StoreExt;
use vdc_types::ha_group::{Alarm, AlarmSeverity, ALARM_VERSION};
use vdc_types::{now_ms, ApiError};

use crate::{store_err, Cluster};

const PREFIX: &str = "/alarms/";

/// Cleared alarms kept for the record.
pub const KEEP_CLEARED: usize = 200;

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

impl Cluster {
    /// `GET /api/v1/alarms`: every alarm, newest first.
    pub async fn list_alarms(&self) -> Result<Vec<Alarm>, ApiError> {
        let mut v: Vec<Alarm> = self
            .list_values::<Alarm>(PREFIX)
            .await?
            .into_iter()
            .filter(|a| a.version <= ALARM_VERSION)
            .collect();
        v.reverse();
        Ok(v)
    }

    /// Raises an alarm of `kind` on `object` unless one is raised already.
    pub(crate) async fn raise_alarm(
        &self,
        kind: &str,
        object: &str,
        severity: AlarmSeverity,
        reason: &str,
    ) -> Result<(), ApiError> {
        let all = self.list_alarms().await?;
        if all
            .iter()
            .any(|a| a.kind == kind && a.object == object && a.cleared_ms.is_none())
        {
            return Ok(());
        }
        let raised = now_ms();
        let id = format!(
            "{raised:016}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let alarm = Alarm {
            version: ALARM_VERSION,
            id: id.clone(),
            kind: kind.into(),
            severity,
            object: object.into(),
            reason: reason.into(),
            raised_ms: raised,
            cleared_ms: None,
            cleared_reason: None,
            acknowledged: false,
        };
        self.store
            .put_json(&key(&id), &alarm)
            .await
            .map_err(store_err)?;
        self.events
            .publish(
                "alarm.raised",
                object,
                format!("{severity} alarm on {object}: {reason}"),
                json!({"id": id, "kind": kind, "severity": severity, "reason": reason}),
            )
            .await;
        // Old cleared alarms go.
        let cleared: Vec<&Alarm> = all.iter().filter(|a| a.cleared_ms.is_some()).collect();
        for old in cleared.iter().skip(KEEP_CLEARED) {
            if let Err(e) = self.store.delete(&key(&old.id)).await {
                tracing::warn!(alarm = %old.id, error = %e, "cannot delete an old cleared alarm");
            }
        }
        Ok(())
    }

    /// Clears the raised alarms of `kind` on `object`, saying why.
    pub(crate) async fn clear_alarms(
        &self,
        kind: &str,
        object: &str,
        why: &str,
    ) -> Result<(), ApiError> {
        let raised: Vec<Alarm> = self
            .list_alarms()
            .await?
            .into_iter()
            .filter(|a| a.kind == kind && a.object == object && a.cleared_ms.is_none())
            .collect();
        for a in raised {
            let cleared = self
                .store
                .update_json::<Alarm, vdc_store::StoreError, _>(&key(&a.id), |mut x| {
                    if x.cleared_ms.is_none() {
                        x.cleared_ms = Some(now_ms());
                        x.cleared_reason = Some(why.to_string());
                    }
                    Ok(x)
                })
                .await
                .map_err(store_err)?;
            self.events
                .publish(
                    "alarm.cleared",
                    object,
                    format!("alarm on {object} cleared: {why}"),
                    json!({"id": cleared.id, "kind": kind, "reason": why}),
                )
                .await;
        }
        Ok(())
    }

    /// `POST /api/v1/alarms/{id}/ack`: marks an alarm as seen.
    pub async fn ack_alarm(&self, id: &str) -> Result<Alarm, ApiError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ApiError::not_found("Alarm", id));
        }
        let a = self
            .store
            .update_json::<Alarm, vdc_store::StoreError, _>(&key(id), |mut a| {
                a.acknowledged = true;
                Ok(a)
            })
            .await
            .map_err(|e| match e {
                vdc_store::StoreError::NotFound(_) => ApiError::not_found("Alarm", id),
                e => store_err(e),
            })?;
        self.events
            .publish(
                "alarm.acknowledged",
                &a.object,
                format!("alarm {id} on {} acknowledged", a.object),
                json!({"id": id, "kind": a.kind}),
            )
            .await;
        Ok(a)
    }
}
