//! The accept loop of a listener: HTTP/1.1 and HTTP/2, `TCP_NODELAY`, a
//! header read timeout and graceful draining.
//!
//! Written on hyper-util directly because `axum::serve` exposes neither a
//! header read timeout nor per-connection socket options. What it serves is
//! a tower service: an axum router, or on the public listener
//! [`crate::http::hot::PublicService`] (the predict fast path, then the
//! router).

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::Service;

/// How a listener serves connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time allowed to receive a request's headers.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown is signalled.
    pub drain_timeout: Duration,
}

/// Serves `service_for(peer)` on each connection `listener` accepts (an axum
/// router with the peer as [`ConnectInfo`], see [`with_connect_info`], or the
/// public listener's [`crate::http::hot::PublicService`]) until `shutdown`
/// resolves, then stops accepting and lets in-flight requests finish (up to
/// the drain timeout). The service learns its peer once per connection, so a
/// request that never asks for it (a predict) costs no extension map.
pub async fn serve<M, S>(
    name: &'static str,
    listener: TcpListener,
    service_for: M,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let inner = service_for(peer);
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                inner.clone().call(req.map(Body::new))
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        "stopped accepting; draining in-flight requests"
    );
    match tokio::time::timeout(options.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!(listener = name, "drained"),
        Err(_) => tracing::warn!(
            listener = name,
            "drain timed out; closing remaining connections"
        ),
    }
}

/// `router` for [`serve`], with each request's peer as [`ConnectInfo`].
pub fn with_connect_info(
    router: axum::Router,
) -> impl Fn(SocketAddr) -> axum::middleware::AddExtension<axum::Router, ConnectInfo<SocketAddr>> {
    move |peer| tower::Layer::layer(&axum::Extension(ConnectInfo(peer)), router.clone())
}

/// The bound address of a listener, for logs and tests.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
