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
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => from_json_value(v).map(ApiJson),
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

/// Deserializes a parsed body into `T`, reading integral floats (`5.0`) as
/// the integers they are: JSON Schema, and so the OpenAPI document, counts
/// them as integers.
pub fn from_json_value<T: DeserializeOwned>(mut v: serde_json::Value) -> Result<T, ApiErr> {
    integral_floats_to_integers(&mut v);
    serde_json::from_value(v).map_err(|e| {
        ApiErr(ApiError::new(
            ErrorCode::InvalidInput,
            format!("the request body has a wrong field: {e}"),
        ))
    })
}

/// Replaces every float with no fractional part that fits a 64-bit integer
/// by that integer, throughout `v`.
pub fn integral_floats_to_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 {
                if (0.0..u64::MAX as f64).contains(&f) {
                    *v = Value::from(f as u64);
                } else if (i64::MIN as f64..0.0).contains(&f) {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_read_as_integers() {
        let mut v = json!({"a": 5.0, "b": [1.0, -2.0, 2.5], "c": {"d": 1e300}, "e": "5.0"});
        integral_floats_to_integers(&mut v);
        assert_eq!(v["a"], json!(5));
        assert!(v["a"].is_u64());
        assert_eq!(v["b"], json!([1, -2, 2.5]));
        assert!(v["c"]["d"].is_f64(), "too large for an integer: left alone");
        assert_eq!(v["e"], json!("5.0"));
    }
}
