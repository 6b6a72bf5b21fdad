//! The pooled HTTP client every call to a model server or fallback goes through.
//!
//! Keep-alive pools per host, `TCP_NODELAY` on every connection, HTTP and
//! HTTPS: plain `http://` upstreams go through warder's own HTTP/1 pool
//! ([`pool`]), HTTPS ones through hyper-util's client (TLS, HTTP/2). An
//! error says where it came from and whether a retry is safe: only a failure
//! that sent no byte of the request (could not connect, or a new connection
//! closed before the request went out) is retried, once, and only when the
//! caller can replay the body.

mod exchange;
mod pool;

pub use pool::UpstreamBody;

use http::header::{HeaderName, HeaderValue};
use http::Uri;

/// The `Host` value for a request to `uri`: its host, and its port unless
/// it is the scheme's default; never the userinfo.
pub fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match uri.port_u16() {
        Some(port) if port != default => HeaderValue::from_str(&format!("{host}:{port}")).ok(),
        _ => HeaderValue::from_str(host).ok(),
    }
}

use axum::body::Body;
use bytes::Bytes;
use http::uri::Scheme;
use http::{Method, Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// What went wrong with an upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Could not connect (refused, unreachable): nothing was sent.
    Connect,
    /// No answer within the timeout.
    Timeout,
    /// The connection broke or the answer was not valid HTTP.
    Reset,
}

impl UpstreamErrorKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
        }
    }
}

/// A failed upstream call.
#[derive(Debug, thiserror::Error)]
#[error("upstream {kind:?}: {message}")]
pub struct UpstreamError {
    /// What happened.
    pub kind: UpstreamErrorKind,
    /// Whether the request can be sent again without risk of doing it twice.
    pub retry_safe: bool,
    /// Detail for logs.
    pub message: String,
}

/// The shared upstream client; cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    /// `http://` upstreams.
    plain: pool::Http1Pool,
    /// Everything else (`https://`).
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        UpstreamClient::new()
    }
}

impl UpstreamClient {
    /// A client with keep-alive pools and `TCP_NODELAY`.
    pub fn new() -> UpstreamClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let plain = pool::Http1Pool::new(http.clone());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool::IDLE_TIMEOUT)
            .pool_max_idle_per_host(pool::MAX_IDLE_PER_HOST)
            .build(https);
        UpstreamClient { plain, client }
    }

    async fn dispatch(
        &self,
        request: Request<Body>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if request.uri().scheme() == Some(&Scheme::HTTP) {
            return self.plain.send(request).await;
        }
        match self.client.request(request).await {
            Ok(r) => Ok(r.map(UpstreamBody::plain)),
            Err(e) => Err(classify(&e)),
        }
    }

    /// Sends a request whose body cannot be replayed (streaming).
    pub async fn send(
        &self,
        request: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.send_until(request, tokio::time::Instant::now() + timeout, timeout)
            .await
    }

    /// [`Self::send`] with the deadline in hand; `timeout` is what the error
    /// says was allowed.
    async fn send_until(
        &self,
        request: Request<Body>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        within(deadline, timeout, self.dispatch(request)).await
    }

    /// Sends a JSON `POST` with a buffered body that must answer by
    /// `deadline` (`timeout` after the call began), retrying once when the
    /// first attempt could not connect.
    ///
    /// At most [`exchange::MAX_BODY`] bytes to an `http://` upstream go
    /// through the hand-driven exchange ([`exchange`]), which writes the
    /// request straight from `post`; anything else through hyper.
    pub async fn send_buffered(
        &self,
        post: JsonPost<'_>,
        body: Bytes,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let raw = post.url.scheme() == Some(&Scheme::HTTP) && body.len() <= exchange::MAX_BODY;
        let mut retried = false;
        loop {
            let sent = if raw {
                within(deadline, timeout, self.plain.send_raw(&post, &body)).await
            } else {
                // Boxed: hyper's client future is several times the size
                // of the exchange's, and would otherwise set the size of
                // this future, which is copied whole onto the heap for
                // every call (it was 3.2 KiB).
                Box::pin(self.send_until(post.request(body.clone()), deadline, timeout)).await
            };
            match sent {
                Err(e) if e.retry_safe && !retried => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                    retried = true;
                }
                other => return other,
            }
        }
    }
}

/// A JSON `POST` to a model: where it goes, and its headers besides
/// `Content-Type: application/json` (and `Host`, `Content-Length`).
#[derive(Debug, Clone, Copy)]
pub struct JsonPost<'a> {
    /// The absolute URL.
    pub url: &'a Uri,
    /// Names and values; a value that cannot stand in a header (a control
    /// character) is left out.
    pub headers: &'a [(&'a HeaderName, &'a str)],
}

impl JsonPost<'_> {
    /// The request for hyper's client.
    pub fn request(&self, body: Bytes) -> Request<Body> {
        let mut request = Request::new(Body::from(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        let h = request.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            if sendable(name, value) {
                if let Ok(v) = HeaderValue::from_str(value) {
                    h.append((*name).clone(), v);
                }
            }
        }
        request
    }
}

/// Whether a [`JsonPost`] header goes out: its value can stand in a header
/// (what `HeaderValue::from_str` accepts: no control character but tab),
/// and it is none of those the client writes itself (`Host`,
/// `Content-Type` and the framing).
fn sendable(name: &HeaderName, value: &str) -> bool {
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        && ![CONTENT_LENGTH, TRANSFER_ENCODING, HOST, CONTENT_TYPE].contains(name)
}

/// `call`, failing with a timeout at `deadline`; `timeout` is what the error
/// says was allowed.
///
/// A plain function, not an `async fn`: an `async fn` keeps `call` beside
/// the `Timeout` it is moved into, and this future is part of the one
/// copied onto the heap for every model call.
fn within<T>(
    deadline: tokio::time::Instant,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> impl std::future::Future<Output = Result<T, UpstreamError>> {
    use futures::FutureExt;
    tokio::time::timeout_at(deadline, call).map(move |result| match result {
        Err(_) => Err(UpstreamError {
            kind: UpstreamErrorKind::Timeout,
            retry_safe: false,
            message: format!("no answer within {} ms", timeout.as_millis()),
        }),
        Ok(result) => result,
    })
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let message = error_chain(e);
    if e.is_connect() {
        UpstreamError {
            kind: UpstreamErrorKind::Connect,
            retry_safe: true,
            message,
        }
    } else {
        UpstreamError {
            kind: UpstreamErrorKind::Reset,
            retry_safe: false,
            message,
        }
    }
}

/// An error and its sources, `: `-separated, for logs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_drop_default_ports_and_userinfo() {
        let host = |u: &str| host_header(&u.parse().expect("uri")).expect("host");
        assert_eq!(host("http://m:80/x"), "m");
        assert_eq!(host("http://m:8080/x"), "m:8080");
        assert_eq!(host("https://m:443/"), "m");
        assert_eq!(host("https://m:80/"), "m:80");
        assert_eq!(host("http://user:pw@m:9000/"), "m:9000");
        assert_eq!(host("http://[::1]:9000/"), "[::1]:9000");
    }
}
