//! A follower forwards to the leader every API call it does not serve
//! itself (reverse proxy, with the caller's token and body unchanged).
//!
//! Why forward rather than record the request and let the leader run it:
//! the controllers keep state in memory that the store does not hold (each
//! host's last report and liveness, the migration queue, memory promised
//! to VMs being started), and a task's body is code that runs where it was
//! submitted. Forwarding keeps one place that decides, keeps `202 + task`
//! exactly as it is, and costs one local hop. What any server serves from
//! the store itself: the event history and stream (the same numbers on
//! every server), the control-plane status, the version, the OpenAPI
//! document and the web page.
//!
//! While no leader answers (an election after the leader died), a request
//! waits up to [`LEADER_WAIT`] for one, then gets 503. A request is sent
//! again only when the leader could not be reached at all (a connection
//! refused means it was never received).

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use vdc_types::{ApiError, ErrorCode};

use crate::error::ApiErr;
use crate::routes::AppState;

/// Longest a forwarded request waits for a leader to answer.
pub const LEADER_WAIT: Duration = Duration::from_secs(20);

/// Header naming the server that forwarded a request (a request is
/// forwarded at most once).
pub const FORWARDED_BY: &str = "x-vdc-forwarded-by";

/// Largest body forwarded (the API's own limit is lower).
const FORWARD_BODY_MAX: usize = 16 << 20;

/// The paths every server serves itself.
pub fn serves_locally(path: &str) -> bool {
    !path.starts_with("/api/v1/")
        || matches!(
            path,
            "/api/v1/events"
                | "/api/v1/events/stream"
                | "/api/v1/cluster/control-plane"
                | "/api/v1/version"
                | "/api/v1/openapi.json"
        )
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default()
    })
}

fn unavailable(message: String) -> Response {
    ApiErr(ApiError::new(ErrorCode::Timeout, message)).into_response()
}

/// Hop-by-hop headers, and those the proxy sets again.
fn passes(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade"
    )
}

/// The middleware: serves locally on the leader and for the local paths,
/// forwards the rest.
pub(crate) async fn forward(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let cp = st.cluster.control_plane.clone();
    if cp.is_leader() || serves_locally(req.uri().path()) {
        return next.run(req).await;
    }
    if req.headers().contains_key(FORWARDED_BY) {
        return unavailable(format!(
            "server {} received a forwarded request but does not lead; retry",
            cp.id
        ));
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, FORWARD_BODY_MAX).await {
        Ok(b) => b,
        Err(_) => {
            return ApiErr(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {FORWARD_BODY_MAX} bytes"),
            ))
            .into_response()
        }
    };
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        if cp.is_leader() {
            return next.run(Request::from_parts(parts, Body::from(body))).await;
        }
        // A leader recorded at this server's own address is a dead
        // predecessor whose lease runs on: wait for the election.
        if let Some(leader) = cp.leader().filter(|l| l.id != cp.id && l.url != cp.url) {
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let url = format!("{}{path}", leader.url.trim_end_matches('/'));
            let mut rb = client()
                .request(parts.method.clone(), &url)
                .header(FORWARDED_BY, cp.id.as_str())
                .body(body.clone());
            for (name, value) in parts.headers.iter().filter(|(n, _)| passes(n)) {
                rb = rb.header(name, value);
            }
            match rb.send().await {
                Ok(resp) => return relay(resp),
                Err(e) if e.is_connect() => {
                    tracing::debug!(leader = %leader.id, error = %e, "leader unreachable; waiting for the next");
                }
                Err(e) => {
                    return ApiErr(ApiError::new(
                        ErrorCode::HostError,
                        format!(
                            "the leader {} did not answer ({e}); the request may or may not have been carried out: look at 'vdc task list' before retrying",
                            leader.id
                        ),
                    ))
                    .into_response()
                }
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return unavailable(format!(
                "no leader of the control plane answered within {} s; an election may be running: retry",
                LEADER_WAIT.as_secs()
            ));
        }
        cp.leader_changed((deadline - now).min(Duration::from_secs(1)))
            .await;
    }
}

fn relay(resp: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = Response::builder().status(status);
    for (name, value) in resp.headers().iter().filter(|(n, _)| passes(n)) {
        out = out.header(name, value);
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|e| {
            ApiErr(ApiError::internal(format!(
                "cannot relay the leader's answer: {e}"
            )))
            .into_response()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn local_paths() {
        assert!(serves_locally("/"));
        assert!(serves_locally("/ha.js"));
        assert!(serves_locally("/api/v1/events/stream"));
        assert!(serves_locally("/api/v1/cluster/control-plane"));
        assert!(!serves_locally("/api/v1/vms"));
        assert!(!serves_locally("/api/v1/agent/report"));
        assert!(!serves_locally("/api/v1/tasks/x"));
    }

    #[test]
    fn hop_headers_stay() {
        assert!(!passes(&header::HOST));
        assert!(!passes(&header::CONTENT_LENGTH));
        assert!(passes(&header::AUTHORIZATION));
        assert!(passes(&header::CONTENT_TYPE));
    }
}
