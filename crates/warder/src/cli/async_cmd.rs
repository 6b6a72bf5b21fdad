//! `warder async submit|status|wait|cancel`: async inference from the shell.
//!
//! Talks to a running gateway over HTTP like every client command; `wait`
//! polls the status and shows progress on stderr until a terminal state.

use super::client::{enc, render, Target};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// `warder async …`.
#[derive(Debug, Args)]
pub struct AsyncArgs {
    /// Gateway and key.
    #[command(flatten)]
    pub target: Target,
    /// Action.
    #[command(subcommand)]
    pub command: AsyncCmd,
}

/// Async actions.
#[derive(Debug, Subcommand)]
pub enum AsyncCmd {
    /// Queue a request; prints its request id.
    Submit {
        /// Model id or name.
        model: String,
        /// Environment (default production).
        #[arg(long, conflicts_with = "version")]
        env: Option<String>,
        /// A version id instead of an environment.
        #[arg(long)]
        version: Option<String>,
        /// Model input JSON, or @file.
        #[arg(long, short = 'd', default_value = "{}")]
        data: String,
        /// Where the result is POSTed.
        #[arg(long)]
        webhook: Option<String>,
        /// 0 (first) to 2.
        #[arg(long)]
        priority: Option<u8>,
        /// Seconds the request may wait before it expires.
        #[arg(long)]
        max_time_in_queue: Option<u64>,
        /// Attempts in total (1-10).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Makes a retried submit return the first request.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for the result after submitting.
        #[arg(long)]
        wait: bool,
    },
    /// Show a request's status, output and errors.
    Status {
        /// Request id.
        id: String,
    },
    /// Wait until a request is finished, showing progress.
    Wait {
        /// Request id.
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Cancel a request (a running one is aborted).
    Cancel {
        /// Request id.
        id: String,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .header("Authorization", format!("Api-Key {}", self.key));
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.context("reading the answer")?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }
}

const TERMINAL: [&str; 5] = [
    "SUCCEEDED",
    "FAILED",
    "EXPIRED",
    "CANCELED",
    "WEBHOOK_FAILED",
];

/// Runs an async command; answers the exit code (0 = success, 1 = refused
/// or not succeeded, 2 = `wait` timed out).
pub async fn run(args: AsyncArgs) -> anyhow::Result<i32> {
    let Some(key) = args.target.key.clone() else {
        bail!("no API key: pass --key or set WARDER_KEY");
    };
    let client = Client {
        http: reqwest::Client::new(),
        base: args.target.url.trim_end_matches('/').to_owned(),
        key,
    };
    let json_out = args.target.json;
    match args.command {
        AsyncCmd::Submit {
            model,
            env,
            version,
            data,
            webhook,
            priority,
            max_time_in_queue,
            max_attempts,
            idempotency_key,
            wait,
        } => {
            let input = match data.strip_prefix('@') {
                Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?,
                None => data,
            };
            let input: Value = serde_json::from_str(&input).context("--data is not valid JSON")?;
            let mut body = json!({ "model_input": input });
            if let Some(o) = body.as_object_mut() {
                if let Some(w) = webhook {
                    o.insert("webhook_endpoint".into(), json!(w));
                }
                if let Some(p) = priority {
                    o.insert("priority".into(), json!(p));
                }
                if let Some(q) = max_time_in_queue {
                    o.insert("max_time_in_queue_seconds".into(), json!(q));
                }
                if let Some(a) = max_attempts {
                    o.insert(
                        "inference_retry_config".into(),
                        json!({ "max_attempts": a }),
                    );
                }
            }
            let path = match (&version, &env) {
                (Some(v), _) => format!("/model_versions/{}/async_predict", enc(v)),
                (None, Some(e)) => format!(
                    "/models/{}/environments/{}/async_predict",
                    enc(&model),
                    enc(e)
                ),
                (None, None) => format!("/models/{}/async_predict", enc(&model)),
            };
            let (status, answer) = client
                .call(
                    reqwest::Method::POST,
                    &path,
                    Some(body),
                    idempotency_key.as_deref(),
                )
                .await?;
            if status != 201 {
                return show(&answer, status, json_out);
            }
            let id = answer["request_id"].as_str().unwrap_or_default().to_owned();
            if wait {
                writeln!(std::io::stderr(), "queued {id}")?;
                return wait_for(&client, &id, Duration::from_secs(3600), json_out).await;
            }
            if json_out {
                show(&answer, status, true)
            } else {
                writeln!(std::io::stdout(), "{id}")?;
                Ok(0)
            }
        }
        AsyncCmd::Status { id } => {
            let (status, answer) = client
                .call(
                    reqwest::Method::GET,
                    &format!("/async_request/{}", enc(&id)),
                    None,
                    None,
                )
                .await?;
            show(&answer, status, json_out)
        }
        AsyncCmd::Wait { id, timeout } => {
            wait_for(&client, &id, Duration::from_secs(timeout), json_out).await
        }
        AsyncCmd::Cancel { id } => {
            let (status, answer) = client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/async_request/{}", enc(&id)),
                    None,
                    None,
                )
                .await?;
            show(&answer, status, json_out)
        }
    }
}

fn show(answer: &Value, status: u16, json_out: bool) -> anyhow::Result<i32> {
    let ok = (200..300).contains(&status);
    if json_out {
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(answer)?
        )?;
    } else if ok {
        render(&mut std::io::stdout().lock(), answer, 0)?;
    } else {
        let err = &answer["error"];
        writeln!(
            std::io::stderr(),
            "error {status}: {} ({})",
            err["message"].as_str().unwrap_or("request failed"),
            err["code"].as_str().unwrap_or("?"),
        )?;
    }
    Ok(if ok { 0 } else { 1 })
}

/// Polls until a terminal state, printing each change (and, on a terminal,
/// a live elapsed-time line).
async fn wait_for(
    client: &Client,
    id: &str,
    timeout: Duration,
    json_out: bool,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    let live = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let (status, answer) = client
            .call(
                reqwest::Method::GET,
                &format!("/async_request/{}", enc(id)),
                None,
                None,
            )
            .await?;
        if status != 200 {
            return show(&answer, status, json_out);
        }
        let state = answer["status"].as_str().unwrap_or("?").to_owned();
        let attempts = answer["attempts"].as_u64().unwrap_or(0);
        let line = format!("{state} (attempts: {attempts})");
        let elapsed = started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if line != last {
            if live && !last.is_empty() {
                writeln!(err)?;
            }
            if live {
                write!(err, "\r[{elapsed:6.1}s] {line}")?;
            } else {
                writeln!(err, "[{elapsed:6.1}s] {line}")?;
            }
            last = line;
        } else if live {
            write!(err, "\r[{elapsed:6.1}s] {last}")?;
        }
        err.flush()?;
        drop(err);
        if TERMINAL.contains(&state.as_str()) {
            if live {
                writeln!(std::io::stderr())?;
            }
            show(&answer, status, json_out)?;
            return Ok(if state == "SUCCEEDED" { 0 } else { 1 });
        }
        if started.elapsed() >= timeout {
            writeln!(
                std::io::stderr(),
                "\ngave up waiting after {}s",
                timeout.as_secs()
            )?;
            return Ok(2);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
