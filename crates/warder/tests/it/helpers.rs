//! Test harness: `spawn_app()` on port 0 over SQLite or PostgreSQL, and
//! small HTTP helpers. Every test gets its own data dir or database, so no
//! test depends on another's state. The fake model server lives in
//! `fake_upstream` and is re-exported here.

pub use crate::fake_upstream::*;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use warder::state::SharedState;
use warder::{App, Config};
use warder_core::{ApiKey, Store};

/// Which store a scenario runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file in the test's data dir.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres(String),
}

fn base_pg_url() -> String {
    std::env::var("WARDER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

impl Backend {
    /// The PostgreSQL backend, or `None` when PostgreSQL is knowingly skipped
    /// (`WARDER_TEST_SKIP_POSTGRES=1` outside CI). Under CI it is never skipped.
    pub fn postgres() -> Option<Backend> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let skip = std::env::var("WARDER_TEST_SKIP_POSTGRES").is_ok_and(|v| v == "1");
        if skip && !ci {
            eprintln!("skipping PostgreSQL variant (WARDER_TEST_SKIP_POSTGRES=1)");
            return None;
        }
        Some(Backend::Postgres(base_pg_url()))
    }
}

/// Runs each named scenario on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(b) = $crate::helpers::Backend::postgres() {
                    super::$name(b).await
                }
            }
        }
    )* };
}

/// A fresh database on the PostgreSQL server of `base`; dropped with the app.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create(base: &str) -> PgDatabase {
        use sqlx::Connection;
        let name = format!("warder_t_{}", warder_core::new_id(12));
        let mut conn = sqlx::PgConnection::connect(base)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for this test: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{}", &base[..i], name),
            None => panic!("bad database url {base}"),
        };
        PgDatabase {
            admin_url: base.to_owned(),
            name,
            url,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Best effort, on its own runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A running gateway for one test.
pub struct TestApp {
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub url: String,
    pub admin_key: String,
    pub client: reqwest::Client,
    pub state: SharedState,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    _db: Option<PgDatabase>,
}

/// A gateway with the default test configuration.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// A gateway whose configuration `tweak` adjusts.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_over(backend, tweak, |store| store).await
}

/// A gateway over the configured store as `wrap` returns it (tests wrap the
/// store to observe every call the app makes).
pub async fn spawn_app_over(
    backend: Backend,
    tweak: impl FnOnce(&mut Config),
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_key = ApiKey::generate().expose();
    let db = match &backend {
        Backend::Sqlite => None,
        Backend::Postgres(base) => Some(PgDatabase::create(base).await),
    };
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ops_listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("data"),
        database_url: db.as_ref().map(|d| d.url.clone()),
        bootstrap_admin_key: Some(admin_key.clone()),
        ..Config::default()
    };
    tweak(&mut config);
    let data_dir = config.data_dir.clone();
    let store = warder::app::open_store(&config).await.expect("store opens");
    let app = App::build_with_store(config, wrap(Arc::new(store)))
        .await
        .expect("app builds");
    let addr = app.public_addr();
    let ops_addr = app.ops_addr();
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        ops_addr,
        url: format!("http://{addr}"),
        admin_key,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        state,
        data_dir,
        shutdown: Some(tx),
        handle: Some(handle),
        _dir: dir,
        _db: db,
    }
}

/// A user with a key and a grant on one model.
pub struct Caller {
    pub user_id: String,
    pub key: String,
    pub key_id: String,
}

/// A registered model and its first version.
pub struct Registered {
    pub model_id: String,
    pub name: String,
    pub version_id: String,
}

impl TestApp {
    /// Signals shutdown and waits for the app to stop.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(40), h).await;
        }
    }

    /// Signals shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// An admin API call with the bootstrap admin key.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with_key(&self.admin_key.clone(), method, path, body)
            .await
    }

    /// A JSON call with a key; answers status and JSON body (Null if none).
    pub async fn call_with_key(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.url, path))
            .header("Authorization", format!("Api-Key {key}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POSTs JSON to a predict route with a key.
    pub async fn predict(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{}", self.url, path))
            .header("Authorization", format!("Api-Key {key}"))
            .json(&body)
            .send()
            .await
            .expect("predict sent")
    }

    /// Creates a model with one version at `upstream_url` (+ extra version fields).
    pub async fn register(&self, name: &str, upstream_url: &str, extra: Value) -> Registered {
        let (s, model) = self
            .admin(
                reqwest::Method::POST,
                "/admin/models",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{model}");
        let mut body = json!({ "upstream_url": upstream_url });
        if let (Some(o), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        let (s, version) = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/models/{name}/versions"),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{version}");
        Registered {
            model_id: model["id"].as_str().expect("id").to_owned(),
            name: name.to_owned(),
            version_id: version["id"].as_str().expect("id").to_owned(),
        }
    }

    /// Creates a user with a key; grants `models` under `policy_id`.
    pub async fn caller(&self, name: &str, models: &[&str], policy_id: Option<&str>) -> Caller {
        self.caller_with_scopes(name, models, policy_id, &[]).await
    }

    /// As [`TestApp::caller`], with key scopes.
    pub async fn caller_with_scopes(
        &self,
        name: &str,
        models: &[&str],
        policy_id: Option<&str>,
        scopes: &[&str],
    ) -> Caller {
        let (s, user) = self
            .admin(
                reqwest::Method::POST,
                "/admin/users",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{user}");
        let user_id = user["id"].as_str().expect("id").to_owned();
        let key = self.new_key(&user_id, scopes).await;
        for m in models {
            let (s, g) = self
                .admin(
                    reqwest::Method::POST,
                    "/admin/grants",
                    Some(json!({ "user_id": user_id, "model": m, "policy_id": policy_id })),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{g}");
        }
        Caller {
            user_id,
            key_id: key["id"].as_str().expect("id").to_owned(),
            key: key["key"].as_str().expect("key").to_owned(),
        }
    }

    /// Creates a key for a user; answers the admin API's JSON.
    pub async fn new_key(&self, user_id: &str, scopes: &[&str]) -> Value {
        let (s, key) = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/users/{user_id}/keys"),
                Some(json!({ "name": "test", "scopes": scopes })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{key}");
        key
    }

    /// Creates a policy; answers its id.
    pub async fn policy(&self, name: &str, rate: f64, burst: u32) -> String {
        let (s, p) = self
            .admin(
                reqwest::Method::POST,
                "/admin/policies",
                Some(json!({ "name": name, "rate_limit_per_second": rate, "burst": burst })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        p["id"].as_str().expect("id").to_owned()
    }

    /// `GET url` (any listener's), its status and JSON body.
    pub async fn get_json(&self, url: &str) -> (StatusCode, Value) {
        let resp = self.client.get(url).send().await;
        let (s, body, _) = json_of(resp.unwrap_or_else(|e| panic!("GET {url}: {e}"))).await;
        (s, body)
    }

    /// The Prometheus text of the ops listener.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.ops_addr))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.signal_shutdown();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Asserts the documented error shape and code; answers the body.
pub fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status.as_u16(), expected_status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let rid = body["error"]["request_id"].as_str().expect("request_id");
    assert_eq!(rid.len(), 32, "{body}");
    assert!(rid.bytes().all(|b| b.is_ascii_hexdigit()), "{body}");
}

/// A 422 `INVALID_INPUT` that names the version's `input_schema`.
pub fn assert_schema_refusal(status: StatusCode, body: &Value) {
    assert_error(status, body, 422, "INVALID_INPUT");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("input_schema")),
        "{body}"
    );
}

/// Reads a reqwest response as (status, JSON).
pub async fn json_of(resp: reqwest::Response) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

/// The value of one sample in Prometheus text (0 when absent).
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

/// A loopback port free a moment ago, for a child process told to bind it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
