//! The lease rules, as pure functions of what was read and when.
//!
//! No rule trusts another host's wall clock. Time is always the reader's
//! own monotonic clock (a [`Duration`] since an arbitrary origin, see
//! [`super::clock::monotonic_now`]):
//!
//! - The **holder** fences itself (stops its VM) once
//!   [`holder_deadline`] passes: the start of its last successful renewal
//!   plus the TTL minus a safety margin.
//! - A **contender** may take a lease only after it has seen the same
//!   (host, holder, generation) unchanged for longer than the TTL
//!   ([`Watch`], [`decide`]). Every renewal bumps the generation, so a live
//!   holder is recognised by the change and refused at once.
//! - A **successor** the holder named in the lease (a hand-over for a
//!   move) takes it at once; nobody else may.
//! - A watch may **continue an earlier observation** made on the same host
//!   ([`Seen`], [`Watch::continuing`]): the agent starts watching the
//!   leases of a suspect host's VMs before that host is judged failed, and
//!   the VM supervisor it starts for the failover counts from when the
//!   agent first saw the lease, not from its own first read. Both run on
//!   the host's one `CLOCK_BOOTTIME`, and a state seen at `f` was written
//!   before `f`, so the proof below holds unchanged.
//!
//! Why this is safe: the holder's last successful renewal started at `s`
//! and wrote generation `g`. A contender can only see `g` after it was
//! written, so it first sees `g` at `f >= s` and takes the lease at
//! `f + ttl` at the earliest, later than the holder's deadline
//! `s + ttl - margin`. The margin covers the drift between two monotonic
//! clocks over one TTL and the holder's reaction time (its fence check
//! runs every few hundred milliseconds and SIGKILL is immediate).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Lease;

/// Timing of a lease: its lifetime, how often the holder renews it and
/// how long before the lifetime ends the holder fences itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Lifetime: how long a contender watches an unchanged lease before it
    /// may take it.
    pub ttl: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// Safety margin: the holder stops its VM `margin` before `ttl` has
    /// passed since the start of its last successful renewal.
    pub margin: Duration,
}

impl Default for LeaseTiming {
    /// 3 s TTL, renewed every second, fencing 1 s early: a holder
    /// survives one failed or slow renewal before it fences (2 s after its
    /// last good one; renewals measured at most 0.24 s, p99 0.12 s, on a
    /// 2-core machine at load 13, see docs/benchmarks.md), and a VM of a
    /// dead host can be started elsewhere ~3 s after its last renewal —
    /// what HA needs to restart VMs within seconds.
    fn default() -> Self {
        LeaseTiming {
            ttl: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
            margin: Duration::from_secs(1),
        }
    }
}

impl LeaseTiming {
    /// Checks that the numbers make sense: a margin of at least 1 s, and
    /// room for two renewals before the holder would fence.
    pub fn check(&self) -> Result<(), String> {
        if self.margin < Duration::from_secs(1) {
            return Err(format!(
                "lease margin {:?} is below 1 s; clocks and reactions need room",
                self.margin
            ));
        }
        if self.margin >= self.ttl {
            return Err(format!(
                "lease margin {:?} must be below the TTL {:?}",
                self.margin, self.ttl
            ));
        }
        if self.renew_every.is_zero() || self.renew_every * 2 > self.ttl - self.margin {
            return Err(format!(
                "lease renewal every {:?} leaves no room for two renewals within TTL {:?} minus margin {:?}",
                self.renew_every, self.ttl, self.margin
            ));
        }
        Ok(())
    }
}

/// When the holder must have stopped its VM: the start of its last
/// successful renewal (or take) plus TTL minus margin.
pub fn holder_deadline(last_renewal_start: Duration, timing: &LeaseTiming) -> Duration {
    last_renewal_start + timing.ttl.saturating_sub(timing.margin)
}

/// Whether the holder must fence at `now` (see [`holder_deadline`]).
pub fn must_fence(now: Duration, last_renewal_start: Duration, timing: &LeaseTiming) -> bool {
    now >= holder_deadline(last_renewal_start, timing)
}

/// One state of a lease: who holds it and its generation. Any renewal
/// changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKey {
    /// Host holding the lease.
    pub host: String,
    /// Holder instance on that host.
    pub holder: String,
    /// Generation, bumped on every write.
    pub generation: u64,
}

impl LeaseKey {
    /// The key of `lease`.
    pub fn of(lease: &Lease) -> LeaseKey {
        LeaseKey {
            host: lease.host.clone(),
            holder: lease.holder.clone(),
            generation: lease.generation,
        }
    }
}

/// A lease state an earlier watcher on this host saw, and since when it
/// saw it unchanged (this host's monotonic clock, [`super::monotonic_now`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The state seen.
    pub key: LeaseKey,
    /// When it was first seen (taken after the read that saw it returned).
    pub since: Duration,
}

/// What a contender has seen of a lease over time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    /// The state seen last and when it was first seen (monotonic).
    seen: Option<(LeaseKey, Duration)>,
    /// How many times the lease was seen to change while watched.
    pub changes: u32,
}

impl Watch {
    /// The watch after reading `current` at `now`.
    pub fn observe(mut self, current: Option<&Lease>, now: Duration) -> Watch {
        let key = current.map(LeaseKey::of);
        match (&self.seen, key) {
            (Some((old, _)), Some(new)) if *old == new => {}
            (old, Some(new)) => {
                if old.is_some() {
                    self.changes += 1;
                }
                self.seen = Some((new, now));
            }
            (_, None) => self.seen = None,
        }
        self
    }

    /// A watch continuing `prior` (an observation made earlier on this
    /// host's clock) after reading `current` at `now`: if `current` is
    /// still the state `prior` saw, it has been unchanged since
    /// `prior.since`; otherwise the watch starts afresh at `now`, exactly
    /// as a watch without `prior` would (a state seen only by the prior
    /// watcher proves nothing about the holder's life, so a difference is
    /// not counted as a change).
    pub fn continuing(prior: Option<&Seen>, current: Option<&Lease>, now: Duration) -> Watch {
        match (prior, current) {
            (Some(p), Some(l)) if p.key == LeaseKey::of(l) && p.since <= now => Watch {
                seen: Some((p.key.clone(), p.since)),
                changes: 0,
            },
            _ => Watch::default().observe(current, now),
        }
    }

    /// The state seen last and since when, to hand to a later watcher.
    pub fn seen(&self) -> Option<Seen> {
        self.seen.as_ref().map(|(key, since)| Seen {
            key: key.clone(),
            since: *since,
        })
    }

    /// How long the current state has been seen unchanged at `now`.
    pub fn unchanged_for(&self, now: Duration) -> Duration {
        self.seen
            .as_ref()
            .map(|(_, since)| now.saturating_sub(*since))
            .unwrap_or_default()
    }
}

/// Why a contender may take a lease another host wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// The holder named this host as its successor.
    HandedOver,
    /// The lease did not change for longer than its TTL: its holder is
    /// gone (and has fenced itself if it still runs).
    Stale,
}

/// What a host may do about a VM's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No lease exists: create one.
    Create,
    /// The lease is this host's: renew it.
    Renew,
    /// Replace another host's lease.
    TakeOver(TakeOver),
    /// Another host's lease, not seen long enough: read again later.
    Wait {
        /// That host.
        holder_host: String,
        /// How long it must still stay unchanged.
        remaining: Duration,
    },
    /// Another host's lease was seen renewing: its holder is alive.
    Refuse {
        /// That host.
        holder_host: String,
        /// The generation seen last.
        generation: u64,
    },
}

/// Decides what `host` may do about `current`, given what it has watched
/// (`watch`, already updated with `current`), at `now`. A lease is watched
/// for the longer of its own TTL and `ttl`.
pub fn decide(
    current: Option<&Lease>,
    host: &str,
    watch: &Watch,
    now: Duration,
    ttl: Duration,
) -> LeaseDecision {
    let Some(l) = current else {
        return LeaseDecision::Create;
    };
    if l.host == host {
        return LeaseDecision::Renew;
    }
    if l.successor.as_deref() == Some(host) {
        return LeaseDecision::TakeOver(TakeOver::HandedOver);
    }
    if watch.changes > 0 {
        return LeaseDecision::Refuse {
            holder_host: l.host.clone(),
            generation: l.generation,
        };
    }
    let ttl = ttl.max(Duration::from_millis(l.ttl_ms));
    let seen = watch.unchanged_for(now);
    if seen > ttl {
        LeaseDecision::TakeOver(TakeOver::Stale)
    } else {
        LeaseDecision::Wait {
            holder_host: l.host.clone(),
            remaining: ttl - seen,
        }
    }
}

/// How a holder finds its lease when it renews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Still its own.
    Ours,
    /// The file is gone (removed by hand): it may be created again.
    Vanished,
    /// Another holder wrote it: this holder lost it.
    Lost {
        /// The host holding it now.
        holder_host: String,
        /// It is the successor this holder named (a completed hand-over).
        handed_over: bool,
    },
}

/// Whether `current` is still the lease of `holder` on `host`.
pub fn holding(current: Option<&Lease>, host: &str, holder: &str) -> Holding {
    match current {
        None => Holding::Vanished,
        Some(l) if l.host == host && l.holder == holder => Holding::Ours,
        Some(l) => Holding::Lost {
            holder_host: l.host.clone(),
            handed_over: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LEASE_VERSION;
    use proptest::prelude::*;

    fn lease(host: &str, generation: u64) -> Lease {
        Lease {
            version: LEASE_VERSION,
            host: host.into(),
            holder: format!("{host}-sup"),
            generation,
            ttl_ms: 10_000,
            successor: None,
            renewed_ms: 0,
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;
    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn no_lease_is_created_own_is_renewed() {
        let w = Watch::default();
        assert_eq!(decide(None, "h1", &w, S(0), TTL), LeaseDecision::Create);
        let l = lease("h1", 4);
        let w = w.observe(Some(&l), S(0));
        assert_eq!(decide(Some(&l), "h1", &w, S(0), TTL), LeaseDecision::Renew);
    }

    #[test]
    fn an_unchanged_foreign_lease_is_taken_only_after_the_ttl() {
        let l = lease("h2", 7);
        let mut w = Watch::default();
        for t in [0, 3, 9, 10] {
            w = w.observe(Some(&l), S(t));
            assert!(
                matches!(
                    decide(Some(&l), "h1", &w, S(t), TTL),
                    LeaseDecision::Wait { ref holder_host, remaining } if holder_host == "h2" && remaining == S(10 - t)
                ),
                "at {t}s"
            );
        }
        let now = S(10) + Duration::from_millis(1);
        w = w.observe(Some(&l), now);
        assert_eq!(
            decide(Some(&l), "h1", &w, now, TTL),
            LeaseDecision::TakeOver(TakeOver::Stale)
        );
    }

    #[test]
    fn a_renewing_holder_is_refused_at_once() {
        let mut w = Watch::default().observe(Some(&lease("h2", 7)), S(0));
        w = w.observe(Some(&lease("h2", 8)), S(2));
        assert_eq!(
            decide(Some(&lease("h2", 8)), "h1", &w, S(2), TTL),
            LeaseDecision::Refuse {
                holder_host: "h2".into(),
                generation: 8
            }
        );
    }

    #[test]
    fn the_lease_ttl_is_honoured_when_longer() {
        let mut l = lease("h2", 1);
        l.ttl_ms = 30_000;
        let w = Watch::default().observe(Some(&l), S(0));
        let w2 = w.clone().observe(Some(&l), S(11));
        assert!(matches!(
            decide(Some(&l), "h1", &w2, S(11), TTL),
            LeaseDecision::Wait { .. }
        ));
        let w3 = w.observe(Some(&l), S(31));
        assert_eq!(
            decide(Some(&l), "h1", &w3, S(31), TTL),
            LeaseDecision::TakeOver(TakeOver::Stale)
        );
    }

    #[test]
    fn only_the_named_successor_takes_a_handed_over_lease_at_once() {
        let mut l = lease("h1", 3);
        l.successor = Some("h2".into());
        let w = Watch::default().observe(Some(&l), S(0));
        assert_eq!(
            decide(Some(&l), "h2", &w, S(0), TTL),
            LeaseDecision::TakeOver(TakeOver::HandedOver)
        );
        assert!(matches!(
            decide(Some(&l), "h3", &w, S(0), TTL),
            LeaseDecision::Wait { .. }
        ));
    }

    #[test]
    fn a_vanishing_lease_resets_the_watch() {
        let w = Watch::default()
            .observe(Some(&lease("h2", 1)), S(0))
            .observe(None, S(5))
            .observe(Some(&lease("h2", 1)), S(6));
        assert_eq!(w.unchanged_for(S(8)), S(2));
    }

    #[test]
    fn a_watch_continues_an_earlier_observation_of_the_same_state() {
        let l = lease("h2", 7);
        let prior = Watch::default().observe(Some(&l), S(1)).seen().unwrap();
        assert_eq!(prior.since, S(1));
        // Same state read later: unchanged since the earlier watcher saw it.
        let w = Watch::continuing(Some(&prior), Some(&l), S(4));
        assert_eq!(w.unchanged_for(S(4)), S(3));
        let now = S(11) + Duration::from_millis(1);
        assert_eq!(
            decide(Some(&l), "h1", &w.observe(Some(&l), now), now, TTL),
            LeaseDecision::TakeOver(TakeOver::Stale)
        );
        // Renewed since: a fresh watch from now, not a refusal.
        let renewed = lease("h2", 8);
        let w = Watch::continuing(Some(&prior), Some(&renewed), S(4));
        assert_eq!((w.unchanged_for(S(5)), w.changes), (S(1), 0));
        // A change seen after that refuses as usual.
        let w = w.observe(Some(&lease("h2", 9)), S(5));
        assert!(matches!(
            decide(Some(&lease("h2", 9)), "h1", &w, S(5), TTL),
            LeaseDecision::Refuse { .. }
        ));
        // No prior, no lease, or a prior from the future: plain watches.
        assert_eq!(
            Watch::continuing(None, Some(&l), S(4)),
            Watch::default().observe(Some(&l), S(4))
        );
        assert_eq!(
            Watch::continuing(Some(&prior), None, S(4)),
            Watch::default()
        );
        let future = Seen {
            since: S(9),
            ..prior.clone()
        };
        assert_eq!(
            Watch::continuing(Some(&future), Some(&l), S(4)).unchanged_for(S(4)),
            S(0)
        );
    }

    #[test]
    fn holder_side() {
        let t = LeaseTiming::default();
        t.check().unwrap();
        // 3 s TTL, 1 s margin: the holder fences 2 s after its last good
        // renewal began.
        assert_eq!(holder_deadline(S(100), &t), S(102));
        assert!(!must_fence(S(101), S(100), &t));
        assert!(must_fence(S(102), S(100), &t));
        assert_eq!(
            holding(Some(&lease("h1", 1)), "h1", "h1-sup"),
            Holding::Ours
        );
        assert_eq!(holding(None, "h1", "h1-sup"), Holding::Vanished);
        assert!(matches!(
            holding(Some(&lease("h1", 1)), "h1", "other"),
            Holding::Lost { .. }
        ));
        for bad in [
            LeaseTiming {
                margin: Duration::ZERO,
                ..t
            },
            LeaseTiming { margin: S(10), ..t },
            LeaseTiming {
                renew_every: S(4),
                ..t
            },
            LeaseTiming {
                renew_every: Duration::ZERO,
                ..t
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// A holder renews at random times, some renewals failing or slow;
        /// a contender polls at random times with a clock that may run a
        /// little fast. Whenever the contender takes the lease, the holder
        /// has passed its fence deadline.
        #[test]
        fn a_contender_never_takes_a_lease_before_the_holder_fences(
            renewals in proptest::collection::vec((100u64..3000, 0u64..2500, any::<bool>()), 1..40),
            polls in proptest::collection::vec(10u64..2000, 1..200),
            skew_ppm in 0u64..1000,
            watch_from in 0u64..20_000,
            handed_after in proptest::option::of(0usize..200),
        ) {
            let timing = LeaseTiming::default();
            // The holder's history: (start, write landed, generation) of each
            // successful renewal, on the true clock (ms).
            let mut writes: Vec<(u64, u64, u64)> = vec![(0, 0, 1)];
            let mut t = 0u64;
            let mut gen = 1;
            for (gap, io, ok) in renewals {
                t += gap;
                if ok {
                    gen += 1;
                    writes.push((t, t + io, gen));
                }
            }
            // The holder fences at the deadline of its last successful
            // renewal whose write landed; it never fences while a
            // renewal is good (deadlines only move forward).
            let fence_at = |now: u64| -> u64 {
                let last = writes.iter().filter(|w| w.1 <= now).map(|w| w.0).max().unwrap_or(0);
                holder_deadline(Duration::from_millis(last), &timing).as_millis() as u64
            };
            let lease_at = |now: u64| -> Lease {
                let g = writes.iter().filter(|w| w.1 <= now).map(|w| w.2).max().unwrap_or(1);
                lease("holder", g)
            };
            let mut w = Watch::default();
            let mut now = watch_from;
            for (i, p) in polls.into_iter().enumerate() {
                now += p;
                // The contender's clock runs up to `skew_ppm` fast.
                let mine = Duration::from_millis(now + now * skew_ppm / 1_000_000);
                let l = lease_at(now);
                // Optionally, the watch is handed to another watcher on the
                // same clock (the agent's watch to the VM supervisor).
                w = if handed_after == Some(i) {
                    Watch::continuing(w.seen().as_ref(), Some(&l), mine)
                } else {
                    w.observe(Some(&l), mine)
                };
                match decide(Some(&l), "contender", &w, mine, timing.ttl) {
                    LeaseDecision::TakeOver(_) => {
                        prop_assert!(fence_at(now) <= now,
                            "taken at {now} ms but the holder fences only at {} ms", fence_at(now));
                        break;
                    }
                    LeaseDecision::Refuse { .. } => break,
                    _ => {}
                }
            }
        }
    }
}
