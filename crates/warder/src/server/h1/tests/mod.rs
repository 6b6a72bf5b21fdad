//! The hand-served HTTP/1.1 path and its hand-over to hyper, on real
//! sockets, through the listener's own accept loop.

use super::super::{serve, write_field, FastLane, PlainRequest, Reply, ServeOptions, WriteFields};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What the test service saw and did.
#[derive(Default)]
struct Seen {
    /// Calls dropped before they finished (their caller hung up).
    dropped: AtomicUsize,
}

struct DropCount(Arc<Seen>, bool);

impl Drop for DropCount {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Answers by path:
/// - `/echo`: `200`, `{method} {path} {version:?} {body length} {x-test}`;
/// - `/stream`: three chunks, with no size known;
/// - `/declared`: a streamed body with a `Content-Length` set (`?short`:
///   one byte less than it says; `?list`: as a list; `?bad`: not a number);
/// - `/empty`: `204`;
/// - `/close`: `200` with `Connection: close`;
/// - `/slow`: after 300 ms;
/// - `/stall`: one chunk, then never another (counts the drop of its body);
/// - `/never`: never (counts the drop of its future).
async fn answer(seen: Arc<Seen>, req: Request) -> Result<Response, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let stream = |chunks: Vec<&'static str>| {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c.as_bytes()))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    };
    let mut response = match path.as_str() {
        "/echo" => Response::new(Body::from(format!(
            "{} {} {:?} {} {}",
            parts.method,
            parts.uri,
            parts.version,
            body.len(),
            parts
                .headers
                .get("x-test")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        ))),
        "/stream" => Response::new(stream(vec!["one,", "two,", "three"])),
        "/declared" => {
            let mut r = Response::new(stream(vec!["abc", "def"]));
            let length = match query.as_deref() {
                Some("short") => "7",
                Some("list") => "6, 6",
                Some("bad") => "six",
                _ => "6",
            };
            r.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                length.parse().expect("length"),
            );
            r
        }
        "/empty" => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        "/close" => {
            let mut r = Response::new(Body::from("bye"));
            r.headers_mut()
                .insert(http::header::CONNECTION, "close".parse().expect("close"));
            r
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(Body::from("late"))
        }
        "/stall" => {
            let guard = DropCount(seen, false);
            let frames = futures::stream::unfold((true, guard), |(first, guard)| async move {
                if !first {
                    std::future::pending::<()>().await;
                }
                let frame = http_body::Frame::data(Bytes::from_static(b"first"));
                Some((Ok::<_, Infallible>(frame), (false, guard)))
            });
            Response::new(Body::new(http_body_util::StreamBody::new(frames)))
        }
        "/never" => {
            let mut guard = DropCount(seen, false);
            std::future::pending::<()>().await;
            guard.1 = true;
            unreachable!()
        }
        _ => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    response
        .headers_mut()
        .append("x-multi", "a".parse().expect("a"));
    response
        .headers_mut()
        .append("x-multi", "b".parse().expect("b"));
    Ok(response)
}

/// [`answer`] as a service, with a fast lane for `/fast` paths: `200`,
/// `fast {method} {target} {x-test} {body}`, from the request as read.
#[derive(Clone)]
struct TestService {
    seen: Arc<Seen>,
}

impl tower::Service<Request> for TestService {
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(answer(self.seen.clone(), req))
    }
}

/// The fields the test service's fast lane writes out.
struct TestFields(u64);

impl WriteFields for TestFields {
    fn write_fields(&self, out: &mut Vec<u8>) {
        write_field(out, "x-written", b"as is");
        write_field(out, "x-number", self.0.to_string().as_bytes());
    }
}

impl FastLane for TestService {
    type Fields = TestFields;

    fn call_plain(
        &self,
        request: &PlainRequest<'_>,
    ) -> Option<futures::future::BoxFuture<'static, Reply<TestFields>>> {
        if !request.target().starts_with(b"/fast") {
            return None;
        }
        let text = format!(
            "fast {} {} {} {}",
            request.method(),
            String::from_utf8_lossy(request.target()),
            request
                .header("x-test")
                .map_or("-".to_owned(), |v| String::from_utf8_lossy(&v).into_owned()),
            String::from_utf8_lossy(&request.body()),
        );
        Some(Box::pin(async move {
            let mut response = Response::new(Body::from(text));
            response
                .headers_mut()
                .insert("x-from-map", http::HeaderValue::from_static("map"));
            Reply {
                response,
                fields: Some(TestFields(1_000_007)),
            }
        }))
    }
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(header_read_timeout: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let service_seen = seen.clone();
    let done = tokio::spawn(serve(
        "test",
        listener,
        move |_peer| TestService {
            seen: service_seen.clone(),
        },
        ServeOptions {
            header_read_timeout,
            drain_timeout: Duration::from_secs(5),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        seen,
        stop: Some(stop),
        done,
    }
}

/// One answer as it came: status, headers (names lowercased) and decoded
/// body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client that reads answers off one connection, in order.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer; `None` if the connection closed first.
    async fn answer(&mut self) -> Option<Answer> {
        let (status, headers, len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = r.parse(&self.buf).expect("a valid head") {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                let code = r.code.expect("code");
                if (100..200).contains(&code) {
                    // An interim answer (`100 Continue`): the next is the one.
                    self.buf.drain(..len);
                    continue;
                }
                break (code, headers, len);
            }
            if !self.fill().await {
                return None;
            }
        };
        self.buf.drain(..len);
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().expect("a length");
            while self.buf.len() < length {
                assert!(self.fill().await, "closed inside a body");
            }
            answer.body = self.buf.drain(..length).collect();
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "closed inside a chunk size");
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..line]).expect("ascii"),
                    16,
                )
                .expect("hex");
                while self.buf.len() < line + 2 + size + 2 {
                    assert!(self.fill().await, "closed inside a chunk");
                }
                answer
                    .body
                    .extend_from_slice(&self.buf[line + 2..line + 2 + size]);
                self.buf.drain(..line + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        Some(answer)
    }

    /// Whether the server closed the connection (reading nothing more).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let server = start(Duration::from_secs(10)).await;
    let mut c = Client::connect(server.addr).await;
    let mut both = post("/echo?a=1", "hello", "x-test: one\r\n");
    both.extend(post("/echo", "", "X-Test: two\r\n"));
    // The second request arrives in pieces, after the first.
    let (first, second) = both.split_at(both.len() - 10);
    c.send(first).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(second).await;
    let one = c.answer().await.expect("first");
    assert_eq!(one.status, 200);
    assert_eq!(one.text(), "POST /echo?a=1 HTTP/1.1 5 one");
    assert!(one.header("date").is_some_and(|d| d.ends_with(" GMT")));
    let multi: Vec<_> = one
        .headers
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(one.header("connection"), None);
    let two = c.answer().await.expect("second");
    assert_eq!(two.text(), "POST /echo HTTP/1.1 0 two");
    // And a GET with no body, still on the same connection.
    c.send(b"GET /echo HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(
        c.answer().await.expect("third").text(),
        "GET /echo HTTP/1.1 0 -"
    );
}

#[tokio::test]
async fn answers_are_framed_by_what_is_known_of_their_size() {
    let server = start(Duration::from_secs(10)).await;
    let mut c = Client::connect(server.addr).await;
    c.send(&post("/stream", "", "")).await;
    let streamed = c.answer().await.expect("stream");
    assert_eq!(streamed.header("transfer-encoding"), Some("chunked"));
    assert_eq!(streamed.header("content-length"), None);
    assert_eq!(streamed.text(), "one,two,three");

    c.send(&post("/declared", "", "")).await;
    let declared = c.answer().await.expect("declared");
    assert_eq!(declared.header("content-length"), Some("6"));
    assert_eq!(declared.header("transfer-encoding"), None);
    assert_eq!(declared.text(), "abcdef");

    c.send(&post("/empty", "", "")).await;
    let empty = c.answer().await.expect("empty");
    assert_eq!(empty.status, 204);
    assert_eq!(empty.header("content-length"), None);
    assert_eq!(empty.header("transfer-encoding"), None);

    // Still in step after all three.
    c.send(&post("/echo", "x", "")).await;
    assert_eq!(
        c.answer().await.expect("echo").text(),
        "POST /echo HTTP/1.1 1 -"
    );

    // A length given as a list of one number is that number; one that is
    // not a number is dropped for chunked coding.
    c.send(&post("/declared?list", "", "")).await;
    let listed = c.answer().await.expect("list");
    assert_eq!(listed.header("content-length"), Some("6"));
    assert_eq!(listed.text(), "abcdef");
    c.send(&post("/declared?bad", "", "")).await;
    let bad = c.answer().await.expect("bad");
    assert_eq!(bad.header("content-length"), None);
    assert_eq!(bad.header("transfer-encoding"), Some("chunked"));
    assert_eq!(bad.text(), "abcdef");

    // A body shorter than its declared length: the close tells the caller.
    c.send(&post("/declared?short", "", "")).await;
    while c.fill().await {}
    let text = String::from_utf8_lossy(&c.buf).into_owned();
    assert!(text.contains("content-length: 7\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nabcdef"), "{text}");
}

#[tokio::test]
async fn close_from_either_side_ends_the_connection_after_the_answer() {
    let server = start(Duration::from_secs(10)).await;
    let mut c = Client::connect(server.addr).await;
    c.send(&post("/echo", "", "connection: keep-alive, Close\r\n"))
        .await;
    let a = c.answer().await.expect("answer");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.closed().await);

    let mut c = Client::connect(server.addr).await;
    c.send(&post("/close", "", "")).await;
    let a = c.answer().await.expect("answer");
    assert_eq!(a.text(), "bye");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn requests_it_does_not_take_are_answered_by_hyper_on_the_same_connection() {
    let server = start(Duration::from_secs(10)).await;
    let mut c = Client::connect(server.addr).await;
    // Served here first, then a chunked body: hyper from there on.
    c.send(&post("/echo", "", "")).await;
    assert_eq!(
        c.answer().await.expect("plain").text(),
        "POST /echo HTTP/1.1 0 -"
    );
    c.send(b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    assert_eq!(
        c.answer().await.expect("chunked").text(),
        "POST /echo HTTP/1.1 3 -"
    );
    c.send(&post("/echo", "zz", "")).await;
    assert_eq!(
        c.answer().await.expect("after").text(),
        "POST /echo HTTP/1.1 2 -"
    );

    // A body larger than what is read here whole, HTTP/1.0, `Expect`, a
    // duplicated length, HEAD, an absolute target: all served, by hyper.
    let large = "x".repeat(super::MAX_BODY + 1);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (post("/echo", &large, ""), "POST /echo HTTP/1.1 65537 -"),
        (
            b"POST /echo HTTP/1.0\r\ncontent-length: 2\r\n\r\nab".to_vec(),
            "POST /echo HTTP/1.0 2 -",
        ),
        (
            post("/echo", "abc", "expect: 100-continue\r\n"),
            "POST /echo HTTP/1.1 3 -",
        ),
        (
            post("/echo", "abc", "content-length: 3\r\n"),
            "POST /echo HTTP/1.1 3 -",
        ),
        (
            b"GET http://t/echo HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
            "GET http://t/echo HTTP/1.1 0 -",
        ),
    ];
    for (request, expected) in cases {
        let mut c = Client::connect(server.addr).await;
        c.send(&request).await;
        let a = c.answer().await.expect("an answer");
        assert_eq!(a.text(), expected);
    }
    // HEAD: hyper answers with the head alone.
    let mut c = Client::connect(server.addr).await;
    c.send(b"HEAD /echo HTTP/1.1\r\nhost: t\r\n\r\n").await;
    while !c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(c.fill().await, "a head");
    }
    assert!(c.buf.starts_with(b"HTTP/1.1 200 OK\r\n"));

    // Malformed: hyper's 400.
    for bad in [
        &b"POST /echo HTTP/1.1\r\ncontent-length: -1\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        b"NOT A REQUEST\r\n\r\n",
    ] {
        let mut c = Client::connect(server.addr).await;
        c.send(bad).await;
        let a = c.answer().await.expect("an answer");
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(bad));
    }
}

#[tokio::test]
async fn the_fast_lane_answers_from_the_request_as_read_and_the_rest_goes_through_call() {
    let server = start(Duration::from_secs(5)).await;
    let mut c = Client::connect(server.addr).await;
    c.send(
        b"POST /fast/one?q=1 HTTP/1.1\r\nHost: x\r\nX-TEST: first\r\nx-test: second\r\nContent-Length: 5\r\n\r\nhello\
          POST /echo HTTP/1.1\r\nHost: x\r\nX-Test: slow-lane\r\nContent-Length: 2\r\n\r\nhi\
          GET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let fast = c.answer().await.expect("the fast answer");
    assert_eq!(fast.status, 200);
    // The first of two values, found whatever the name's case.
    assert_eq!(fast.text(), "fast POST /fast/one?q=1 first hello");
    assert!(fast.header("date").is_some(), "{fast:?}");
    // The fields the service wrote out, beside those of its response.
    assert_eq!(fast.header("x-from-map"), Some("map"), "{fast:?}");
    assert_eq!(fast.header("x-written"), Some("as is"), "{fast:?}");
    assert_eq!(fast.header("x-number"), Some("1000007"), "{fast:?}");
    assert_eq!(fast.header("content-length"), Some("35"), "{fast:?}");
    let echo = c.answer().await.expect("the echo");
    assert_eq!(echo.text(), "POST /echo HTTP/1.1 2 slow-lane");
    let empty = c.answer().await.expect("the fast answer without a body");
    assert_eq!(empty.text(), "fast GET /fast - ");
}

#[test]
fn a_whole_head_larger_than_max_head_is_not_taken() {
    let head = |filler: usize| {
        format!(
            "POST /fast HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
            "a".repeat(filler)
        )
    };
    let fits = head(super::MAX_HEAD - 100);
    assert!(matches!(
        super::parse(fits.as_bytes()),
        super::Parse::Plain(_)
    ));
    let over = head(super::MAX_HEAD);
    assert!(matches!(super::parse(over.as_bytes()), super::Parse::Other));
}

mod connection;
