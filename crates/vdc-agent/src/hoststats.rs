//! Host and process measurements from `/proc`.
//!
//! - Host CPU use: deltas of the `cpu` line of `/proc/stat` between two
//!   samples (busy = total − idle − iowait).
//! - Host memory: `MemTotal` and `MemAvailable` of `/proc/meminfo`.
//! - A QEMU process: resident memory from `/proc/PID/statm`, CPU from the
//!   `utime + stime` deltas of `/proc/PID/stat` (percent of one core).

use std::time::Instant;

/// Logical CPUs of the host.
pub fn cpu_count() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// `(MemTotal, MemAvailable)` in MiB, from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            / 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Memory of the host in MiB: `(total, available)`.
pub fn memory_mib() -> (u64, u64) {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or((0, 0))
}

/// `(busy, total)` jiffies of the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Host CPU use between consecutive calls of [`HostCpu::sample`].
#[derive(Debug, Default)]
pub struct HostCpu {
    last: Option<(u64, u64)>,
    percent: f64,
}

impl HostCpu {
    /// Takes a sample; returns the CPU use since the previous one, percent
    /// of all CPUs (0 on the first call).
    pub fn sample(&mut self) -> f64 {
        if let Some(now) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t))
        {
            if let Some((busy0, total0)) = self.last {
                let dt = now.1.saturating_sub(total0);
                if dt > 0 {
                    self.percent = 100.0 * now.0.saturating_sub(busy0) as f64 / dt as f64;
                }
            }
            self.last = Some(now);
        }
        self.percent
    }

    /// The value of the last sample.
    pub fn last_percent(&self) -> f64 {
        self.percent
    }
}

/// `utime + stime` (clock ticks) from `/proc/PID/stat` text. The command
/// name in parentheses may hold spaces, so fields count from its `)`.
pub fn parse_pid_cpu_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After ")" field 0 is the state (stat field 3); utime is field 14.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn sysconf(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 {
        v as u64
    } else {
        fallback
    }
}

/// CPU and memory use of one process between consecutive samples.
#[derive(Debug)]
pub struct ProcessSampler {
    pid: u32,
    last: Option<(u64, Instant)>,
    clk_tck: u64,
    page_size: u64,
}

impl ProcessSampler {
    /// A sampler for `pid`.
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            last: None,
            clk_tck: sysconf(libc::_SC_CLK_TCK, 100),
            page_size: sysconf(libc::_SC_PAGESIZE, 4096),
        }
    }

    /// `(cpu percent of one core since the last sample, rss bytes)`;
    /// `None` if the process is gone.
    pub fn sample(&mut self) -> Option<(f64, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid)).ok()?;
        let ticks = parse_pid_cpu_ticks(&stat)?;
        let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let now = Instant::now();
        let cpu = match self.last {
            Some((t0, at)) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    100.0 * ticks.saturating_sub(t0) as f64 / self.clk_tck as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((ticks, now));
        Some((cpu, rss_pages * self.page_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let t = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(parse_meminfo(t), (24000, 12000));
    }

    #[test]
    fn proc_stat() {
        let t = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(t), Some((150, 1000)));
        assert_eq!(parse_proc_stat("intr 1"), None);
    }

    #[test]
    fn pid_stat_with_spaces_in_name() {
        let t = "1234 (qemu system) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_pid_cpu_ticks(t), Some(300));
    }

    #[test]
    fn samples_this_process() {
        let mut s = ProcessSampler::new(std::process::id());
        let (_, rss) = s.sample().unwrap();
        assert!(rss > 0);
        assert!(s.sample().is_some());
        assert!(ProcessSampler::new(u32::MAX).sample().is_none());
        let mut h = HostCpu::default();
        h.sample();
        let p = h.sample();
        assert!((0.0..=100.0).contains(&p));
    }
}
