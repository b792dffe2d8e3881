//! vdc's side of the migration benchmark: a VM in the benchmark's lab,
//! moved with `POST /api/v1/vms/{name}/migrate` (what `vdc vm migrate`
//! sends), and QEMU's figures read back from the finished `vm.migrate`
//! task ([`figures`]).

use std::time::Duration;

use serde_json::{json, Value};
use vdc_client::Client;
use vdc_types::api::CreateVmRequest;
use vdc_types::VmPowerState;

use crate::error::BenchError;

/// The VM's name.
pub const VM: &str = "bench-vdc";

fn api(what: &str) -> impl FnOnce(vdc_client::ClientError) -> BenchError + '_ {
    move |source| BenchError::Api {
        what: what.to_string(),
        source,
    }
}

/// Creates and starts the benchmark VM on `host`; returns its address once
/// the guest is ready.
pub async fn create(c: &Client, host: &str, memory_mib: u32) -> Result<String, BenchError> {
    let t = c
        .create_vm(&CreateVmRequest {
            name: VM.into(),
            template: Some(vdc_lab::plan::TEMPLATE_NAME.into()),
            memory_mib: Some(memory_mib.into()),
            cpus: Some(1),
            host: Some(host.into()),
            start: true,
            ..Default::default()
        })
        .await
        .map_err(api("create the VM"))?;
    c.wait_task(&t.id, Duration::from_secs(300), |_| {})
        .await
        .map_err(api("create the VM"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let vm = c.get_vm(VM).await.map_err(api("read the VM"))?;
        if vm.state == VmPowerState::Running && vm.guest.ready {
            if let Some(a) = vm.guest.address {
                return Ok(a);
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Timeout("the vdc guest to be ready".into()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The outcome of one vdc migration.
pub struct Moved {
    /// Whether it completed.
    pub converged: bool,
    /// QEMU's (total ms, downtime ms), when the task reports them.
    pub figures: Option<(f64, f64)>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Moves the VM to `to` and waits (at most `timeout`, then cancels).
pub async fn migrate(
    c: &Client,
    http: &reqwest::Client,
    token: &str,
    to: &str,
    timeout: Duration,
) -> Result<Moved, BenchError> {
    let t = c
        .vm_action(VM, "migrate", json!({ "to": to }))
        .await
        .map_err(api("migrate the VM"))?;
    let outcome = c.wait_task(&t.id, timeout, |_| {}).await;
    let raw = task_json(c, http, token, &t.id).await;
    Ok(match outcome {
        Ok(_) => Moved {
            converged: true,
            figures: raw.as_ref().and_then(figures),
            error: None,
        },
        Err(vdc_client::ClientError::Timeout(..)) => {
            if let Err(e) = c.cancel_task(&t.id).await {
                eprintln!("cancelling the vdc migration: {e}");
            }
            Moved {
                converged: false,
                figures: None,
                error: Some(format!("not done after {} s, cancelled", timeout.as_secs())),
            }
        }
        Err(e) => Moved {
            converged: false,
            figures: None,
            error: Some(e.to_string()),
        },
    })
}

/// The task as the API sends it, every field kept.
async fn task_json(c: &Client, http: &reqwest::Client, token: &str, id: &str) -> Option<Value> {
    let url = format!("{}/api/v1/tasks/{id}", c.base_url());
    let r = http.get(url).bearer_auth(token).send().await.ok()?;
    r.json().await.ok()
}

/// QEMU's total time and downtime (ms) of a finished `vm.migrate` task:
/// the first `downtime_ms` and `total_ms` (or `total_time_ms`) numbers
/// anywhere in it.
pub fn figures(task: &Value) -> Option<(f64, f64)> {
    fn find(v: &Value, keys: &[&str]) -> Option<f64> {
        match v {
            Value::Object(m) => {
                for k in keys {
                    if let Some(n) = m.get(*k).and_then(Value::as_f64) {
                        return Some(n);
                    }
                }
                m.values().find_map(|x| find(x, keys))
            }
            Value::Array(a) => a.iter().find_map(|x| find(x, keys)),
            _ => None,
        }
    }
    Some((
        find(task, &["total_ms", "total_time_ms"])?,
        find(task, &["downtime_ms"])?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_found_wherever_the_task_keeps_them() {
        let t = json!({"kind": "vm.migrate", "result": {"migration": {"total_ms": 812, "downtime_ms": 9.5}}});
        assert_eq!(figures(&t), Some((812.0, 9.5)));
        assert_eq!(figures(&json!({"kind": "vm.migrate"})), None);
    }
}
