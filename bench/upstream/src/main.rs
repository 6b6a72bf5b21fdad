//! The fake model server of the benchmark: answers every request with the
//! same OpenAI-shaped `chat.completion` JSON.
//!
//! It is the boundary, not the subject: it must cost as little CPU as
//! possible, so it runs on one thread, keeps connections alive, sets
//! `TCP_NODELAY` and never parses the request body (it only drains it, so the
//! connection can be reused). Every proxy under test — nginx, warder,
//! LiteLLM — forwards the same request to it and gets the same bytes back.
//!
//! Usage: `bench-upstream [ADDR]` (default `127.0.0.1:0`); prints
//! `listening on ADDR` on stdout once bound.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

/// A complete, realistic `POST /v1/chat/completions` answer (fixed bytes).
const COMPLETION: &[u8] = br#"{"id":"chatcmpl-bench0000000000000000000001","object":"chat.completion","created":1700000000,"model":"bench","system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a fixed answer from the warder benchmark upstream.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26}}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the body so the connection stays reusable; its content is ignored.
    let _ = req.into_body().collect().await;
    let mut r = Response::new(Full::new(Bytes::from_static(COMPLETION)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    loop {
        // The harness ends this process with SIGTERM; nothing to drain.
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer));
        tokio::spawn(conn);
    }
}
