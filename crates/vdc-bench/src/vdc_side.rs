//! vdc's side of the migration benchmark: a VM in the benchmark's lab,
//! moved with `POST /api/v1/vms/{name}/migrate` (what `vdc vm migrate`
//! sends), and the figures read back from the finished `vm.migrate` task
//! (its `migration.outcome`: QEMU's downtime, the total time).

use std::time::Duration;

use serde_json::json;
use vdc_client::Client;
use vdc_types::api::CreateVmRequest;
use vdc_types::migration::MigrationOutcome;
use vdc_types::{Task, VmPowerState};

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
    /// How it ended (QEMU's downtime, total time), once it completed.
    pub outcome: Option<MigrationOutcome>,
    /// The policy steps the migration took.
    pub policy_steps: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Moves the VM to `to` and waits (at most `timeout`, then cancels).
pub async fn migrate(
    c: &Client,
    to: &str,
    tls: bool,
    timeout: Duration,
) -> Result<Moved, BenchError> {
    let t = match c
        .vm_action(VM, "migrate", json!({ "to": to, "tls": tls }))
        .await
    {
        Ok(t) => t,
        // Refused (e.g. "not available yet"): a run that did not happen,
        // reported with the server's words.
        Err(vdc_client::ClientError::Api(e)) => {
            return Ok(Moved {
                converged: false,
                outcome: None,
                policy_steps: Vec::new(),
                error: Some(format!("refused: {}", e.message)),
            })
        }
        Err(e) => return Err(api("migrate the VM")(e)),
    };
    let outcome = c.wait_task(&t.id, timeout, |_| {}).await;
    let report = |t: &Task| t.migration.clone().unwrap_or_default();
    Ok(match outcome {
        Ok(done) => Moved {
            converged: true,
            outcome: report(&done).outcome,
            policy_steps: report(&done).policy_steps,
            error: None,
        },
        Err(vdc_client::ClientError::Timeout(..)) => {
            if let Err(e) = c.cancel_task(&t.id).await {
                eprintln!("cancelling the vdc migration: {e}");
            }
            Moved {
                converged: false,
                outcome: None,
                policy_steps: Vec::new(),
                error: Some(format!("not done after {} s, cancelled", timeout.as_secs())),
            }
        }
        Err(vdc_client::ClientError::TaskFailed(t)) => Moved {
            converged: false,
            outcome: None,
            policy_steps: report(&t).policy_steps,
            error: Some(
                t.error
                    .as_ref()
                    .map_or_else(|| format!("task {:?}", t.state), |e| e.message.clone()),
            ),
        },
        Err(e) => Moved {
            converged: false,
            outcome: None,
            policy_steps: Vec::new(),
            error: Some(e.to_string()),
        },
    })
}
