//! The event history and the live event stream (SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use utoipa::IntoParams;
use vdc_types::event::topic_matches;
use vdc_types::{ApiError, Event};

use crate::error::{ApiErr, ApiQuery, ApiResult};
use crate::routes::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Comma-separated topic patterns (`vm.*`, `host.connected`, `*`).
    #[param(
        pattern = "^ *([A-Za-z0-9._-]*(\\.\\*)?|\\*) *(, *([A-Za-z0-9._-]*(\\.\\*)?|\\*) *)*$"
    )]
    topics: Option<String>,
    /// Only events with a larger sequence number.
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    after: Option<u64>,
    /// At most this many (history only; default 200, at most 2000).
    #[param(minimum = 1, maximum = 2000)]
    limit: Option<usize>,
    /// The API token, for clients that cannot set a header (a browser's
    /// `EventSource`); prefer `Authorization: Bearer`.
    #[serde(default)]
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// Checks the sequence number a history or stream starts after: at most
/// `i64::MAX`, the OpenAPI document's integer range.
fn check_after(after: Option<u64>) -> Result<(), ApiErr> {
    match after {
        Some(a) if a > i64::MAX as u64 => Err(ApiErr(ApiError::invalid(format!(
            "after must be between 0 and {}, not {a}",
            i64::MAX
        )))),
        _ => Ok(()),
    }
}

fn topic_filter(q: &Option<String>) -> Result<Vec<String>, ApiErr> {
    let Some(s) = q else { return Ok(vec![]) };
    let v: Vec<String> = s
        .split(',')
        .map(|t| t.trim_matches(' ').to_string())
        .filter(|t| !t.is_empty())
        .collect();
    for t in &v {
        let ok = t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '*' | '-'))
            && (!t.contains('*') || t == "*" || (t.ends_with(".*") && t.matches('*').count() == 1));
        if !ok {
            return Err(ApiErr(ApiError::invalid(format!(
                "topic filter '{t}' is not valid; use e.g. 'vm.*', 'host.connected' or '*'"
            ))));
        }
    }
    Ok(v)
}

fn wanted(filters: &[String], ev: &Event) -> bool {
    filters.is_empty() || filters.iter().any(|f| topic_matches(f, &ev.topic))
}

/// Event history, oldest first.
#[utoipa::path(get, path = "/api/v1/events", params(EventQuery), responses((status = 200, body = [Event]), (status = 400, body = ApiError)))]
pub(crate) async fn list_events(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    let filters = topic_filter(&q.topics)?;
    check_after(q.after)?;
    let limit = q.limit.unwrap_or(200);
    if limit == 0 || limit > 2000 {
        return Err(ApiErr(ApiError::invalid(format!(
            "limit must be between 1 and 2000, not {limit}"
        ))));
    }
    let all = st
        .cluster
        .events
        .history(q.after.unwrap_or(0), usize::MAX)
        .await;
    let v: Vec<Event> = all.into_iter().filter(|e| wanted(&filters, e)).collect();
    let skip = v.len().saturating_sub(limit);
    Ok(Json(v.into_iter().skip(skip).collect()))
}

/// Live events as Server-Sent Events (`data:` is an [`Event`] in JSON);
/// with `after`, stored events after that number are sent first.
#[utoipa::path(get, path = "/api/v1/events/stream", params(EventQuery),
    responses((status = 200, description = "text/event-stream of Event"), (status = 400, body = ApiError)))]
pub(crate) async fn stream_events(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let filters = topic_filter(&q.topics)?;
    check_after(q.after)?;
    let mut rx = st.cluster.events.subscribe();
    // A browser's EventSource reconnects with the id of the last event it saw.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let backlog = match q.after.or(last_event_id) {
        Some(a) => st.cluster.events.history(a, usize::MAX).await,
        None => vec![],
    };
    let stream = async_stream::stream! {
        let mut last = 0u64;
        for ev in backlog {
            last = ev.seq;
            if wanted(&filters, &ev) {
                yield Ok(to_sse(&ev));
            }
        }
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if ev.seq <= last { continue; }
                    last = ev.seq;
                    if wanted(&filters, &ev) {
                        yield Ok(to_sse(&ev));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    yield Ok(SseEvent::default().event("lagged").data(format!("{n} events were dropped; resume with ?after={last}")));
                }
                Err(_) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

fn to_sse(ev: &Event) -> SseEvent {
    SseEvent::default()
        .id(ev.seq.to_string())
        .event(ev.topic.clone())
        .data(serde_json::to_string(ev).unwrap_or_default())
}
