//! HTTP/1.1 by hand for the plain requests a listener gets, and hyper for
//! everything else on the same connection.
//!
//! Why by hand: in `bench/`, hyper's server connection (its dispatcher,
//! head parsing and writing, the body channel and the buffered I/O around
//! them) cost about a third of warder's instructions per predict
//! (callgrind), and the bare stack it is part of alone cost more CPU per
//! request than nginx on the benchmark's hosts. A proxy written on tokio
//! with the request and answer read and written by hand cost a fifth of
//! that in user space. This module serves the requests whose framing is
//! plain and leaves the rest of HTTP to hyper:
//!
//! - it takes a request that is `HTTP/1.1`, not `HEAD` or `CONNECT`, in
//!   origin form, with at most [`MAX_HEADERS`] headers in at most
//!   [`MAX_HEAD`] bytes, with at most one `Content-Length` of at most
//!   [`MAX_BODY`] bytes (or none: no body), and with no `Transfer-Encoding`,
//!   `Expect` or `Upgrade`;
//! - the first request it does not take, and the bytes read of it, go to
//!   hyper's HTTP/1 server for the rest of the connection (a malformed
//!   request, HTTP/1.0, a chunked or large body, `100-continue`, an
//!   upgrade), or HTTP/2's preface to hyper-util's version detection, so
//!   hyper answers those exactly as before.
//!
//! What hyper's server did for these requests, this does too:
//! - answers in order, pipelined requests included, and keeps the
//!   connection open unless the request or the answer says `close`;
//! - closes a connection that has not sent a whole head within the header
//!   read timeout, idle ones included (hyper closed without a word; here a
//!   connection with part of a head gets a `408` first);
//! - ends a request whose caller hangs up while it runs, or while its
//!   answer waits for more of the body: its future or body is dropped, as
//!   hyper drops them;
//! - closes an idle connection at once when the drain begins, and any other
//!   after the answer in flight;
//! - adds `Date`; frames the answer with `Content-Length` when its size is
//!   known (from the body, or from a `Content-Length` the service set, which
//!   the body must then match) and with chunked coding otherwise; writes no
//!   body for `204` and `304`.

mod head;

pub use self::head::PlainRequest;
use self::head::{parse, Parse};
use super::prefixed::Prefixed;
use super::{FastLane, Reply, Watch, WriteFields};
use crate::http1_fields::{content_length, has_token};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http::header;
use http::StatusCode;
use http_body::Body as _;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower::Service;

/// Headers a request taken here may have (hyper's limit is 100).
pub(super) const MAX_HEADERS: usize = 64;
/// The size of a head taken here (hyper reads up to about 400 KiB).
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// The body a request taken here may have: it is read whole before the
/// service runs. Larger bodies are streamed by hyper.
pub(super) const MAX_BODY: usize = 64 * 1024;
/// What one read asks the socket for, at least.
const READ_CHUNK: usize = 8 * 1024;
/// The room a read while a request runs (to notice a hang-up, or keep a
/// pipelined request) makes do with.
const MIN_SPARE: usize = 1024;

/// How a connection left this module.
pub(super) enum Ended {
    /// Closed (or to be closed): nothing more to do.
    Closed,
    /// A request this does not take: the socket, with what was read of it,
    /// for hyper.
    HandOver(Prefixed),
}

/// Serves `stream` until it closes, the drain ends it, or a request comes
/// that hyper must answer.
pub(super) async fn serve<S>(
    mut stream: TcpStream,
    service: &S,
    watch: &mut Watch,
    header_read_timeout: Duration,
) -> Ended
where
    S: Service<Request, Response = Response, Error = Infallible> + FastLane + Clone,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(READ_CHUNK);
    let mut timer = pin!(tokio::time::sleep(header_read_timeout));
    loop {
        // A whole head, or the reason there is none.
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + header_read_timeout);
        let head = loop {
            if buf.iter().all(|&b| b == b'\r' || b == b'\n') {
                // Empty lines before a request line are ignored (RFC 9112
                // §2.2): they are not part of a head.
                buf.clear();
            }
            if !buf.is_empty() {
                match parse(&buf) {
                    Parse::Plain(head) => break head,
                    Parse::Partial if buf.len() < MAX_HEAD => {}
                    Parse::Partial | Parse::Other => {
                        return Ended::HandOver(Prefixed::new(buf.freeze(), stream));
                    }
                }
            }
            match wait_for_head(&mut stream, &mut buf, timer.as_mut(), watch).await {
                Wait::Read => {}
                Wait::TimedOut if !buf.is_empty() => {
                    let _ = stream.write_all(TIMED_OUT).await;
                    return Ended::Closed;
                }
                Wait::TimedOut | Wait::Drained | Wait::Closed => return Ended::Closed,
            }
        };
        // Its body.
        while buf.len() < head.len + head.body_len {
            buf.reserve(head.len + head.body_len - buf.len());
            match tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf).await {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => {}
            }
        }
        let close = head.close;
        let taken = buf.split_to(head.len + head.body_len).freeze();
        let plain = PlainRequest {
            head: &head,
            bytes: &taken,
        };
        let answered = match service.call_plain(&plain) {
            Some(call) => run_watching(call.map(Ok), &mut stream, &mut buf).await,
            None => {
                let request = match head.into_request(taken) {
                    Ok(request) => request,
                    Err(taken) => {
                        // A target or a header `http` refuses: hyper
                        // answers it (400).
                        let mut all = BytesMut::from(&taken[..]);
                        all.extend_from_slice(&buf);
                        return Ended::HandOver(Prefixed::new(all.freeze(), stream));
                    }
                };
                let call = service.clone().call(request).map(|response| {
                    response.map(|response| Reply {
                        response,
                        fields: None,
                    })
                });
                run_watching(call, &mut stream, &mut buf).await
            }
        };
        let Some(reply) = answered else {
            // The caller hung up: nobody to answer.
            return Ended::Closed;
        };
        let keep = !close && !draining(watch).await;
        match write_response(&mut stream, &mut buf, &mut out, reply, keep).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Ended::Closed,
        }
        if out.capacity() > MAX_BODY {
            // One large answer does not keep its buffer for the connection.
            out = Vec::with_capacity(READ_CHUNK);
        }
    }
}

/// The answer to a head that did not arrive in time.
const TIMED_OUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// What waiting for more of a head ended with.
enum Wait {
    Read,
    TimedOut,
    Drained,
    Closed,
}

/// Reads more of a head into `buf`, unless the header read timeout passes,
/// the drain begins while nothing of a request has come, or the caller
/// closes.
async fn wait_for_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    mut timer: Pin<&mut tokio::time::Sleep>,
    watch: &mut Watch,
) -> Wait {
    buf.reserve(READ_CHUNK);
    std::future::poll_fn(|cx| {
        if buf.is_empty() && watch.draining(cx) {
            return Poll::Ready(Wait::Drained);
        }
        match read_some(stream, buf, cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Wait::Closed),
            Poll::Ready(Ok(_)) => return Poll::Ready(Wait::Read),
            Poll::Pending => {}
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wait::TimedOut);
        }
        Poll::Pending
    })
    .await
}

/// One read into the spare capacity of `buf`. Through `AsyncRead`, not
/// `try_read_buf`: a read that leaves room in the buffer tells the runtime
/// the socket is drained, so the next wait costs no system call, where
/// `try_read_buf` keeps the readiness until a read fails with `WouldBlock`
/// (one more `read` per request).
fn read_some(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// Whether the drain has begun (without waiting for it).
async fn draining(watch: &mut Watch) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(watch.draining(cx))).await
}

/// Runs the service's future; `None` when the caller closes its side first
/// (the future is then dropped, cancelling what it was doing).
async fn run_watching<F, R>(call: F, stream: &mut TcpStream, buf: &mut BytesMut) -> Option<R>
where
    F: Future<Output = Result<R, Infallible>>,
{
    let mut call = pin!(call);
    let mut watching = buf.is_empty();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        if caller_gone(stream, buf, &mut watching, cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Whether the caller has closed its side, watched while its request runs
/// or its answer waits for the body. Bytes that arrive meanwhile (a
/// pipelined request) are kept in `buf`, and from then on the socket is no
/// longer watched (`watching` turns false), as hyper does.
fn caller_gone(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    watching: &mut bool,
    cx: &mut Context<'_>,
) -> bool {
    if !*watching {
        return false;
    }
    // The request just taken still holds the buffer it was read into, so a
    // full reserve here would allocate a new one for every request: what is
    // left of it does, unless it is nearly used up.
    if buf.capacity() - buf.len() < MIN_SPARE {
        buf.reserve(READ_CHUNK);
    }
    match read_some(stream, buf, cx) {
        Poll::Ready(Ok(0) | Err(_)) => true,
        Poll::Ready(Ok(_)) => {
            *watching = false;
            false
        }
        Poll::Pending => false,
    }
}

/// Writes `reply`'s response and fields, framed, with `Date` and, unless
/// `keep`, `connection: close`. `Ok(false)` when the connection must close
/// after it.
async fn write_response(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    reply: Reply<impl WriteFields>,
    keep: bool,
) -> io::Result<bool> {
    let (parts, mut body) = reply.response.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // One pass: the framing and connection headers are this module's to
    // write; what the service said in `Connection` is noted on the way.
    let mut dated = false;
    let mut close = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONNECTION {
            close |= has_token(value.as_bytes(), "close");
            continue;
        }
        dated |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(fields) = &reply.fields {
        fields.write_fields(out);
    }
    let keep = keep && !close;
    if !dated {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        out.extend_from_slice(b"\r\n");
        stream.write_all(out).await?;
        return Ok(keep);
    }
    // The body's own size first; else a length the service set, if it is
    // sound (one number, or a list of the same number); else chunked.
    let length = http_body::Body::size_hint(&body).exact().or_else(|| {
        content_length(parts.headers.get_all(header::CONTENT_LENGTH))
            .ok()
            .flatten()
    });
    match length {
        Some(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            let mut left = length;
            while let Some(data) = next_data(stream, buf, out, &mut body).await? {
                let Some(rest) = left.checked_sub(data.len() as u64) else {
                    // More than announced: the answer cannot be framed.
                    return Ok(false);
                };
                left = rest;
                push_data(stream, out, &data).await?;
            }
            if left != 0 {
                // Less than announced: the caller learns it from the close.
                stream.write_all(out).await?;
                return Ok(false);
            }
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            while let Some(data) = next_data(stream, buf, out, &mut body).await? {
                if data.is_empty() {
                    continue;
                }
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                push_data(stream, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    stream.write_all(out).await?;
    Ok(keep)
}

/// The next data of `body` (trailers are dropped, as hyper drops them on
/// HTTP/1.1 without `TE: trailers`). What `out` holds is written first when
/// the body must be waited for, or when it has grown large. A body that
/// fails ends the answer: the error is returned, and the connection closes.
async fn next_data(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    body: &mut Body,
) -> io::Result<Option<Bytes>> {
    loop {
        if out.len() >= MAX_BODY {
            stream.write_all(out).await?;
            out.clear();
        }
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                stream.write_all(out).await?;
                out.clear();
                // A body that stalls must not outlive its caller.
                let mut watching = buf.is_empty();
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                        return Poll::Ready(Ok(frame));
                    }
                    if caller_gone(stream, buf, &mut watching, cx) {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionAborted)));
                    }
                    Poll::Pending
                })
                .await?
            }
        };
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Appends `data` to `out`, or, when it is large, writes what `out` holds
/// and then `data` itself: a large frame is neither copied nor left behind
/// as `out`'s capacity.
async fn push_data(stream: &mut TcpStream, out: &mut Vec<u8>, data: &[u8]) -> io::Result<()> {
    if data.len() < MAX_BODY {
        out.extend_from_slice(data);
        return Ok(());
    }
    stream.write_all(out).await?;
    out.clear();
    stream.write_all(data).await
}

/// Appends the current time as an HTTP date, formatted once a second.
fn push_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests;
