//! Retention: which backups of a VM a policy keeps. Pure.
//!
//! Backups are taken newest first. `keep_last` keeps the N newest; each
//! of `keep_hourly`, `keep_daily`, `keep_weekly` (ISO weeks, from Monday)
//! and `keep_monthly` keeps the newest backup of each of the N most recent
//! periods (UTC) that have one. A backup kept by any rule is kept. A
//! policy with no rule keeps everything.

use std::collections::BTreeSet;

pub use vdc_types::backup::Retention;
use vdc_types::UnixMillis;

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

/// Days since 1970-01-01 → (year, month 1–12).
fn year_month(days: i64) -> (i64, u32) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

fn period(rule: usize, t: UnixMillis) -> i64 {
    let days = (t / DAY) as i64;
    match rule {
        0 => (t / HOUR) as i64,
        1 => days,
        2 => (days + 3).div_euclid(7),
        _ => {
            let (y, m) = year_month(days);
            y * 12 + i64::from(m)
        }
    }
}

/// The ids `policy` keeps among `backups` (id, start time).
pub fn keep(backups: &[(String, UnixMillis)], policy: &Retention) -> BTreeSet<String> {
    let mut sorted: Vec<&(String, UnixMillis)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    if policy.is_empty() {
        return sorted.iter().map(|b| b.0.clone()).collect();
    }
    let mut kept: BTreeSet<String> = sorted
        .iter()
        .take(policy.keep_last as usize)
        .map(|b| b.0.clone())
        .collect();
    let rules = [
        policy.keep_hourly,
        policy.keep_daily,
        policy.keep_weekly,
        policy.keep_monthly,
    ];
    for (rule, n) in rules.into_iter().enumerate() {
        let mut periods = BTreeSet::new();
        for b in &sorted {
            if periods.len() >= n as usize {
                break;
            }
            if periods.insert(period(rule, b.1)) {
                kept.insert(b.0.clone());
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(id: &str, t: u64) -> (String, u64) {
        (id.into(), t)
    }

    #[test]
    fn keep_last_and_daily() {
        let list = vec![
            b("a", 0),
            b("b", HOUR),
            b("c", DAY + HOUR),
            b("d", DAY + 2 * HOUR),
            b("e", 2 * DAY),
        ];
        let p = Retention {
            keep_last: 1,
            ..Default::default()
        };
        assert_eq!(keep(&list, &p), ["e".to_string()].into());
        let p = Retention {
            keep_daily: 2,
            ..Default::default()
        };
        assert_eq!(keep(&list, &p), ["d".to_string(), "e".to_string()].into());
        let p = Retention {
            keep_daily: 5,
            ..Default::default()
        };
        assert_eq!(keep(&list, &p), ["b", "d", "e"].map(String::from).into());
    }

    #[test]
    fn weeks_begin_on_monday_and_months_follow_the_calendar() {
        // 1970-01-05 was a Monday; 1970-01-04 a Sunday.
        assert_ne!(period(2, 4 * DAY), period(2, 3 * DAY + HOUR * 23));
        assert_eq!(period(2, 4 * DAY), period(2, 10 * DAY));
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(31), (1970, 2));
        assert_eq!(year_month(20_000), (2024, 10));
    }

    proptest! {
        #[test]
        fn the_newest_is_always_kept_and_kept_ones_exist(times in proptest::collection::vec(0u64..10_000_000_000, 1..40), last in 0u32..4, daily in 0u32..4, monthly in 0u32..3) {
            let list: Vec<(String, u64)> = times.iter().enumerate().map(|(i, t)| (format!("b{i:03}"), *t)).collect();
            let p = Retention { keep_last: last, keep_daily: daily, keep_monthly: monthly, ..Default::default() };
            let kept = keep(&list, &p);
            let newest = list.iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0))).expect("one");
            prop_assert!(kept.contains(&newest.0));
            prop_assert!(kept.iter().all(|k| list.iter().any(|b| &b.0 == k)));
            prop_assert!(kept.len() <= (last + daily + monthly).max(list.len() as u32 * u32::from(p.is_empty())) as usize);
        }
    }
}
