//! Waiting with deadlines: poll a condition until it holds, and fail with a
//! message that says what was awaited (and, for VMs, what the VM and its
//! console looked like) — never sleep and hope.

use std::future::Future;
use std::time::{Duration, Instant};

use vdc_client::Client;
use vdc_types::Vm;

/// Polling interval of the wait helpers.
const POLL: Duration = Duration::from_millis(100);
/// Default timeout of [`wait_vm`].
pub const VM_WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `f` until it returns `Some`, for at most `timeout`.
///
/// # Panics
/// At the deadline, naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Async [`wait_until`]: polls the future `f` returns.
///
/// # Panics
/// At the deadline, naming `what`.
pub async fn wait_until_async<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (up to [`VM_WAIT_TIMEOUT`]) until VM `name` satisfies `pred`;
/// returns it.
///
/// # Panics
/// At the deadline, with the VM's last state and the end of its console.
pub async fn wait_vm(client: &Client, name: &str, pred: impl Fn(&Vm) -> bool) -> Vm {
    wait_vm_timeout(client, name, VM_WAIT_TIMEOUT, pred).await
}

/// [`wait_vm`] with an explicit timeout.
///
/// # Panics
/// At the deadline, with the VM's last state and the end of its console.
pub async fn wait_vm_timeout(
    client: &Client,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&Vm) -> bool,
) -> Vm {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get_vm(name).await {
            Ok(vm) if pred(&vm) => return vm,
            Ok(vm) => format!("state {} on {:?}, guest {:?}", vm.state, vm.owner, vm.guest),
            Err(e) => format!("error: {}", crate::error_chain(&e)),
        };
        if Instant::now() >= deadline {
            let console = client
                .console(name, 4000)
                .await
                .unwrap_or_else(|e| format!("(console unavailable: {e})"));
            panic!(
                "timed out after {timeout:?} waiting for VM '{name}'; last seen: {last}\n\
                 ----- console of {name} -----\n{console}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_the_value_once_ready() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn wait_until_panics_at_the_deadline() {
        wait_until(Duration::from_millis(200), "the impossible", || None::<()>);
    }

    #[tokio::test]
    async fn wait_until_async_polls_futures() {
        let mut n = 0;
        let v = wait_until_async(Duration::from_secs(5), "n to reach 2", || {
            n += 1;
            let ready = n >= 2;
            async move { ready.then_some("done") }
        })
        .await;
        assert_eq!(v, "done");
    }
}
