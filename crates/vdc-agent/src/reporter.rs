//! Joins the cluster, then pushes the
//! [`HostReport`](vdc_types::agent::HostReport) to the server: every second,
//! and at once (at most every 100 ms) when a VM changes state. Failures are
//! logged once per outage and retried on the next tick; they never stop the
//! agent.
//!
//! # Join
//! Before its first report (and again whenever the server refuses a report
//! with 401 or 403, e.g. after the server's store was replaced) the agent
//! calls `POST /api/v1/agent/join` with its agent credential; the answer
//! holds the server credential, the only one its API accepts from then on.
//!
//! # Several servers
//! `--server` may list several servers, separated by commas (the servers
//! of one control plane). The agent reports to one; when it cannot reach
//! it (no HTTP answer), it goes on with the next. Any server takes the
//! report: followers forward it to the leader.

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
    let servers = server_list(&agent.config.server_url);
    let mut server = 0usize;
    let epoch = std::time::Instant::now();
    let last_ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(iso) = agent.config.isolation {
        tokio::spawn(crate::isolation::run(
            agent.clone(),
            iso,
            epoch,
            last_ok.clone(),
        ));
    }
    let mut must_join = true;
    let mut next_renewal = tokio::time::Instant::now() + RENEW_RETRY;
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
        if !must_join
            && agent.tls.needs_certificate(vdc_types::now_ms())
            && renew_due(&mut next_renewal)
        {
            // No certificate yet (a server without a CA answered none) or
            // one close to its end: ask again, at most every few minutes.
            must_join = true;
        }
        let url = format!("{}/api/v1/agent/report", servers[server]);
        let join_url = format!("{}/api/v1/agent/join", servers[server]);
        if must_join {
            match join(&client, &join_url, &agent).await {
                Ok(()) => {
                    tracing::info!(url = %join_url, "joined the cluster");
                    must_join = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(url = %join_url, error = %e, "cannot join the cluster; retrying every second");
                        failing = true;
                    }
                    if matches!(e, JoinError::Transport(_)) {
                        server = (server + 1) % servers.len();
                    }
                    tokio::time::sleep(PERIOD).await;
                    continue;
                }
            }
        }
        let report = agent.host_report(sample_cpu);
        let sent = client
            .post(&url)
            .bearer_auth(&agent.config.credential)
            .json(&report)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        if let Err(e) = &sent {
            match e.status().map(|s| s.as_u16()) {
                Some(401 | 403) => must_join = true,
                // No answer at all: this server is down; the next one.
                None => server = (server + 1) % servers.len(),
                Some(_) => {}
            }
        }
        let sent = match sent {
            Ok(r) => {
                // An answer without switches (an older server) changes
                // nothing on this host.
                if let Ok(answer) = r.json::<vdc_types::switch::ReportAnswer>().await {
                    agent.switches.desire(answer);
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        if sent.is_ok() {
            last_ok.store(
                epoch.elapsed().as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
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

/// The servers of `--server` (comma-separated), without trailing slashes;
/// never empty.
fn server_list(s: &str) -> Vec<String> {
    let v: Vec<String> = s
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if v.is_empty() {
        vec![s.to_string()]
    } else {
        v
    }
}

/// Least time between joins made only to get a certificate.
const RENEW_RETRY: Duration = Duration::from_secs(300);

fn renew_due(next: &mut tokio::time::Instant) -> bool {
    let now = tokio::time::Instant::now();
    if now < *next {
        return false;
    }
    *next = now + RENEW_RETRY;
    true
}

/// Largest join answer read.
const JOIN_ANSWER_MAX: usize = 64 * 1024;

/// Errors of a join.
#[derive(Debug, thiserror::Error)]
enum JoinError {
    /// The server could not be reached or broke off.
    #[error("the server did not answer")]
    Transport(#[source] reqwest::Error),
    /// The server refused the join.
    #[error("the server refused the join ({status}): {body}")]
    Refused {
        /// HTTP status.
        status: reqwest::StatusCode,
        /// Start of its answer.
        body: String,
    },
    /// The answer was too large or not a join answer.
    #[error("the server's join answer is not understood")]
    Answer(#[source] vdc_types::limits::BoundedError),
}

async fn join(client: &reqwest::Client, url: &str, agent: &Agent) -> Result<(), JoinError> {
    // The key is made once (a file written and synced, on the blocking
    // pool); a failure only means no certificate this time.
    let (tls, host) = (agent.tls.clone(), agent.config.name.clone());
    let csr = match tokio::task::spawn_blocking(move || tls.csr(&host)).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::error::chain(&e), "cannot make the certificate request; joining without it");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot make the certificate request; joining without it");
            None
        }
    };
    let resp = client
        .post(url)
        .bearer_auth(&agent.config.credential)
        .json(&vdc_types::auth::JoinRequest {
            host: agent.config.name.clone(),
            csr,
            migration_address: Some(agent.config.migration_address.clone()),
        })
        .send()
        .await
        .map_err(JoinError::Transport)?;
    let status = resp.status();
    let body = vdc_types::limits::read_capped(resp.bytes_stream(), JOIN_ANSWER_MAX)
        .await
        .map_err(JoinError::Answer)?;
    if !status.is_success() {
        return Err(JoinError::Refused {
            status,
            body: String::from_utf8_lossy(&body).chars().take(300).collect(),
        });
    }
    let answer: vdc_types::auth::JoinResponse = serde_json::from_slice(&body)
        .map_err(|e| JoinError::Answer(vdc_types::limits::BoundedError::Decode(e)))?;
    agent.set_server_credential(&answer.server_credential);
    if let Some(bundle) = answer.tls {
        let tls = agent.tls.clone();
        let installed = tokio::task::spawn_blocking(move || {
            tls.install(&bundle).map_err(|e| crate::error::chain(&e))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match installed {
            Ok(cert) => {
                tracing::info!(not_after_ms = cert.not_after_ms, sans = ?cert.sans, "installed the host's migration certificate")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot install the host's migration certificate")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::server_list;

    #[test]
    fn several_servers() {
        assert_eq!(
            server_list("http://a:1/, http://b:2"),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert_eq!(server_list("http://a:1"), vec!["http://a:1".to_string()]);
    }
}
