//! `vdc ha group …` (HA order groups) and `vdc alarm …`.

use clap::Subcommand;
use vdc_types::ha_group::{Alarm, CreateHaGroupRequest, HaGroup};

use crate::commands::{out, out_json, Ctx};
use crate::error::CliError;
use crate::format::{or_dash, utc_time, Table};

/// `vdc ha group ...`
#[derive(Debug, Subcommand)]
pub enum HaGroupCmd {
    /// Create an order group: after a host failure its VMs restart once the
    /// VMs of the groups it starts after report ready (or their readiness
    /// timeout passed).
    Create(GroupArgs),
    /// Change what a group starts after and its readiness timeout.
    Update(GroupArgs),
    /// List the groups in restart order, with their VMs.
    #[command(alias = "ls")]
    List,
    /// Delete a group (refused while VMs are in it or a group starts after
    /// it).
    Delete {
        /// Group name.
        name: String,
    },
}

/// A group's settings.
#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    /// Group name.
    pub name: String,
    /// Groups whose VMs must be ready first (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub after: Vec<String>,
    /// How long the groups after this one wait for its VMs to be ready,
    /// seconds (default 120).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub ready_timeout: Option<u64>,
}

/// `vdc alarm ...`
#[derive(Debug, Subcommand)]
pub enum AlarmCmd {
    /// List alarms, newest first (raised and cleared).
    #[command(alias = "ls")]
    List,
    /// Acknowledge an alarm.
    Ack {
        /// Alarm id.
        id: String,
    },
}

/// Runs `vdc ha group …`.
pub(crate) async fn ha_group(ctx: &Ctx, cmd: HaGroupCmd) -> Result<(), CliError> {
    let req = |a: GroupArgs| CreateHaGroupRequest {
        name: a.name,
        after: a.after,
        ready_timeout_s: a.ready_timeout,
    };
    let one = match cmd {
        HaGroupCmd::List => {
            let groups = ctx.client.list_ha_groups().await?;
            if ctx.json() {
                return out_json(&groups);
            }
            return out(&group_table(&groups));
        }
        HaGroupCmd::Delete { name } => {
            ctx.client.delete_ha_group(&name).await?;
            return out(&format!("HA group {name} deleted\n"));
        }
        HaGroupCmd::Create(a) => ctx.client.create_ha_group(&req(a)).await?,
        HaGroupCmd::Update(a) => ctx.client.update_ha_group(&req(a)).await?,
    };
    if ctx.json() {
        return out_json(&one);
    }
    out(&group_table(std::slice::from_ref(&one)))
}

/// Runs `vdc alarm …`.
pub(crate) async fn alarm(ctx: &Ctx, cmd: AlarmCmd) -> Result<(), CliError> {
    match cmd {
        AlarmCmd::List => {
            let alarms = ctx.client.list_alarms().await?;
            if ctx.json() {
                return out_json(&alarms);
            }
            out(&alarm_table(&alarms))
        }
        AlarmCmd::Ack { id } => {
            let a = ctx.client.ack_alarm(&id).await?;
            if ctx.json() {
                return out_json(&a);
            }
            out(&format!("alarm {} on {} acknowledged\n", a.id, a.object))
        }
    }
}

/// Groups as a table, in restart order.
pub fn group_table(groups: &[HaGroup]) -> String {
    let mut t = Table::new(&["ORDER", "GROUP", "AFTER", "READY-TIMEOUT", "VMS"]);
    for g in groups {
        t.row(vec![
            g.rank.to_string(),
            g.name.clone(),
            or_dash(
                Some(&g.after.join(","))
                    .filter(|s| !s.is_empty())
                    .map(|s| s.as_str()),
            ),
            format!("{}s", g.ready_timeout_s),
            or_dash(
                Some(&g.vms.join(","))
                    .filter(|s| !s.is_empty())
                    .map(|s| s.as_str()),
            ),
        ]);
    }
    t.render()
}

/// Alarms as a table.
pub fn alarm_table(alarms: &[Alarm]) -> String {
    let mut t = Table::new(&[
        "ID", "SEVERITY", "OBJECT", "REASON", "RAISED", "CLEARED", "ACK",
    ]);
    for a in alarms {
        t.row(vec![
            a.id.clone(),
            a.severity.to_string(),
            a.object.clone(),
            a.reason.clone(),
            utc_time(a.raised_ms),
            a.cleared_ms.map(utc_time).unwrap_or_else(|| "-".into()),
            if a.acknowledged { "yes" } else { "no" }.into(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdc_types::ha_group::AlarmSeverity;

    #[test]
    fn groups_show_their_order_and_alarms_their_state() {
        let g = HaGroup {
            version: 1,
            name: "app".into(),
            after: vec!["db".into()],
            ready_timeout_s: 120,
            created_ms: 0,
            vms: vec!["app-1".into(), "app-2".into()],
            rank: 1,
        };
        let text = group_table(&[g]);
        assert!(
            text.contains("app-1,app-2") && text.contains("120s"),
            "{text}"
        );
        let a = Alarm {
            version: 1,
            id: "0001-abc".into(),
            kind: "ha.restart_deferred".into(),
            severity: AlarmSeverity::Critical,
            object: "db-1".into(),
            reason: "no room".into(),
            raised_ms: 1_700_000_000_000,
            cleared_ms: None,
            cleared_reason: None,
            acknowledged: false,
        };
        let text = alarm_table(&[a]);
        assert!(text.contains("critical") && text.contains("db-1"), "{text}");
    }
}
