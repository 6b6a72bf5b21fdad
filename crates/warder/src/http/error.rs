//! [`ApiError`]: the one error type every public route answers with.
//!
//! An `ApiError` becomes a response carrying its status and headers and the
//! error itself as a response extension; the request-context middleware,
//! which knows the request id, renders the documented body
//! `{"error": {"code", "message", "request_id"}}`. Handlers therefore never
//! need the request id to fail properly.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::borrow::Cow;
use warder_core::{ErrorCode, RequestId, StoreError};

/// A documented error: stable code, status, message and optional details.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable code from the table.
    pub code: ErrorCode,
    /// Status answered (the code's own, or the upstream's 4xx).
    pub status: StatusCode,
    /// Human-readable, no trailing period.
    pub message: Cow<'static, str>,
    /// The upstream's own error body, for `UPSTREAM_ERROR`.
    pub upstream: Option<Value>,
    /// Extra headers (`Retry-After`, `RateLimit-*`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with the code's default status.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            code,
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            upstream: None,
            headers: Vec::new(),
        }
    }

    /// Overrides the status (upstream 4xx kept as is).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After` in whole seconds (at least 1).
    pub fn with_retry_after(self, seconds: u64) -> ApiError {
        self.with_header(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(seconds.max(1)),
        )
    }

    /// Attaches the upstream's body.
    pub fn with_upstream(mut self, body: Value) -> ApiError {
        self.upstream = Some(body);
        self
    }

    /// `NOT_FOUND` for an unknown resource.
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// `INVALID_INPUT` with a message.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError::new(ErrorCode::InvalidInput, message)
    }

    /// `INTERNAL`, logging the cause (never shown to the caller).
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error")
    }

    /// The JSON body for a given request id.
    pub fn body(&self, request_id: Option<&RequestId>) -> Value {
        let mut error = serde_json::json!({
            "code": self.code.as_str(),
            "message": self.message,
            "request_id": request_id.map(|r| r.to_hex()),
        });
        if let (Some(upstream), Some(obj)) = (&self.upstream, error.as_object_mut()) {
            obj.insert("upstream".into(), upstream.clone());
        }
        serde_json::json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(m) => {
                ApiError::new(ErrorCode::Conflict, format!("already exists: {m}"))
            }
            StoreError::NotFound(m) => {
                ApiError::new(ErrorCode::NotFound, format!("not found: {m}"))
            }
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "the gateway's store is unavailable",
                )
                .with_retry_after(1)
            }
            StoreError::Other(m) => ApiError::internal(&m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        for (name, value) in &self.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response.extensions_mut().insert(self);
        response
    }
}
