//! Pushes the [`HostReport`](vdc_types::agent::HostReport) to the server:
//! every second, and at once (at most every 100 ms) when a VM changes
//! state. Failures are logged once per outage and retried on the next
//! tick; they never stop the agent.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::Agent;

const PERIOD: Duration = Duration::from_secs(1);
const MIN_GAP: Duration = Duration::from_millis(100);
/// Forgetting VMs that moved to another host reads their lease files, so
/// it runs less often than the report.
const MOVED_CHECK_EVERY: u32 = 10;

/// Runs forever.
pub(crate) async fn run(agent: Arc<Agent>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; no reports will be sent");
            return;
        }
    };
    let url = format!("{}/api/v1/agent/report", agent.config.server_url);
    let mut failing = false;
    let mut ticks = 0u32;
    let mut next_sample = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let sample_cpu = now >= next_sample;
        if sample_cpu {
            next_sample = now + PERIOD;
            ticks += 1;
            if ticks >= MOVED_CHECK_EVERY {
                ticks = 0;
                agent.forget_moved_vms();
            }
        }
        let report = agent.host_report(sample_cpu);
        let sent = client
            .post(&url)
            .bearer_auth(&agent.config.token)
            .json(&report)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match sent {
            Ok(_) if failing => {
                tracing::info!(%url, "reports reach the server again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!(%url, error = %e, "cannot send the host report; retrying every second");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(MIN_GAP).await;
        let _ = tokio::time::timeout_at(next_sample, agent.changed.notified()).await;
    }
}
