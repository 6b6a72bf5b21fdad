//! Sync predict when the model server breaks the connection after taking the
//! request: the caller gets 502 `UPSTREAM_ERROR` in the error shape, the
//! failure is counted as `reset`, and the request is never sent twice (only
//! a failure to connect, when no byte went out, is retried).

use crate::helpers::*;
use crate::scenarios;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

scenarios!(
    a_broken_connection_answers_502_and_counts_a_reset,
    a_request_that_went_out_is_not_retried,
);

/// How the broken model server ends each connection.
#[derive(Clone, Copy, Debug)]
enum Hangup {
    /// An orderly close (FIN) without a byte of answer.
    Close,
    /// An abortive close (RST, `SO_LINGER` 0).
    Reset,
}

/// A model server that reads a whole request, then hangs up without answering.
struct BrokenUpstream {
    addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// Complete requests read (head and `Content-Length` body).
    requests: Arc<AtomicUsize>,
}

impl BrokenUpstream {
    async fn start(hangup: Hangup) -> BrokenUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let read =
                        tokio::time::timeout(Duration::from_secs(10), read_request(&mut conn));
                    if matches!(read.await, Ok(true)) {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Hangup::Reset = hangup {
                        let _ = conn.set_zero_linger();
                    }
                    drop(conn);
                });
            }
        });
        BrokenUpstream {
            addr,
            connections,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/predict", self.addr)
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body; `false` when the
/// peer went away first.
async fn read_request(conn: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return true;
            }
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn reset_errors(metrics: &str, model_id: &str) -> f64 {
    metric_value(
        metrics,
        &format!("warder_upstream_errors_total{{model=\"{model_id}\",kind=\"reset\"}}"),
    )
}

async fn a_broken_connection_answers_502_and_counts_a_reset(b: Backend) {
    let app = spawn_app(b).await;
    let closes = BrokenUpstream::start(Hangup::Close).await;
    let resets = BrokenUpstream::start(Hangup::Reset).await;
    let fin = app.register("closes", &closes.url(), json!({})).await;
    let rst = app.register("resets", &resets.url(), json!({})).await;
    let c = app.caller("kim", &["closes", "resets"], None).await;

    for (m, up) in [(&fin, &closes), (&rst, &resets)] {
        let before = reset_errors(&app.metrics().await, &m.model_id);
        let path = format!("/models/{}/predict", m.name);
        let (s, body, headers) = json_of(app.predict(&c.key, &path, json!({"x": 1})).await).await;
        assert_error(s, &body, 502, "UPSTREAM_ERROR");
        assert_eq!(
            body["error"]["request_id"],
            headers["x-request-id"].to_str().expect("header"),
            "{}",
            m.name
        );
        assert_eq!(up.requests.load(Ordering::SeqCst), 1, "{}", m.name);
        let after = reset_errors(&app.metrics().await, &m.model_id);
        assert_eq!(after - before, 1.0, "{}: one reset counted", m.name);
    }
    let metrics = app.metrics().await;
    for kind in ["connect", "timeout"] {
        assert!(
            !metrics.contains(&format!("kind=\"{kind}\"")),
            "a hang-up is not counted as {kind}: {metrics}"
        );
    }
}

async fn a_request_that_went_out_is_not_retried(b: Backend) {
    let app = spawn_app(b).await;
    let up = BrokenUpstream::start(Hangup::Close).await;
    app.register("once", &up.url(), json!({})).await;
    let c = app.caller("lee", &["once"], None).await;
    for n in 1..=3 {
        let (s, body, _) = json_of(
            app.predict(&c.key, "/models/once/predict", json!({"n": n}))
                .await,
        )
        .await;
        assert_error(s, &body, 502, "UPSTREAM_ERROR");
        // Every predict reached the model server exactly once: the gateway
        // does not send a request again once its bytes went out.
        assert_eq!(up.requests.load(Ordering::SeqCst), n, "requests after {n}");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            n,
            "connections after {n}"
        );
    }
}
