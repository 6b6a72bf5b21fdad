//! Cluster mode: two gateway processes sharing one PostgreSQL database and
//! one Redis behave as one — revocations, promotions and rate limits hold
//! across nodes, and a Redis outage degrades to the documented answers.

use crate::helpers::{fake_upstream, free_port, PgDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn redis_url() -> String {
    std::env::var("WARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// PostgreSQL for a cluster test, unless knowingly skipped outside CI.
async fn database() -> Option<PgDatabase> {
    match crate::helpers::Backend::postgres()? {
        crate::helpers::Backend::Postgres(base) => Some(PgDatabase::create(&base).await),
        crate::helpers::Backend::Sqlite => None,
    }
}

/// One `warder serve` process.
struct Node {
    child: Child,
    url: String,
    ops: String,
    dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    admin_key: String,
    client: reqwest::Client,
    prefix: String,
    _db: PgDatabase,
}

impl Cluster {
    async fn new() -> Option<Cluster> {
        let db = database().await?;
        Some(Cluster {
            admin_key: warder_core::ApiKey::generate().expose(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            prefix: format!("t{}", warder_core::new_id(10)),
            _db: db,
        })
    }

    async fn node(&self, redis: &str, extra_env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, ops_port) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warder"));
        cmd.args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--ops-listen", &format!("127.0.0.1:{ops_port}")])
            .env("WARDER_DATABASE_URL", &self._db.url)
            .env("WARDER_REDIS_URL", redis)
            .env("WARDER_REDIS_PREFIX", &self.prefix)
            .env("WARDER_BOOTSTRAP_ADMIN_KEY", &self.admin_key)
            .env("WARDER_LOG_LEVEL", "warn")
            .env("WARDER_LOG_FORMAT", "json")
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("out.log")).expect("log file"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("err.log")).expect("log file"),
            ));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut node = Node {
            child: cmd.spawn().expect("warder starts"),
            url: format!("http://127.0.0.1:{port}"),
            ops: format!("http://127.0.0.1:{ops_port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.client.get(format!("{}/readyz", node.ops)).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            // A node that exited, or never got ready, says why.
            let exited = node.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let log = |name: &str| {
                    std::fs::read_to_string(node.dir.path().join(name)).unwrap_or_default()
                };
                panic!(
                    "node did not become ready (exited: {exited:?})\nstdout: {}\nstderr: {}",
                    log("out.log"),
                    log("err.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        node
    }

    async fn admin(&self, node: &Node, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .client
            .request(method, format!("{}{}", node.url, path))
            .header("Authorization", format!("Api-Key {}", self.admin_key))
            .json(&body)
            .send()
            .await
            .expect("admin call");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.expect("json")
    }

    /// A model at `upstream`, a user with a key and a grant under a policy.
    async fn setup(
        &self,
        node: &Node,
        model: &str,
        upstream: &str,
        rate: f64,
        burst: u32,
    ) -> (String, String) {
        self.admin(
            node,
            reqwest::Method::POST,
            "/admin/models",
            json!({"name": model}),
        )
        .await;
        self.admin(
            node,
            reqwest::Method::POST,
            &format!("/admin/models/{model}/versions"),
            json!({"upstream_url": upstream}),
        )
        .await;
        let policy = self
            .admin(
                node,
                reqwest::Method::POST,
                "/admin/policies",
                json!({"name": format!("p-{model}"), "rate_limit_per_second": rate, "burst": burst}),
            )
            .await;
        let user = self
            .admin(
                node,
                reqwest::Method::POST,
                "/admin/users",
                json!({"name": format!("u-{model}")}),
            )
            .await;
        let uid = user["id"].as_str().expect("id");
        let key = self
            .admin(
                node,
                reqwest::Method::POST,
                &format!("/admin/users/{uid}/keys"),
                json!({"name": "k"}),
            )
            .await;
        self.admin(
            node,
            reqwest::Method::POST,
            "/admin/grants",
            json!({"user_id": uid, "model": model, "policy_id": policy["id"]}),
        )
        .await;
        (
            key["key"].as_str().expect("key").to_owned(),
            key["id"].as_str().expect("id").to_owned(),
        )
    }

    async fn predict(&self, node: &Node, key: &str, model: &str) -> (StatusCode, Value) {
        match self
            .client
            .post(format!("{}/models/{model}/predict", node.url))
            .header("Authorization", format!("Api-Key {key}"))
            .json(&json!({"x": 1}))
            .send()
            .await
        {
            Ok(r) => {
                let s = r.status();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => panic!("request failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_through_a_is_refused_by_b_within_a_second() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let up = fake_upstream().await;
    let a = c.node(&redis_url(), &[]).await;
    let b = c.node(&redis_url(), &[]).await;
    let (key, key_id) = c.setup(&a, "rev", &up.url("/echo"), 1000.0, 1000).await;
    for node in [&a, &b, &b] {
        assert_eq!(c.predict(node, &key, "rev").await.0, 200, "warm");
    }
    let started = Instant::now();
    c.admin(
        &a,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{key_id}"),
        json!({}),
    )
    .await;
    loop {
        let (s, body) = c.predict(&b, &key, "rev").await;
        if s == 401 {
            assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
            break;
        }
        assert_eq!(s, 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still accepted on B"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    assert!(
        took <= Duration::from_secs(1),
        "B refused the revoked key after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotion_through_a_is_served_by_b_within_a_second() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let up = fake_upstream().await;
    let a = c.node(&redis_url(), &[]).await;
    let b = c.node(&redis_url(), &[]).await;
    let (key, _) = c.setup(&a, "prom", &up.url("/echo"), 1000.0, 1000).await;
    let v2 = c
        .admin(
            &a,
            reqwest::Method::POST,
            "/admin/models/prom/versions",
            json!({"upstream_url": up.url("/echo")}),
        )
        .await;
    let v2 = v2["id"].as_str().expect("id").to_owned();
    let (s, first) = c.predict(&b, &key, "prom").await;
    assert_eq!(s, 200);
    assert_ne!(first["model_version_id"], v2.as_str());
    let started = Instant::now();
    c.admin(
        &a,
        reqwest::Method::PUT,
        "/admin/models/prom/environments/production",
        json!({"version_id": v2}),
    )
    .await;
    loop {
        let (s, body) = c.predict(&b, &key, "prom").await;
        assert_eq!(s, 200);
        if body["model_version_id"] == v2.as_str() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "B still serves the old version"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    assert!(
        took <= Duration::from_secs(1),
        "B served the promoted version after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_both_nodes() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let up = fake_upstream().await;
    let a = c.node(&redis_url(), &[]).await;
    let b = c.node(&redis_url(), &[]).await;
    let (key, _) = c.setup(&a, "lim", &up.url("/echo"), 10.0, 10).await;
    // Warm both nodes' caches without spending tokens (415 comes before the limit).
    for node in [&a, &b] {
        let r = c
            .client
            .post(format!("{}/models/lim/predict", node.url))
            .header("Authorization", format!("Api-Key {key}"))
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .expect("warm");
        assert_eq!(r.status(), 415);
    }
    let duration = Duration::from_secs(3);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for node in [&a, &b] {
        for _ in 0..3 {
            let client = c.client.clone();
            let url = format!("{}/models/lim/predict", node.url);
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut limited) = (0u32, 0u32);
                while started.elapsed() < duration {
                    let r = client
                        .post(&url)
                        .header("Authorization", format!("Api-Key {key}"))
                        .json(&json!({}))
                        .send()
                        .await
                        .expect("sent");
                    match r.status().as_u16() {
                        200 => ok += 1,
                        429 => limited += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (ok, limited)
            }));
        }
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.expect("join");
        ok += o;
        limited += l;
    }
    // burst 10 + 10/s × 3 s = 40, whichever node the requests hit.
    assert!(
        (36..=44).contains(&ok),
        "accepted {ok} (refused {limited}), expected 40 ± 10 %"
    );
    assert!(limited > 0);
}

/// A `redis-server` owned by the test, on its own port.
struct OwnedRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnedRedis {
    fn start(port: u16) -> OwnedRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnedRedis {
            port,
            child: Some(child),
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn metric(c: &Cluster, node: &Node, sample: &str) -> f64 {
    let text = c
        .client
        .get(format!("{}/metrics", node.ops))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    crate::helpers::metric_value(&text, sample)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_degrades_to_documented_answers_and_recovers() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let up = fake_upstream().await;
    let mut redis = OwnedRedis::start(free_port());
    let a = c.node(&redis.url(), &[]).await;
    let b = c
        .node(&redis.url(), &[("WARDER_RATE_LIMIT_FAIL_CLOSED", "true")])
        .await;
    let (key, _) = c.setup(&a, "out", &up.url("/echo"), 1.0, 1).await;
    let (fresh_key, _) = c.setup(&a, "out2", &up.url("/echo"), 1000.0, 1000).await;
    // Warm A with the tight key: 1/s burst 1 means the second call is refused.
    assert_eq!(c.predict(&a, &key, "out").await.0, 200);
    assert_eq!(c.predict(&a, &key, "out").await.0, 429);

    redis.stop();
    let outage = Instant::now();
    let mut seen_fail_open = false;
    while outage.elapsed() < Duration::from_secs(2) {
        // A fails open: the limit cannot be checked, requests pass (counted).
        let t = Instant::now();
        let (s, body) = c.predict(&a, &key, "out").await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no hang during the outage"
        );
        match s.as_u16() {
            200 => seen_fail_open = true,
            429 => {}
            other => panic!("A answered {other} during the outage: {body}"),
        }
        // B fails closed: 503 in the error shape.
        let (s, body) = c.predict(&b, &key, "out").await;
        match s.as_u16() {
            503 => assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE"),
            other => panic!("B answered {other} during the outage: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_fail_open, "A never failed open");
    // Authentication falls back to the store for a key no node has cached.
    let (s, body) = c.predict(&a, &fresh_key, "out2").await;
    assert_eq!(s, 200, "{body}");
    assert!(
        metric(
            &c,
            &a,
            "warder_rate_limit_unavailable_total{outcome=\"allowed\"}"
        )
        .await
            > 0.0
    );
    assert!(
        metric(
            &c,
            &b,
            "warder_rate_limit_unavailable_total{outcome=\"refused\"}"
        )
        .await
            > 0.0
    );
    assert_eq!(metric(&c, &a, "warder_redis_up").await, 0.0);
    let ready = c
        .client
        .get(format!("{}/readyz", a.ops))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503, "readyz reports the outage");

    let restarted = Instant::now();
    let _redis = OwnedRedis::start(redis.port);
    // Recovered = the shared limit is enforced again on both nodes.
    loop {
        let (sa, _) = c.predict(&a, &key, "out").await;
        let (sa2, _) = c.predict(&a, &key, "out").await;
        let (sb, _) = c.predict(&b, &key, "out").await;
        if sa2 == 429 && sb.as_u16() != 503 && sa.as_u16() != 503 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "not recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = restarted.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "recovered {took:?} after Redis restarted"
    );
}
