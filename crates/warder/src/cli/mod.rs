//! The command line: `serve`, `worker`, `migrate`, `config check`, `admin …` and the
//! client commands. Admin and client commands talk to a running gateway over
//! HTTP (`--url`, `--key`), so every change goes through the same validation
//! and cache invalidation as the admin API.

mod async_cmd;
mod client;

use crate::config::{Config, FlagOverrides};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

pub use async_cmd::{run as run_async, AsyncArgs};
pub use client::{run_client, ClientCommand};

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(name = "warder", version, about = "Gateway for ML model APIs")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (public and ops listeners).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(ConfigArgs),
    /// Inspect configuration.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage users, keys, models, versions, environments, policies and grants.
    Admin(client::AdminArgs),
    /// Call a model's sync predict route.
    Predict(client::PredictArgs),
    /// Run only the async worker (any number may share a database).
    Worker(WorkerArgs),
    /// Async inference: submit, status, wait, cancel.
    Async(AsyncArgs),
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) or the error.
    Check(ConfigArgs),
}

/// Where configuration comes from.
#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "WARDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite file and blobs).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Flags of `serve`.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Configuration sources.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Public listener address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Ops listener address (metrics, health).
    #[arg(long)]
    pub ops_listen: Option<SocketAddr>,
    /// Start and register the demo models; print keys and a curl line.
    #[arg(long)]
    pub demo: bool,
    /// Do not run the async worker in this process.
    #[arg(long)]
    pub no_worker: bool,
}

/// Flags of `worker`.
#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    /// Configuration sources.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (default: not at all).
    #[arg(long)]
    pub ops_listen: Option<SocketAddr>,
}

impl WorkerArgs {
    /// Loads the configuration these flags select.
    pub fn load(&self) -> Result<Config, crate::config::ConfigError> {
        let flags = FlagOverrides {
            worker_ops_listen: self.ops_listen,
            data_dir: self.config.data_dir.clone(),
            ..FlagOverrides::default()
        };
        Config::load(self.config.config.as_deref(), &flags)
    }
}

impl ServeArgs {
    /// Loads the configuration these flags select.
    pub fn load(&self) -> Result<Config, crate::config::ConfigError> {
        let flags = FlagOverrides {
            listen: self.listen,
            ops_listen: self.ops_listen,
            data_dir: self.config.data_dir.clone(),
            demo: self.demo.then_some(true),
            worker_enabled: self.no_worker.then_some(false),
            ..FlagOverrides::default()
        };
        Config::load(self.config.config.as_deref(), &flags)
    }
}

impl ConfigArgs {
    /// Loads the configuration these flags select.
    pub fn load(&self) -> Result<Config, crate::config::ConfigError> {
        let flags = FlagOverrides {
            data_dir: self.data_dir.clone(),
            ..FlagOverrides::default()
        };
        Config::load(self.config.as_deref(), &flags)
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail's closure signature is fixed"
)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_ops_listen_flag_beats_env_and_file_and_is_not_serves() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("w.toml", "worker_ops_listen = \"127.0.0.1:7001\"\n")?;
            let args = |flag: Option<&str>| WorkerArgs {
                config: ConfigArgs {
                    config: Some("w.toml".into()),
                    data_dir: None,
                },
                ops_listen: flag.map(|a| a.parse().expect("addr")),
            };
            let port = |a: WorkerArgs| a.load().expect("loads").worker_ops_listen.map(|a| a.port());
            assert_eq!(port(args(None)), Some(7001), "file");
            jail.set_env("WARDER_WORKER_OPS_LISTEN", "127.0.0.1:7002");
            assert_eq!(port(args(None)), Some(7002), "env beats file");
            assert_eq!(
                port(args(Some("127.0.0.1:7003"))),
                Some(7003),
                "flag beats env"
            );
            jail.set_env("WARDER_OPS_LISTEN", "127.0.0.1:7004");
            let c = args(None).load().expect("loads");
            assert_eq!(c.ops_listen.port(), 7004);
            assert_eq!(
                c.worker_ops_listen.map(|a| a.port()),
                Some(7002),
                "serve's ops_listen does not set the worker's"
            );
            Ok(())
        });
    }
}
