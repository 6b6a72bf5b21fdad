//! Client commands: `admin …` and `predict` against a running gateway.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::io::Write;

mod calls;

use calls::{admin_call, predict_call};

/// Where the gateway is and how to talk to it.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// Gateway URL.
    #[arg(
        long,
        env = "WARDER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key (`wdr_…`).
    #[arg(long, env = "WARDER_KEY", global = true, hide_env_values = true)]
    pub key: Option<String>,
    /// Print raw JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `warder admin …`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Gateway and key (needs the admin scope).
    #[command(flatten)]
    pub target: Target,
    /// Resource.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Admin resources.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Users.
    User {
        #[command(subcommand)]
        /// Action.
        command: UserCmd,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        /// Action.
        command: KeyCmd,
    },
    /// Models.
    Model {
        #[command(subcommand)]
        /// Action.
        command: ModelCmd,
    },
    /// Model versions.
    Version {
        #[command(subcommand)]
        /// Action.
        command: VersionCmd,
    },
    /// Environments (promote a version).
    Env {
        #[command(subcommand)]
        /// Action.
        command: EnvCmd,
    },
    /// Access policies.
    Policy {
        #[command(subcommand)]
        /// Action.
        command: PolicyCmd,
    },
    /// Grants.
    Grant {
        #[command(subcommand)]
        /// Action.
        command: GrantCmd,
    },
    /// Calls per user, key, model and day.
    Usage {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// First day (YYYY-MM-DD).
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD).
        #[arg(long)]
        to: Option<String>,
    },
}

/// User actions.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user.
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Email.
        #[arg(long)]
        email: Option<String>,
        /// admin or member.
        #[arg(long)]
        role: Option<String>,
    },
    /// List users.
    List,
    /// Show a user.
    Get {
        /// User id.
        id: String,
    },
}

/// Key actions.
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key (the clear key is printed once).
    Create {
        /// Owner's user id.
        #[arg(long)]
        user: String,
        /// Label.
        #[arg(long)]
        name: String,
        /// admin and/or internal (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Expiry, RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List a user's keys.
    List {
        /// User id.
        #[arg(long)]
        user: String,
    },
    /// Revoke a key.
    Revoke {
        /// Public key id.
        id: String,
    },
}

/// Model actions.
#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Create a model.
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Description.
        #[arg(long)]
        description: Option<String>,
    },
    /// List models.
    List,
    /// Show a model and its environments.
    Get {
        /// Model id or name.
        model: String,
    },
}

/// Version actions.
#[derive(Debug, Subcommand)]
pub enum VersionCmd {
    /// Add a version to a model.
    Create {
        /// Model id or name.
        #[arg(long)]
        model: String,
        /// Upstream URL.
        #[arg(long)]
        upstream_url: String,
        /// Timeout.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Concurrency cap.
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// envelope or raw.
        #[arg(long)]
        response: Option<String>,
        /// active or inactive.
        #[arg(long)]
        state: Option<String>,
    },
    /// List a model's versions.
    List {
        /// Model id or name.
        #[arg(long)]
        model: String,
    },
    /// Show a version.
    Get {
        /// Version id.
        id: String,
    },
    /// Change a version.
    Update {
        /// Version id.
        id: String,
        /// Upstream URL.
        #[arg(long)]
        upstream_url: Option<String>,
        /// Timeout.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Concurrency cap.
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// envelope or raw.
        #[arg(long)]
        response: Option<String>,
        /// active or inactive.
        #[arg(long)]
        state: Option<String>,
    },
}

/// Environment actions.
#[derive(Debug, Subcommand)]
pub enum EnvCmd {
    /// Point an environment at a version.
    Promote {
        /// Model id or name.
        #[arg(long)]
        model: String,
        /// Environment name.
        #[arg(long)]
        env: String,
        /// Version id.
        #[arg(long)]
        version: String,
    },
    /// List a model's environments.
    List {
        /// Model id or name.
        #[arg(long)]
        model: String,
    },
}

/// Policy actions.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Create a policy.
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Requests per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Burst.
        #[arg(long)]
        burst: Option<u32>,
        /// Calls per day.
        #[arg(long)]
        daily: Option<u64>,
        /// Calls per month.
        #[arg(long)]
        monthly: Option<u64>,
    },
    /// List policies.
    List,
}

/// Grant actions.
#[derive(Debug, Subcommand)]
pub enum GrantCmd {
    /// Grant a user a model.
    Create {
        /// User id.
        #[arg(long)]
        user: String,
        /// Model id or name.
        #[arg(long)]
        model: String,
        /// Policy id.
        #[arg(long)]
        policy: Option<String>,
    },
    /// List grants.
    List {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
    },
    /// Remove a grant.
    Delete {
        /// Grant id.
        id: String,
    },
}

/// `warder predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Gateway and key.
    #[command(flatten)]
    pub target: Target,
    /// Model id or name.
    pub model: String,
    /// Environment (default production).
    #[arg(long, conflicts_with = "version")]
    pub env: Option<String>,
    /// A version id instead of an environment.
    #[arg(long)]
    pub version: Option<String>,
    /// Input JSON, or @file.
    #[arg(long, short = 'd', default_value = "{}")]
    pub data: String,
}

/// What a client command runs.
pub enum ClientCommand {
    /// `admin …`.
    Admin(AdminArgs),
    /// `predict`.
    Predict(PredictArgs),
}

/// Percent-encodes a path segment.
pub(crate) fn enc(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

/// Runs a client command; returns the process exit code.
pub async fn run_client(command: ClientCommand) -> anyhow::Result<i32> {
    let (target, (method, path, body)) = match &command {
        ClientCommand::Admin(a) => (&a.target, admin_call(&a.command)),
        ClientCommand::Predict(p) => (&p.target, predict_call(p)?),
    };
    let Some(key) = &target.key else {
        bail!("no API key: pass --key or set WARDER_KEY");
    };
    let url = format!("{}{}", target.url.trim_end_matches('/'), path);
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, &url)
        .header("Authorization", format!("Api-Key {key}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let mut out = std::io::stdout().lock();
    if target.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else if !status.is_success() {
        let err = &value["error"];
        let mut err_out = std::io::stderr().lock();
        writeln!(
            err_out,
            "error {}: {} ({})",
            status.as_u16(),
            err["message"].as_str().unwrap_or("request failed"),
            err["code"].as_str().unwrap_or("?"),
        )?;
        if let Some(rid) = err["request_id"].as_str() {
            writeln!(err_out, "request id: {rid}")?;
        }
    } else {
        render(&mut out, &value, 0)?;
        if value.get("key").is_some() {
            writeln!(out, "\nStore this key now: it is not shown again.")?;
        }
    }
    Ok(if status.is_success() { 0 } else { 1 })
}

/// Human-readable rendering: objects as `name: value` lines, lists as blocks.
pub(crate) fn render(out: &mut impl Write, v: &Value, indent: usize) -> std::io::Result<()> {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match val {
                    Value::Array(items) => {
                        writeln!(out, "{pad}{k}: ({} items)", items.len())?;
                        for item in items {
                            writeln!(out, "{pad}  -")?;
                            render(out, item, indent + 4)?;
                        }
                    }
                    Value::Object(_) => {
                        writeln!(out, "{pad}{k}:")?;
                        render(out, val, indent + 2)?;
                    }
                    Value::Null => writeln!(out, "{pad}{k}: -")?,
                    Value::String(s) => writeln!(out, "{pad}{k}: {s}")?,
                    other => writeln!(out, "{pad}{k}: {other}")?,
                }
            }
            Ok(())
        }
        Value::String(s) => writeln!(out, "{pad}{s}"),
        other => writeln!(out, "{pad}{other}"),
    }
}
