//! Harness of the async tests: a scripted model server that records when it
//! was called and whether a caller hung up, a gated model that holds calls
//! and counts how many run at once, a webhook receiver that verifies
//! Standard Webhooks signatures with its own code (not warder's), an extra
//! in-process worker, and polling helpers.

use crate::helpers::*;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use warder::Config;

/// Queue timings short enough for tests.
pub fn fast_queue(c: &mut Config) {
    let q = &mut c.async_queue;
    q.poll_ms = 100;
    q.sweep_ms = 100;
    q.heartbeat_ms = 200;
    q.lease_ms = 2_000;
    q.min_queue_seconds = 1;
    q.webhook_retry_schedule_ms = vec![0, 100, 100];
}

/// What the scripted model saw.
#[derive(Default)]
pub struct ModelLog {
    /// Arrival time of every call.
    pub calls: Mutex<Vec<Instant>>,
    /// Calls whose caller hung up before the answer.
    pub dropped: AtomicUsize,
    /// Calls answered.
    pub completed: AtomicUsize,
    /// Headers of the last call.
    pub last_headers: Mutex<Option<HeaderMap>>,
}

impl ModelLog {
    /// Number of calls so far.
    pub fn count(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// A model server: `/flaky/{n}/{status}` fails its first `n` calls with
/// `status` then echoes; `/slow/{ms}` sleeps then echoes, noticing hang-ups;
/// `/status/{code}` always answers `code`.
pub struct ScriptedModel {
    pub addr: SocketAddr,
    pub log: Arc<ModelLog>,
}

impl ScriptedModel {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

struct HangUpGuard {
    log: Arc<ModelLog>,
    done: bool,
}

impl Drop for HangUpGuard {
    fn drop(&mut self) {
        if !self.done {
            self.log.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn seen(log: &ModelLog, headers: &HeaderMap) -> usize {
    if let Ok(mut h) = log.last_headers.lock() {
        *h = Some(headers.clone());
    }
    let mut calls = log.calls.lock().expect("lock");
    calls.push(Instant::now());
    calls.len()
}

pub async fn scripted_model() -> ScriptedModel {
    let log = Arc::new(ModelLog::default());
    let app =
        Router::new()
            .route(
                "/flaky/{n}/{status}",
                post(
                    |State(log): State<Arc<ModelLog>>,
                     Path((n, status)): Path<(usize, u16)>,
                     headers: HeaderMap,
                     Json(v): Json<Value>| async move {
                        let call = seen(&log, &headers);
                        if call <= n {
                            let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                            return (s, Json(json!({"detail": "try again"}))).into_response();
                        }
                        log.completed.fetch_add(1, Ordering::SeqCst);
                        Json(json!({ "echo": v, "call": call })).into_response()
                    },
                ),
            )
            .route(
                "/slow/{ms}",
                post(
                    |State(log): State<Arc<ModelLog>>,
                     Path(ms): Path<u64>,
                     headers: HeaderMap,
                     Json(v): Json<Value>| async move {
                        seen(&log, &headers);
                        let mut guard = HangUpGuard {
                            log: log.clone(),
                            done: false,
                        };
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        guard.done = true;
                        log.completed.fetch_add(1, Ordering::SeqCst);
                        Json(json!({ "echo": v }))
                    },
                ),
            )
            .route(
                "/status/{code}",
                post(
                    |State(log): State<Arc<ModelLog>>,
                     Path(code): Path<u16>,
                     headers: HeaderMap| async move {
                        seen(&log, &headers);
                        let s = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
                        (s, Json(json!({"detail": format!("model says {code}")})))
                    },
                ),
            )
            .with_state(log.clone());
    let addr = serve_on_loopback(app).await;
    ScriptedModel { addr, log }
}

/// One webhook request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }
}

/// A webhook receiver on 127.0.0.1; `/hook` answers `status` (a 3xx
/// redirects to `/elsewhere`, which must never be hit).
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<AtomicU16>,
}

impl Receiver {
    pub fn url(&self, host: &str) -> String {
        format!("http://{host}:{}/hook", self.addr.port())
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

pub async fn receiver() -> Receiver {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let status = Arc::new(AtomicU16::new(200));
    let record = |path: &'static str, got: Arc<Mutex<Vec<Received>>>| {
        move |headers: HeaderMap, body: String| {
            let got = got.clone();
            async move {
                if let Ok(mut g) = got.lock() {
                    g.push(Received {
                        path: path.to_owned(),
                        headers,
                        body,
                    });
                }
            }
        }
    };
    let hook_record = record("/hook", got.clone());
    let elsewhere_record = record("/elsewhere", got.clone());
    let s = status.clone();
    let app = Router::new()
        .route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let s = s.load(Ordering::SeqCst);
                let rec = hook_record.clone();
                async move {
                    rec(headers, body).await;
                    let code = StatusCode::from_u16(s).unwrap_or(StatusCode::OK);
                    let mut r = (code, "").into_response();
                    if code.is_redirection() {
                        r.headers_mut()
                            .insert("location", "/elsewhere".parse().expect("header"));
                    }
                    r
                }
            }),
        )
        .route(
            "/elsewhere",
            post(move |headers: HeaderMap, body: String| {
                let rec = elsewhere_record.clone();
                async move { rec(headers, body).await }
            }),
        );
    let addr = serve_on_loopback(app).await;
    Receiver { addr, got, status }
}

/// Verifies a `webhook-signature` header the way a Standard Webhooks
/// consumer does, independently of warder: true when any `v1` signature
/// matches the secret.
pub fn verify_signature(secret: &str, id: &str, timestamp: &str, body: &str, header: &str) -> bool {
    let Ok(key) = B64.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    header.split(' ').any(|part| {
        let Some(("v1", sig)) = part.split_once(',') else {
            return false;
        };
        let Ok(sig) = B64.decode(sig) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        mac.verify_slice(&sig).is_ok()
    })
}

/// Submits to `/models/{model}/async_predict`; answers (status, body, headers).
pub async fn submit(
    app: &TestApp,
    key: &str,
    model: &str,
    body: Value,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    json_of(
        app.predict(key, &format!("/models/{model}/async_predict"), body)
            .await,
    )
    .await
}

/// Submits and expects 201; answers the request id.
pub async fn submit_ok(app: &TestApp, key: &str, model: &str, body: Value) -> String {
    let (s, b, _) = submit(app, key, model, body).await;
    assert_eq!(s, 201, "{b}");
    b["request_id"].as_str().expect("request_id").to_owned()
}

/// The owner's view of a request.
pub async fn status_of(app: &TestApp, key: &str, id: &str) -> Value {
    let (s, b) = app
        .call_with_key(
            key,
            reqwest::Method::GET,
            &format!("/async_request/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b
}

/// Polls until `done(status)` holds; panics after `within`.
pub async fn wait_until(
    app: &TestApp,
    key: &str,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = status_of(app, key, id).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the request's status is `status`.
pub async fn wait_for_status(app: &TestApp, key: &str, id: &str, status: &str) -> Value {
    wait_until(app, key, id, Duration::from_secs(20), |v| {
        v["status"] == status
    })
    .await
}

/// What the gated model saw.
#[derive(Default)]
pub struct GateLog {
    /// Request bodies, in arrival order.
    pub bodies: Mutex<Vec<Value>>,
    /// Calls being answered right now.
    pub in_flight: AtomicUsize,
    /// The most calls ever answered at once.
    pub peak: AtomicUsize,
}

impl GateLog {
    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// Counts a call as in flight until dropped (also when the caller hangs up).
pub struct InFlight(Arc<GateLog>);

impl InFlight {
    fn enter(log: &Arc<GateLog>, body: &Value) -> InFlight {
        if let Ok(mut b) = log.bodies.lock() {
            b.push(body.clone());
        }
        let now = log.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        log.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(log.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A model server: `/gate` holds every call until the gate opens;
/// `/slow/{ms}` answers after `ms`; `/hang_first/{ms}` sleeps `ms` on its
/// first call only. Every route echoes its body.
pub struct GateModel {
    pub addr: std::net::SocketAddr,
    pub log: Arc<GateLog>,
    open: watch::Sender<bool>,
}

impl GateModel {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until the model has seen `n` calls.
    pub async fn wait_calls(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.log.bodies().len() < n {
            assert!(
                Instant::now() < deadline,
                "model saw {:?}, expected {n} calls",
                self.log.bodies()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Clone)]
pub struct GateState {
    log: Arc<GateLog>,
    open: watch::Receiver<bool>,
}

pub async fn gate_model() -> GateModel {
    let log = Arc::new(GateLog::default());
    let (open, rx) = watch::channel(false);
    let state = GateState {
        log: log.clone(),
        open: rx,
    };
    let app = Router::new()
        .route(
            "/gate",
            post(
                |State(s): State<GateState>, Json(v): Json<Value>| async move {
                    let _f = InFlight::enter(&s.log, &v);
                    let mut open = s.open.clone();
                    let _ = open.wait_for(|o| *o).await;
                    Json(json!({ "echo": v }))
                },
            ),
        )
        .route(
            "/slow/{ms}",
            post(
                |State(s): State<GateState>, Path(ms): Path<u64>, Json(v): Json<Value>| async move {
                    let _f = InFlight::enter(&s.log, &v);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Json(json!({ "echo": v }))
                },
            ),
        )
        .route(
            "/hang_first/{ms}",
            post(
                |State(s): State<GateState>, Path(ms): Path<u64>, Json(v): Json<Value>| async move {
                    let first = s.log.bodies().is_empty();
                    let _f = InFlight::enter(&s.log, &v);
                    if first {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Json(json!({ "echo": v }))
                },
            ),
        )
        .with_state(state);
    let addr = serve_on_loopback(app).await;
    GateModel { addr, log, open }
}

/// A `warder worker` run in this process against the app's store; it has
/// its own wake-ups, so only the store (poll, NOTIFY) tells it of work.
pub struct ExtraWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl ExtraWorker {
    pub fn start(config: Config) -> ExtraWorker {
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            warder::app::run_worker(config, async {
                let _ = rx.await;
            })
            .await
            .expect("worker runs");
        });
        ExtraWorker {
            stop: Some(tx),
            handle,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.handle).await;
    }
}

impl Drop for ExtraWorker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
