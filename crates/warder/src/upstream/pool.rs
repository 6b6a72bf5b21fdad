//! The keep-alive pool of plain-HTTP/1 upstream connections.
//!
//! Written on `hyper::client::conn::http1` because hyper-util's general
//! client cost about a seventh of a warm predict's instructions (callgrind)
//! for work a plain `http://` model server does not need: its pool key
//! hashes the scheme and authority byte by byte with SipHash on checkout and
//! again on return, it formats a `Host` value, and it spawns a task per
//! request to wait for the connection to become idle again. Here a host's
//! pool is found by its authority string, its `Host` value is made once, and
//! a connection goes back to the pool from the response body itself, when
//! the body has been read to its end. HTTPS upstreams keep hyper-util's
//! client (TLS, ALPN, HTTP/2).
//!
//! Failure modes, handled as hyper-util's client handles them:
//! - a connection goes back to the pool only once hyper says it is ready for
//!   another request: when its answer has been read to the end *and* its
//!   request has been written out (an upstream may answer early, a 413 say,
//!   while the request body is still being sent); otherwise a task waits
//!   for that, and a new request meanwhile dials a connection of its own;
//! - a pooled connection the server closed while it was idle is noticed
//!   before use (or when hyper hands the unsent request back) and the
//!   request goes on another connection; nothing was sent, so nothing runs
//!   twice; a request the upstream received but did not answer is never
//!   sent again;
//! - a response body dropped before its end (caller gone, timeout, too
//!   large) closes its connection instead of returning it;
//! - connections idle for longer than [`IDLE_TIMEOUT`] are not reused (a
//!   middlebox may have dropped them silently), and at most
//!   [`MAX_IDLE_PER_HOST`] wait per host.
//!
//! A sync predict's or async attempt's call with a small body skips hyper
//! ([`super::exchange`]). Its connections
//! wait in a second idle list per host, under the same rules; with no task
//! of hyper's watching them, a connection is checked before reuse
//! ([`RawConn::is_open`]), and a sweep every [`SWEEP_EVERY`] closes those the
//! server closed or that aged out, so that a host no longer called keeps no
//! sockets open.

use super::exchange::{self, BoxError, Failure, RawBody, RawConn};
use super::{error_chain, JsonPost, UpstreamError, UpstreamErrorKind};
use axum::body::Body;
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceExt;

/// An idle connection older than this is closed rather than reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per host.
pub(crate) const MAX_IDLE_PER_HOST: usize = 256;
/// How often idle hand-driven connections are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Hosts by authority (`host:port` as written in the URL).
type Hosts = HashMap<Box<str>, Arc<Host>, crate::FastHash>;

/// Plain-HTTP/1 connections, pooled per host; cheap to clone.
#[derive(Clone)]
pub(crate) struct Http1Pool {
    hosts: Arc<Mutex<Hosts>>,
    connector: HttpConnector,
}

/// One upstream host (authority) and its idle connections.
pub(crate) struct Host {
    /// `Host` header for requests that bring none.
    host_header: Option<HeaderValue>,
    /// `http://authority/`, what the connector dials.
    dial: Uri,
    idle: Mutex<VecDeque<Idle<SendRequest<Body>>>>,
    /// Idle connections of the hand-driven exchange ([`exchange`]).
    raw_idle: Mutex<VecDeque<Idle<RawConn>>>,
}

struct Idle<C> {
    conn: C,
    /// When it went idle, on the coarse clock (a timeout of a minute needs
    /// no finer one).
    since: coarsetime::Instant,
}

fn idle_for<C>(entry: &Idle<C>, now: coarsetime::Instant) -> Duration {
    now.duration_since(entry.since).into()
}

/// The most recently used idle connection that `usable` accepts (given how
/// long it was idle); entries past [`IDLE_TIMEOUT`] are closed.
fn take_idle<C>(
    idle: &Mutex<VecDeque<Idle<C>>>,
    now: coarsetime::Instant,
    usable: impl Fn(&C, Duration) -> bool,
) -> Option<C> {
    let mut idle = lock(idle);
    while let Some(entry) = idle.pop_back() {
        let idle_time = idle_for(&entry, now);
        if idle_time > IDLE_TIMEOUT {
            // The rest are older still.
            idle.clear();
            return None;
        }
        if usable(&entry.conn, idle_time) {
            return Some(entry.conn);
        }
    }
    None
}

/// Pools `conn`: the oldest entries past the timeout are closed, and one
/// more when the pool is full.
fn put_idle<C>(idle: &Mutex<VecDeque<Idle<C>>>, conn: C) {
    let now = crate::ttl_cache::now();
    let mut idle = lock(idle);
    while idle
        .front()
        .is_some_and(|e| idle_for(e, now) > IDLE_TIMEOUT)
    {
        idle.pop_front();
    }
    if idle.len() >= MAX_IDLE_PER_HOST {
        idle.pop_front();
    }
    idle.push_back(Idle { conn, since: now });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are plain collections changed in single calls: a
    // panic elsewhere cannot leave them half-changed.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Http1Pool {
    /// A pool dialing through `connector` (`TCP_NODELAY`, connect timeout).
    /// Inside a tokio runtime it also starts the sweep of idle hand-driven
    /// connections, which ends when the pool is dropped.
    pub(crate) fn new(connector: HttpConnector) -> Http1Pool {
        let pool = Http1Pool {
            hosts: Arc::new(Mutex::new(HashMap::default())),
            connector,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let hosts = Arc::downgrade(&pool.hosts);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(hosts) = hosts.upgrade() else { return };
                    sweep(&hosts);
                }
            });
        }
        pool
    }

    /// Sends `request` (absolute `http://` URI) on a pooled or new connection.
    pub(crate) async fn send(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let host = self.host(request.uri())?;
        if let Some(value) = &host.host_header {
            if !request.headers().contains_key(HOST) {
                request.headers_mut().insert(HOST, value.clone());
            }
        }
        // Origin form (`/path?query`): what an origin server expects.
        let origin = request
            .uri()
            .path_and_query()
            .cloned()
            .map(Uri::from)
            .unwrap_or_else(|| Uri::from_static("/"));
        *request.uri_mut() = origin;
        loop {
            let (mut sender, reused) = match host.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect(&host).await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue; // closed while idle; nothing was sent
                }
                return Err(UpstreamError {
                    kind: UpstreamErrorKind::Reset,
                    retry_safe: true,
                    message: "the new connection closed before the request was sent".into(),
                });
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let home = Some((sender, host));
                    return Ok(response.map(|inner| UpstreamBody::pooled(inner, home)));
                }
                Err(mut e) => match e.take_message() {
                    // Handed back unsent: the connection closed under us.
                    Some(unsent) if reused => request = unsent,
                    unsent => {
                        return Err(UpstreamError {
                            kind: UpstreamErrorKind::Reset,
                            retry_safe: unsent.is_some(),
                            message: error_chain(e.error()),
                        })
                    }
                },
            }
        }
    }

    fn host(&self, uri: &Uri) -> Result<Arc<Host>, UpstreamError> {
        let Some(authority) = uri.authority() else {
            return Err(UpstreamError {
                kind: UpstreamErrorKind::Connect,
                retry_safe: false,
                message: format!("upstream URL '{uri}' has no host"),
            });
        };
        let mut hosts = lock(&self.hosts);
        if let Some(host) = hosts.get(authority.as_str()) {
            return Ok(host.clone());
        }
        let host_header = super::host_header(uri);
        let dial = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError {
                kind: UpstreamErrorKind::Connect,
                retry_safe: false,
                message: e.to_string(),
            })?;
        let host = Arc::new(Host {
            host_header,
            dial,
            idle: Mutex::new(VecDeque::new()),
            raw_idle: Mutex::new(VecDeque::new()),
        });
        hosts.insert(authority.as_str().into(), host.clone());
        Ok(host)
    }

    /// Sends `post` with `body` (at most [`exchange::MAX_BODY`] bytes)
    /// through the hand-driven exchange, on a pooled or new connection.
    /// Fails as [`Http1Pool::send`] does.
    pub(crate) async fn send_raw(
        &self,
        post: &JsonPost<'_>,
        body: &[u8],
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let host = self.host(post.url)?;
        let wire = exchange::encode(post, host.host_header.as_ref(), body);
        loop {
            let (conn, reused) = match host.checkout_raw() {
                Some(conn) => (conn, true),
                // Boxed: connecting is rare on a warm pool, and its future
                // would otherwise add to the size of this one, copied whole
                // for every call.
                None => (
                    RawConn::new(Box::pin(self.dial(&host)).await?.into_inner()),
                    false,
                ),
            };
            match exchange::send(conn, &wire, host.clone()).await {
                Ok(response) => return Ok(response.map(UpstreamBody::raw)),
                // Closed under us while idle; nothing was sent.
                Err(Failure::Unsent(_)) if reused => continue,
                Err(Failure::Unsent(e)) => {
                    return Err(UpstreamError {
                        kind: UpstreamErrorKind::Reset,
                        retry_safe: true,
                        message: format!(
                            "the new connection closed before the request was sent: {e}"
                        ),
                    })
                }
                Err(Failure::Broken(message)) => {
                    return Err(UpstreamError {
                        kind: UpstreamErrorKind::Reset,
                        retry_safe: false,
                        message,
                    })
                }
            }
        }
    }

    /// A new TCP connection to `host` (`TCP_NODELAY`, connect timeout).
    async fn dial(
        &self,
        host: &Host,
    ) -> Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>, UpstreamError> {
        self.connector
            .clone()
            .oneshot(host.dial.clone())
            .await
            .map_err(|e| UpstreamError {
                kind: UpstreamErrorKind::Connect,
                retry_safe: true,
                message: error_chain(&e),
            })
    }

    async fn connect(&self, host: &Host) -> Result<SendRequest<Body>, UpstreamError> {
        let connect_error = |message: String| UpstreamError {
            kind: UpstreamErrorKind::Connect,
            retry_safe: true,
            message,
        };
        let io = self.dial(host).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| connect_error(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Host {
    /// The most recently used idle connection still open, if any.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        self.checkout_at(crate::ttl_cache::now())
    }

    /// [`Host::checkout`] at `now` on the coarse clock.
    fn checkout_at(&self, now: coarsetime::Instant) -> Option<SendRequest<Body>> {
        take_idle(&self.idle, now, |sender, _| !sender.is_closed())
    }

    /// Takes back a connection ready for another request.
    fn put(&self, sender: SendRequest<Body>) {
        if !sender.is_closed() {
            put_idle(&self.idle, sender);
        }
    }

    /// [`Host::checkout`] for the hand-driven exchange.
    fn checkout_raw(&self) -> Option<RawConn> {
        take_idle(&self.raw_idle, crate::ttl_cache::now(), RawConn::is_open)
    }

    /// Closes the idle hand-driven connections that aged out or that the
    /// server closed.
    fn sweep_raw(&self, now: coarsetime::Instant) {
        lock(&self.raw_idle).retain(|entry| {
            let idle_time = idle_for(entry, now);
            idle_time <= IDLE_TIMEOUT && entry.conn.is_open(idle_time)
        });
    }

    /// Takes back a hand-driven connection whose answer was read to its end.
    pub(crate) fn put_raw(&self, conn: RawConn) {
        put_idle(&self.raw_idle, conn);
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    #[cfg(test)]
    fn raw_idle_count(&self) -> usize {
        lock(&self.raw_idle).len()
    }
}

/// One sweep of every host's idle hand-driven connections.
fn sweep(hosts: &Mutex<Hosts>) {
    let hosts: Vec<Arc<Host>> = lock(hosts).values().cloned().collect();
    let now = crate::ttl_cache::now();
    for host in hosts {
        host.sweep_raw(now);
    }
}

/// An upstream response body. When it came over a pooled connection, the
/// connection goes back to its pool as soon as the body has been read to
/// its end; dropped before that, the connection is closed.
pub struct UpstreamBody {
    inner: Inner,
}

enum Inner {
    /// Through hyper: HTTPS, and `http://` requests the exchange does not
    /// take.
    Hyper {
        body: Incoming,
        home: Option<(SendRequest<Body>, Arc<Host>)>,
    },
    /// Through the hand-driven exchange.
    Raw(RawBody),
}

impl UpstreamBody {
    pub(crate) fn plain(body: Incoming) -> UpstreamBody {
        UpstreamBody {
            inner: Inner::Hyper { body, home: None },
        }
    }

    fn raw(body: RawBody) -> UpstreamBody {
        UpstreamBody {
            inner: Inner::Raw(body),
        }
    }

    fn pooled(body: Incoming, home: Option<(SendRequest<Body>, Arc<Host>)>) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner: Inner::Hyper { body, home },
        };
        if body.is_end_stream() {
            body.release(); // no body at all (204, `Content-Length: 0`)
        }
        body
    }

    /// The answer has been read to its end: the connection goes back as soon
    /// as hyper is done with the request too (at once, unless the upstream
    /// answered before it had all of the request body).
    fn release(&mut self) {
        let Inner::Hyper { home, .. } = &mut self.inner else {
            return;
        };
        let Some((mut sender, host)) = home.take() else {
            return;
        };
        if sender.is_ready() {
            host.put(sender);
        } else if !sender.is_closed() {
            // Bounded: an upstream that neither reads the rest nor closes
            // loses its connection after the idle timeout.
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(IDLE_TIMEOUT, sender.ready()).await {
                    host.put(sender);
                }
            });
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Hyper { home, .. } => f
                .debug_struct("UpstreamBody")
                .field("pooled", &home.is_some())
                .finish_non_exhaustive(),
            Inner::Raw(raw) => raw.fmt(f),
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (body, home) = match &mut self.inner {
            Inner::Raw(raw) => return Pin::new(raw).poll_frame(cx),
            Inner::Hyper { body, home } => (body, home),
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if body.is_end_stream() => self.release(),
            // A broken body leaves a connection nobody should reuse.
            Poll::Ready(Some(Err(_))) => *home = None,
            _ => {}
        }
        polled.map(|frame| frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Raw(raw) => raw.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Raw(raw) => raw.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
