//! The built binary: `serve --demo` from an empty data dir prints a curl line
//! that works, no clear key reaches the logs or the data dir, and every
//! request writes exactly one JSON access-log line.

use crate::helpers::free_port;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Running {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &Path, port: u16) -> Running {
    start_with(data_dir, port, &[])
}

fn start_with(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warder"))
        .envs(env.iter().copied())
        .args(["serve", "--demo", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--ops-listen", "127.0.0.1:0"])
        .env("WARDER_LOG_LEVEL", "debug")
        .env("WARDER_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let output = Arc::new(Mutex::new(Vec::new()));
    for pipe in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut o) = out.lock() {
                    o.push(line);
                }
            }
        });
    }
    Running { child, output }
}

/// What `find` finds in the output so far, waiting for it (up to a minute).
fn wait_for<T>(r: &Running, what: &str, find: impl Fn(&[String]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = r.output.lock().ok().and_then(|o| find(&o)) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {what}: {:?}",
            r.output.lock().map(|o| o.clone())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_line(r: &Running, prefix: &str) -> String {
    wait_for(r, &format!("line starting with {prefix:?}"), |lines| {
        lines.iter().find(|l| l.starts_with(prefix)).cloned()
    })
}

/// The first JSON log line `matches` accepts.
fn wait_for_json(r: &Running, matches: impl Fn(&Value) -> bool) -> Value {
    wait_for(r, "such JSON line", |lines| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| matches(l))
    })
}

fn shell(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demo_curl_line_works_and_keys_stay_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("fresh");
    let port = free_port();
    let running = start(&data, port);
    let curl = wait_for_line(&running, "curl ");
    let admin_key = wait_for_line(&running, "  admin key: ")
        .trim_start_matches("  admin key: ")
        .to_owned();
    let user_key = wait_for_line(&running, "  user key:  ")
        .trim_start_matches("  user key:  ")
        .to_owned();

    // The printed line, pasted into a shell, succeeds.
    let answer: Value = serde_json::from_str(&shell(&curl)).expect("curl answered JSON");
    assert_eq!(answer["output"]["label"], "positive", "{answer}");
    assert_eq!(answer["cached"], false);

    // The other demo models answer through the gateway.
    let base = format!("http://127.0.0.1:{port}");
    let call = |model: &str, body: Value| -> Value {
        let out = shell(&format!(
            "curl -s -X POST {base}/models/{model}/predict -H 'Authorization: Api-Key {user_key}' -H 'Content-Type: application/json' -d '{body}'"
        ));
        serde_json::from_str(&out).expect("json")
    };
    assert_eq!(
        call("echo", json!({"hello": [1, 2]}))["output"],
        json!({"hello": [1, 2]})
    );
    assert!(call(
        "temperature",
        json!({"latitude": 48.8, "longitude": 2.3, "month": 7, "hour": 14})
    )["output"]["temperature"]
        .is_number());
    assert_eq!(
        call("slow", json!({"ms": 20}))["output"],
        json!({"slept_ms": 20})
    );

    // A key created through the admin API, used, then revoked.
    let created: Value = serde_json::from_str(&shell(&format!(
        "curl -s -X POST {base}/admin/users -H 'Authorization: Api-Key {admin_key}' -H 'Content-Type: application/json' -d '{{\"name\": \"late\"}}'"
    )))
    .expect("user");
    let uid = created["id"].as_str().expect("id");
    let key: Value = serde_json::from_str(&shell(&format!(
        "curl -s -X POST {base}/admin/users/{uid}/keys -H 'Authorization: Api-Key {admin_key}' -H 'Content-Type: application/json' -d '{{\"name\": \"k\"}}'"
    )))
    .expect("key");
    let fresh = key["key"].as_str().expect("clear key").to_owned();
    shell(&format!(
        "curl -s -X POST {base}/models/echo/predict -H 'Authorization: Api-Key {fresh}' -H 'Content-Type: application/json' -d '{{}}'"
    ));
    shell(&format!(
        "curl -s -X DELETE {base}/admin/keys/{} -H 'Authorization: Api-Key {admin_key}'",
        key["id"].as_str().expect("id")
    ));
    std::thread::sleep(Duration::from_millis(1500));

    // No clear key in any file of the data dir.
    for k in [&admin_key, &user_key, &fresh] {
        let secret = k.rsplit('_').next().expect("secret");
        assert!(
            crate::helpers::files_containing(&data, secret.as_bytes()).is_empty(),
            "clear key stored"
        );
    }
    // No clear key in any log line (the banner is the only place keys are shown).
    let lines = running.output.lock().map(|o| o.clone()).expect("output");
    let logs: Vec<&String> = lines.iter().filter(|l| l.starts_with('{')).collect();
    assert!(logs.len() > 5, "expected JSON log lines, got {lines:?}");
    assert!(logs
        .iter()
        .any(|l| l.contains("\"warder::access\"") || l.contains("\"request\"")));
    for k in [&admin_key, &user_key, &fresh] {
        let secret = k.rsplit('_').next().expect("secret");
        for l in &lines {
            if l.contains(secret) {
                assert!(!l.starts_with('{'), "a log line holds a clear key: {l}");
                assert!(
                    l.contains("key:") || l.starts_with("curl "),
                    "only the banner shows keys: {l}"
                );
            }
        }
    }
    assert!(
        lines.iter().all(|l| !l.contains(&fresh)),
        "a created key never reaches the output"
    );
}

#[test]
fn worker_threads_choose_the_scheduler_and_both_serve() {
    for (threads, scheduler) in [("1", "current_thread"), ("2", "multi_thread")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let running = start_with(
            &dir.path().join("data"),
            port,
            &[("WARDER_WORKER_THREADS", threads)],
        );
        let curl = wait_for_line(&running, "curl ");
        // Written by the log thread, after the banner.
        let listening = wait_for_json(&running, |l| l["message"] == "warder listening");
        assert_eq!(listening["scheduler"], scheduler, "{listening}");
        assert_eq!(
            listening["threads"],
            threads.parse::<u64>().expect("number"),
            "{listening}"
        );
        // A sync predict and an async one (the worker runs in the same
        // runtime) both complete.
        let answer: Value = serde_json::from_str(&shell(&curl)).expect("curl answered JSON");
        assert_eq!(answer["output"]["label"], "positive", "{answer}");
        let key = curl
            .split("Api-Key ")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .expect("key in the curl line");
        let base = format!("http://127.0.0.1:{port}");
        let submitted: Value = serde_json::from_str(&shell(&format!(
            "curl -s -X POST {base}/models/echo/async_predict -H 'Authorization: Api-Key {key}' -H 'Content-Type: application/json' -d '{{\"model_input\": {{\"n\": {threads}}}}}'"
        )))
        .expect("submit answered JSON");
        let id = submitted["request_id"]
            .as_str()
            .expect("request_id")
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let polled: Value = serde_json::from_str(&shell(&format!(
                "curl -s {base}/async_request/{id} -H 'Authorization: Api-Key {key}'"
            )))
            .expect("poll answered JSON");
            if polled["status"] == "SUCCEEDED" {
                assert_eq!(
                    polled["output"],
                    json!({"n": threads.parse::<u64>().expect("n")})
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "async request not done: {polled}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The JSON access lines of `lines` that carry `request_id`.
fn access_lines_of(lines: &[String], request_id: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "warder::access" && v["request_id"] == request_id)
        .collect()
}

/// `serve --demo` on a fresh data dir, with its banner read and a client.
struct Demo {
    running: Running,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let running = start(&dir.path().join("data"), port);
        wait_for_line(&running, "curl ");
        Demo {
            running,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            _dir: dir,
        }
    }

    /// A key printed on the banner line starting with `prefix`.
    fn key(&self, prefix: &str) -> String {
        wait_for_line(&self.running, prefix)
            .trim_start_matches(prefix)
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_writes_exactly_one_access_line() {
    let demo = Demo::start();
    let (running, base, client) = (&demo.running, &demo.base, &demo.client);
    let admin_key = demo.key("  admin key: ");

    // A key made now, never printed: no line of output may ever hold it.
    let (_, users) = call(
        client,
        "GET",
        &format!("{base}/admin/users"),
        &admin_key,
        None,
    )
    .await;
    let demo_user = users["users"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "demo"))
        .and_then(|u| u["id"].as_str())
        .unwrap_or_else(|| panic!("no demo user in {users}"))
        .to_owned();
    let (s, created) = call(
        client,
        "POST",
        &format!("{base}/admin/users/{demo_user}/keys"),
        &admin_key,
        Some(json!({"name": "logged"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().expect("clear key").to_owned();
    let key_id = created["id"].as_str().expect("key id").to_owned();

    // (path, key, status, whether a model answered)
    let cases = [
        ("/models/echo/predict", key.as_str(), 200, true),
        ("/models/sentiment/predict", key.as_str(), 200, true),
        ("/models/echo/predict", key.as_str(), 200, true),
        ("/models/no-such-model/predict", key.as_str(), 404, false),
        ("/models/echo/predict", "", 401, false),
    ];
    let mut sent = Vec::new();
    for (path, k, status, answered) in cases {
        let mut req = client
            .post(format!("{base}{path}"))
            .json(&json!({"text": "a good day"}));
        if !k.is_empty() {
            req = req.header("Authorization", format!("Api-Key {k}"));
        }
        let resp = req.send().await.expect("sent");
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let rid = resp.headers()["x-request-id"]
            .to_str()
            .expect("request id")
            .to_owned();
        let body: Value = resp.json().await.expect("json body");
        sent.push((rid, status, answered, k.is_empty(), body));
    }
    let ids: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "request ids are distinct: {ids:?}");

    // Lines are written in batches by a background thread: wait until every
    // request has its line, then a little longer so a late duplicate shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = running.output.lock().map(|o| o.clone()).expect("output");
        if ids.iter().all(|id| !access_lines_of(&lines, id).is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "access lines missing: {lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = running.output.lock().map(|o| o.clone()).expect("output");

    for (rid, status, answered, anonymous, body) in &sent {
        let found = access_lines_of(&lines, rid);
        assert_eq!(found.len(), 1, "{rid}: {found:?}");
        let line = &found[0];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["route"], "/models/{model}/predict", "{line}");
        assert_eq!(line["status"], *status, "{line}");
        let expected_key = if *anonymous { "" } else { key_id.as_str() };
        assert_eq!(line["key_id"], expected_key, "{line}");
        let latency = line["latency_ms"].as_f64().expect("latency_ms");
        assert!(latency >= 0.0, "{line}");
        if *answered {
            assert_eq!(line["model"], body["model_id"], "{line}");
            assert_eq!(line["version"], body["model_version_id"], "{line}");
            let upstream = line["upstream_ms"].as_f64().expect("upstream_ms");
            assert!(upstream >= 0.0 && upstream <= latency, "{line}");
        } else {
            assert_eq!(line["model"], "", "{line}");
            assert_eq!(line["version"], "", "{line}");
            assert!(line.get("upstream_ms").is_none(), "{line}");
        }
    }
    let secret = key.rsplit('_').next().expect("secret");
    for l in &lines {
        assert!(!l.contains(secret), "a line holds the clear key: {l}");
    }
}

/// Every log line of an async request's life — queued, attempt, finished —
/// carries its request id as the trace id of the span it was written in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_requests_log_lines_carry_its_trace_id() {
    let demo = Demo::start();
    let (running, base, client) = (&demo.running, &demo.base, &demo.client);
    let user_key = demo.key("  user key: ");
    let resp = client
        .post(format!("{base}/models/echo/async_predict"))
        .header("Authorization", format!("Api-Key {user_key}"))
        .json(&json!({"model_input": {"hello": "async"}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status().as_u16(), 201);
    let id = resp.json::<Value>().await.expect("json")["request_id"]
        .as_str()
        .expect("request_id")
        .to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    let finished = loop {
        let (s, status) = call(
            client,
            "GET",
            &format!("{base}/async_request/{id}"),
            &user_key,
            None,
        )
        .await;
        assert_eq!(s, 200, "{status}");
        if status["status"] == "SUCCEEDED" {
            break status;
        }
        assert!(Instant::now() < deadline, "not finished: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let messages = ["async request queued", "async request finished"];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mine = loop {
        let lines = running.output.lock().map(|o| o.clone()).expect("output");
        let mine: Vec<Value> = lines
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] != "warder::access" && v.to_string().contains(&id))
            .collect();
        if messages
            .iter()
            .all(|m| mine.iter().any(|v| v["message"] == *m))
        {
            break mine;
        }
        assert!(Instant::now() < deadline, "async lines missing: {mine:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for m in messages {
        let line = mine
            .iter()
            .find(|v| v["message"] == m)
            .unwrap_or_else(|| panic!("no line {m:?}"));
        assert_eq!(line["span"]["trace_id"], id.as_str(), "{line}");
    }
    let queued_line = mine
        .iter()
        .find(|v| v["message"] == "async request queued")
        .expect("queued line");
    assert_eq!(queued_line["span"]["name"], "async.queue");
    assert_eq!(queued_line["span"]["model"], finished["model_id"]);
    let finished_line = mine
        .iter()
        .find(|v| v["message"] == "async request finished")
        .expect("finished line");
    assert_eq!(finished_line["span"]["name"], "async.attempt");
    assert_eq!(finished_line["span"]["attempt"], 1);
    assert_eq!(finished_line["span"]["model"], finished["model_id"]);
    assert_eq!(finished_line["outcome"], "succeeded");
    // The submit's access line names the model and version it was queued for.
    let lines = running.output.lock().map(|o| o.clone()).expect("output");
    let submit = access_lines_of(&lines, &id);
    assert_eq!(submit.len(), 1, "{submit:?}");
    assert_eq!(submit[0]["route"], "/models/{model}/async_predict");
    assert_eq!(submit[0]["status"], 201);
    assert_eq!(submit[0]["model"], finished["model_id"]);
    assert_eq!(submit[0]["version"], finished["model_version_id"]);

    // Under a caller's trace the request has an id of its own; its queued
    // line names the caller's trace beside it.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = client
        .post(format!("{base}/models/echo/async_predict"))
        .header("Authorization", format!("Api-Key {user_key}"))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&json!({"model_input": {"hello": "traced"}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status().as_u16(), 201);
    let traced = resp.json::<Value>().await.expect("json")["request_id"]
        .as_str()
        .expect("request_id")
        .to_owned();
    assert_ne!(traced, trace);
    let deadline = Instant::now() + Duration::from_secs(10);
    let queued = loop {
        let lines = running.output.lock().map(|o| o.clone()).expect("output");
        let found = lines
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "async request queued" && v["span"]["trace_id"] == traced);
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no queued line for {traced}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(queued["trace_id"], trace, "{queued}");
    assert_eq!(queued["span"]["request_id"], traced.as_str(), "{queued}");
}

/// An admin JSON call; answers status and body.
async fn call(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client
        .request(method, url)
        .header("Authorization", format!("Api-Key {key}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
