//! The floor of the benchmark: the smallest reverse proxy on the stack
//! warder's sync predicts run on — tokio, with the scheduler warder picks
//! (the single-threaded one when the process may run on one CPU, else the
//! multi-threaded one), and HTTP/1.1 read and written by hand with
//! `httparse` on both sides (`TCP_NODELAY` both ways), as warder serves a
//! plain request (its `server/h1.rs`) and calls an `http://` model (its
//! `upstream/exchange.rs`). It has no authentication, no rate limit, no
//! metrics, no log line and no JSON check, and it keeps one upstream
//! connection per client connection instead of a pool. What it costs per
//! request is what any gateway built this way pays before doing anything of
//! its own.
//!
//! It takes what the benchmark sends: a request with a `Content-Length` body
//! (or none), answered with a `Content-Length` body. It forwards the
//! request's headers but `Host`, and the upstream's answer head as it came.
//! Anything else closes the connection.
//!
//! Usage: `bare-proxy LISTEN_ADDR UPSTREAM_URL`; prints `listening on ADDR`.

use std::io::Write;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
    let addr: SocketAddr = args
        .next()
        .ok_or_else(|| bad("LISTEN_ADDR missing"))?
        .parse()
        .map_err(|_| bad("LISTEN_ADDR invalid"))?;
    let url = args.next().ok_or_else(|| bad("UPSTREAM_URL missing"))?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("UPSTREAM_URL must be http://"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let upstream: SocketAddr = host.parse().map_err(|_| bad("UPSTREAM_URL host invalid"))?;
    let target = Target {
        addr: upstream,
        host: host.to_owned(),
        path: if path.is_empty() { "/" } else { path }.to_owned(),
    };
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1);
    let mut rt = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all().build()?.block_on(serve(addr, target))
}

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

async fn serve(addr: SocketAddr, target: Target) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    loop {
        // The harness ends this process with SIGTERM; nothing to drain.
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, target.clone()));
    }
}

/// A message's head length and its `Content-Length` (0 when absent).
fn framing(headers: &[httparse::Header<'_>], head: usize) -> Option<(usize, usize)> {
    let mut length = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
        }
    }
    Some((head, length))
}

/// Reads until `buf` holds one whole message (head and body); returns the
/// head's and the body's lengths.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Option<Option<(usize, usize)>>,
) -> Option<(usize, usize)> {
    loop {
        if let Some((head, length)) = parse(buf)? {
            while buf.len() < head + length {
                buf.reserve(head + length - buf.len());
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            return Some((head, length));
        }
        buf.reserve(8 * 1024);
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

fn parse_request(buf: &[u8]) -> Option<Option<(usize, usize)>> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut slots);
    match r.parse(buf).ok()? {
        httparse::Status::Complete(n) => framing(r.headers, n).map(Some),
        httparse::Status::Partial => Some(None),
    }
}

fn parse_response(buf: &[u8]) -> Option<Option<(usize, usize)>> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut slots);
    match r.parse(buf).ok()? {
        httparse::Status::Complete(n) => framing(r.headers, n).map(Some),
        httparse::Status::Partial => Some(None),
    }
}

async fn connection(mut client: TcpStream, target: Target) -> Option<()> {
    let mut upstream: Option<TcpStream> = None;
    let mut from_client = Vec::with_capacity(8 * 1024);
    let mut from_upstream = Vec::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(8 * 1024);
    loop {
        let (head, length) = read_message(&mut client, &mut from_client, parse_request).await?;
        // The request line and headers again, with the upstream's target
        // and host.
        out.clear();
        {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut slots);
            r.parse(&from_client[..head]).ok()?;
            out.extend_from_slice(r.method?.as_bytes());
            out.push(b' ');
            out.extend_from_slice(target.path.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
            out.extend_from_slice(target.host.as_bytes());
            out.extend_from_slice(b"\r\n");
            for h in r.headers.iter() {
                if !h.name.eq_ignore_ascii_case("host") {
                    out.extend_from_slice(h.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&from_client[head..head + length]);
        from_client.drain(..head + length);
        if upstream.is_none() {
            let s = TcpStream::connect(target.addr).await.ok()?;
            s.set_nodelay(true).ok()?;
            upstream = Some(s);
        }
        let up = upstream.as_mut()?;
        up.write_all(&out).await.ok()?;
        let (head, length) = read_message(up, &mut from_upstream, parse_response).await?;
        client
            .write_all(&from_upstream[..head + length])
            .await
            .ok()?;
        from_upstream.drain(..head + length);
    }
}
