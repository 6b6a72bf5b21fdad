//! Crash safety of the async queue with the real binary: a `warder worker`
//! killed with SIGKILL mid-flight loses nothing and its late result is
//! refused; a `serve` killed right after accepting submits completes them
//! after a restart.

use crate::async_support::*;
use crate::helpers::*;
use crate::scenarios;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warder_core::{Finish, JobFilter, JobStatus, Outcome, Timestamp};

scenarios!(
    a_killed_worker_loses_nothing_and_its_late_result_is_refused,
    a_killed_serve_completes_accepted_submits_after_restart,
);

/// A child process whose output lines are collected; killed on drop.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(
        args: &[&str],
        data_dir: &Path,
        database_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warder"));
        cmd.args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("WARDER_LOG_FORMAT", "json")
            .env("WARDER_LOG_LEVEL", "info")
            .env("WARDER_ASYNC_QUEUE__LEASE_MS", "2000")
            .env("WARDER_ASYNC_QUEUE__HEARTBEAT_MS", "300")
            .env("WARDER_ASYNC_QUEUE__SWEEP_MS", "200")
            .env("WARDER_ASYNC_QUEUE__POLL_MS", "100")
            .env("WARDER_DRAIN_TIMEOUT_S", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(url) = database_url {
            cmd.env("WARDER_DATABASE_URL", url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut v) = l.lock() {
                        v.push(line);
                    }
                }
            });
        }
        Proc { child, lines }
    }

    /// The owner id the worker logged at start.
    async fn worker_id(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.lines.lock().ok().and_then(|l| {
                l.iter()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .find(|v| v["message"] == "async worker started")
                    .and_then(|v| v["worker"].as_str().map(str::to_owned))
            });
            if let Some(id) = found {
                return id;
            }
            assert!(Instant::now() < deadline, "worker did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        // std's kill() is SIGKILL on Unix: no chance to clean up.
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

async fn jobs_by_status(app: &TestApp) -> Vec<(String, JobStatus, Option<String>)> {
    app.state
        .store
        .list_jobs(JobFilter {
            limit: 10_000,
            ..JobFilter::default()
        })
        .await
        .expect("list")
        .into_iter()
        .map(|j| (j.id, j.status, j.lease_owner))
        .collect()
}

async fn a_killed_worker_loses_nothing_and_its_late_result_is_refused(b: Backend) {
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.worker_enabled = false;
    })
    .await;
    let model = scripted_model().await;
    let m = app
        .register("slow", &model.url("/slow/4000"), json!({}))
        .await;
    let c = app.caller("c", &["slow"], None).await;
    let db = app.state.config.database_url.clone();
    // The survivor is scraped at the end: its own ops listener. Both are
    // given `serve`'s `ops_listen` as that address too: a worker must not
    // take it (one that did would leave one of the two unable to start).
    let ops = format!("127.0.0.1:{}", free_port());
    let env = [
        ("WARDER_ASYNC_QUEUE__WORKER_CONCURRENCY", "120"),
        ("WARDER_OPS_LISTEN", ops.as_str()),
    ];
    let mut victim = Proc::start(&["worker"], &app.data_dir, db.as_deref(), &env);
    let survivor = Proc::start(
        &["worker", "--ops-listen", &ops],
        &app.data_dir,
        db.as_deref(),
        &env,
    );
    let victim_id = victim.worker_id().await;
    survivor.worker_id().await;

    let mut ids = Vec::new();
    for chunk in (0..200).collect::<Vec<_>>().chunks(50) {
        ids.extend(
            futures::future::join_all(
                chunk
                    .iter()
                    .map(|i| submit_ok(&app, &c.key, "slow", json!({"model_input": {"i": i}}))),
            )
            .await,
        );
    }
    // Both workers hold jobs (neither can take all 200), and every call has
    // reached the model, so each of the victim's jobs runs at least twice.
    let deadline = Instant::now() + Duration::from_secs(20);
    let victims = loop {
        let jobs = jobs_by_status(&app).await;
        let running = jobs.iter().filter(|j| j.1 == JobStatus::InProgress).count();
        let mine: Vec<String> = jobs
            .iter()
            .filter(|j| j.1 == JobStatus::InProgress && j.2.as_deref() == Some(&victim_id))
            .map(|j| j.0.clone())
            .collect();
        if running >= 200 && !mine.is_empty() && model.log.count() >= 200 {
            break mine;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not spread: {running} running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stale = app
        .state
        .store
        .get_job(&victims[0])
        .await
        .expect("get")
        .expect("job");
    victim.kill();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = jobs_by_status(&app).await;
        if jobs.iter().all(|j| j.1.is_terminal()) {
            break;
        }
        assert!(Instant::now() < deadline, "not every job finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (n, id) in ids.iter().enumerate() {
        let job = app
            .state
            .store
            .get_job(id)
            .await
            .expect("get")
            .expect("kept");
        assert_eq!(job.status, JobStatus::Succeeded, "{id}: {:?}", job.errors);
        let out: Value =
            serde_json::from_str(job.output.as_deref().expect("output")).expect("json");
        assert_eq!(out["echo"]["i"], n, "each job kept its own result");
        if victims.contains(id) {
            assert!(job.attempts >= 2, "a rescued job ran again");
        }
    }
    assert!(
        model.log.count() >= ids.len() + victims.len(),
        "each of the victim's jobs was called again: {} calls for {} jobs, {} rescued",
        model.log.count(),
        ids.len(),
        victims.len()
    );

    // The survivor's metrics count what it ran: every rescued job at least.
    let metrics = app
        .client
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .expect("the survivor serves its metrics")
        .text()
        .await
        .expect("text");
    let series = format!(
        "warder_async_attempts_total{{model=\"{}\",outcome=\"succeeded\"}} ",
        m.model_id
    );
    let ran: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    assert!(
        ran >= victims.len(),
        "the survivor ran {ran}, the victim left {}",
        victims.len()
    );

    // The killed worker's lease is fenced off: its late result changes nothing.
    let before = app
        .state
        .store
        .get_job(&stale.id)
        .await
        .expect("get")
        .expect("job");
    let now = Timestamp::now();
    let applied = app
        .state
        .store
        .finish_jobs(
            &[Finish {
                id: stale.id.clone(),
                token: stale.lease_token,
                outcome: Outcome::Succeeded("\"late\"".into()),
                errors: Vec::new(),
                capped: false,
            }],
            now,
            now,
        )
        .await
        .expect("finish");
    assert_eq!(applied, vec![false]);
    let after = app
        .state
        .store
        .get_job(&stale.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(after, before);
}

async fn a_killed_serve_completes_accepted_submits_after_restart(b: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = match &b {
        Backend::Sqlite => None,
        Backend::Postgres(base) => Some(PgDatabase::create(base).await),
    };
    let db_url = db.as_ref().map(|d| d.url.clone());
    let admin_key = warder_core::ApiKey::generate().expose();
    let model = scripted_model().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let start = || {
        Proc::start(
            &["serve", "--listen", &listen, "--ops-listen", "127.0.0.1:0"],
            dir.path(),
            db_url.as_deref(),
            &[("WARDER_BOOTSTRAP_ADMIN_KEY", &admin_key)],
        )
    };
    let client = reqwest::Client::new();
    let base = format!("http://{listen}");
    let ready = |client: reqwest::Client, base: String| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/v1")).send().await.is_err() {
            assert!(Instant::now() < deadline, "serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let call = |key: String, method: reqwest::Method, path: String, body: Value| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let r = client
                .request(method, url)
                .header("Authorization", format!("Api-Key {key}"))
                .json(&body)
                .send()
                .await
                .expect("sent");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let mut serve = start();
    ready(client.clone(), base.clone()).await;
    let post = reqwest::Method::POST;
    let (s, _) = call(
        admin_key.clone(),
        post.clone(),
        "/admin/models".into(),
        json!({"name": "slow"}),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = call(
        admin_key.clone(),
        post.clone(),
        "/admin/models/slow/versions".into(),
        json!({"upstream_url": model.url("/slow/300"), "max_concurrency": 4}),
    )
    .await;
    assert_eq!(s, 201);
    let (_, user) = call(
        admin_key.clone(),
        post.clone(),
        "/admin/users".into(),
        json!({"name": "u"}),
    )
    .await;
    let uid = user["id"].as_str().expect("id").to_owned();
    let (_, key) = call(
        admin_key.clone(),
        post.clone(),
        format!("/admin/users/{uid}/keys"),
        json!({"name": "k"}),
    )
    .await;
    let key = key["key"].as_str().expect("key").to_owned();
    call(
        admin_key.clone(),
        post.clone(),
        "/admin/grants".into(),
        json!({"user_id": uid, "model": "slow"}),
    )
    .await;

    let answers = futures::future::join_all((0..100).map(|i| {
        call(
            key.clone(),
            post.clone(),
            "/models/slow/async_predict".into(),
            json!({"model_input": {"i": i}}),
        )
    }))
    .await;
    serve.kill();
    let ids: Vec<String> = answers
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 201, "{b}");
            b["request_id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert!(
        model.log.completed.load(Ordering::SeqCst) < 100,
        "killed before finishing"
    );

    let _serve = start();
    ready(client.clone(), base.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (n, id) in ids.iter().enumerate() {
        loop {
            let (s, v) = call(
                key.clone(),
                reqwest::Method::GET,
                format!("/async_request/{id}"),
                Value::Null,
            )
            .await;
            assert_eq!(s, 200, "{v}");
            if v["status"] == "SUCCEEDED" {
                assert_eq!(v["output"]["echo"]["i"], n);
                break;
            }
            assert!(
                !matches!(
                    v["status"].as_str(),
                    Some("FAILED" | "EXPIRED" | "CANCELED")
                ),
                "{v}"
            );
            assert!(Instant::now() < deadline, "{id} did not complete: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
