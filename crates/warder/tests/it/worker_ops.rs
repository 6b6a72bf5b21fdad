//! `warder worker`'s own ops listener: a worker process is scraped and
//! health-checked like `serve`, its metrics count the jobs it ran, it stays
//! up (answering `draining`) while the worker finishes its attempts, whose
//! leases it keeps renewing until they end, and
//! without `worker_ops_listen` it binds nothing (so a worker beside `serve`
//! on one machine never takes `serve`'s ops port).

use crate::async_support::*;
use crate::helpers::*;
use crate::scenarios;
use serde_json::json;
use std::time::Duration;
use tokio::sync::oneshot;
use warder::app::WorkerApp;

scenarios!(a_worker_serves_metrics_and_health_of_its_own_jobs);

async fn a_worker_serves_metrics_and_health_of_its_own_jobs(b: Backend) {
    // The gateway takes submits and runs no worker: only the worker process
    // below can finish them.
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.worker_enabled = false;
    })
    .await;
    let model = gate_model().await;
    let m = app.register("echo", &model.url("/slow/0"), json!({})).await;
    let c = app.caller("c", &["echo"], None).await;

    let config = (*app.state.config).clone();
    assert_eq!(config.worker_ops_listen, None, "off by default");
    let quiet = WorkerApp::build(config.clone()).await.expect("builds");
    assert_eq!(quiet.ops_addr(), None, "no setting, no listener");
    drop(quiet);

    let mut config = config;
    config.worker_ops_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let worker = WorkerApp::build(config).await.expect("builds");
    let addr = worker.ops_addr().expect("the ops listener is bound");
    let ops = format!("http://{addr}");
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));

    let id = submit_ok(&app, &c.key, "echo", json!({"model_input": {"n": 1}})).await;
    let done = wait_until(&app, &c.key, &id, Duration::from_secs(10), |v| {
        v["status"] == "SUCCEEDED"
    })
    .await;
    assert_eq!(done["attempts"], 1, "{done}");

    let metrics = scrape(&app, &ops).await;
    assert_eq!(attempts(&metrics, &m.model_id), Some(1), "{metrics}");

    let (s, health) = app.get_json(&format!("{ops}/healthz")).await;
    assert_eq!(s, 200, "{health}");
    let (s, ready) = app.get_json(&format!("{ops}/readyz")).await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["store"]["ok"], true, "{ready}");
    assert_eq!(ready["checks"]["redis"], serde_json::Value::Null, "{ready}");
    assert_eq!(
        ready["checks"]["store"]["backend"],
        app.state.store.backend(),
        "{ready}"
    );
    // Only ops routes: the worker serves no gateway.
    let predict = app
        .client
        .post(format!("{ops}/models/echo/predict"))
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(predict.status(), 404);

    // Told to stop while an attempt runs, it keeps its ops listener up and
    // says it is draining until the attempt has ended, and keeps renewing
    // the attempt's lease meanwhile, so another worker's sweeper finds
    // nothing to rescue and run again. Then it lets the port go.
    app.register("held", &model.url("/gate"), json!({})).await;
    let c2 = app.caller("c2", &["held"], None).await;
    let id = submit_ok(&app, &c2.key, "held", json!({"model_input": {"n": 2}})).await;
    model.wait_calls(2, Duration::from_secs(10)).await;
    let mut config = (*app.state.config).clone();
    config.worker_enabled = true;
    let other = ExtraWorker::start(config);
    let _ = stop.send(());
    let (s, ready) = readyz_until(&app, &ops, |s, _| s == 503).await;
    assert_eq!(ready["status"], "draining", "{s} {ready}");
    assert_eq!(ready["checks"]["store"]["ok"], true, "{ready}");
    let metrics = scrape(&app, &ops).await;
    assert_eq!(
        attempts(&metrics, &m.model_id),
        Some(1),
        "scraped while draining"
    );
    // Longer than a whole lease: only the heartbeat keeps it.
    let lease = Duration::from_millis(app.state.config.async_queue.lease_ms);
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    assert!(!running.is_finished(), "still draining the attempt it runs");
    model.open();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the worker stops")
        .expect("no panic");
    let done = wait_until(&app, &c2.key, &id, Duration::from_secs(5), |v| {
        v["status"] != "IN_PROGRESS" && v["status"] != "QUEUED"
    })
    .await;
    assert_eq!(
        done["status"], "SUCCEEDED",
        "drained, not abandoned: {done}"
    );
    assert_eq!(done["attempts"], 1, "never rescued: {done}");
    assert_eq!(model.log.bodies().len(), 2, "never run again elsewhere");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the ops listener is closed once the worker drained"
    );
    other.stop().await;
}

/// The worker's Prometheus text.
async fn scrape(app: &TestApp, ops: &str) -> String {
    let resp = app
        .client
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("text")
}

/// The value of `warder_async_attempts_total` for `model`'s successes
/// (`None` when the series is absent).
fn attempts(metrics: &str, model: &str) -> Option<u64> {
    let series = format!("warder_async_attempts_total{{model=\"{model}\",outcome=\"succeeded\"}} ");
    metrics
        .lines()
        .any(|l| l.starts_with(&series))
        .then(|| metric_value(metrics, &series) as u64)
}

/// Polls `/readyz` until `done(status, body)` holds (5 s at most).
async fn readyz_until(
    app: &TestApp,
    ops: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, body) = app.get_json(&format!("{ops}/readyz")).await;
        if done(s.as_u16(), &body) || std::time::Instant::now() > deadline {
            return (s.as_u16(), body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
