//! Pure parsing and formatting: sizes given on the command line, aligned
//! tables, human-readable sizes and times.
//!
//! Nothing here does I/O, so every rule is unit-tested.

use std::net::{IpAddr, Ipv4Addr};

use vdc_types::api::MIN_MEMORY_MIB;
use vdc_types::UnixMillis;

/// Largest memory size accepted on the command line, MiB (16 TiB); the server
/// has the final word, this only keeps arithmetic far from overflow.
const MAX_MEMORY_MIB: u64 = 16 * 1024 * 1024;

/// Parses a memory size into MiB: a bare number is MiB; `M`/`MB`/`MiB`,
/// `G`/`GB`/`GiB` and `T`/`TB`/`TiB` suffixes (any case) scale it. A decimal
/// fraction is allowed when the result is a whole number of MiB (`1.5G`).
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit_mib: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => {
            return Err(format!(
                "memory size '{text}' has an unknown unit; use MiB (256) or a unit: 256M, 1G, 1.5G"
            ))
        }
    };
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    let bad =
        || format!("memory size '{text}' is not a number; use MiB (256) or a unit: 256M, 1G, 1.5G");
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 6 {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_value: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let frac_scale = 10u64.pow(frac.len() as u32);
    let too_big = || format!("memory size '{text}' is larger than the {MAX_MEMORY_MIB} MiB limit");
    let whole_mib = whole.checked_mul(unit_mib).ok_or_else(too_big)?;
    let frac_scaled = frac_value * unit_mib;
    if frac_scaled % frac_scale != 0 {
        return Err(format!("memory size '{text}' is not a whole number of MiB"));
    }
    let mib = whole_mib
        .checked_add(frac_scaled / frac_scale)
        .ok_or_else(too_big)?;
    if mib > MAX_MEMORY_MIB {
        return Err(too_big());
    }
    if mib < MIN_MEMORY_MIB {
        return Err(format!(
            "memory size '{text}' is {mib} MiB; a VM needs at least {MIN_MEMORY_MIB} MiB"
        ));
    }
    Ok(mib)
}

/// Parses an address pool `START-END` (IPv4, START not after END).
pub fn parse_pool(text: &str) -> Result<(String, String), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("pool '{text}' must be START-END, e.g. 10.77.0.100-10.77.0.199"))?;
    let start: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("pool start '{a}' is not an IPv4 address"))?;
    let end: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("pool end '{b}' is not an IPv4 address"))?;
    if start > end {
        return Err(format!("pool '{text}' starts after it ends"));
    }
    Ok((start.to_string(), end.to_string()))
}

/// Checks a subnet in CIDR notation (`10.77.0.0/24`), for an early, clear
/// message; the server validates it again.
pub fn check_cidr(text: &str) -> Result<(), String> {
    let msg = || format!("subnet '{text}' must be in CIDR notation, e.g. 10.77.0.0/24");
    let (addr, prefix) = text.split_once('/').ok_or_else(msg)?;
    let addr: IpAddr = addr.parse().map_err(|_| msg())?;
    let prefix: u8 = prefix.parse().map_err(|_| msg())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!(
            "subnet '{text}' has a prefix longer than {max} bits"
        ));
    }
    Ok(())
}

/// A table of left-aligned columns separated by three spaces, header first.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// Renders the table, one line per row, each line ending in `\n`, without
    /// trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("   ");
                }
                text.push_str(cell);
                let pad = w - cell.chars().count();
                text.push_str(&" ".repeat(pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Renders `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let line = format!("{:<w$}  {}", format!("{k}:"), v, w = width + 1);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Memory in MiB as people read it: `256M`, `1G`, `1.5G`.
pub fn mib(value: u64) -> String {
    if value >= 1024 * 1024 && value % (1024 * 1024) == 0 {
        format!("{}T", value / (1024 * 1024))
    } else if value >= 1024 && value % 1024 == 0 {
        format!("{}G", value / 1024)
    } else if value >= 1024 {
        format!("{:.1}G", value as f64 / 1024.0)
    } else {
        format!("{value}M")
    }
}

/// A byte count with a binary unit and one decimal: `512B`, `1.5K`, `20.0G`.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if value < 1024 {
        return format!("{value}B");
    }
    let mut v = value as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// A time as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn utc_time(ms: UnixMillis) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's
/// civil-from-days, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// How long ago `then` was, relative to `now`: `5s`, `3m`, `2h`, `4d`.
pub fn age(then: UnixMillis, now: UnixMillis) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A duration in milliseconds as `850ms` or `3.2s`.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// `-` for a missing value.
pub fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("256"), Ok(256));
        assert_eq!(parse_memory_mib("256M"), Ok(256));
        assert_eq!(parse_memory_mib("256mib"), Ok(256));
        assert_eq!(parse_memory_mib("1G"), Ok(1024));
        assert_eq!(parse_memory_mib("2GiB"), Ok(2048));
        assert_eq!(parse_memory_mib("1.5G"), Ok(1536));
        assert_eq!(parse_memory_mib(" 512 MB "), Ok(512));
        assert_eq!(parse_memory_mib("1T"), Ok(1024 * 1024));
    }

    #[test]
    fn bad_memory_sizes_say_why() {
        for (input, needle) in [
            ("", "not a number"),
            ("G", "not a number"),
            ("abc", "unknown unit"),
            ("12X", "unknown unit"),
            ("1.2.3G", "not a number"),
            ("1.0001G", "whole number"),
            ("16", "at least 32"),
            ("0", "at least 32"),
            ("-5", "unknown unit"),
            ("99999999999999999999", "not a number"),
            ("18446744073709551615G", "larger than"),
            ("17T", "larger than"),
        ] {
            let err = parse_memory_mib(input).expect_err(input);
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }

    #[test]
    fn pools_and_subnets() {
        assert_eq!(
            parse_pool("10.0.0.10-10.0.0.20"),
            Ok(("10.0.0.10".into(), "10.0.0.20".into()))
        );
        assert!(parse_pool("10.0.0.20-10.0.0.10").is_err());
        assert!(parse_pool("10.0.0.10").is_err());
        assert!(parse_pool("a-b").is_err());
        assert!(check_cidr("10.77.0.0/24").is_ok());
        assert!(check_cidr("10.77.0.0").is_err());
        assert!(check_cidr("10.77.0.0/33").is_err());
        assert!(check_cidr("x/24").is_err());
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["NAME", "STATE", "IP"]);
        t.row(vec!["web-1".into(), "running".into(), "10.0.0.1".into()]);
        t.row(vec!["a".into(), "stopped".into()]);
        let out = t.render();
        assert_eq!(
            out,
            "NAME    STATE     IP\n\
             web-1   running   10.0.0.1\n\
             a       stopped\n"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].find("STATE"), lines[1].find("running"));
    }

    #[test]
    fn empty_table_has_header_only() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A   B\n");
    }

    #[test]
    fn key_value_alignment() {
        let out = key_values(&[("name", "x".into()), ("state", "running".into())]);
        assert_eq!(out, "name:   x\nstate:  running\n");
    }

    #[test]
    fn human_units() {
        assert_eq!(mib(256), "256M");
        assert_eq!(mib(1024), "1G");
        assert_eq!(mib(1536), "1.5G");
        assert_eq!(mib(2 * 1024 * 1024), "2T");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(8 * 1024 * 1024 * 1024), "8.0G");
        assert_eq!(bytes(u64::MAX), "16.0E");
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(3200), "3.2s");
        assert_eq!(age(0, 5_000), "5s");
        assert_eq!(age(0, 7_200_000), "2h");
        assert_eq!(age(10, 0), "0s");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc_time(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }
}
