//! The built binary: `serve --demo` from an empty data dir prints a curl line
//! that works, and no clear key reaches the logs or the data dir.

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(data_dir: &Path, port: u16) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warder"))
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

fn wait_for_line(r: &Running, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = r
            .output
            .lock()
            .ok()
            .and_then(|o| o.iter().find(|l| l.starts_with(prefix)).cloned())
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no line starting with {prefix:?}: {:?}",
            r.output.lock().map(|o| o.clone())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
