//! Tests of the upstream pool: each rule for both ways a request goes (hyper's
//! connection and the hand-driven exchange); the exchange's own are in
//! `by_hand`.

use super::*;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the test server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// `ok` on a kept-alive connection.
    KeepAlive,
    /// `ok`, then the server closes the connection (no `Connection: close`).
    CloseAfterAnswer,
    /// A 4 MiB body.
    Large,
    /// `ok` after 100 ms.
    Slow,
    /// `ok` with `Connection: close`, then the server closes.
    ConnectionClose,
    /// An HTTP/1.0 answer (not kept alive), then the server closes.
    Http10,
    /// `ok` as a chunked body.
    Chunked,
    /// `204 No Content`.
    NoContent,
    /// Answers a connection's first request; reads its second and closes
    /// without answering.
    SwallowSecond,
    /// `413` as soon as the request head is in, without reading the body;
    /// the connection stays open.
    EarlyAnswer,
    /// `ok` as a chunked body with an extension and a trailer, written a
    /// byte at a time.
    ChunkedTrickle,
    /// `103 Early Hints`, then `ok`.
    Interim,
    /// `ok`, and one byte more than its `Content-Length`.
    TrailingByte,
    /// A `Content-Length` of 10, two bytes, then the server closes.
    CutShort,
    /// `ok` delimited by the end of the connection.
    UntilClose,
    /// A chunked body whose chunk size is not hexadecimal.
    BadChunk,
}

/// A raw HTTP/1.1 server on loopback: counts connections, records each
/// request head.
struct Server {
    url: String,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn server(mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (a, h) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_connection(stream, mode, h.clone()));
        }
    });
    Server {
        url,
        accepted,
        heads,
    }
}

async fn serve_connection(mut stream: TcpStream, mode: Mode, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    for served in 0.. {
        // Read one request head and its Content-Length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        if let Mode::EarlyAnswer = mode {
            lock(&heads).push(head);
            let _ = stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            return;
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        lock(&heads).push(head);
        let body = match mode {
            Mode::Large => vec![b'x'; 4 << 20],
            _ => b"ok".to_vec(),
        };
        let answer = match mode {
            Mode::Slow => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()
            }
            Mode::SwallowSecond if served == 1 => return,
            Mode::ConnectionClose => {
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".into()
            }
            Mode::Http10 => "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok".into(),
            Mode::Chunked => {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".into()
            }
            Mode::NoContent => "HTTP/1.1 204 No Content\r\n\r\n".into(),
            Mode::ChunkedTrickle => {
                let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                              1;ext=\"a\"\r\no\r\n1\r\nk\r\n0\r\nx-trailer: t\r\n\r\n";
                for byte in answer.as_bytes() {
                    if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                continue;
            }
            Mode::Interim => "HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n\
                              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                .into(),
            Mode::TrailingByte => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokX".into(),
            Mode::CutShort => "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok".into(),
            Mode::UntilClose => "HTTP/1.1 200 OK\r\n\r\nok".into(),
            Mode::BadChunk => {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n".into()
            }
            _ => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()),
        };
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        let inline = matches!(
            mode,
            Mode::Slow
                | Mode::ConnectionClose
                | Mode::Http10
                | Mode::Chunked
                | Mode::NoContent
                | Mode::Interim
                | Mode::TrailingByte
                | Mode::CutShort
                | Mode::UntilClose
                | Mode::BadChunk
        );
        if !inline && stream.write_all(&body).await.is_err() {
            return;
        }
        if matches!(
            mode,
            Mode::CloseAfterAnswer
                | Mode::ConnectionClose
                | Mode::Http10
                | Mode::CutShort
                | Mode::UntilClose
        ) {
            return;
        }
    }
}

fn pool() -> Http1Pool {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Http1Pool::new(connector)
}

fn request(url: &str) -> Request<Body> {
    request_with(url, Body::from("{}"))
}

fn request_with(url: &str, body: Body) -> Request<Body> {
    let mut r = Request::new(body);
    *r.method_mut() = http::Method::POST;
    *r.uri_mut() = url.parse().expect("uri");
    r
}

/// Which way a test request goes: hyper's client connection
/// ([`Http1Pool::send`]) or the hand-driven exchange
/// ([`Http1Pool::send_raw`]). Both must follow the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Hyper,
    Raw,
}

const BOTH: [Via; 2] = [Via::Hyper, Via::Raw];

async fn send(
    via: Via,
    pool: &Http1Pool,
    url: &str,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    match via {
        Via::Hyper => pool.send(request(url)).await,
        Via::Raw => {
            let url = url.parse().expect("uri");
            let post = JsonPost {
                url: &url,
                headers: &[],
            };
            pool.send_raw(&post, b"{}").await
        }
    }
}

async fn call(via: Via, pool: &Http1Pool, url: &str) -> Bytes {
    let response = send(via, pool, url).await.expect("answered");
    assert_eq!(response.status(), 200);
    body_of(response).await
}

async fn body_of(response: Response<UpstreamBody>) -> Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

fn idle(via: Via, pool: &Http1Pool, url: &str) -> usize {
    let host = pool.host(&url.parse().expect("uri")).expect("host");
    match via {
        Via::Hyper => host.idle_count(),
        Via::Raw => host.raw_idle_count(),
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection_in_origin_form_with_their_framing() {
    for via in BOTH {
        let s = server(Mode::KeepAlive).await;
        let pool = pool();
        let url = format!("{}/v1/x?y=1", s.url);
        for _ in 0..20 {
            assert_eq!(call(via, &pool, &url).await, "ok");
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "{via:?}");
        assert_eq!(idle(via, &pool, &url), 1, "{via:?}");
        let heads = lock(&s.heads).clone();
        assert_eq!(heads.len(), 20, "the server read every body by its length");
        let authority = s.url.trim_start_matches("http://");
        let head = heads[0].to_ascii_lowercase();
        assert!(head.starts_with("post /v1/x?y=1 http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nhost: {authority}\r\n")),
            "{head}"
        );
        assert!(head.contains("\r\ncontent-length: 2\r\n"), "{head}");
    }
}

#[tokio::test]
async fn connections_the_server_closed_while_idle_are_replaced_without_an_error() {
    for via in BOTH {
        let s = server(Mode::CloseAfterAnswer).await;
        let pool = pool();
        for n in 1..=5 {
            assert_eq!(call(via, &pool, &s.url).await, "ok");
            if via == Via::Raw {
                // Pooled at once: the answer came whole with its head.
                assert_eq!(idle(via, &pool, &s.url), 1, "pooled before the close");
            }
            // Let the runtime see the close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(s.accepted.load(Ordering::SeqCst), n, "{via:?}");
        }
        assert_eq!(
            lock(&s.heads).len(),
            5,
            "{via:?}: every request reached the server once"
        );
    }
}

#[tokio::test]
async fn connections_that_will_not_be_kept_alive_are_never_reused() {
    for via in BOTH {
        for mode in [Mode::ConnectionClose, Mode::Http10] {
            let s = server(mode).await;
            let pool = pool();
            // Back to back: the request after a closing answer must not
            // go on the connection that answered it.
            for _ in 0..5 {
                assert_eq!(call(via, &pool, &s.url).await, "ok");
            }
            assert_eq!(s.accepted.load(Ordering::SeqCst), 5, "{via:?}");
            assert_eq!(lock(&s.heads).len(), 5);
        }
    }
}

#[tokio::test]
async fn chunked_interim_and_empty_answers_give_their_connection_back() {
    for via in BOTH {
        let modes: &[Mode] = match via {
            Via::Hyper => &[Mode::Chunked],
            Via::Raw => &[Mode::Chunked, Mode::ChunkedTrickle, Mode::Interim],
        };
        for &mode in modes {
            let s = server(mode).await;
            let pool = pool();
            for _ in 0..5 {
                assert_eq!(call(via, &pool, &s.url).await, "ok");
            }
            assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "{via:?}");
        }
        let s = server(Mode::NoContent).await;
        let pool = pool();
        for _ in 0..5 {
            let response = send(via, &pool, &s.url).await.expect("answered");
            assert_eq!(response.status(), 204);
            assert!(response.body().is_end_stream());
            drop(response); // its (empty) body never polled
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "{via:?}");
    }
}

#[tokio::test]
async fn a_request_received_but_not_answered_is_not_sent_again() {
    for via in BOTH {
        let s = server(Mode::SwallowSecond).await;
        let pool = pool();
        assert_eq!(call(via, &pool, &s.url).await, "ok");
        let e = send(via, &pool, &s.url).await.expect_err("no answer");
        assert_eq!(e.kind, UpstreamErrorKind::Reset, "{via:?}");
        assert!(!e.retry_safe, "{via:?}: the upstream had the request");
        assert_eq!(lock(&s.heads).len(), 2, "{via:?}: sent once");
        assert_eq!(
            s.accepted.load(Ordering::SeqCst),
            1,
            "{via:?}: not resent elsewhere"
        );
    }
}

#[tokio::test]
async fn a_connection_still_sending_its_request_is_not_handed_out() {
    let s = server(Mode::EarlyAnswer).await;
    let pool = pool();
    // 16 MiB: far more than the socket buffers take while the server
    // reads nothing.
    let big = Body::from(vec![b' '; 16 << 20]);
    let response = pool
        .send(request_with(&s.url, big))
        .await
        .expect("answered");
    assert_eq!(response.status(), 413);
    drop(response);
    // The next request must not wait behind the unfinished upload.
    let next = tokio::time::timeout(Duration::from_secs(2), pool.send(request(&s.url)))
        .await
        .expect("not stuck behind the upload")
        .expect("answered");
    assert_eq!(next.status(), 413);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    for via in BOTH {
        let s = server(Mode::Large).await;
        let pool = pool();
        let response = send(via, &pool, &s.url).await.expect("answered");
        assert_eq!(response.status(), 200);
        drop(response);
        assert_eq!(
            idle(via, &pool, &s.url),
            0,
            "{via:?}: a half-read connection is not pooled"
        );
        // The next request gets a connection of its own and reads it
        // all, which returns that connection.
        assert_eq!(call(via, &pool, &s.url).await.len(), 4 << 20);
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2, "{via:?}");
        assert_eq!(idle(via, &pool, &s.url), 1, "{via:?}");
        assert_eq!(call(via, &pool, &s.url).await.len(), 4 << 20);
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2, "{via:?}");
    }
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_give_it_back() {
    let s = server(Mode::Slow).await;
    let pool = pool();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (pool, url) = (pool.clone(), s.url.clone());
            tokio::spawn(async move { call(Via::Hyper, &pool, &url).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("joined"), "ok");
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 8);
    assert_eq!(idle(Via::Hyper, &pool, &s.url), 8);
    for _ in 0..8 {
        assert_eq!(call(Via::Hyper, &pool, &s.url).await, "ok");
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 8, "all reused");
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_safe_to_retry() {
    for via in BOTH {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        drop(listener);
        let e = send(via, &pool(), &url).await.expect_err("refused");
        assert_eq!(e.kind, UpstreamErrorKind::Connect, "{via:?}");
        assert!(e.retry_safe, "{via:?}");
    }
}

#[tokio::test]
async fn idle_connections_past_the_timeout_are_not_reused() {
    let s = server(Mode::KeepAlive).await;
    let pool = pool();
    assert_eq!(call(Via::Hyper, &pool, &s.url).await, "ok");
    let host = pool.host(&s.url.parse().expect("uri")).expect("host");
    // Right after it went idle the connection is handed out again; past
    // the timeout it is dropped (the clock moves forward rather than the
    // entry back, which would underflow on a machine up for under a
    // minute).
    let now = crate::ttl_cache::now();
    let sender = host.checkout_at(now).expect("fresh connection reused");
    host.put(sender);
    let later = now + coarsetime::Duration::from(IDLE_TIMEOUT + Duration::from_secs(1));
    assert!(host.checkout_at(later).is_none(), "aged out");
    assert_eq!(host.idle_count(), 0, "the aged connection is closed");
    assert_eq!(call(Via::Hyper, &pool, &s.url).await, "ok");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(host.idle_count(), 1);
}

// Only the hand-driven exchange: hyper's own tests cover these for it.

mod by_hand;
