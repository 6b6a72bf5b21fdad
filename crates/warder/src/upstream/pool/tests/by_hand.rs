//! The hand-driven exchange's own rules: answers it must not pool, bodies cut
//! short, reads split at any byte, writes to a reset connection, the sweep
//! of closed idle connections, and which predicts it takes.

use super::*;

#[tokio::test]
async fn raw_answers_with_bytes_after_them_or_read_to_the_close_are_not_pooled() {
    for mode in [Mode::TrailingByte, Mode::UntilClose] {
        let s = server(mode).await;
        let pool = pool();
        for n in 1..=3 {
            assert_eq!(call(Via::Raw, &pool, &s.url).await, "ok");
            assert_eq!(idle(Via::Raw, &pool, &s.url), 0);
            assert_eq!(s.accepted.load(Ordering::SeqCst), n);
        }
    }
}

#[tokio::test]
async fn raw_bodies_cut_short_or_badly_chunked_are_errors_not_short_answers() {
    for mode in [Mode::CutShort, Mode::BadChunk] {
        let s = server(mode).await;
        let pool = pool();
        let response = send(Via::Raw, &pool, &s.url).await.expect("a head");
        assert_eq!(response.status(), 200);
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(idle(Via::Raw, &pool, &s.url), 0);
    }
}

/// The answer below, written in two parts split at every offset: the
/// reader must put together heads, chunk-size lines, CRLFs and trailers
/// cut anywhere.
#[tokio::test]
async fn raw_answers_split_at_any_byte_read_the_same() {
    const ANSWER: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n\
        HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-model: m\r\n\r\n\
        5;ext=1\r\nhello\r\n006\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
    let pool = pool();
    for split in 1..ANSWER.len() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(&ANSWER[..split]).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
            let _ = stream.write_all(&ANSWER[split..]).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let response = send(Via::Raw, &pool, &url).await.expect("answered");
        assert_eq!(response.status(), 200, "split at {split}");
        assert_eq!(response.headers()["x-model"], "m");
        let body = body_of(response).await;
        assert_eq!(body, "hello world", "split at {split}");
        assert_eq!(
            idle(Via::Raw, &pool, &url),
            1,
            "split at {split}: read to its end"
        );
    }
}

#[tokio::test]
async fn a_write_to_a_reset_connection_sent_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(server); // a reset
    tokio::time::sleep(Duration::from_millis(50)).await;
    let host = pool().host(&url.parse().expect("uri")).expect("host");
    let sent = exchange::send(RawConn::new(client), b"POST / HTTP/1.1\r\n\r\n", host).await;
    assert!(matches!(sent, Err(Failure::Unsent(_))), "{:?}", sent.err());
}

#[tokio::test]
async fn closed_idle_connections_are_swept() {
    let s = server(Mode::CloseAfterAnswer).await;
    let pool = pool();
    assert_eq!(call(Via::Raw, &pool, &s.url).await, "ok");
    assert_eq!(idle(Via::Raw, &pool, &s.url), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    sweep(&pool.hosts);
    assert_eq!(
        idle(Via::Raw, &pool, &s.url),
        0,
        "the server's close was seen"
    );

    let s = server(Mode::KeepAlive).await;
    assert_eq!(call(Via::Raw, &pool, &s.url).await, "ok");
    sweep(&pool.hosts);
    assert_eq!(idle(Via::Raw, &pool, &s.url), 1, "an open connection stays");
    let host = pool.host(&s.url.parse().expect("uri")).expect("host");
    let later =
        crate::ttl_cache::now() + coarsetime::Duration::from(IDLE_TIMEOUT + Duration::from_secs(1));
    host.sweep_raw(later);
    assert_eq!(idle(Via::Raw, &pool, &s.url), 0, "aged out");
}

/// A close that arrives while the runtime is not polling its events is
/// unknown to it; after a second of idle time the socket itself is
/// asked.
#[tokio::test]
async fn a_close_the_runtime_has_not_seen_is_found_by_peeking_after_a_second() {
    // A server on a thread of its own, so that it closes while this
    // test's runtime is blocked, not polling.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let (close, closing) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let _ = closing.recv();
    });
    let pool = pool();
    assert_eq!(call(Via::Raw, &pool, &url).await, "ok");
    // No await from here on: the runtime sees nothing of the close.
    close.send(()).expect("server waits");
    server.join().expect("server");
    std::thread::sleep(Duration::from_millis(20));
    let host = pool.host(&url.parse().expect("uri")).expect("host");
    let now = crate::ttl_cache::now();
    host.sweep_raw(now);
    assert_eq!(host.raw_idle_count(), 1, "unseen by the runtime");
    host.sweep_raw(now + coarsetime::Duration::from(Duration::from_secs(2)));
    assert_eq!(host.raw_idle_count(), 0, "seen by the peek");
}

#[tokio::test]
async fn predicts_take_the_exchange_up_to_its_body_limit_and_hyper_above() {
    let s = server(Mode::KeepAlive).await;
    let client = crate::upstream::UpstreamClient::new();
    let host = client
        .plain
        .host(&s.url.parse().expect("uri"))
        .expect("host");
    for (size, raw) in [(exchange::MAX_BODY, true), (exchange::MAX_BODY + 1, false)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let url = s.url.parse().expect("uri");
        let post = JsonPost {
            url: &url,
            headers: &[],
        };
        let response = client
            .send_buffered(
                post,
                Bytes::from(vec![b' '; size]),
                deadline,
                Duration::from_secs(5),
            )
            .await
            .expect("answered");
        let body = body_of(response).await;
        assert_eq!(body, "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            (host.raw_idle_count(), host.idle_count()),
            if raw { (1, 0) } else { (1, 1) },
            "{size} bytes"
        );
    }
    assert_eq!(lock(&s.heads).len(), 2);
}
