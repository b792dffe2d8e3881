//! Pure figures of `vdc bench backup`: each system's times, throughputs
//! and store size, the ratios of vdc to the best peer of the same run, the
//! issue's goals, and the table printed (Markdown, to paste into
//! docs/benchmarks.md).

use std::fmt::Write as _;

use serde::Serialize;

/// MB (10^6 bytes) per second for `bytes` in `secs`.
pub fn mb_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / 1e6 / secs
}

/// One system's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemRun {
    /// `vdc`, `restic`, `borg`.
    pub system: String,
    /// Its version.
    pub version: String,
    /// Full backup of the image, seconds.
    pub full_s: f64,
    /// Backup after the change, seconds.
    pub incremental_s: f64,
    /// Restore of the changed image, final sync included, seconds.
    pub restore_s: f64,
    /// Bytes in the store (repository) after both backups.
    pub store_bytes: u64,
    /// Whether the restored image is byte for byte the changed image.
    pub restored_ok: bool,
    /// vdc only: chunks the incremental read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental_chunks_read: Option<u64>,
}

/// vdc against the best peer of the run, per measure (higher is better
/// for vdc, except `store`: vdc's size over the smallest peer's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratios {
    /// Full backup throughput, vdc / best peer.
    pub full: f64,
    /// Incremental time, best peer / vdc.
    pub incremental: f64,
    /// Restore throughput, vdc / best peer.
    pub restore: f64,
    /// Store size, vdc / smallest peer.
    pub store: f64,
}

/// The goals: full ≥ 2×, incremental ≥ 20×, restore ≥ 2×, store ≤ 1×.
pub const GOALS: Ratios = Ratios {
    full: 2.0,
    incremental: 20.0,
    restore: 2.0,
    store: 1.0,
};

impl Ratios {
    /// Whether each goal is met: full, incremental, restore, store.
    pub fn met(&self) -> [bool; 4] {
        [
            self.full >= GOALS.full,
            self.incremental >= GOALS.incremental,
            self.restore >= GOALS.restore,
            self.store <= GOALS.store,
        ]
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Size of the image, bytes.
    pub image_bytes: u64,
    /// 4 MiB regions the change rewrote.
    pub changed_regions: u64,
    /// Whether the page cache was dropped before each step.
    pub cold_cache: bool,
    /// How the vdc binary was built (`debug` or `release`).
    pub build: String,
    /// Sequential read of the raw image, seconds.
    pub raw_read_s: f64,
    /// Each system.
    pub systems: Vec<SystemRun>,
    /// vdc against the best peer (absent when no peer ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratios: Option<Ratios>,
}

/// The ratios of `vdc` to the best of `peers`.
pub fn ratios(vdc: &SystemRun, peers: &[&SystemRun], image: u64) -> Option<Ratios> {
    let best = |f: &dyn Fn(&SystemRun) -> f64| peers.iter().map(|p| f(p)).fold(f64::NAN, f64::min);
    if peers.is_empty() {
        return None;
    }
    let best_full = best(&|p| p.full_s);
    let best_incr = best(&|p| p.incremental_s);
    let best_restore = best(&|p| p.restore_s);
    let smallest = peers.iter().map(|p| p.store_bytes).min().unwrap_or(0);
    Some(Ratios {
        full: mb_s(image, vdc.full_s) / mb_s(image, best_full),
        incremental: best_incr / vdc.incremental_s.max(1e-6),
        restore: mb_s(image, vdc.restore_s) / mb_s(image, best_restore),
        store: vdc.store_bytes as f64 / smallest.max(1) as f64,
    })
}

/// The figures as Markdown tables.
pub fn table(f: &Figures) -> String {
    let mut s = String::new();
    let mb = |secs: f64| mb_s(f.image_bytes, secs);
    let _ = writeln!(
        s,
        "image {:.0} MB, {} region(s) of 4 MiB changed; {} cache; vdc {} build",
        f.image_bytes as f64 / 1e6,
        f.changed_regions,
        if f.cold_cache { "cold" } else { "warm" },
        f.build
    );
    let _ = writeln!(
        s,
        "raw sequential read: {:.2} s ({:.0} MB/s)\n",
        f.raw_read_s,
        mb(f.raw_read_s)
    );
    let _ = writeln!(
        s,
        "| system | full | incremental | restore | store | restored |\n|---|---|---|---|---|---|"
    );
    for r in &f.systems {
        let _ =
            writeln!(
            s,
            "| {} ({}) | {:.2} s ({:.0} MB/s) | {:.2} s{} | {:.2} s ({:.0} MB/s) | {:.0} MB | {} |",
            r.system,
            r.version,
            r.full_s,
            mb(r.full_s),
            r.incremental_s,
            r.incremental_chunks_read
                .map(|c| format!(", {c} chunks read"))
                .unwrap_or_default(),
            r.restore_s,
            mb(r.restore_s),
            r.store_bytes as f64 / 1e6,
            if r.restored_ok { "identical" } else { "DIFFERS" }
        );
    }
    if let Some(q) = &f.ratios {
        let met = q.met();
        let mark = |m: bool| if m { "met" } else { "NOT met" };
        let _ = writeln!(
            s,
            "\n| vdc / best peer | ratio | goal |\n|---|---|---|\n| full throughput | {:.2}× | ≥ {}× {} |\n| incremental speed | {:.2}× | ≥ {}× {} |\n| restore throughput | {:.2}× | ≥ {}× {} |\n| store size | {:.2}× | ≤ {}× {} |",
            q.full, GOALS.full, mark(met[0]),
            q.incremental, GOALS.incremental, mark(met[1]),
            q.restore, GOALS.restore, mark(met[2]),
            q.store, GOALS.store, mark(met[3]),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: &str, full: f64, incr: f64, restore: f64, store: u64) -> SystemRun {
        SystemRun {
            system: system.into(),
            version: "1".into(),
            full_s: full,
            incremental_s: incr,
            restore_s: restore,
            store_bytes: store,
            restored_ok: true,
            incremental_chunks_read: None,
        }
    }

    #[test]
    fn ratios_compare_with_the_best_peer_of_each_measure() {
        let vdc = run("vdc", 4.0, 0.2, 2.0, 800);
        let a = run("restic", 10.0, 4.0, 4.0, 900);
        let b = run("borg", 8.0, 5.0, 8.0, 850);
        let q = ratios(&vdc, &[&a, &b], 2_000_000_000).expect("peers");
        assert!((q.full - 2.0).abs() < 1e-9, "{q:?}");
        assert!((q.incremental - 20.0).abs() < 1e-9, "{q:?}");
        assert!((q.restore - 2.0).abs() < 1e-9, "{q:?}");
        assert!((q.store - 800.0 / 850.0).abs() < 1e-9, "{q:?}");
        assert_eq!(q.met(), [true; 4]);
        assert!(ratios(&vdc, &[], 1).is_none());
        let slow = run("vdc", 9.0, 1.0, 5.0, 900);
        assert_eq!(
            ratios(&slow, &[&a, &b], 1).map(|q| q.met()),
            Some([false, false, false, false])
        );
    }
}
