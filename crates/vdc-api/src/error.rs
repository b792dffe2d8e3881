//! Mapping of [`ApiError`] to HTTP responses, and extractors whose
//! rejections are JSON errors too (a malformed body gets `{code, message}`,
//! never axum's plain text).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use vdc_types::{ApiError, ErrorCode};

/// An [`ApiError`] as an HTTP response (the one place statuses are chosen).
#[derive(Debug)]
pub struct ApiErr(pub ApiError);

impl From<ApiError> for ApiErr {
    fn from(e: ApiError) -> Self {
        ApiErr(e)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiErr>;

/// A JSON body whose rejection is an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(ApiErr(json_rejection(rej))),
        }
    }
}

/// The error for a body over the route's limit (413).
pub fn body_too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the request body is too large for this route (no route reads more than {} bytes; console input at most 64 KiB); send less",
            crate::API_BODY_MAX
        ),
    )
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return body_too_large();
    }
    let (msg, code) = match &rej {
        JsonRejection::MissingJsonContentType(_) => (
            "the request body must be JSON with 'Content-Type: application/json'".to_string(),
            ErrorCode::InvalidInput,
        ),
        JsonRejection::JsonSyntaxError(_) => (
            format!("the request body is not valid JSON: {}", rej.body_text()),
            ErrorCode::InvalidInput,
        ),
        JsonRejection::JsonDataError(_) => (
            format!("the request body has a wrong field: {}", rej.body_text()),
            ErrorCode::InvalidInput,
        ),
        _ => (
            format!("cannot read the request body: {}", rej.body_text()),
            ErrorCode::InvalidInput,
        ),
    };
    ApiError::new(code, msg)
}

/// A raw body whose rejection (too large, broken off) is an [`ApiError`].
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => Ok(ApiBytes(b)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiErr(body_too_large()))
            }
            Err(rej) => Err(ApiErr(ApiError::invalid(format!(
                "cannot read the request body: {}",
                rej.body_text()
            )))),
        }
    }
}

/// Query parameters whose rejection is an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(ApiErr(query_rejection(rej))),
        }
    }
}

fn query_rejection(rej: QueryRejection) -> ApiError {
    ApiError::invalid(format!("bad query parameters: {}", rej.body_text()))
}
