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

use crate::http::middleware::{principal, RequestScope};
use crate::http::predict::{self, PredictRoute};
use crate::state::SharedState;
use crate::telemetry::metrics::Label;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use futures::future::{BoxFuture, Either};
use http::Method;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// A predict route with its `route` label resolved once.
struct Hot {
    route: PredictRoute,
    label: Label,
}

/// The public listener's service (see the module docs).
#[derive(Clone)]
pub struct PublicService {
    state: SharedState,
    hot: Arc<matchit::Router<Hot>>,
    router: Router,
}

impl PublicService {
    /// The predict fast path in front of `router` (the full public router).
    pub fn new(state: SharedState, router: Router) -> PublicService {
        let mut hot = matchit::Router::new();
        for route in PredictRoute::ALL {
            let label = state.metrics.route_label(route.path());
            // The patterns are constants, distinct and well formed.
            let inserted = hot.insert(route.path(), Hot { route, label });
            debug_assert!(inserted.is_ok(), "{}: {inserted:?}", route.path());
        }
        PublicService {
            state,
            hot: Arc::new(hot),
            router,
        }
    }

    /// The predict route `req` is for, when this service takes it.
    fn take(&self, req: &Request) -> Option<(&Hot, crate::catalog::Selector)> {
        if req.method() != Method::POST {
            return None;
        }
        let path = req.uri().path();
        // Percent-encoded segments are decoded (and refused when invalid) by
        // the router's extractor.
        if path.contains('%') {
            return None;
        }
        let found = self.hot.at(path).ok()?;
        let selector = found.value.route.selector(|name| found.params.get(name));
        Some((found.value, selector))
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
        let Some((hot, selector)) = self.take(&req) else {
            return Either::Right(self.router.call(req));
        };
        let state = self.state.clone();
        let route = hot.route;
        let label = hot.label.clone();
        Either::Left(Box::pin(async move {
            let scope = RequestScope::begin(&state, req.headers(), req.method(), label);
            let (response, key_id) = match principal(&state, req.headers()).await {
                Err(refusal) => (refusal, None),
                Ok(p) => {
                    let key_id = p.key_id.clone();
                    let trace = scope.trace;
                    let response = predict::call(&state, p, trace, route, selector, req).await;
                    (response, Some(key_id))
                }
            };
            Ok(scope.end(&state, response, key_id).await)
        }))
    }
}
