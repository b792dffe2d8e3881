//! Authentication and authorisation of every `/api/v1` call, and the
//! request limits (body size, deadline) that sit beside them.
//!
//! Each request's bearer secret (header, or `?access_token=` for the event
//! stream) is resolved to a [`Principal`] by the credential registry; the
//! route it matched decides what it needs ([`access_for`], the one
//! route → role table) and [`vdc_types::auth::authorize`] decides. The
//! principal rides on the request for handlers that check more (a report
//! must name the agent's own host: [`check_report_host`]).

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use vdc_types::auth::{authorize, Access, Principal, Role};
use vdc_types::{ApiError, ErrorCode};

use crate::error::ApiErr;
use crate::routes::AppState;

/// Longest a request may take, except the event stream and the console.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// What the route `route` (the matched template, e.g.
/// `/api/v1/vms/{name}/{action}`) needs for `method`.
pub fn access_for(method: &Method, route: &str) -> Access {
    let reads = *method == Method::GET || *method == Method::HEAD;
    match route {
        "/api/v1/agent/report" | "/api/v1/agent/join" => Access::Agent,
        "/api/v1/hosts" | "/api/v1/agents" if !reads => Access::User(Role::Administrator),
        // The console shows what the guest prints (passwords included).
        "/api/v1/vms/{name}/console" | "/api/v1/vms/{name}/console/input" => {
            Access::User(Role::Operator)
        }
        _ if reads => Access::User(Role::Viewer),
        _ => Access::User(Role::Operator),
    }
}

/// Whether the route `route` runs under [`REQUEST_DEADLINE`] (long-lived
/// streams and the interactive console do not).
pub fn has_deadline(route: &str) -> bool {
    !matches!(
        route,
        "/api/v1/events/stream" | "/api/v1/vms/{name}/console" | "/api/v1/vms/{name}/console/input"
    )
}

/// A report may only speak for the agent's own host.
pub fn check_report_host(who: &Principal, reported: &str) -> Result<(), ApiError> {
    match who {
        Principal::Agent { host } if host == reported => Ok(()),
        Principal::Agent { host } => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this agent's credential is for host '{host}'; it cannot report for host '{reported}'"),
        )),
        Principal::User { .. } => Err(ApiError::new(
            ErrorCode::Forbidden,
            vdc_types::auth::Denied::UserOnAgentRoute.to_string(),
        )),
    }
}

fn bearer(req: &Request) -> Option<String> {
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    header_token.or_else(|| {
        req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        })
    })
}

/// The middleware in front of every authenticated route.
pub(crate) async fn auth(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(secret) = bearer(&req) else {
        return ApiErr(ApiError::new(
            ErrorCode::Unauthorized,
            "this API needs 'Authorization: Bearer <token>'; set VDC_TOKEN or VDC_TOKEN_FILE",
        ))
        .into_response();
    };
    let who = match st.credentials.authenticate(&secret).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return ApiErr(ApiError::new(
                ErrorCode::Unauthorized,
                "the API token is wrong: it is neither a user token nor an agent credential this server made; set VDC_TOKEN or VDC_TOKEN_FILE",
            ))
            .into_response()
        }
        Err(e) => return ApiErr(e.into()).into_response(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    if let Err(denied) = authorize(&who, access_for(req.method(), &route)) {
        return ApiErr(ApiError::new(ErrorCode::Forbidden, denied.to_string())).into_response();
    }
    req.extensions_mut().insert(who);
    with_deadline(&route, REQUEST_DEADLINE, next.run(req)).await
}

/// Runs the handler of `route`, answering 503 `timeout` if it takes longer
/// than `deadline` (routes without [`has_deadline`] run unbounded).
async fn with_deadline(
    route: &str,
    deadline: Duration,
    handler: impl std::future::Future<Output = Response>,
) -> Response {
    if !has_deadline(route) {
        return handler.await;
    }
    match tokio::time::timeout(deadline, handler).await {
        Ok(r) => r,
        Err(_) => ApiErr(ApiError::new(
            ErrorCode::Timeout,
            format!(
                "the server did not finish this request within {} s; see 'vdc task list' for what it started, then retry",
                deadline.as_secs()
            ),
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        let g = Method::GET;
        let p = Method::POST;
        assert_eq!(access_for(&p, "/api/v1/agent/report"), Access::Agent);
        assert_eq!(access_for(&p, "/api/v1/agent/join"), Access::Agent);
        assert_eq!(access_for(&g, "/api/v1/vms"), Access::User(Role::Viewer));
        assert_eq!(access_for(&p, "/api/v1/vms"), Access::User(Role::Operator));
        assert_eq!(
            access_for(&p, "/api/v1/hosts"),
            Access::User(Role::Administrator)
        );
        assert_eq!(access_for(&g, "/api/v1/agents"), Access::User(Role::Viewer));
        assert_eq!(
            access_for(&g, "/api/v1/vms/{name}/console"),
            Access::User(Role::Operator)
        );
        assert!(!has_deadline("/api/v1/events/stream"));
        assert!(has_deadline("/api/v1/vms"));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_requests_end_at_the_deadline_but_streams_do_not() {
        let slow = || async {
            tokio::time::sleep(REQUEST_DEADLINE * 2).await;
            axum::http::StatusCode::NO_CONTENT.into_response()
        };
        let r = with_deadline("/api/v1/vms", REQUEST_DEADLINE, slow()).await;
        assert_eq!(r.status(), 503);
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let e: ApiError = serde_json::from_slice(&body).unwrap();
        assert_eq!(e.code, ErrorCode::Timeout);
        let r = with_deadline("/api/v1/events/stream", REQUEST_DEADLINE, slow()).await;
        assert_eq!(r.status(), 204);
    }

    #[test]
    fn reports_only_for_the_own_host() {
        let a = Principal::Agent { host: "a".into() };
        assert!(check_report_host(&a, "a").is_ok());
        let e = check_report_host(&a, "b").unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.message.contains("'a'") && e.message.contains("'b'"));
        let u = Principal::User {
            role: Role::Administrator,
        };
        assert_eq!(
            check_report_host(&u, "a").unwrap_err().code,
            ErrorCode::Forbidden
        );
    }
}
