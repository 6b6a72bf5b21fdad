//! Lifecycle: graceful drain, header read timeout, bootstrap idempotence.

use crate::helpers::*;
use crate::scenarios;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

scenarios!(
    shutdown_drains_in_flight_requests,
    shutdown_closes_idle_connections_at_once,
    slow_headers_are_cut_off,
    bootstrap_key_is_installed_once,
);

async fn shutdown_drains_in_flight_requests(b: Backend) {
    let mut app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("slow", &up.url("/sleep/700"), json!({})).await;
    let c = app.caller("u", &["slow"], None).await;
    let client = app.client.clone();
    let url = format!("{}/models/slow/predict", app.url);
    let key = c.key.clone();
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .header("Authorization", format!("Api-Key {key}"))
            .json(&json!({}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.signal_shutdown();
    let status = in_flight
        .await
        .expect("join")
        .expect("in-flight request completed");
    assert_eq!(
        status, 200,
        "the in-flight request finished during the drain"
    );
    app.stop().await;
    let refused = reqwest::Client::new()
        .get(format!("{}/", app.url))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "no new connections after shutdown");
}

/// An idle keep-alive connection does not hold the drain up: it is closed
/// as soon as shutdown begins, long before the drain timeout (30 s).
async fn shutdown_closes_idle_connections_at_once(b: Backend) {
    let mut app = spawn_app(b).await;
    let mut idle = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    idle.write_all(b"GET /no-such-route HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Two more connections that never send anything at all.
    let _silent = [
        tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect"),
        tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect"),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain waited {:?} for idle connections",
        started.elapsed()
    );
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("the idle connection was closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

async fn slow_headers_are_cut_off(b: Backend) {
    let app = spawn_app_with(b, |c| c.header_read_timeout_ms = 300).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
    match read {
        Ok(Ok(n)) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(
                n == 0 || text.starts_with("HTTP/1.1 408"),
                "unexpected answer {text}"
            );
        }
        Ok(Err(_)) => {}
        Err(_) => panic!("connection with incomplete headers was kept open"),
    }
}

async fn bootstrap_key_is_installed_once(b: Backend) {
    let app = spawn_app(b).await;
    let (s, who) = app.admin(reqwest::Method::GET, "/admin/whoami", None).await;
    assert_eq!(s, 200, "{who}");
    let control = &app.state.control;
    let key = warder_core::ApiKey::parse(&app.admin_key).expect("key");
    assert!(
        !control.bootstrap_admin(&key).await.expect("bootstrap"),
        "already installed"
    );
    let users = control.users().await.expect("users");
    assert_eq!(users.iter().filter(|u| u.name == "admin").count(), 1);
}
