//! The sync predict pipeline: authorize → limit → call the upstream → answer.
//!
//! Called by the thin predict handlers with an authenticated principal and a
//! selector; knows nothing about routing. Every outcome, success or error,
//! comes with [`RequestFacts`] for the access log and metrics. The checks
//! of grant, rate limit and quota are in `admission`, shared with async
//! submits.

use crate::auth::Principal;
use crate::catalog::{ResolveError, Selector, Target};
use crate::http::error::ApiError;
use crate::http::middleware::X_REQUEST_ID;
use crate::json_syntax::is_json_value;
use crate::state::AppState;
use crate::telemetry::metrics::Label;
use crate::telemetry::trace::TraceContext;
use crate::upstream::{JsonPost, UpstreamErrorKind};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use warder_core::{ErrorCode, RateDecision, ResponseMode, VersionState};

mod admission;

use admission::RATE_LIMIT_NAMES;
pub(crate) use admission::{admit, authorize, rate_limit_fields, take_quota};

/// What the access log and metrics need to know about a predict.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// Model id, once resolved.
    pub model_id: Option<Label>,
    /// Version id, once resolved.
    pub version_id: Option<Label>,
    /// Time to the upstream's response headers.
    pub upstream: Option<Duration>,
    /// The rate limit's decision for an answered call. Its `RateLimit-*`
    /// fields, like the envelope's `Content-Type`, are added to the answer
    /// by whoever writes its head
    /// ([`crate::http::middleware::RequestScope`]).
    pub rate: Option<RateDecision>,
    /// The answer is the envelope (JSON).
    pub envelope: bool,
}

/// One sync predict call.
pub struct PredictCall {
    /// Who calls.
    pub principal: Arc<Principal>,
    /// Trace position (request id).
    pub trace: TraceContext,
    /// What to call.
    pub selector: Selector,
    /// A `predict_internal` route: needs the `internal` scope, skips limits.
    pub internal: bool,
    /// The caller declared a JSON body (`Content-Type`).
    pub json: bool,
    /// The model input.
    pub body: Input,
}

/// A model input as the listener has it.
pub enum Input {
    /// Read whole already (the fast lane reads bodies before it answers).
    Read(Bytes),
    /// To be read, up to `max_body_bytes`.
    Stream(Body),
}

/// Runs a predict; returns the response and what the access log and
/// metrics need to know of it.
pub async fn predict(state: &AppState, call: PredictCall) -> (Response, RequestFacts) {
    let mut facts = RequestFacts::default();
    let response = match run(state, call, &mut facts).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    (response, facts)
}

async fn run(
    state: &AppState,
    call: PredictCall,
    facts: &mut RequestFacts,
) -> Result<Response, ApiError> {
    let principal = &call.principal;
    if call.internal && !principal.internal {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "predict_internal needs a key with the 'internal' scope",
        ));
    }
    let target = state
        .catalog
        .resolve(&call.selector)
        .await
        .map_err(|e| match e {
            ResolveError::NotFound(m) => ApiError::new(ErrorCode::ModelNotFound, m),
            ResolveError::Store(e) => e.into(),
        })?;
    facts.model_id = Some(target.model_label.clone());
    facts.version_id = Some(target.version_label.clone());

    let limits = authorize(state, principal, &target).await?;
    if !call.json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the model input must be sent as Content-Type: application/json",
        ));
    }
    if target.version.state != VersionState::Active {
        return Err(ApiError::new(
            ErrorCode::ModelNotReady,
            format!("model version '{}' is not active", target.version.id),
        )
        .with_retry_after(30));
    }
    let decision = if call.internal {
        None
    } else {
        admit(state, principal, &target, &limits).await?
    };

    let max = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds {max} bytes"),
        )
    };
    let body = match call.body {
        Input::Read(body) if body.len() <= max => body,
        Input::Read(_) => return Err(too_large()),
        // Boxed (like the rarer steps below): the fast lane's inputs come
        // read, and this future would otherwise add to the size of every
        // predict's, copied whole onto the heap for each request.
        Input::Stream(body) => Box::pin(axum::body::to_bytes(body, max))
            .await
            .map_err(|_| too_large())?,
    };
    match &target.validator {
        None => {
            if !is_json_value(&body) {
                return Err(invalid_json());
            }
        }
        Some(validator) => {
            let input: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| invalid_json())?;
            check_input(validator, &input)?;
        }
    }

    let permit = match &target.slots {
        None => None,
        Some(slots) => {
            let wait = Duration::from_millis(state.config.concurrency_wait_ms);
            match Box::pin(tokio::time::timeout(wait, slots.clone().acquire_owned())).await {
                Ok(Ok(p)) => Some(p),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::ModelBusy,
                        format!(
                            "model version '{}' is at its concurrency limit",
                            target.version.id
                        ),
                    )
                    .with_retry_after(1))
                }
            }
        }
    };

    if !call.internal && limits.has_quota() {
        // Boxed: quotas are optional and usually absent, and its future
        // would otherwise add to the size of this one (see below).
        Box::pin(take_quota(state, principal, &target, &limits)).await?;
    }

    let started = tokio::time::Instant::now();
    let timeout = Duration::from_millis(target.version.timeout_ms);
    let deadline = started + timeout;
    let traceparent = call.trace.outgoing_traceparent();
    let request_id = call.trace.request_id.hex();
    let url = &target.upstream_uri;
    state
        .usage
        .record(&principal.user_id, &principal.key_id, &target.model_label.0);
    // Boxed: this future, the largest awaited here, would otherwise set
    // the size of this one and of every future around it, up to the
    // per-request box, and each of those is copied whole at least once per
    // request (moved into its caller's state, then onto the heap). Boxed,
    // it is moved once, onto the heap.
    let headers = upstream_headers(&traceparent, request_id.as_str());
    let sent = Box::pin(state.upstream.send_buffered(
        JsonPost {
            url,
            headers: &headers,
        },
        body,
        deadline,
        timeout,
    ))
    .await;
    let upstream = sent.map_err(|e| {
        state
            .metrics
            .upstream_error(&target.model.id, e.kind.as_str());
        tracing::debug!(error = %e, model = %target.model.id, "upstream call failed");
        match e.kind {
            UpstreamErrorKind::Timeout => ApiError::new(
                ErrorCode::UpstreamTimeout,
                format!("the model did not answer within {} ms", timeout.as_millis()),
            ),
            UpstreamErrorKind::Connect => ApiError::new(
                ErrorCode::UpstreamError,
                "the model server could not be reached",
            ),
            UpstreamErrorKind::Reset => ApiError::new(
                ErrorCode::UpstreamError,
                "the model server closed the connection",
            ),
        }
    })?;
    let upstream_time = started.elapsed();
    facts.upstream = Some(upstream_time);
    state
        .metrics
        .upstream_histogram(&target.model_label)
        .observe(upstream_time.as_secs_f64());

    let status = upstream.status();
    let (parts, incoming) = upstream.into_parts();
    if !status.is_success() {
        let bytes = Box::pin(collect_limited(incoming, 64 * 1024, deadline)).await;
        let detail = match &bytes {
            Some(b) => serde_json::from_slice(b).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
            }),
            None => serde_json::Value::Null,
        };
        let kind = if status.is_client_error() {
            "status_4xx"
        } else {
            "status_5xx"
        };
        state.metrics.upstream_error(&target.model.id, kind);
        let err = ApiError::new(
            ErrorCode::UpstreamError,
            format!("the model answered {}", status.as_u16()),
        )
        .with_upstream(detail);
        return Err(if status.is_client_error() {
            err.with_status(status)
        } else {
            err
        });
    }

    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_content_type);
    let response = if is_json && target.version.response == ResponseMode::Envelope {
        // Not kept while the body is read: it would add to this future.
        drop(parts);
        let output = match tokio::time::timeout_at(
            deadline,
            http_body_util::Limited::new(incoming, state.config.max_upstream_response_bytes)
                .collect(),
        )
        .await
        {
            Err(_) => {
                state.metrics.upstream_error(&target.model.id, "timeout");
                return Err(ApiError::new(
                    ErrorCode::UpstreamTimeout,
                    format!("the model did not answer within {} ms", timeout.as_millis()),
                ));
            }
            Ok(Err(_)) => {
                state.metrics.upstream_error(&target.model.id, "reset");
                return Err(ApiError::new(
                    ErrorCode::UpstreamError,
                    "the model's answer was cut off or too large",
                ));
            }
            Ok(Ok(c)) => c.to_bytes(),
        };
        drop(permit);
        if !is_json_value(&output) {
            state.metrics.upstream_error(&target.model.id, "invalid");
            return Err(ApiError::new(
                ErrorCode::UpstreamError,
                "the model answered invalid JSON",
            ));
        }
        facts.envelope = true;
        envelope(request_id.as_str(), &target, &output)
    } else {
        // Streamed through as it arrives; the concurrency slot is held until
        // the body is finished or dropped.
        let body = incoming.map_frame(move |frame| {
            let _held = &permit;
            frame
        });
        let mut r = Response::new(Body::new(body));
        *r.status_mut() = parts.status;
        // The fields the gateway adds to the answer (`X-Request-Id`, and
        // `RateLimit-*` when the call was limited) replace the model's.
        let ours = |name: &HeaderName| {
            name == X_REQUEST_ID || (decision.is_some() && RATE_LIMIT_NAMES.contains(name))
        };
        copy_end_to_end_headers_but(&parts.headers, r.headers_mut(), ours);
        r
    };
    facts.rate = decision;
    Ok(response)
}

fn invalid_json() -> ApiError {
    ApiError::new(ErrorCode::InvalidJson, "request body is not valid JSON")
}

/// Validates the input against the version's `input_schema`; names up to five
/// violations with their JSON pointers.
pub(crate) fn check_input(
    validator: &jsonschema::Validator,
    input: &serde_json::Value,
) -> Result<(), ApiError> {
    let errors: Vec<String> = validator
        .iter_errors(input)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{}: {e}", if at.is_empty() { "/" } else { &at })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!(
                "input does not match the model's input_schema: {}",
                errors.join("; ")
            ),
        ))
    }
}

/// `application/json` or any `+json` type, with or without parameters.
pub fn is_json_content_type(ct: &str) -> bool {
    // The usual value, compared at once; anything else is parsed.
    if ct == "application/json" {
        return true;
    }
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

/// The headers of a model call's `POST` ([`JsonPost`]) beside its JSON body:
/// `traceparent` and `X-Request-Id`.
pub(crate) fn upstream_headers<'a>(
    traceparent: &'a str,
    request_id: &'a str,
) -> [(&'static HeaderName, &'a str); 2] {
    // Names made once, in statics: `from_static` outside a const context
    // checks its argument on every call.
    static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    [(&TRACEPARENT, traceparent), (&X_REQUEST_ID, request_id)]
}

/// Builds the envelope around the upstream's JSON bytes without re-encoding
/// them; everything but the request id and the output is the target's
/// precomputed `envelope_middle`. (Its `Content-Type` is added with the
/// other fields of the head: see [`RequestFacts::envelope`].)
fn envelope(request_id: &str, target: &Target, output: &Bytes) -> Response {
    let mut out = BytesMut::with_capacity(output.len() + target.envelope_middle.len() + 64);
    out.put_slice(b"{\"request_id\":\"");
    out.put_slice(request_id.as_bytes());
    out.put_slice(&target.envelope_middle);
    out.put_slice(output);
    out.put_slice(b",\"cached\":false}");
    Response::new(Body::from(out.freeze()))
}

async fn collect_limited(
    body: crate::upstream::UpstreamBody,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Option<Bytes> {
    match tokio::time::timeout_at(
        deadline,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    {
        Ok(Ok(c)) => Some(c.to_bytes()),
        _ => None,
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded by a proxy.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Copies every end-to-end header.
pub fn copy_end_to_end_headers(from: &HeaderMap, to: &mut HeaderMap) {
    copy_end_to_end_headers_but(from, to, |_| false);
}

/// Copies every end-to-end header but those `skip` names.
fn copy_end_to_end_headers_but(
    from: &HeaderMap,
    to: &mut HeaderMap,
    skip: impl Fn(&HeaderName) -> bool,
) {
    for (name, value) in from {
        if !is_hop_by_hop(name) && !skip(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Statuses the gateway itself may answer for a predict (for docs).
pub const PREDICT_ERROR_STATUSES: [StatusCode; 8] = [
    StatusCode::UNAUTHORIZED,
    StatusCode::FORBIDDEN,
    StatusCode::NOT_FOUND,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/problem+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("text/event-stream"));
        assert!(!is_json_content_type("application/jsonx"));
    }
}
