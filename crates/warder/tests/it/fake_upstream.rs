//! The fake model server of the sync tests: echo, header inspection, chosen
//! statuses, slow answers, a paced SSE stream, binary bodies and invalid
//! JSON, on a loopback port; it records what it saw.

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the fake model server saw.
#[derive(Default)]
pub struct UpstreamLog {
    pub calls: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// When each `/sse` event was handed to the connection.
    pub sse_sent: Mutex<Vec<Instant>>,
}

/// A fake model server on a loopback port.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub log: Arc<UpstreamLog>,
}

impl FakeUpstream {
    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// The bytes the `/binary` route answers.
pub fn binary_payload() -> Vec<u8> {
    (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Starts the fake model server.
pub async fn fake_upstream() -> FakeUpstream {
    let log = Arc::new(UpstreamLog::default());
    let l = log.clone();
    let track = move |headers: &HeaderMap| {
        l.calls.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut h) = l.last_headers.lock() {
            *h = Some(headers.clone());
        }
    };
    let t1 = track.clone();
    let t2 = track.clone();
    let t3 = track.clone();
    let slow_log = log.clone();
    let sse_log = log.clone();
    let app = Router::new()
        .route(
            "/echo",
            post(move |headers: HeaderMap, Json(v): Json<Value>| async move {
                t1(&headers);
                Json(v)
            }),
        )
        .route(
            "/inspect",
            post(move |headers: HeaderMap, body: String| async move {
                t2(&headers);
                let h: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                    .collect();
                Json(json!({ "headers": h, "body": body }))
            }),
        )
        .route(
            "/status/{code}",
            post(
                move |headers: HeaderMap, Path(code): Path<u16>| async move {
                    t3(&headers);
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
                    (
                        status,
                        Json(json!({ "detail": format!("upstream says {code}") })),
                    )
                },
            ),
        )
        .route(
            "/text_status/{code}",
            post(|Path(code): Path<u16>| async move {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
                (status, "plain failure")
            }),
        )
        .route(
            "/sleep/{ms}",
            post(move |Path(ms): Path<u64>| {
                let log = slow_log.clone();
                async move {
                    log.calls.fetch_add(1, Ordering::SeqCst);
                    let now = log.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    log.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    log.in_flight.fetch_sub(1, Ordering::SeqCst);
                    Json(json!({ "slept_ms": ms }))
                }
            }),
        )
        .route("/sse", post(move || sse(sse_log.clone())))
        .route(
            "/binary",
            post(|| async {
                (
                    [("content-type", "application/octet-stream")],
                    binary_payload(),
                )
            }),
        )
        .route(
            "/invalid_utf8",
            post(|| async {
                (
                    [("content-type", "application/json")],
                    b"{\"text\":\"\xff\"}".to_vec(),
                )
            }),
        )
        .route(
            // An answer with fields of the names the gateway writes itself.
            "/own_fields",
            post(|| async {
                (
                    [
                        ("content-type", "application/json"),
                        ("x-request-id", "the-model-s-own"),
                        ("ratelimit-limit", "99"),
                        ("x-model", "kept"),
                    ],
                    "{}",
                )
            }),
        )
        .route(
            "/invalid_json",
            post(|| async { ([("content-type", "application/json")], "{not json") }),
        )
        .route("/fallback/{*rest}", any(fallback_echo))
        .route("/fallback", any(fallback_echo));
    let addr = serve_on_loopback(app).await;
    FakeUpstream { addr, log }
}

/// Events `/sse` sends, [`SSE_PAUSE`] apart.
pub const SSE_EVENTS: usize = 4;
/// The pause between two `/sse` events.
pub const SSE_PAUSE: Duration = Duration::from_millis(400);

/// The text of `/sse` event `i`.
pub fn sse_event(i: usize) -> String {
    format!("data: event {i}\n\n")
}

async fn sse(log: Arc<UpstreamLog>) -> Response {
    let stream = futures::stream::iter(0..SSE_EVENTS).then(move |i| {
        let log = log.clone();
        async move {
            if i > 0 {
                tokio::time::sleep(SSE_PAUSE).await;
            }
            if let Ok(mut sent) = log.sse_sent.lock() {
                sent.push(Instant::now());
            }
            Ok::<_, std::io::Error>(bytes::Bytes::from(sse_event(i)))
        }
    });
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn fallback_echo(req: Request) -> Json<Value> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let forwarded_for = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Json(json!({
        "method": method, "uri": uri, "authorization": auth,
        "x_forwarded_for": forwarded_for, "body": body,
    }))
}

/// An address on which nothing listens (connection refused).
pub async fn refused_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// Serves `app` on a free loopback port until the test process ends;
/// answers the bound address.
pub async fn serve_on_loopback(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}
