//! The public listener's service: the sync predict routes first, then the
//! axum router for everything else.
//!
//! Why by hand: on the predict path, axum's router cost about a sixth of
//! warder's CPU per request (`bench/`, perf): owned path parameters, request
//! extensions, and for each layer a boxed clone of the inner service and a
//! boxed future. Here the six predict routes are matched with `matchit`
//! (the matcher axum itself uses) and run the very functions the layered
//! router runs — [`RequestScope`], [`principal`], [`predict::call`] — so
//! both paths answer alike. A request this does not take (another method, a
//! percent-encoded path, any other route) goes to the router, which declares
//! the same predict routes for those cases, for `405` and for OpenAPI.

use crate::catalog::Selector;
use crate::http::middleware::{principal, RequestScope};
use crate::http::predict::{self, PredictRoute};
use crate::state::SharedState;
use crate::telemetry::metrics::Label;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::Router;
use futures::future::{BoxFuture, Either};
use http::Method;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// A predict route with its `route` label resolved once.
struct Hot {
    route: PredictRoute,
    label: Label,
}

/// The six predict routes, matched as the router would.
struct HotRoutes(matchit::Router<Hot>);

impl HotRoutes {
    fn new(label: impl Fn(&str) -> Label) -> HotRoutes {
        let mut hot = matchit::Router::new();
        for route in PredictRoute::ALL {
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

    /// The predict route of a request, when the fast path takes it.
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
        let selector = found.value.route.selector(|name| found.params.get(name));
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
    /// The predict fast path in front of `router` (the full public router).
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
            let scope = RequestScope::begin(&state, req.headers(), req.method(), label);
            let (response, key_id, facts) = match principal(&state, req.headers()).await {
                Err(refusal) => (refusal, None, None),
                Ok(p) => {
                    let key_id = p.key_id.clone();
                    let trace = scope.trace;
                    let (response, facts) =
                        predict::call(&state, p, trace, route, selector, req).await;
                    (response, Some(key_id), Some(facts))
                }
            };
            Ok(scope.end(&state, response, key_id, facts).await)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(method: Method, path: &str) -> Option<(PredictRoute, Selector)> {
        let routes = HotRoutes::new(Label::new);
        routes
            .take(&method, path)
            .map(|(hot, selector)| (hot.route, selector))
    }

    #[test]
    fn the_six_predict_routes_are_taken_with_their_selectors() {
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
                PredictRoute::Model,
                env("m1", "production"),
            ),
            (
                "/models/m1/environments/staging/predict",
                PredictRoute::Environment,
                env("m1", "staging"),
            ),
            (
                "/model_versions/v1/predict",
                PredictRoute::Version,
                version("v1"),
            ),
            (
                "/models/m1/predict_internal",
                PredictRoute::ModelInternal,
                env("m1", "production"),
            ),
            (
                "/model_versions/v1/predict_internal",
                PredictRoute::VersionInternal,
                version("v1"),
            ),
            (
                "/model/m1/v1/predict_internal",
                PredictRoute::ModelVersionInternal,
                Selector::ModelVersion {
                    model: "m1".to_owned(),
                    version: "v1".to_owned(),
                },
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
            (Method::POST, "/models/m1/async_predict"),
            (Method::POST, "/admin/models"),
        ] {
            assert!(taken(method.clone(), path).is_none(), "{method} {path}");
        }
    }
}
