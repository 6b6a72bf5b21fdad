//! The upstream call of a sync predict or an async attempt to a plain
//! `http://` model server: one buffered request and its answer, HTTP/1.1
//! written and read by hand on a pooled `TcpStream`, in the calling task.
//!
//! Why by hand: hyper's client connection runs as a task of its own; a
//! request crosses to it through a channel, its answer comes back through a
//! oneshot and its body through another channel, and every answer's head
//! becomes a `HeaderMap` through hyper's general decoder. For a proxy
//! sending a small JSON body to a keep-alive model server, that is most of
//! what the call costs: under callgrind, about 15 800 of a warm predict's
//! 55 200 instructions before this module, 46 900 in all with it. (An
//! experiment on `bench/`'s setup, not kept: the bare hyper proxy with this
//! exchange in place of hyper-util's client did 79.6 k req/s at 11.8 µs of
//! CPU per request, against 62.8 k at 15.7 µs with it, and nginx 66.4 k at
//! 14.7 µs.) The parsing itself is `httparse`'s, the crate hyper parses
//! with.
//!
//! What goes this way: a `POST` whose body is in memory and at most
//! [`MAX_BODY`] bytes ([`super::UpstreamClient::send_buffered`]). Larger
//! bodies, streamed ones and HTTPS keep hyper (see [`super::pool`]): the
//! exchange writes the whole request before it reads, and a request this
//! small normally fits in the socket buffers, so that an upstream answering
//! early without reading it (a 413, say) does not block the write (if it
//! did, the call would end at its deadline).
//!
//! The answer's framing follows RFC 9112 §6.3: no body for 1xx, 204 and 304;
//! `Transfer-Encoding` ending in `chunked` is decoded; any other transfer
//! coding, or neither header, reads to the end of the connection; a
//! `Content-Length` must be one number (repeats must agree); beside a
//! `Transfer-Encoding` it is dropped and the connection is not reused; an
//! HTTP/1.0 answer with a `Transfer-Encoding` is refused (RFC 9112 §6.1).
//! Interim (1xx) answers are skipped. A connection goes back to its pool only when its
//! answer was read to the end, nothing follows it in the buffer, and it is
//! HTTP/1.1 without `Connection: close`.

use super::JsonPost;
use crate::http1_fields::{content_length, has_token};
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod body;

pub(crate) use body::{send, RawBody};

/// Requests with a larger body go through hyper's client.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// An answer's head, and a chunked body's trailers, may not be larger.
const MAX_HEAD: usize = 64 * 1024;
/// An answer may not have more header fields.
const MAX_HEADERS: usize = 100;
/// A chunk-size line may not be longer.
const MAX_CHUNK_LINE: usize = 1024;

/// A connection idle this long is checked with a system call before reuse.
const PEEK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What a read buffer grows by.
const READ_CHUNK: usize = 8 * 1024;

/// The error type of an upstream body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A pooled connection and what was read from it but not yet used.
pub(crate) struct RawConn {
    /// The socket (`TCP_NODELAY`, non-blocking, registered with the runtime).
    pub(crate) io: TcpStream,
    /// Read but not yet consumed: empty whenever the connection is idle.
    buf: BytesMut,
}

impl RawConn {
    pub(crate) fn new(io: TcpStream) -> RawConn {
        RawConn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Still usable after `idle` in the pool: the server has not closed it
    /// (or sent anything unasked).
    ///
    /// After a short idle time this asks the runtime: it costs no system
    /// call unless the runtime saw the socket become readable (the short
    /// read that took the last answer cleared that). A close the runtime has
    /// not yet seen goes unnoticed, as it would with hyper's client; the
    /// request then fails as sent without an answer. Servers close idle
    /// connections after seconds (uvicorn after 5), so after [`PEEK_AFTER`]
    /// the socket itself is asked, with a non-blocking `MSG_PEEK`.
    pub(crate) fn is_open(&self, idle: std::time::Duration) -> bool {
        let would_block =
            |r: io::Result<usize>| matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        if idle >= PEEK_AFTER {
            let mut probe = [std::mem::MaybeUninit::uninit(); 1];
            return would_block(socket2::SockRef::from(&self.io).peek(&mut probe));
        }
        let mut probe = [0u8; 1];
        would_block(self.io.try_read(&mut probe))
    }

    /// Reads more into the buffer; `Ok(0)` is the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.buf).await
    }
}

/// How an exchange failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No byte of the request was written: safe to send elsewhere.
    Unsent(io::Error),
    /// The request (or part of it) went out, and no complete answer head
    /// came back.
    Broken(String),
}

/// The request as it goes on the wire: `POST`, the origin-form target,
/// `Host`, `Content-Type`, `post`'s headers (those a header may hold; never
/// a framing one, which is this function's to write), the body's
/// `Content-Length`, the body.
pub(crate) fn encode(post: &JsonPost<'_>, host: Option<&HeaderValue>, body: &[u8]) -> Vec<u8> {
    let target = post.url.path_and_query().map_or("/", |p| p.as_str());
    let mut w = Vec::with_capacity(256 + target.len() + body.len());
    w.extend_from_slice(b"POST ");
    w.extend_from_slice(target.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        field(&mut w, header::HOST.as_str(), host.as_bytes());
    }
    field(&mut w, header::CONTENT_TYPE.as_str(), b"application/json");
    for (name, value) in post.headers {
        if super::sendable(name, value) {
            field(&mut w, name.as_str(), value.as_bytes());
        }
    }
    let mut n = itoa::Buffer::new();
    field(
        &mut w,
        header::CONTENT_LENGTH.as_str(),
        n.format(body.len()).as_bytes(),
    );
    w.extend_from_slice(b"\r\n");
    w.extend_from_slice(body);
    w
}

/// A header field; `HeaderName` and `HeaderValue` hold no CR or LF.
fn field(w: &mut Vec<u8>, name: &str, value: &[u8]) {
    w.extend_from_slice(name.as_bytes());
    w.extend_from_slice(b": ");
    w.extend_from_slice(value);
    w.extend_from_slice(b"\r\n");
}

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (1xx, 204, 304, `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
    /// Up to the end of the connection.
    Close,
}

/// A final answer's head.
struct Head {
    status: StatusCode,
    version: Version,
    /// As received, less a `Content-Length` beside a `Transfer-Encoding`.
    headers: HeaderMap,
    framing: Framing,
    /// The connection may carry another request once the body is read.
    keep_alive: bool,
}

/// Writes `wire` and reads the answer's head (skipping interim answers).
/// What was read past the head stays in `conn`'s buffer.
async fn exchange(conn: &mut RawConn, wire: &[u8]) -> Result<Head, Failure> {
    let mut written = 0;
    while written < wire.len() {
        match conn.io.write(&wire[written..]).await {
            Ok(0) if written == 0 => return Err(Failure::Unsent(io::ErrorKind::WriteZero.into())),
            Ok(0) => {
                return Err(Failure::Broken(
                    "the connection closed while sending".into(),
                ))
            }
            Ok(n) => written += n,
            Err(e) if written == 0 => return Err(Failure::Unsent(e)),
            Err(e) => return Err(Failure::Broken(format!("sending the request: {e}"))),
        }
    }
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf).map_err(Failure::Broken)? {
                Some(head) => {
                    if head.status.is_informational() {
                        if head.status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(Failure::Broken("the model switched protocols".into()));
                        }
                        continue;
                    }
                    return Ok(head);
                }
                None if conn.buf.len() > MAX_HEAD => {
                    return Err(Failure::Broken(format!(
                        "the answer's head is over {MAX_HEAD} bytes"
                    )))
                }
                None => {}
            }
        }
        match conn.fill().await {
            Ok(0) if conn.buf.is_empty() => {
                return Err(Failure::Broken(
                    "the connection closed before an answer".into(),
                ))
            }
            Ok(0) => return Err(Failure::Broken("the answer's head was cut off".into())),
            Ok(_) => {}
            Err(e) => return Err(Failure::Broken(format!("reading the answer: {e}"))),
        }
    }
}

/// The head at the start of `buf`, split off it, or `None` (and `buf` as it
/// was) if it is not complete yet.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("the answer is not valid HTTP/1: {e}")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("the answer's status is not valid")?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field is, so that the values can share the head's bytes
    // once it is split off `buf` (copied, each would cost an allocation).
    let mut at = [[0u32; 4]; MAX_HEADERS];
    let offset = |part: &[u8]| (part.as_ptr() as usize - buf.as_ptr() as usize) as u32;
    let count = parsed.headers.len();
    for (f, at) in parsed.headers.iter().zip(at.iter_mut()) {
        let (name, value) = (offset(f.name.as_bytes()), offset(f.value));
        *at = [
            name,
            name + f.name.len() as u32,
            value,
            value + f.value.len() as u32,
        ];
    }
    let bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &[name_at, name_end, value_at, value_end] in &at[..count] {
        let name = &bytes[name_at as usize..name_end as usize];
        let name = HeaderName::from_bytes(name)
            .map_err(|_| format!("invalid header name '{}'", String::from_utf8_lossy(name)))?;
        let value =
            HeaderValue::from_maybe_shared(bytes.slice(value_at as usize..value_end as usize))
                .map_err(|_| format!("invalid value of header '{name}'"))?;
        headers.append(name, value);
    }
    let coded = headers.contains_key(header::TRANSFER_ENCODING);
    if coded && version == Version::HTTP_10 {
        return Err("an HTTP/1.0 answer with a Transfer-Encoding".into());
    }
    let framing = framing(status, &headers)?;
    // Both framings: the length is not the body's, and the sender is not
    // to be trusted with another request (RFC 9112 §6.3).
    let both = coded && headers.remove(header::CONTENT_LENGTH).is_some();
    let keep_alive = version == Version::HTTP_11
        && framing != Framing::Close
        && !both
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), "close"));
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// RFC 9112 §6.3, for the answer to a request that was not `HEAD`.
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<Framing, String> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    let length = content_length(headers.get_all(header::CONTENT_LENGTH))
        .map_err(|()| "the answer's Content-Length is not one number")?;
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

#[cfg(test)]
mod tests;
