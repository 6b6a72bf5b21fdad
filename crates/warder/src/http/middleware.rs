//! Middleware of the public listener: request context, authentication and
//! the admin check.
//!
//! `request_context` is outermost: it fixes the request id (trace id),
//! renders error bodies with that id, stamps `X-Request-Id`, records metrics
//! and writes the one access-log line. `authenticate` runs on every matched
//! route except the explicit open list; `require_admin` on `/admin`.

use crate::auth::{AuthError, AuthService, Principal};
use crate::gateway::{rate_limit_fields, RequestFacts};
use crate::http::error::ApiError;
use crate::server::{write_field, Reply, WriteFields};
use crate::state::SharedState;
use crate::telemetry::access::{self, AccessRecord};
use crate::telemetry::metrics::{Label, RequestLabels};
use crate::telemetry::trace::TraceContext;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use warder_core::{ErrorCode, RateDecision, RequestIdHex};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The key that made a request, left on the response for the access log.
#[derive(Debug, Clone)]
pub struct KeyFact(pub Arc<str>);

/// Request id, error rendering, metrics and the access log.
pub async fn request_context(
    State(state): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = state.metrics.route_label(
        req.extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str())
            .unwrap_or("fallback"),
    );
    let traceparent = header_text(req.headers(), "traceparent");
    let scope = RequestScope::begin(&state, traceparent, req.method(), route);
    req.extensions_mut().insert(scope.trace);
    let response = next.run(req).await;
    let key_id = response.extensions().get::<KeyFact>().map(|k| k.0.clone());
    scope.end(&state, response, key_id, None).await
}

/// One request from its arrival to its access-log line: what the outermost
/// layer (or [`crate::http::hot`]) knows before the handler runs.
pub(crate) struct RequestScope {
    start: Instant,
    /// The request's trace position; its trace id is the request id.
    pub(crate) trace: TraceContext,
    route: Label,
    method: Method,
    in_flight: InFlight,
}

/// Holds one unit of the in-flight gauge; a request dropped mid-way (the
/// caller hung up) gives it back too.
struct InFlight(SharedState);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

impl RequestScope {
    /// Starts the clock, reads `traceparent` (the header's text, if any) and
    /// counts the request in flight.
    pub(crate) fn begin(
        state: &SharedState,
        traceparent: Option<&str>,
        method: &Method,
        route: Label,
    ) -> RequestScope {
        let trace = TraceContext::from_traceparent(traceparent);
        state.metrics.in_flight.inc();
        RequestScope {
            start: Instant::now(),
            trace,
            route,
            method: method.clone(),
            in_flight: InFlight(state.clone()),
        }
    }

    /// Renders an error body with the request id, stamps `X-Request-Id` (and
    /// on a predict's answer, its `RateLimit-*` and `Content-Type`), records
    /// the metrics and writes the access line. `facts` are the predict's,
    /// when the caller has them in hand; else they are taken from the
    /// response (where the router's predict handlers leave them).
    ///
    /// Plain functions returning futures, this and [`Self::end_plain`]: as
    /// `async fn`s, each would keep its arguments beside what they are
    /// moved into, in the future every request copies onto the heap.
    pub(crate) fn end<'a>(
        self,
        state: &'a SharedState,
        response: Response,
        key_id: Option<Arc<str>>,
        facts: Option<RequestFacts>,
    ) -> impl Future<Output = Response> + 'a {
        reshaped(response).map(move |response| {
            let (mut response, fields) = self.close(state, response, key_id, facts);
            let headers = response.headers_mut();
            if fields.json {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            }
            if let Ok(v) = HeaderValue::from_str(fields.request_id.as_str()) {
                headers.insert(X_REQUEST_ID.clone(), v);
            }
            for (name, value) in fields.rate.iter().flat_map(rate_limit_fields) {
                headers.insert(name.clone(), HeaderValue::from(value));
            }
            response
        })
    }

    /// [`Self::end`] for the fast lane: the same answer, its fields written
    /// out by the listener beside the response's headers (which do not hold
    /// them: the gateway does not pass a model's own on).
    pub(crate) fn end_plain<'a>(
        self,
        state: &'a SharedState,
        response: Response,
        key_id: Option<Arc<str>>,
        facts: RequestFacts,
    ) -> impl Future<Output = Reply<AnswerFields>> + 'a {
        reshaped(response).map(move |response| {
            let (response, fields) = self.close(state, response, key_id, Some(facts));
            Reply {
                response,
                fields: Some(fields),
            }
        })
    }

    /// What [`Self::end`] and [`Self::end_plain`] share once the response
    /// is [`reshaped`]: all but the fields of the answer's head, which it
    /// returns.
    fn close(
        self,
        state: &SharedState,
        mut response: Response,
        key_id: Option<Arc<str>>,
        facts: Option<RequestFacts>,
    ) -> (Response, AnswerFields) {
        drop(self.in_flight);
        let trace = self.trace;
        let route = self.route;
        let request_id = trace.request_id.hex();
        if let Some(err) = response.extensions_mut().remove::<ApiError>() {
            let body = err.body(Some(&trace.request_id));
            *response.body_mut() = Body::from(body.to_string());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        let elapsed = self.start.elapsed();
        let mut facts = facts.or_else(|| response.extensions_mut().remove::<RequestFacts>());
        let fields = AnswerFields {
            request_id,
            rate: facts.as_mut().and_then(|f| f.rate.take()),
            json: facts.as_ref().is_some_and(|f| f.envelope),
        };
        let facts = facts.as_ref();
        let model = facts.and_then(|f| f.model_id.clone()).unwrap_or_default();
        let version = facts
            .and_then(|f| f.version_id.as_ref())
            .map(|v| &*v.0)
            .unwrap_or("");
        let upstream = facts.and_then(|f| f.upstream);
        let status = response.status().as_u16();
        let m = &state.metrics;
        let meters = m.route_meters(&route, &model);
        if status == 200 {
            meters.ok(m).inc();
        } else {
            m.requests
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    model: model.clone(),
                    status,
                })
                .inc();
        }
        meters.duration.observe(elapsed.as_secs_f64());
        if let Some(u) = upstream {
            meters
                .overhead(m)
                .observe(elapsed.saturating_sub(u).as_secs_f64());
        }
        access::log(&AccessRecord {
            request_id: request_id.as_str(),
            method: self.method.as_str(),
            route: &route.0,
            status,
            key_id: key_id.as_deref().unwrap_or(""),
            model: &model.0,
            version,
            latency: elapsed,
            upstream,
        });
        (response, fields)
    }
}

/// The fields of an answer's head that [`RequestScope`] adds: into its
/// `HeaderMap` ([`RequestScope::end`]), or written out by the listener
/// ([`RequestScope::end_plain`]).
pub struct AnswerFields {
    request_id: RequestIdHex,
    rate: Option<RateDecision>,
    /// `Content-Type: application/json` (a predict's envelope).
    json: bool,
}

/// The `Content-Type` of warder's own JSON answers (envelopes, errors).
const JSON: &str = "application/json";

impl WriteFields for AnswerFields {
    fn write_fields(&self, out: &mut Vec<u8>) {
        if self.json {
            write_field(out, header::CONTENT_TYPE.as_str(), JSON.as_bytes());
        }
        write_field(
            out,
            X_REQUEST_ID.as_str(),
            self.request_id.as_str().as_bytes(),
        );
        for (name, value) in self.rate.iter().flat_map(rate_limit_fields) {
            write_field(
                out,
                name.as_str(),
                itoa::Buffer::new().format(value).as_bytes(),
            );
        }
    }
}

/// A refusal produced by an axum extractor (bad path or query encoding, …)
/// in the documented error shape too; any other response as it is.
async fn reshaped(response: Response) -> Response {
    if response.status().as_u16() >= 400
        && response.extensions().get::<ApiError>().is_none()
        && response.extensions().get::<Proxied>().is_none()
    {
        // Boxed, being rare: it would otherwise set the size of every
        // request's future.
        return Box::pin(reshape_rejection(response)).await;
    }
    response
}

/// Marks a response passed through from an upstream (its errors are its own).
#[derive(Debug, Clone, Copy)]
pub struct Proxied;

async fn reshape_rejection(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match parts.status.as_u16() {
        400 => ErrorCode::BadRequest,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        422 => ErrorCode::InvalidInput,
        _ => ErrorCode::Internal,
    };
    let message = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_owned()
    } else {
        text
    };
    let mut err = ApiError::new(code, message)
        .with_status(parts.status)
        .into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            err.headers_mut().insert(name.clone(), value.clone());
        }
    }
    err
}

/// A header's first value as text (`None` when it is absent or not visible
/// ASCII, as `HeaderValue::to_str` has it): how every request path reads
/// `traceparent`, `Authorization` and `Content-Type`.
pub(crate) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Authenticates the caller's key and puts its [`Principal`] in the request.
pub async fn authenticate(
    State(state): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    let authorization = header_text(req.headers(), header::AUTHORIZATION.as_str());
    let principal = match principal(&state, authorization).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let key = KeyFact(principal.key_id.clone());
    req.extensions_mut().insert(principal);
    let mut response = next.run(req).await;
    response.extensions_mut().insert(key);
    response
}

/// The principal of the `Authorization` header (its text, if any), or the
/// refusal to answer.
pub(crate) async fn principal(
    state: &SharedState,
    authorization: Option<&str>,
) -> Result<Arc<Principal>, Response> {
    let principal = match AuthService::parse_header(authorization) {
        Ok(key) => state.auth.authenticate(&key).await,
        Err(e) => Err(e),
    };
    principal.map_err(|e| match e {
        AuthError::Store(e) => ApiError::from(e).into_response(),
        e => ApiError::new(ErrorCode::Unauthenticated, e.to_string())
            .with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Api-Key"),
            )
            .into_response(),
    })
}

/// Refuses keys without the `admin` scope.
pub async fn require_admin(req: Request, next: Next) -> Response {
    let admin = req
        .extensions()
        .get::<Arc<Principal>>()
        .is_some_and(|p| p.admin);
    if !admin {
        return ApiError::new(
            ErrorCode::Forbidden,
            "this route needs a key with the 'admin' scope",
        )
        .into_response();
    }
    next.run(req).await
}
