//! The accept loop of a listener: HTTP/1.1 and HTTP/2, `TCP_NODELAY`, a
//! header read timeout and graceful draining.
//!
//! Each connection starts in [`h1`], which serves plain HTTP/1.1 requests by
//! hand; the first request it does not take, and the rest of the
//! connection, go to hyper's HTTP/1 server (HTTP/2's preface to hyper-util's
//! version detection). The loop is written on hyper and hyper-util directly
//! because `axum::serve` exposes neither a header read timeout nor
//! per-connection socket options. What both serve is a tower
//! service: an axum router, or on the public listener
//! [`crate::http::hot::PublicService`] (the predict fast path, then the
//! router).

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use futures::future::BoxFuture;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::Service;

mod h1;
mod prefixed;

pub use h1::PlainRequest;

/// What a listener's service may do with a plain HTTP/1.1 request before it
/// becomes an `http::Request`: answer it from the bytes read, without the
/// `HeaderMap` and `Uri` that building one costs (on the predict path, a
/// tenth of warder's work per request: callgrind, `bench/`). `None` (the
/// default) sends the request the usual way, through `Service::call`.
pub trait FastLane {
    /// Header fields its answers carry beside their response's headers,
    /// written out by the listener.
    type Fields: WriteFields + Send + 'static;

    fn call_plain(
        &self,
        _request: &PlainRequest<'_>,
    ) -> Option<BoxFuture<'static, Reply<Self::Fields>>> {
        None
    }
}

/// A fast-lane answer: the response, and fields to write after its
/// headers. The fields every answer of a route has (its request id, its
/// rate limit) cost no `HeaderMap` entry and no `HeaderValue` allocated for
/// them this way: on the predict path, about 2 000 instructions per request
/// (callgrind).
pub struct Reply<F> {
    pub response: Response,
    pub fields: Option<F>,
}

/// Header fields that write themselves out.
pub trait WriteFields {
    /// Appends each field to `out` with [`write_field`].
    fn write_fields(&self, out: &mut Vec<u8>);
}

impl WriteFields for () {
    fn write_fields(&self, _out: &mut Vec<u8>) {}
}

/// Appends one header field to a head being written. `name` is a lowercase
/// token and `value` visible ASCII: the caller's to ensure, as
/// `HeaderName::from_static` and `HeaderValue::from_static` would check (in
/// debug builds, checked here).
pub fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    debug_assert!(
        http::HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| n.as_str() == name),
        "{name}"
    );
    debug_assert!(value.iter().all(|&b| (0x20..0x7f).contains(&b)));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The ops listener's router has no fast lane.
impl<S> FastLane for axum::middleware::AddExtension<S, ConnectInfo<SocketAddr>> {
    type Fields = ();
}

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
    S: Service<Request, Response = Response, Error = Infallible>
        + FastLane
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    // For the connections `h1` hands over: HTTP/1.1 straight to hyper's
    // HTTP/1 server (which counts a new connection busy until its first
    // request is answered, so a drain lets that request finish), and
    // HTTP/2's preface to hyper-util's detection.
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let builders = Arc::new((http1, auto::Builder::new(TokioExecutor::new())));
    let drain = Drain::default();
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
        let mut watch = drain.watch();
        let builders = builders.clone();
        tokio::spawn(async move {
            let io = match h1::serve(stream, &inner, &mut watch, options.header_read_timeout).await
            {
                h1::Ended::Closed => return,
                h1::Ended::HandOver(io) => io,
            };
            let http2 = io.may_be_http2();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    inner.clone().call(req.map(Body::new))
                });
            let (http1, auto) = &*builders;
            let served = if http2 {
                watch
                    .serve(auto.serve_connection(TokioIo::new(io), service))
                    .await
            } else {
                watch
                    .serve(http1.serve_connection(TokioIo::new(io), service))
                    .await
                    .map_err(Into::into)
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        "stopped accepting; draining in-flight requests"
    );
    match tokio::time::timeout(options.drain_timeout, drain.shutdown()).await {
        Ok(()) => tracing::info!(listener = name, "drained"),
        Err(_) => tracing::warn!(
            listener = name,
            "drain timed out; closing remaining connections"
        ),
    }
}

/// The graceful shutdown of a listener's connections.
///
/// Why by hand: hyper-util's `GracefulShutdown` polls a `watch` receiver's
/// `changed()` on every poll of every connection, which locks its waiter
/// list each time: ~500 instructions per predict (callgrind), nearly 1 %.
/// Here a connection reads one flag per poll and hands its task's waker over
/// once; shutting down sets the flag and wakes them all.
#[derive(Default)]
struct Drain {
    shared: Arc<DrainShared>,
}

#[derive(Default)]
struct DrainShared {
    draining: AtomicBool,
    next_id: AtomicU64,
    /// The wakers of the live connections' tasks, by connection.
    live: Mutex<HashMap<u64, Option<Waker>>>,
    /// Told when a connection ends.
    ended: Notify,
}

/// One connection's part in a [`Drain`]; counted live until dropped.
struct Watch {
    shared: Arc<DrainShared>,
    id: u64,
    /// Its task's waker is in `live`.
    registered: bool,
}

impl DrainShared {
    fn live(&self) -> MutexGuard<'_, HashMap<u64, Option<Waker>>> {
        // Only wakers are kept: a panic elsewhere cannot leave them torn.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drain {
    /// Counts a new connection in.
    fn watch(&self) -> Watch {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.live().insert(id, None);
        Watch {
            shared: self.shared.clone(),
            id,
            registered: false,
        }
    }

    /// Asks every connection to finish its request in flight and close, and
    /// waits until all have.
    async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Release);
        for waker in self.shared.live().values().flatten() {
            waker.wake_by_ref();
        }
        loop {
            let mut ended = pin!(self.shared.ended.notified());
            ended.as_mut().enable();
            if self.shared.live().is_empty() {
                return;
            }
            ended.await;
        }
    }
}

impl Watch {
    /// Whether the drain has begun; the first call leaves the task's waker
    /// to be woken when it begins.
    fn draining(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.registered {
            // Left before the flag is read: a drain that begins meanwhile
            // either finds this waker or is seen by the read (a task's
            // wakers all wake the same task, and a connection keeps to one).
            self.shared.live().insert(self.id, Some(cx.waker().clone()));
            self.registered = true;
        }
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Runs `conn` to its end, shutting it down gracefully once the drain
    /// begins. `conn` is polled before it is told: a connection handed over
    /// by `h1` has its first request's bytes at hand, and hyper closes a
    /// connection told before it read anything without answering.
    async fn serve<C: GracefulConnection>(mut self, conn: C) -> C::Output {
        let mut conn = pin!(conn);
        let mut told = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            if !told && self.draining(cx) {
                told = true;
                conn.as_mut().graceful_shutdown();
                return conn.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.live().remove(&self.id);
        self.shared.ended.notify_waiters();
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
