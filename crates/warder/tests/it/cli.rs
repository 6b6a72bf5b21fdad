//! `warder admin …` and `warder predict` against a running gateway: the same
//! operations as the admin API, human output by default, `--json` for scripts.

use crate::helpers::*;
use serde_json::Value;
use std::process::Command;

fn warder(app: &TestApp, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warder"))
        .args(args)
        .env("WARDER_URL", &app.url)
        .env("WARDER_KEY", key)
        .output()
        .expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(app: &TestApp, key: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = warder(app, key, &all);
    assert!(ok, "warder {args:?} failed: {out} {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_covers_the_walkthrough() {
    let app = spawn_app(Backend::Sqlite).await;
    let up = fake_upstream().await;
    let admin = app.admin_key.clone();
    let user = json(
        &app,
        &admin,
        &["admin", "user", "create", "--name", "cli-user"],
    );
    let uid = user["id"].as_str().expect("id").to_owned();
    let key = json(
        &app,
        &admin,
        &["admin", "key", "create", "--user", &uid, "--name", "k"],
    );
    let clear = key["key"].as_str().expect("key").to_owned();
    json(
        &app,
        &admin,
        &["admin", "model", "create", "--name", "cli-model"],
    );
    let version = json(
        &app,
        &admin,
        &[
            "admin",
            "version",
            "create",
            "--model",
            "cli-model",
            "--upstream-url",
            &up.url("/echo"),
        ],
    );
    assert_eq!(version["state"], "active");
    let policy = json(
        &app,
        &admin,
        &[
            "admin", "policy", "create", "--name", "cli", "--rate", "5", "--burst", "5",
        ],
    );
    let pid = policy["id"].as_str().expect("id").to_owned();
    json(
        &app,
        &admin,
        &[
            "admin",
            "grant",
            "create",
            "--user",
            &uid,
            "--model",
            "cli-model",
            "--policy",
            &pid,
        ],
    );

    let answer = json(
        &app,
        &clear,
        &["predict", "cli-model", "-d", r#"{"hello": "cli"}"#],
    );
    assert_eq!(answer["output"]["hello"], "cli");

    // Human-readable output names the fields and warns to keep the key.
    let (ok, out, _) = warder(
        &app,
        &admin,
        &["admin", "key", "create", "--user", &uid, "--name", "k2"],
    );
    assert!(ok);
    assert!(
        out.contains("key: wdr_") && out.contains("not shown again"),
        "{out}"
    );
    let (ok, out, _) = warder(&app, &admin, &["admin", "model", "list"]);
    assert!(ok && out.contains("cli-model"), "{out}");

    // Errors: a non-zero exit and the error code on stderr.
    let (ok, _, err) = warder(&app, &clear, &["admin", "user", "list"]);
    assert!(!ok);
    assert!(
        err.contains("FORBIDDEN") && err.contains("request id"),
        "{err}"
    );
    let (ok, _, err) = warder(
        &app,
        &admin,
        &["admin", "key", "revoke", key["id"].as_str().expect("id")],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = warder(&app, &clear, &["predict", "cli-model"]);
    assert!(!ok);
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
}

#[test]
fn config_check_prints_the_effective_configuration_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("w.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\nbootstrap_admin_key = \"wdr_abcdefgh_0123456789abcdef0123456789abcdef\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_warder"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("WARDER_MAX_BODY_BYTES", "2048")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:7000\""), "{text}");
    assert!(text.contains("max_body_bytes = 2048"), "{text}");
    assert!(
        !text.contains("0123456789abcdef0123456789abcdef"),
        "secret shown: {text}"
    );

    std::fs::write(&file, "listen = 5\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_warder"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid configuration"));
}

#[test]
fn migrate_creates_the_schema_in_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_warder"))
        .args(["migrate", "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("d").join("warder.db").exists());
}
