//! Lease I/O off the async runtime: a dedicated thread per [`LeaseIo`],
//! each call bounded by a deadline, and the contender's procedure
//! ([`acquire`]) built on it.
//!
//! A datastore that hangs (a frozen or unreachable mount) hangs the thread
//! doing the I/O in the kernel. That thread is ours alone: the caller stops
//! waiting at the deadline, and further calls fail at once with
//! [`DiskError::LeaseIoPending`] until the hung call returns, so hung
//! threads never pile up and the runtime never stalls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::rule::{decide, LeaseDecision, LeaseTiming, Seen, TakeOver, Watch};
use super::{monotonic_now, Lease, VmLock};
use crate::DiskError;

/// How often a contender re-reads a lease it is watching.
const WATCH_POLL: Duration = Duration::from_millis(500);

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs lease I/O, one call at a time, each awaited with a
/// deadline.
#[derive(Debug)]
pub struct LeaseIo {
    jobs: Mutex<mpsc::Sender<Job>>,
    busy: Arc<AtomicBool>,
    deadline: Duration,
}

impl LeaseIo {
    /// Starts the I/O thread `name`; calls wait at most `deadline`.
    pub fn start(name: &str, deadline: Duration) -> std::io::Result<LeaseIo> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        Ok(LeaseIo {
            jobs: Mutex::new(tx),
            busy: Arc::new(AtomicBool::new(false)),
            deadline,
        })
    }

    /// The deadline of each call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Runs `f` on the I/O thread and waits for it, at most the deadline.
    pub async fn run<T, F>(&self, f: F) -> Result<T, DiskError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, DiskError> + Send + 'static,
    {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(DiskError::LeaseIoPending);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let busy = self.busy.clone();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or(Err(DiskError::LeaseIoStopped));
            busy.store(false, Ordering::SeqCst);
            if tx.send(result).is_err() {
                tracing::debug!("lease I/O finished after its caller stopped waiting");
            }
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
        if sent.is_err() {
            self.busy.store(false, Ordering::SeqCst);
            return Err(DiskError::LeaseIoStopped);
        }
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DiskError::LeaseIoStopped),
            Err(_) => Err(DiskError::LeaseIoTimeout {
                after: self.deadline,
            }),
        }
    }
}

/// A lease taken by [`acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// The lease as written.
    pub lease: Lease,
    /// When the write that took it started (monotonic): the holder's
    /// deadlines count from here.
    pub started: Duration,
    /// How another host's lease was taken, if it was.
    pub took_over: Option<TakeOver>,
}

/// Takes the lease of `lock` for `holder` on `host` by the rules of
/// [`super::rule`]: creates a missing lease, re-takes one of this host,
/// takes one handed over to this host at once, and watches another host's
/// lease until it either changes ([`DiskError::Locked`]: its holder is
/// alive) or stays unchanged for longer than its TTL (taken over).
pub async fn acquire(
    io: &LeaseIo,
    lock: &VmLock,
    host: &str,
    holder: &str,
    timing: &LeaseTiming,
) -> Result<Acquired, DiskError> {
    acquire_after(io, lock, host, holder, timing, None).await
}

/// [`acquire`], continuing `prior`, an observation of the lease made
/// earlier on this host ([`Watch::continuing`]): a stale lease is taken
/// once it has been unchanged for a TTL counted from that observation.
pub async fn acquire_after(
    io: &LeaseIo,
    lock: &VmLock,
    host: &str,
    holder: &str,
    timing: &LeaseTiming,
    prior: Option<&Seen>,
) -> Result<Acquired, DiskError> {
    let mut watch: Option<Watch> = None;
    let give_up = monotonic_now() + timing.ttl * 3;
    loop {
        let l = lock.clone();
        let current = io.run(move || l.read()).await?;
        // Taken after the read returned: the state read was written before.
        let now = monotonic_now();
        let w = match watch.take() {
            Some(w) => w.observe(current.as_ref(), now),
            None => Watch::continuing(prior, current.as_ref(), now),
        };
        let decision = decide(current.as_ref(), host, &w, now, timing.ttl);
        watch = Some(w);
        let next = Lease::new(host, holder, timing.ttl, current.as_ref());
        let started = monotonic_now();
        let l = lock.clone();
        let took_over = match decision {
            LeaseDecision::Create => {
                let n = next.clone();
                let created = io
                    .run(move || {
                        if l.create(&n)? {
                            l.verify(&n).map(Some)
                        } else {
                            Ok(None)
                        }
                    })
                    .await?;
                match created {
                    Some(lease) => {
                        return Ok(Acquired {
                            lease,
                            started,
                            took_over: None,
                        })
                    }
                    // Another writer created it first: read again.
                    None => continue,
                }
            }
            LeaseDecision::Renew => None,
            LeaseDecision::TakeOver(how) => Some(how),
            LeaseDecision::Refuse {
                holder_host,
                generation,
            } => {
                return Err(DiskError::Locked {
                    holder_host,
                    generation,
                })
            }
            LeaseDecision::Wait {
                holder_host,
                remaining,
            } => {
                if now >= give_up {
                    return Err(DiskError::Locked {
                        holder_host,
                        generation: current.map_or(0, |c| c.generation),
                    });
                }
                let pause = (remaining + Duration::from_millis(10)).min(WATCH_POLL);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if let Some(how) = took_over {
            tracing::warn!(path = %lock.path().display(), ?how, previous = ?current, "taking over the lease of another host");
        }
        let lease = io.run(move || l.take_over(&next)).await?;
        return Ok(Acquired {
            lease,
            started,
            took_over,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> LeaseTiming {
        LeaseTiming {
            ttl: Duration::from_millis(1500),
            renew_every: Duration::from_millis(200),
            margin: Duration::from_millis(500),
        }
    }

    #[tokio::test]
    async fn a_stale_lease_is_taken_after_the_ttl_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lock = VmLock::new(dir.path());
        let io = LeaseIo::start("lease-io-test", Duration::from_secs(5)).unwrap();
        let t = fast();

        let a = acquire(&io, &lock, "h1", "s1", &t).await.unwrap();
        assert_eq!(a.took_over, None);
        // Same host, new holder instance: re-taken at once.
        let again = acquire(&io, &lock, "h1", "s2", &t).await.unwrap();
        assert_eq!(again.lease.generation, a.lease.generation + 1);

        // h1 keeps renewing: h2 is refused once it sees a renewal.
        let renewer = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    std::thread::sleep(Duration::from_millis(200));
                    lock.renew("h1", "s2", None).unwrap();
                }
            })
        };
        let began = std::time::Instant::now();
        match acquire(&io, &lock, "h2", "x", &t).await {
            Err(DiskError::Locked { holder_host, .. }) => assert_eq!(holder_host, "h1"),
            other => panic!("{other:?}"),
        }
        renewer.join().unwrap();

        // h1 stops renewing: h2 takes it, not before the TTL.
        let began_stale = std::time::Instant::now();
        let b = acquire(&io, &lock, "h2", "x", &t).await.unwrap();
        assert!(began_stale.elapsed() > t.ttl, "taken too early");
        assert_eq!(b.took_over, Some(TakeOver::Stale));
        assert!(began.elapsed() > t.ttl);
        assert!(matches!(
            lock.renew("h1", "s2", None),
            Err(DiskError::LeaseLost { holder_host }) if holder_host == "h2"
        ));

        // A hand-over to h3 is taken at once.
        lock.renew("h2", "x", Some("h3".into())).unwrap();
        let c = acquire(&io, &lock, "h3", "y", &t).await.unwrap();
        assert_eq!(c.took_over, Some(TakeOver::HandedOver));
    }

    #[tokio::test]
    async fn an_earlier_observation_shortens_the_watch_only_if_still_current() {
        let dir = tempfile::tempdir().unwrap();
        let lock = VmLock::new(dir.path());
        let io = LeaseIo::start("lease-io-prior", Duration::from_secs(5)).unwrap();
        let t = fast();
        acquire(&io, &lock, "h1", "s1", &t).await.unwrap();
        let seen_at = |since| Seen {
            key: crate::lock::LeaseKey::of(&lock.read().unwrap().unwrap()),
            since,
        };
        // Seen a TTL ago on this clock: taken at once.
        let old = seen_at(monotonic_now().saturating_sub(t.ttl));
        let began = std::time::Instant::now();
        let a = acquire_after(&io, &lock, "h2", "x", &t, Some(&old))
            .await
            .unwrap();
        assert_eq!(a.took_over, Some(TakeOver::Stale));
        assert!(began.elapsed() < t.ttl, "the earlier observation counted");
        // An observation of an older state: a full TTL from the first read.
        let began = std::time::Instant::now();
        let b = acquire_after(&io, &lock, "h3", "y", &t, Some(&old))
            .await
            .unwrap();
        assert_eq!(b.took_over, Some(TakeOver::Stale));
        assert!(began.elapsed() > t.ttl, "taken too early");
    }

    #[tokio::test]
    async fn a_hung_call_times_out_and_blocks_the_next() {
        let io = LeaseIo::start("lease-io-hang", Duration::from_millis(200)).unwrap();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let r = io
            .run(move || {
                hold.recv().ok();
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(DiskError::LeaseIoTimeout { .. })), "{r:?}");
        assert!(matches!(
            io.run(|| Ok(())).await,
            Err(DiskError::LeaseIoPending)
        ));
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match io.run(|| Ok(7)).await {
                Ok(v) => {
                    assert_eq!(v, 7);
                    break;
                }
                Err(DiskError::LeaseIoPending) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }
}
