//! The public listener's service: the sync predict and async submit routes
//! first, then the axum router for everything else.
//!
//! Why by hand: on the predict path, axum's router cost about a sixth of
//! warder's CPU per request (`bench/`, perf): owned path parameters, request
//! extensions, and for each layer a boxed clone of the inner service and a
//! boxed future. Here the six predict routes and the three async submit
//! routes are matched with `matchit` (the matcher axum itself uses) and run
//! the very functions the layered router runs — [`RequestScope`],
//! [`principal`], [`predict::call`], [`async_predict::submit`] — so both
//! paths answer alike. (Through the router, an async submit cost about
//! 14 000 more instructions, an eighth of warder's work per job on
//! PostgreSQL: callgrind, `bench/`.) A request this does not take (another
//! method, a percent-encoded path, any other route) goes to the router,
//! which declares the same routes for those cases, for `405` and for
//! OpenAPI.

use crate::catalog::Selector;
use crate::gateway::{is_json_content_type, Input, RequestFacts};
use crate::http::async_predict::{self, SubmitRoute};
use crate::http::middleware::{header_text as text, principal, AnswerFields, RequestScope};
use crate::http::predict::{self, PredictRoute};
use crate::http1_fields::visible_ascii;
use crate::server::{FastLane, PlainRequest, Reply};
use crate::state::SharedState;
use crate::telemetry::metrics::Label;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::Router;
use futures::future::{BoxFuture, Either};
use http::{header, Method};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// A route the fast path takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HotRoute {
    Predict(PredictRoute),
    Submit(SubmitRoute),
}

impl HotRoute {
    fn path(self) -> &'static str {
        match self {
            HotRoute::Predict(r) => r.path(),
            HotRoute::Submit(r) => r.path(),
        }
    }
}

/// A fast-path route with its `route` label resolved once.
struct Hot {
    route: HotRoute,
    label: Label,
}

/// The predict and async submit routes, matched as the router would.
struct HotRoutes(matchit::Router<Hot>);

impl HotRoutes {
    fn new(label: impl Fn(&str) -> Label) -> HotRoutes {
        let mut hot = matchit::Router::new();
        let routes = PredictRoute::ALL
            .into_iter()
            .map(HotRoute::Predict)
            .chain(SubmitRoute::ALL.into_iter().map(HotRoute::Submit));
        for route in routes {
            // The patterns are constants, distinct and well formed.
            let inserted = hot.insert(
                route.path(),
                Hot {
                    route,
                    label: label(route.path()),
                },
            );
            debug_assert!(inserted.is_ok(), "{}: {inserted:?}", route.path());
        }
        HotRoutes(hot)
    }

    /// The predict or submit route of a request, when the fast path takes it.
    fn take(&self, method: &Method, path: &str) -> Option<(&Hot, Selector)> {
        if method != Method::POST {
            return None;
        }
        // Percent-encoded segments are decoded (and refused when invalid) by
        // the router's extractor.
        if path.contains('%') {
            return None;
        }
        let found = self.0.at(path).ok()?;
        let param = |name: &str| found.params.get(name);
        let selector = match found.value.route {
            HotRoute::Predict(r) => r.selector(param),
            HotRoute::Submit(r) => r.selector(param),
        };
        Some((found.value, selector))
    }
}

/// The public listener's service (see the module docs).
#[derive(Clone)]
pub struct PublicService {
    state: SharedState,
    hot: Arc<HotRoutes>,
    router: Router,
    /// The connection's peer, given to the router's requests as
    /// [`ConnectInfo`] (the fallback forwards it).
    peer: Option<SocketAddr>,
}

impl PublicService {
    /// The predict and submit fast path in front of `router` (the full
    /// public router).
    pub fn new(state: SharedState, router: Router) -> PublicService {
        let hot = HotRoutes::new(|path| state.metrics.route_label(path));
        PublicService {
            state,
            hot: Arc::new(hot),
            router,
            peer: None,
        }
    }

    /// This service for one connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> PublicService {
        PublicService {
            peer: Some(peer),
            ..self.clone()
        }
    }
}

impl Service<Request> for PublicService {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        BoxFuture<'static, Result<Response, Infallible>>,
        <Router as Service<Request>>::Future,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some((hot, selector)) = self.hot.take(req.method(), req.uri().path()) else {
            let mut req = req;
            if let Some(peer) = self.peer {
                req.extensions_mut().insert(ConnectInfo(peer));
            }
            return Either::Right(self.router.call(req));
        };
        let state = self.state.clone();
        let route = hot.route;
        let label = hot.label.clone();
        Either::Left(Box::pin(async move {
            let headers = req.headers();
            let traceparent = text(headers, "traceparent");
            let scope = RequestScope::begin(&state, traceparent, req.method(), label);
            let authorization = text(headers, header::AUTHORIZATION.as_str());
            let (response, key_id, facts) = match principal(&state, authorization).await {
                Err(refusal) => (refusal, None, None),
                Ok(p) => {
                    let key_id = p.key_id.clone();
                    let trace = scope.trace;
                    match route {
                        HotRoute::Predict(route) => {
                            let (response, facts) =
                                predict::call(&state, p, trace, route, selector, req).await;
                            (response, Some(key_id), Some(facts))
                        }
                        HotRoute::Submit(_) => {
                            // Its facts ride on the response, as through the router.
                            let (parts, body) = req.into_parts();
                            // Boxed: it is larger than a predict, and
                            // this block, sized for its largest branch, is
                            // copied onto the heap for every request.
                            let response = Box::pin(async_predict::submit(
                                state.clone(),
                                p,
                                trace,
                                selector,
                                parts.headers,
                                body,
                            ))
                            .await;
                            (response, Some(key_id), None)
                        }
                    }
                }
            };
            Ok(scope.end(&state, response, key_id, facts).await)
        }))
    }
}

impl FastLane for PublicService {
    /// A sync predict, from the bytes read: what [`Service::call`] does for
    /// it, without building the request. Async submits (which read more of
    /// the headers) and every other request go through `call`.
    type Fields = AnswerFields;

    fn call_plain(
        &self,
        request: &PlainRequest<'_>,
    ) -> Option<BoxFuture<'static, Reply<AnswerFields>>> {
        let target = request.target();
        // Only targets made of bytes `http::Uri` takes as they are; anything
        // else goes through `call`, which refuses or decodes it as before.
        if !target.iter().all(|&b| plain_target_byte(b)) {
            return None;
        }
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let path = std::str::from_utf8(path).ok()?;
        let (hot, selector) = self.hot.take(request.method(), path)?;
        let HotRoute::Predict(route) = hot.route else {
            return None;
        };
        let state = self.state.clone();
        let label = hot.label.clone();
        let traceparent = request.header("traceparent");
        let authorization = request.header("authorization");
        let json = request
            .header("content-type")
            .as_deref()
            .and_then(visible_ascii)
            .is_some_and(is_json_content_type);
        let body = request.body();
        Some(Box::pin(async move {
            // `take` takes only `POST`.
            let traceparent = traceparent.as_deref().and_then(visible_ascii);
            let scope = RequestScope::begin(&state, traceparent, &Method::POST, label);
            let authorization = authorization.as_deref().and_then(visible_ascii);
            let (response, key_id, facts) = match principal(&state, authorization).await {
                Err(refusal) => (refusal, None, RequestFacts::default()),
                Ok(p) => {
                    let key_id = p.key_id.clone();
                    let input = Input::Read(body);
                    let (response, facts) =
                        predict::run(&state, p, scope.trace, route, selector, json, input).await;
                    (response, Some(key_id), facts)
                }
            };
            scope.end_plain(&state, response, key_id, facts).await
        }))
    }
}

/// The bytes of a request target in origin form that `http::Uri` keeps as
/// they are: RFC 3986's unreserved and sub-delims, `:`, `@`, `/` and `?`
/// (no `%`: the router decodes percent-encoded paths).
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(method: Method, path: &str) -> Option<(HotRoute, Selector)> {
        let routes = HotRoutes::new(Label::new);
        routes
            .take(&method, path)
            .map(|(hot, selector)| (hot.route, selector))
    }

    #[test]
    fn the_predict_and_submit_routes_are_taken_with_their_selectors() {
        let env = |model: &str, env: &str| Selector::Environment {
            model: model.to_owned(),
            env: env.to_owned(),
        };
        let version = |v: &str| Selector::Version {
            version: v.to_owned(),
        };
        let cases = [
            (
                "/models/m1/predict",
                HotRoute::Predict(PredictRoute::Model),
                env("m1", "production"),
            ),
            (
                "/models/m1/environments/staging/predict",
                HotRoute::Predict(PredictRoute::Environment),
                env("m1", "staging"),
            ),
            (
                "/model_versions/v1/predict",
                HotRoute::Predict(PredictRoute::Version),
                version("v1"),
            ),
            (
                "/models/m1/predict_internal",
                HotRoute::Predict(PredictRoute::ModelInternal),
                env("m1", "production"),
            ),
            (
                "/model_versions/v1/predict_internal",
                HotRoute::Predict(PredictRoute::VersionInternal),
                version("v1"),
            ),
            (
                "/model/m1/v1/predict_internal",
                HotRoute::Predict(PredictRoute::ModelVersionInternal),
                Selector::ModelVersion {
                    model: "m1".to_owned(),
                    version: "v1".to_owned(),
                },
            ),
            (
                "/models/m1/async_predict",
                HotRoute::Submit(SubmitRoute::Model),
                env("m1", "production"),
            ),
            (
                "/models/m1/environments/staging/async_predict",
                HotRoute::Submit(SubmitRoute::Environment),
                env("m1", "staging"),
            ),
            (
                "/model_versions/v1/async_predict",
                HotRoute::Submit(SubmitRoute::Version),
                version("v1"),
            ),
        ];
        for (path, route, selector) in cases {
            assert_eq!(taken(Method::POST, path), Some((route, selector)), "{path}");
        }
    }

    #[test]
    fn everything_else_goes_to_the_router() {
        for (method, path) in [
            (Method::GET, "/models/m1/predict"),
            (Method::HEAD, "/models/m1/predict"),
            (Method::POST, "/models/m%31/predict"),
            (Method::POST, "/models/m1/predict/"),
            (Method::POST, "/models/m1/predict/extra"),
            (Method::GET, "/models/m1/async_predict"),
            (Method::POST, "/models/m1/async_predict/"),
            (Method::POST, "/models/m1/async_queue_status"),
            (Method::POST, "/async_request/r1"),
            (Method::POST, "/admin/models"),
        ] {
            assert!(taken(method.clone(), path).is_none(), "{method} {path}");
        }
    }
}
