//! An answer read off a hand-driven connection: [`send`] writes the
//! request and reads the head, and [`RawBody`] reads the body as its
//! framing says (a length, chunks, or to the end of the connection), then
//! hands the connection back to its pool when it may be reused.

use super::super::pool::Host;
use super::{exchange, BoxError, Failure, Framing, RawConn, MAX_CHUNK_LINE, MAX_HEAD};
use bytes::{Buf, Bytes};
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Sends `wire` on `conn` and answers with the response; `home` takes the
/// connection back once the body has been read to its end.
pub(crate) async fn send(
    mut conn: RawConn,
    wire: &[u8],
    home: Arc<Host>,
) -> Result<Response<RawBody>, Failure> {
    let head = exchange(&mut conn, wire).await?;
    let state = match head.framing {
        Framing::Empty => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunk(Chunk::Size),
        Framing::Close => State::Close,
    };
    let mut body = RawBody {
        conn: Some(conn),
        home: head.keep_alive.then_some(home),
        state,
        ready: None,
    };
    body.take_buffered();
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// Where a body's reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Read to its end.
    Done,
    /// This many bytes to go.
    Length(u64),
    /// Chunked, at this point.
    Chunk(Chunk),
    /// Until the server closes.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one; this many
    /// bytes of them so far.
    Trailers(usize),
}

/// An answer's body read from a hand-driven connection.
pub struct RawBody {
    conn: Option<RawConn>,
    /// The pool the connection goes back to; `None` when it must not.
    home: Option<Arc<Host>>,
    state: State,
    /// The whole body, when it had all arrived with the head.
    ready: Option<Bytes>,
}

impl RawBody {
    /// The common case: a `Content-Length` answer that arrived in full with
    /// its head is taken at once, and its connection goes back right away.
    fn take_buffered(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        if let State::Length(n) = self.state {
            if conn.buf.len() as u64 >= n {
                self.ready = Some(conn.buf.split_to(n as usize).freeze());
                self.state = State::Done;
            }
        }
        if self.state == State::Done {
            self.release();
        }
    }

    /// The body is read to its end: the connection goes home if it may.
    fn release(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            // Bytes past the answer were never asked for.
            if conn.buf.is_empty() {
                home.put_raw(conn);
            }
        }
    }

    fn fail(&mut self, message: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.home = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(io::Error::other(message).into())))
    }

    /// `n` bytes (at most) of data from the buffer.
    fn data(conn: &mut RawConn, n: u64) -> Bytes {
        let take = conn.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        conn.buf.split_to(take).freeze()
    }
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBody")
            .field("state", &self.state)
            .field("pooled", &self.home.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpBody for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            if this.state == State::Done {
                this.release();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Use what is buffered; read only when it is not enough.
            let need_more = match this.state {
                State::Done => unreachable!("handled above"),
                State::Length(n) => {
                    if !conn.buf.is_empty() {
                        let data = Self::data(conn, n);
                        let left = n - data.len() as u64;
                        this.state = if left == 0 {
                            State::Done
                        } else {
                            State::Length(left)
                        };
                        if left == 0 {
                            this.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    true
                }
                State::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    true
                }
                State::Chunk(Chunk::Data(n)) => {
                    if !conn.buf.is_empty() {
                        let data = Self::data(conn, n);
                        let left = n - data.len() as u64;
                        this.state = State::Chunk(if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        });
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    true
                }
                State::Chunk(Chunk::DataEnd) => {
                    if conn.buf.len() >= 2 {
                        if &conn.buf[..2] != b"\r\n" {
                            return this.fail("a chunk does not end in CRLF".into());
                        }
                        conn.buf.advance(2);
                        this.state = State::Chunk(Chunk::Size);
                        continue;
                    }
                    true
                }
                State::Chunk(Chunk::Size) => match line(&conn.buf, MAX_CHUNK_LINE) {
                    Ok(Some(end)) => {
                        let size = chunk_size(&conn.buf[..end]);
                        conn.buf.advance(end + 2);
                        match size {
                            Some(0) => this.state = State::Chunk(Chunk::Trailers(0)),
                            Some(n) => this.state = State::Chunk(Chunk::Data(n)),
                            None => return this.fail("a chunk size is not valid".into()),
                        }
                        continue;
                    }
                    Ok(None) => true,
                    Err(e) => return this.fail(e),
                },
                State::Chunk(Chunk::Trailers(seen)) => match line(&conn.buf, MAX_HEAD) {
                    Ok(Some(0)) => {
                        conn.buf.advance(2);
                        this.state = State::Done;
                        continue;
                    }
                    Ok(Some(end)) if seen + end + 2 <= MAX_HEAD => {
                        // Trailer fields are not passed on.
                        conn.buf.advance(end + 2);
                        this.state = State::Chunk(Chunk::Trailers(seen + end + 2));
                        continue;
                    }
                    Ok(Some(_)) => {
                        return this.fail(format!("the trailers are over {MAX_HEAD} bytes"))
                    }
                    Ok(None) => true,
                    Err(e) => return this.fail(e),
                },
            };
            debug_assert!(need_more);
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.state == State::Close => {
                    // The end of a close-delimited body; the connection is
                    // spent.
                    this.home = None;
                    this.state = State::Done;
                }
                Ok(0) => return this.fail("the connection closed inside the answer".into()),
                Ok(_) => {}
                Err(e) => return this.fail(format!("reading the answer: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.ready, self.state) {
            (Some(data), _) => SizeHint::with_exact(data.len() as u64),
            (None, State::Done) => SizeHint::with_exact(0),
            (None, State::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The length of the CRLF-ended line at the start of `buf`, without its
/// CRLF; `None` while it is not complete.
pub(super) fn line(buf: &[u8], max: usize) -> Result<Option<usize>, String> {
    match buf.iter().take(max + 2).position(|&b| b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err("a line of the chunked body does not end in CRLF".into()),
        None if buf.len() > max + 1 => {
            Err(format!("a line of the chunked body is over {max} bytes"))
        }
        None => Ok(None),
    }
}

/// A chunk-size line: hexadecimal digits, then optional spaces or tabs and
/// `;`-extensions, which are ignored.
pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if digits == 0 || !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    let significant = &line[zeros..digits];
    if significant.len() > 15 {
        return None;
    }
    if significant.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(significant).ok()?, 16).ok()
}
