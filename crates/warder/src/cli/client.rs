//! Client commands: `admin …` and `predict` against a running gateway.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::io::Write;

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

fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

fn s(v: &Option<String>) -> Option<Value> {
    v.as_ref().map(|x| json!(x))
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

/// Percent-encodes a path segment.
pub(crate) fn enc(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

type Call = (reqwest::Method, String, Option<Value>);

fn admin_call(cmd: &AdminCommand) -> Call {
    use reqwest::Method as M;
    match cmd {
        AdminCommand::User { command } => match command {
            UserCmd::Create { name, email, role } => (
                M::POST,
                "/admin/users".into(),
                Some(obj(vec![
                    ("name", Some(json!(name))),
                    ("email", s(email)),
                    ("role", s(role)),
                ])),
            ),
            UserCmd::List => (M::GET, "/admin/users".into(), None),
            UserCmd::Get { id } => (M::GET, format!("/admin/users/{}", enc(id)), None),
        },
        AdminCommand::Key { command } => match command {
            KeyCmd::Create {
                user,
                name,
                scopes,
                expires_at,
            } => (
                M::POST,
                format!("/admin/users/{}/keys", enc(user)),
                Some(obj(vec![
                    ("name", Some(json!(name))),
                    ("scopes", Some(json!(scopes))),
                    ("expires_at", s(expires_at)),
                ])),
            ),
            KeyCmd::List { user } => (M::GET, format!("/admin/users/{}/keys", enc(user)), None),
            KeyCmd::Revoke { id } => (M::DELETE, format!("/admin/keys/{}", enc(id)), None),
        },
        AdminCommand::Model { command } => match command {
            ModelCmd::Create { name, description } => (
                M::POST,
                "/admin/models".into(),
                Some(obj(vec![
                    ("name", Some(json!(name))),
                    ("description", s(description)),
                ])),
            ),
            ModelCmd::List => (M::GET, "/admin/models".into(), None),
            ModelCmd::Get { model } => (M::GET, format!("/admin/models/{}", enc(model)), None),
        },
        AdminCommand::Version { command } => match command {
            VersionCmd::Create {
                model,
                upstream_url,
                timeout_ms,
                max_concurrency,
                response,
                state,
            } => (
                M::POST,
                format!("/admin/models/{}/versions", enc(model)),
                Some(obj(vec![
                    ("upstream_url", Some(json!(upstream_url))),
                    ("timeout_ms", timeout_ms.map(|v| json!(v))),
                    ("max_concurrency", max_concurrency.map(|v| json!(v))),
                    ("response", s(response)),
                    ("state", s(state)),
                ])),
            ),
            VersionCmd::List { model } => (
                M::GET,
                format!("/admin/models/{}/versions", enc(model)),
                None,
            ),
            VersionCmd::Get { id } => (M::GET, format!("/admin/model_versions/{}", enc(id)), None),
            VersionCmd::Update {
                id,
                upstream_url,
                timeout_ms,
                max_concurrency,
                response,
                state,
            } => (
                M::PATCH,
                format!("/admin/model_versions/{}", enc(id)),
                Some(obj(vec![
                    ("upstream_url", s(upstream_url)),
                    ("timeout_ms", timeout_ms.map(|v| json!(v))),
                    ("max_concurrency", max_concurrency.map(|v| json!(v))),
                    ("response", s(response)),
                    ("state", s(state)),
                ])),
            ),
        },
        AdminCommand::Env { command } => match command {
            EnvCmd::Promote {
                model,
                env,
                version,
            } => (
                M::PUT,
                format!("/admin/models/{}/environments/{}", enc(model), enc(env)),
                Some(json!({ "version_id": version })),
            ),
            EnvCmd::List { model } => (
                M::GET,
                format!("/admin/models/{}/environments", enc(model)),
                None,
            ),
        },
        AdminCommand::Policy { command } => match command {
            PolicyCmd::Create {
                name,
                rate,
                burst,
                daily,
                monthly,
            } => (
                M::POST,
                "/admin/policies".into(),
                Some(obj(vec![
                    ("name", Some(json!(name))),
                    ("rate_limit_per_second", rate.map(|v| json!(v))),
                    ("burst", burst.map(|v| json!(v))),
                    ("daily_calls", daily.map(|v| json!(v))),
                    ("monthly_calls", monthly.map(|v| json!(v))),
                ])),
            ),
            PolicyCmd::List => (M::GET, "/admin/policies".into(), None),
        },
        AdminCommand::Grant { command } => match command {
            GrantCmd::Create {
                user,
                model,
                policy,
            } => (
                M::POST,
                "/admin/grants".into(),
                Some(obj(vec![
                    ("user_id", Some(json!(user))),
                    ("model", Some(json!(model))),
                    ("policy_id", s(policy)),
                ])),
            ),
            GrantCmd::List { user } => (
                M::GET,
                format!("/admin/grants{}", query(&[("user_id", user)])),
                None,
            ),
            GrantCmd::Delete { id } => (M::DELETE, format!("/admin/grants/{}", enc(id)), None),
        },
        AdminCommand::Usage {
            user,
            model,
            from,
            to,
        } => (
            M::GET,
            format!(
                "/admin/usage{}",
                query(&[
                    ("user_id", user),
                    ("model", model),
                    ("from", from),
                    ("to", to)
                ])
            ),
            None,
        ),
    }
}

fn predict_call(args: &PredictArgs) -> anyhow::Result<Call> {
    let data = match args.data.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => args.data.clone(),
    };
    let body: Value = serde_json::from_str(&data).context("--data is not valid JSON")?;
    let path = match (&args.version, &args.env) {
        (Some(v), _) => format!("/model_versions/{}/predict", enc(v)),
        (None, Some(e)) => format!(
            "/models/{}/environments/{}/predict",
            enc(&args.model),
            enc(e)
        ),
        (None, None) => format!("/models/{}/predict", enc(&args.model)),
    };
    Ok((reqwest::Method::POST, path, Some(body)))
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
