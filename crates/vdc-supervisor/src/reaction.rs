//! What the supervisor does about the outcome of one lease operation: a
//! pure function of the outcome and of the successor it named, so every
//! case is unit-tested apart from the I/O.

use vdc_disk::{DiskError, Lease};

use crate::FenceKind;

/// The supervisor's reaction to one renewal (or one look at the lease
/// while handing over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// The lease was written: the holder's deadline moves to the start of
    /// this renewal; `handing_over` says whether it names a successor.
    Renewed {
        /// The lease names a successor (renewals stop, it is only watched).
        handing_over: bool,
    },
    /// Nothing changes (a look found the lease still ours, or gone).
    Unchanged,
    /// Another holder wrote the lease: stop QEMU, for this reason.
    Fence(FenceKind, String),
    /// The renewal failed (I/O error, timeout, a hung call pending): keep
    /// trying until the deadline.
    Retry(String),
}

/// Decides the reaction to `result`, the outcome of a lease operation that
/// wrote (`wrote`) or only read, while `successor` is the host this holder
/// named (if any).
pub(crate) fn react(
    successor: Option<&str>,
    wrote: bool,
    result: &Result<Option<Lease>, DiskError>,
) -> Reaction {
    match result {
        Ok(Some(lease)) if wrote => Reaction::Renewed {
            handing_over: lease.successor.is_some(),
        },
        Ok(_) => Reaction::Unchanged,
        Err(DiskError::LeaseLost { holder_host }) if successor == Some(holder_host.as_str()) => {
            Reaction::Fence(
                FenceKind::HandedOver,
                format!("handed over to host '{holder_host}'"),
            )
        }
        Err(DiskError::LeaseLost { holder_host }) => Reaction::Fence(
            FenceKind::Fenced,
            format!("lease taken by host '{holder_host}'"),
        ),
        Err(e) => Reaction::Retry(crate::run::chain(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lease(successor: Option<&str>) -> Lease {
        let mut l = Lease::new("h1", "s", Duration::from_secs(10), None);
        l.successor = successor.map(str::to_string);
        l
    }

    #[test]
    fn a_written_lease_renews_a_look_changes_nothing() {
        assert_eq!(
            react(None, true, &Ok(Some(lease(None)))),
            Reaction::Renewed {
                handing_over: false
            }
        );
        assert_eq!(
            react(Some("h2"), true, &Ok(Some(lease(Some("h2"))))),
            Reaction::Renewed { handing_over: true }
        );
        assert_eq!(
            react(Some("h2"), false, &Ok(Some(lease(Some("h2"))))),
            Reaction::Unchanged
        );
        assert_eq!(react(Some("h2"), false, &Ok(None)), Reaction::Unchanged);
    }

    #[test]
    fn a_lost_lease_fences_and_says_why() {
        let lost = |h: &str| {
            Err(DiskError::LeaseLost {
                holder_host: h.into(),
            })
        };
        assert_eq!(
            react(Some("h2"), false, &lost("h2")),
            Reaction::Fence(FenceKind::HandedOver, "handed over to host 'h2'".into())
        );
        assert_eq!(
            react(Some("h2"), true, &lost("h3")),
            Reaction::Fence(FenceKind::Fenced, "lease taken by host 'h3'".into())
        );
        assert_eq!(
            react(None, true, &lost("h3")),
            Reaction::Fence(FenceKind::Fenced, "lease taken by host 'h3'".into())
        );
    }

    #[test]
    fn other_failures_are_retried_until_the_deadline() {
        assert!(matches!(
            react(None, true, &Err(DiskError::LeaseIoPending)),
            Reaction::Retry(_)
        ));
        assert!(matches!(
            react(
                None,
                true,
                &Err(DiskError::LeaseIoTimeout {
                    after: Duration::from_secs(7)
                })
            ),
            Reaction::Retry(m) if m.contains("did not finish")
        ));
    }
}
