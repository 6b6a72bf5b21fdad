//! `warder worker`'s own ops listener: a worker process is scraped and
//! health-checked like `serve`, its metrics count the jobs it ran, and
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

    let metrics = app
        .client
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.expect("text");
    let attempt = format!(
        "warder_async_attempts_total{{model=\"{}\",outcome=\"succeeded\"}} 1",
        m.model_id
    );
    assert!(metrics.contains(&attempt), "{attempt} in\n{metrics}");
    assert!(
        !app.metrics().await.contains(&attempt),
        "the gateway ran nothing: the count is the worker's own"
    );

    let health = app
        .client
        .get(format!("{ops}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let (s, ready, _) = json_of(
        app.client
            .get(format!("{ops}/readyz"))
            .send()
            .await
            .expect("readyz"),
    )
    .await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["checks"]["store"]["ok"], true, "{ready}");
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

    // Stopped, it drains and lets the port go.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the worker stops")
        .expect("no panic");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the ops listener is closed"
    );
}
