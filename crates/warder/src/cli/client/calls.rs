//! What each client command asks of the gateway: its method, path (with
//! path segments and query values percent-encoded) and JSON body.

use super::{
    enc, AdminCommand, EnvCmd, GrantCmd, KeyCmd, ModelCmd, PolicyCmd, PredictArgs, UserCmd,
    VersionCmd,
};
use anyhow::Context;
use serde_json::{json, Map, Value};

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

pub(super) type Call = (reqwest::Method, String, Option<Value>);

pub(super) fn admin_call(cmd: &AdminCommand) -> Call {
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

pub(super) fn predict_call(args: &PredictArgs) -> anyhow::Result<Call> {
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
