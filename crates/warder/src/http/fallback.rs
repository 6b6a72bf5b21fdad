//! Routes that match nothing: reverse-proxied to `fallback_upstream`, or 404.
//!
//! The fallback (typically the control plane behind the gateway)
//! authenticates its own callers, so requests pass through as they are,
//! `Authorization` included, streamed both ways.

use crate::gateway::copy_end_to_end_headers;
use crate::http::error::ApiError;
use crate::http::middleware::Proxied;
use crate::state::SharedState;
use crate::upstream::UpstreamErrorKind;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::time::Duration;
use warder_core::ErrorCode;

/// How long the fallback may take to send its response headers.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Proxies to the fallback upstream, or answers 404 in the error shape.
pub async fn fallback(State(state): State<SharedState>, req: Request) -> Response {
    let Some(base) = state.config.fallback_upstream.as_deref() else {
        return ApiError::new(
            ErrorCode::NotFound,
            format!("no route for {} {}", req.method(), req.uri().path()),
        )
        .into_response();
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let target = format!("{}{}", base.trim_end_matches('/'), path_and_query);
    let Ok(uri) = target.parse::<Uri>() else {
        return ApiError::new(ErrorCode::BadRequest, "request path cannot be forwarded")
            .into_response();
    };
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri.clone();
    copy_end_to_end_headers(&parts.headers, out.headers_mut());
    if let Some(host) = crate::upstream::host_header(&uri) {
        out.headers_mut().insert(header::HOST, host);
    }
    if let Some(original_host) = parts.headers.get(header::HOST) {
        out.headers_mut()
            .insert("x-forwarded-host", original_host.clone());
    }
    if let Some(ip) = peer {
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            out.headers_mut().insert("x-forwarded-for", v);
        }
    }
    match state.upstream.send(out, FALLBACK_TIMEOUT).await {
        Ok(upstream) => {
            let (parts, incoming) = upstream.into_parts();
            let mut r = Response::new(Body::new(incoming));
            *r.status_mut() = parts.status;
            copy_end_to_end_headers(&parts.headers, r.headers_mut());
            r.extensions_mut().insert(Proxied);
            r
        }
        Err(e) => {
            tracing::debug!(error = %e, "fallback upstream failed");
            match e.kind {
                UpstreamErrorKind::Timeout => ApiError::new(
                    ErrorCode::UpstreamTimeout,
                    "the fallback upstream did not answer in time",
                ),
                _ => ApiError::new(
                    ErrorCode::UpstreamError,
                    "the fallback upstream could not be reached",
                ),
            }
            .into_response()
        }
    }
}
