//! The convergence policy of a live migration: a pure function of the
//! figures QEMU reports at each sample, deciding when to act and how.
//!
//! ```text
//!  pre-copy (bandwidth B, downtime target D, auto-converge armed)
//!     │ memory left reaches no new low for `stall_passes` passes,
//!     │ or `max_passes` passes done
//!     ├── the memory left fits in ≤ ceiling at the measured rate
//!     │        ──► downtime limit raised to fit (≤ ceiling), bandwidth kept;
//!     │            wait another stall window
//!     ├── post-copy allowed ──► migrate-start-postcopy   (once)
//!     └── not allowed ────────► downtime limit ×2 (≤ max), bandwidth
//!                                unlimited; wait another stall window
//! ```
//!
//! Why this order (docs/benchmarks.md, "Which migration settings make a
//! difference"): a low downtime target gives the shortest stops, and a
//! stall that a slightly longer stop would end is better ended that way
//! than by post-copy, whose own downtime is small but whose guest barely
//! answers while its pages are fetched over the network. Post-copy is for
//! a guest that no pre-copy stop near the ceiling could carry.
//!
//! Auto-converge is QEMU's own: armed from the start, it throttles the
//! vCPUs once the guest dirties memory faster than it is sent; the policy
//! reports when it began throttling.

use vdc_types::migration::MigrationPolicy;

/// One `query-migrate` sample, as the policy needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// QEMU's migration status.
    pub status: String,
    /// Passes over memory so far.
    pub passes: u64,
    /// Memory bytes left to send.
    pub remaining: u64,
    /// vCPU throttle, percent.
    pub throttle_percent: u64,
    /// Measured transfer rate, bytes per second (0: not known yet).
    pub bytes_per_s: u64,
}

/// What the policy asks of QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Switch to post-copy.
    StartPostcopy,
    /// Raise the downtime limit to this many ms, the bandwidth limit kept.
    RaiseDowntime {
        /// New downtime limit, ms.
        downtime_limit_ms: u64,
    },
    /// Raise the downtime limit to this many ms and lift the bandwidth
    /// limit.
    RaiseLimits {
        /// New downtime limit, ms.
        downtime_limit_ms: u64,
    },
}

/// The policy's memory of one migration.
#[derive(Debug, Clone)]
pub struct Convergence {
    policy: MigrationPolicy,
    best_remaining: Option<u64>,
    best_pass: u64,
    last_action_pass: u64,
    throttle_seen: bool,
    postcopy: bool,
    downtime_limit_ms: u64,
}

impl Convergence {
    /// A migration starting under `policy`.
    pub fn new(policy: MigrationPolicy) -> Convergence {
        let downtime_limit_ms = policy.downtime_limit_ms;
        Convergence {
            policy,
            best_remaining: None,
            best_pass: 0,
            last_action_pass: 0,
            throttle_seen: false,
            postcopy: false,
            downtime_limit_ms,
        }
    }

    /// Whether post-copy was started.
    pub fn postcopy(&self) -> bool {
        self.postcopy
    }

    /// The step taken at the start, for the report.
    pub fn first_step(&self) -> String {
        let bw = match self.policy.max_bandwidth_mib_s {
            0 => "unlimited bandwidth".to_string(),
            b => format!("{b} MiB/s"),
        };
        format!(
            "pre-copy at {bw}, downtime target {} ms, auto-converge armed, post-copy {}",
            self.policy.downtime_limit_ms,
            if self.policy.allow_postcopy {
                "allowed"
            } else {
                "forbidden"
            }
        )
    }

    /// Looks at one sample: the action to take now, if any, and the steps
    /// to report.
    pub fn observe(&mut self, s: &Sample) -> (Option<Action>, Vec<String>) {
        let mut steps = Vec::new();
        if s.status != "active" || self.postcopy {
            return (None, steps);
        }
        if s.throttle_percent > 0 && !self.throttle_seen {
            self.throttle_seen = true;
            steps.push(format!(
                "auto-converge throttling the vCPUs by {}% at pass {}",
                s.throttle_percent, s.passes
            ));
        }
        if self.best_remaining.is_none_or(|b| s.remaining < b) {
            self.best_remaining = Some(s.remaining);
            self.best_pass = s.passes;
        }
        let window_start = self.best_pass.max(self.last_action_pass);
        let stalled = s.passes >= window_start + self.policy.stall_passes;
        let too_long = s.passes >= self.policy.max_passes && s.passes > self.last_action_pass;
        if !(stalled || too_long) {
            return (None, steps);
        }
        let mib = s.remaining / (1024 * 1024);
        if let Some(ms) = self.fitting_limit(s) {
            self.downtime_limit_ms = ms;
            self.last_action_pass = s.passes;
            steps.push(format!(
                "downtime limit raised to {ms} ms at pass {} ({mib} MiB left, fits at the measured rate)",
                s.passes
            ));
            return (
                Some(Action::RaiseDowntime {
                    downtime_limit_ms: ms,
                }),
                steps,
            );
        }
        if self.policy.allow_postcopy {
            self.postcopy = true;
            steps.push(format!(
                "post-copy started at pass {} ({mib} MiB left, not converging)",
                s.passes
            ));
            return (Some(Action::StartPostcopy), steps);
        }
        if self.downtime_limit_ms >= self.policy.max_downtime_limit_ms {
            self.last_action_pass = s.passes;
            return (None, steps);
        }
        self.downtime_limit_ms =
            (self.downtime_limit_ms * 2).min(self.policy.max_downtime_limit_ms);
        self.last_action_pass = s.passes;
        steps.push(format!(
            "downtime limit raised to {} ms and bandwidth unlimited at pass {} ({mib} MiB left, not converging)",
            self.downtime_limit_ms, s.passes
        ));
        (
            Some(Action::RaiseLimits {
                downtime_limit_ms: self.downtime_limit_ms,
            }),
            steps,
        )
    }
}

impl Convergence {
    /// The downtime limit that would let pre-copy finish now: the time the
    /// memory left takes at the measured rate, rounded up to 10 ms, at
    /// least double the current limit, at most the pre-copy ceiling. `None`
    /// when the rate is unknown, the ceiling is reached, or the memory left
    /// would not fit under it.
    fn fitting_limit(&self, s: &Sample) -> Option<u64> {
        let ceiling = self
            .policy
            .precopy_ceiling_ms
            .min(self.policy.max_downtime_limit_ms);
        if s.bytes_per_s == 0 || self.downtime_limit_ms >= ceiling {
            return None;
        }
        let needed_ms = s.remaining.saturating_mul(1000).div_ceil(s.bytes_per_s);
        if needed_ms > ceiling {
            return None;
        }
        let rounded = needed_ms.div_ceil(10) * 10;
        Some(rounded.max(self.downtime_limit_ms * 2).min(ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(passes: u64, remaining: u64) -> Sample {
        Sample {
            status: "active".into(),
            passes,
            remaining,
            throttle_percent: 0,
            bytes_per_s: 0,
        }
    }

    fn at_rate(passes: u64, remaining: u64, bytes_per_s: u64) -> Sample {
        Sample {
            bytes_per_s,
            ..sample(passes, remaining)
        }
    }

    fn policy(allow_postcopy: bool) -> MigrationPolicy {
        MigrationPolicy {
            allow_postcopy,
            downtime_limit_ms: 100,
            ..MigrationPolicy::default()
        }
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_stall_that_a_longer_stop_ends_raises_the_limit_before_postcopy() {
        let mut c = Convergence::new(MigrationPolicy::default());
        assert_eq!(c.observe(&at_rate(1, 60 * MIB, 1000 * MIB)).0, None);
        // 60 MiB at 1000 MiB/s: 60 ms, more than the 50 ms target.
        let (a, steps) = c.observe(&at_rate(4, 60 * MIB, 1000 * MIB));
        assert_eq!(
            a,
            Some(Action::RaiseDowntime {
                downtime_limit_ms: 100
            })
        );
        assert!(steps[0].contains("fits at the measured rate"), "{steps:?}");
        // Still stalled a window later, now needing 150 ms: raised again.
        let (a, _) = c.observe(&at_rate(7, 150 * MIB, 1000 * MIB));
        assert_eq!(
            a,
            Some(Action::RaiseDowntime {
                downtime_limit_ms: 200
            })
        );
        // At the ceiling: post-copy is next.
        let (a, _) = c.observe(&at_rate(10, 150 * MIB, 1000 * MIB));
        assert_eq!(a, Some(Action::StartPostcopy));
    }

    #[test]
    fn a_slow_stream_goes_to_postcopy_at_once() {
        // 48 MiB left at 16 MiB/s would need a 3 s stop: far above the
        // ceiling, so a longer limit cannot help.
        let mut c = Convergence::new(MigrationPolicy::default());
        c.observe(&at_rate(1, 48 * MIB, 16 * MIB));
        let (a, _) = c.observe(&at_rate(4, 48 * MIB, 16 * MIB));
        assert_eq!(a, Some(Action::StartPostcopy));
    }

    #[test]
    fn the_fitting_limit_never_passes_the_ceiling_or_lowers_the_limit() {
        let c = Convergence::new(MigrationPolicy::default());
        for (remaining, rate) in [(1, 1000 * MIB), (190 * MIB, 1000 * MIB), (3, 7), (0, 1)] {
            if let Some(ms) = c.fitting_limit(&at_rate(4, remaining, rate)) {
                assert!((100..=200).contains(&ms), "{remaining} at {rate}: {ms}");
            }
        }
        assert_eq!(c.fitting_limit(&at_rate(4, 300 * MIB, 1000 * MIB)), None);
        assert_eq!(c.fitting_limit(&at_rate(4, MIB, 0)), None);
    }

    #[test]
    fn a_converging_migration_is_left_alone() {
        let mut c = Convergence::new(policy(true));
        for (p, r) in [(1, 900), (2, 500), (3, 200), (4, 50)] {
            assert_eq!(c.observe(&sample(p, r)).0, None);
        }
        assert!(!c.postcopy());
    }

    #[test]
    fn a_stalled_migration_switches_to_postcopy_once() {
        let mut c = Convergence::new(policy(true));
        assert_eq!(c.observe(&sample(1, 500)).0, None);
        assert_eq!(c.observe(&sample(2, 600)).0, None);
        assert_eq!(c.observe(&sample(3, 550)).0, None);
        let (a, steps) = c.observe(&sample(4, 700));
        assert_eq!(a, Some(Action::StartPostcopy));
        assert!(
            steps[0].contains("post-copy started at pass 4"),
            "{steps:?}"
        );
        assert!(c.postcopy());
        assert_eq!(c.observe(&sample(9, 900)).0, None, "only once");
    }

    #[test]
    fn without_postcopy_the_limits_rise_to_the_maximum() {
        let mut c = Convergence::new(policy(false));
        c.observe(&sample(1, 500));
        let (a, steps) = c.observe(&sample(4, 600));
        assert_eq!(
            a,
            Some(Action::RaiseLimits {
                downtime_limit_ms: 200
            })
        );
        assert!(steps[0].contains("200 ms"), "{steps:?}");
        // Another full window before the next raise.
        assert_eq!(c.observe(&sample(5, 600)).0, None);
        let mut limits = vec![];
        for p in (7..40).step_by(3) {
            if let (Some(Action::RaiseLimits { downtime_limit_ms }), _) = c.observe(&sample(p, 600))
            {
                limits.push(downtime_limit_ms);
            }
        }
        assert_eq!(limits, [400, 800, 1600, 2000]);
        assert!(!c.postcopy());
    }

    #[test]
    fn too_many_passes_act_even_while_shrinking_and_throttle_is_reported() {
        let mut c = Convergence::new(policy(true));
        let mut acted = None;
        for p in 1..=8 {
            let mut s = sample(p, 1000 - p * 10);
            s.throttle_percent = if p >= 3 { 20 } else { 0 };
            let (a, steps) = c.observe(&s);
            if p == 3 {
                assert!(
                    steps[0].contains("throttling the vCPUs by 20%"),
                    "{steps:?}"
                );
            }
            if a.is_some() {
                acted = Some(p);
                break;
            }
        }
        assert_eq!(acted, Some(8));
        assert!(c.first_step().contains("post-copy allowed"));
    }

    #[test]
    fn other_phases_are_ignored() {
        let mut c = Convergence::new(policy(true));
        let mut s = sample(50, 900);
        s.status = "setup".into();
        assert_eq!(c.observe(&s), (None, vec![]));
    }
}
