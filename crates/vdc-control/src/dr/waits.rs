//! What a run waits for on a site: a VM powered off, a recovered VM
//! ready by its plan's wait, a command step's end.

use std::time::Duration;

use vdc_dr::plan::ReadyWait;
use vdc_types::{ApiError, VmAction, VmPowerState};

use super::exec::{ok, skipped, Done, POLL, TASK_WAIT};
use super::sites::{wait_task, SiteOps};

/// Powers `vm` off on `side` with `action` (shutdown or stop) and waits
/// until it is stopped; skipped when it does not exist or is not running.
pub(super) async fn power_off(
    side: &dyn SiteOps,
    vm: &str,
    action: VmAction,
) -> Result<Done, ApiError> {
    let Some(v) = side.vm(vm).await? else {
        return skipped(format!("{vm} does not exist at site {}", side.site()));
    };
    if matches!(v.state, VmPowerState::Stopped | VmPowerState::Crashed) {
        return skipped(format!("{vm} is not running"));
    }
    let t = side.vm_action(vm, action).await?;
    wait_task(side, &t.id, TASK_WAIT).await?;
    let deadline = tokio::time::Instant::now() + TASK_WAIT;
    loop {
        match side.vm(vm).await? {
            Some(v) if !matches!(v.state, VmPowerState::Stopped | VmPowerState::Crashed) => {}
            _ => return ok(),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::internal(format!("{vm} did not power off")));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `name` on `side` is ready by `wait`.
pub(super) async fn await_ready(
    side: &dyn SiteOps,
    name: &str,
    wait: &ReadyWait,
    ip: Option<&str>,
) -> Result<(), ApiError> {
    let (limit, check): (u64, u8) = match wait {
        ReadyWait::Guest { timeout_s } => (*timeout_s, 0),
        ReadyWait::Tcp { timeout_s, .. } => (*timeout_s, 1),
        ReadyWait::Delay { seconds } => (*seconds + 300, 2),
        ReadyWait::Running => (300, 2),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(limit);
    loop {
        let v = side
            .vm(name)
            .await?
            .ok_or_else(|| ApiError::not_found("VM", name))?;
        let running = v.state == VmPowerState::Running;
        let ready = match check {
            0 => running && v.guest.ready,
            1 => {
                let addr = ip
                    .and_then(|i| i.split('/').next().map(str::to_string))
                    .or(v.guest.address.clone());
                match (running, addr, wait) {
                    (true, Some(a), ReadyWait::Tcp { port, .. }) => tokio::time::timeout(
                        Duration::from_secs(1),
                        tokio::net::TcpStream::connect((a.as_str(), *port)),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok()),
                    _ => false,
                }
            }
            _ => running,
        };
        if ready {
            if let ReadyWait::Delay { seconds } = wait {
                tokio::time::sleep(Duration::from_secs(*seconds)).await;
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::internal(format!(
                "{name} was not ready within {limit} s"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `command` with `sh -c`, killed at `timeout`; its output's tail.
pub(super) async fn run_command(command: &str, timeout: Duration) -> Result<String, ApiError> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            ApiError::internal(format!(
                "`{command}` did not end within {} s",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| ApiError::internal(format!("cannot run `{command}`: {e}")))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let tail: String = text
        .trim()
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if !out.status.success() {
        return Err(ApiError::internal(format!(
            "`{command}` failed ({}): {tail}",
            out.status
        )));
    }
    Ok(tail)
}
