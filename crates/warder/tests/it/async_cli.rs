//! `warder async submit|status|wait|cancel` against a running gateway:
//! the id on stdout, progress on stderr, `--json` for scripts, and exit
//! codes a script can branch on (0 succeeded, 1 did not).

use crate::async_support::*;
use crate::helpers::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Runs the built `warder` against the app; answers (exit code, stdout, stderr).
async fn warder(app: &TestApp, key: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warder"));
    cmd.args(args)
        .env("WARDER_URL", &app.url)
        .env("WARDER_KEY", key);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("joined")
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_cli_submits_waits_shows_and_cancels() {
    let app = spawn_app_with(Backend::Sqlite, fast_queue).await;
    let model = gate_model().await;
    let m = app
        .register("echo", &model.url("/slow/50"), json!({}))
        .await;
    app.register("held", &model.url("/gate"), json!({"max_concurrency": 1}))
        .await;
    let c = app.caller("c", &["echo", "held"], None).await;

    let (code, out, err) = warder(
        &app,
        &c.key,
        &["async", "submit", "echo", "-d", r#"{"x": 1}"#],
    )
    .await;
    assert_eq!(code, 0, "{out} {err}");
    let id = out.trim().to_owned();
    assert_eq!(id.len(), 32, "submit prints only the id: {out}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{out}");

    let (code, out, err) = warder(&app, &c.key, &["async", "wait", &id, "--timeout", "20"]).await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(err.contains("SUCCEEDED"), "progress on stderr: {err}");

    let (code, out, err) = warder(&app, &c.key, &["async", "status", &id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["model_id"], m.model_id.as_str());
    assert_eq!(v["model_version_id"], m.version_id.as_str());
    assert_eq!(v["status"], "SUCCEEDED");
    assert_eq!(v["webhook_status"], "NO_WEBHOOK_PROVIDED");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["output"]["echo"], json!({"x": 1}));
    assert_eq!(v["errors"], json!([]));
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(v[field].is_string(), "{field}: {v}");
    }

    // A request behind a busy model is still queued, so cancel ends it at once.
    submit_ok(&app, &c.key, "held", json!({"model_input": {}})).await;
    model.wait_calls(2, Duration::from_secs(10)).await;
    let (code, out, err) = warder(&app, &c.key, &["async", "submit", "held"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let queued = out.trim().to_owned();
    assert_eq!(status_of(&app, &c.key, &queued).await["status"], "QUEUED");
    let (code, out, err) = warder(&app, &c.key, &["async", "cancel", &queued, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["request_id"], queued.as_str());
    assert_eq!(v["canceled"], true, "{v}");
    assert_eq!(status_of(&app, &c.key, &queued).await["status"], "CANCELED");
    // Waiting on a request that did not succeed exits 1.
    let (code, _, err) = warder(&app, &c.key, &["async", "wait", &queued]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("CANCELED"), "{err}");
    model.open();
    assert_eq!(
        model.log.bodies().len(),
        2,
        "the canceled request never ran"
    );
}
