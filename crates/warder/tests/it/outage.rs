//! PostgreSQL unreachable: `/readyz` fails, requests whose auth is cached keep
//! working, others get 503 in the error shape — no panic, no long hang.
//! PostgreSQL restarted (its connections closed under the pool): the next
//! requests are served on new connections, not failed on the dead ones.

use crate::helpers::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A TCP proxy to PostgreSQL that the test can cut.
struct Cuttable {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Cuttable {
    async fn to(target: SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut tasks = JoinSet::new();
        let conns = std::sync::Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let c2 = conns.clone();
        tasks.spawn(async move {
            // Connections are owned by the accept task: cutting it drops them all.
            let _keep = c2.clone();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                c2.lock().await.spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        tasks.spawn(async move {
            let _conns = conns;
            std::future::pending::<()>().await;
        });
        Cuttable { addr, tasks }
    }

    fn cut(&mut self) {
        self.tasks.abort_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_keeps_cached_callers_working() {
    let Some(Backend::Postgres(base)) = Backend::postgres() else {
        return;
    };
    let db = PgDatabase::create(&base).await;
    let url = url::Url::parse(&db.url).expect("url");
    let pg: SocketAddr = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    )
    .parse()
    .expect("pg addr");
    let mut proxy = Cuttable::to(pg).await;
    let mut through_proxy = url.clone();
    through_proxy
        .set_port(Some(proxy.addr.port()))
        .expect("port");
    let via = through_proxy.to_string();
    let app = spawn_app_with(Backend::Sqlite, |c| c.database_url = Some(via)).await;
    let up = fake_upstream().await;
    app.register("m", &up.url("/echo"), json!({})).await;
    let warm = app.caller("warm", &["m"], None).await;
    let cold = app.caller("cold", &["m"], None).await;
    assert_eq!(
        app.predict(&warm.key, "/models/m/predict", json!({}))
            .await
            .status(),
        200
    );

    proxy.cut();

    for _ in 0..3 {
        let resp = app.predict(&warm.key, "/models/m/predict", json!({})).await;
        assert_eq!(resp.status(), 200, "a cached caller keeps working");
    }
    let started = Instant::now();
    let (s, body, headers) =
        json_of(app.predict(&cold.key, "/models/m/predict", json!({})).await).await;
    assert_error(s, &body, 503, "SERVICE_UNAVAILABLE");
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded by the pool's acquire timeout"
    );
    let ready = app
        .client
        .get(format!("http://{}/readyz", app.ops_addr))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_closed_by_postgres_are_replaced_unseen() {
    use sqlx::Connection;
    let Some(Backend::Postgres(base)) = Backend::postgres() else {
        return;
    };
    let db = PgDatabase::create(&base).await;
    let url = db.url.clone();
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.database_url = Some(url);
        c.worker_enabled = false;
    })
    .await;
    let up = fake_upstream().await;
    app.register("m", &up.url("/echo"), json!({})).await;
    // Connections in the pool, used just now.
    let mut callers = Vec::new();
    for i in 0..4 {
        callers.push(app.caller(&format!("c{i}"), &["m"], None).await);
    }
    let name = url::Url::parse(&db.url)
        .expect("url")
        .path()
        .trim_start_matches('/')
        .to_owned();
    let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect");
    // What a server restart does to them.
    let closed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(!closed.is_empty(), "the gateway held connections to {name}");
    // Idle past the point where the pool checks a connection before use.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Cold keys: each predict reads the store.
    for c in &callers {
        let resp = app.predict(&c.key, "/models/m/predict", json!({})).await;
        assert_eq!(resp.status(), 200, "served on a new connection");
    }
    let (s, body) = app.admin(reqwest::Method::GET, "/admin/models", None).await;
    assert_eq!(s, 200, "{body}");
    drop(db);
}
