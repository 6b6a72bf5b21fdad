//! The floor of the benchmark: the smallest reverse proxy on the stack
//! warder's server is built on (tokio, with the scheduler warder picks: the
//! single-threaded one when the process may run on one CPU, else the
//! multi-threaded one; hyper server)
//! with hyper-util's pooled client (`TCP_NODELAY` both ways), and no
//! authentication, no rate limit, no metrics and no log line. What it costs
//! per request is what any gateway built on this stack pays before doing
//! anything of its own. (warder's sync predicts to `http://` upstreams
//! skip hyper's client: they write and read the upstream exchange by hand,
//! see warder's ARCHITECTURE.md, decision (l). So warder can do better than
//! this floor, and its margin over it understates what its features cost.)
//!
//! Usage: `bare-proxy LISTEN_ADDR UPSTREAM_URL`; prints `listening on ADDR`.

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::Write;
use std::net::SocketAddr;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
    let addr: SocketAddr = args
        .next()
        .ok_or_else(|| bad("LISTEN_ADDR missing"))?
        .parse()
        .map_err(|_| bad("LISTEN_ADDR invalid"))?;
    let upstream: hyper::Uri = args
        .next()
        .ok_or_else(|| bad("UPSTREAM_URL missing"))?
        .parse()
        .map_err(|_| bad("UPSTREAM_URL invalid"))?;
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1);
    let mut rt = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all().build()?.block_on(serve(addr, upstream))
}

async fn serve(addr: SocketAddr, upstream: hyper::Uri) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            *req.uri_mut() = upstream.clone();
            req.headers_mut().remove(hyper::header::HOST);
            let client = client.clone();
            async move {
                match client.request(req).await {
                    Ok(r) => Ok::<_, std::convert::Infallible>(r.map(http_body_util::Either::Left)),
                    Err(_) => {
                        let mut r = Response::new(http_body_util::Either::Right(
                            http_body_util::Empty::new(),
                        ));
                        *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                        Ok(r)
                    }
                }
            }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(conn);
    }
}
