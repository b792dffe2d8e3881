//! The monotonic clock the lease rules run on.

use std::time::Duration;

/// Time since an arbitrary origin on this host's `CLOCK_BOOTTIME`: never
/// jumps with the wall clock, and (unlike `CLOCK_MONOTONIC`) keeps counting
/// while the machine is suspended, so a holder that slept past its deadline
/// knows it.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // CLOCK_BOOTTIME exists on every Linux since 2.6.39; fall back to
        // the process-local monotonic clock rather than panic.
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        return ORIGIN.get_or_init(std::time::Instant::now).elapsed();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_goes_back() {
        let a = super::monotonic_now();
        let b = super::monotonic_now();
        assert!(b >= a);
        assert!(a > std::time::Duration::ZERO);
    }
}
