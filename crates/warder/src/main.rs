//! The `warder` binary: parse the command line, then hand over to the library.

use anyhow::Context;
use clap::Parser;
use std::io::Write;
use warder::cli::{Cli, Command, ConfigCommand};
use warder::{App, Config};

// The request path allocates many small, short-lived buffers (headers,
// bodies, log lines); mimalloc serves them markedly cheaper than glibc's
// malloc, which showed as ~11 % of the gateway's CPU in profiles. Its 2.x
// line (the crate's `v2` feature): the crate asks for every block through
// `mi_malloc_aligned`, and 3.x's aligned path over-allocates every block
// above 1 KiB whose size class is not a power of two (hyper's read buffers,
// boxed futures), about six a predict; 2.x serves those as plain blocks
// (callgrind: ~600 fewer instructions a predict, see ARCHITECTURE.md (h)).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let code = match cli.command {
        // The serving commands load their configuration first: it says how
        // many threads to run.
        Command::Serve(args) => {
            let config = args.load()?;
            runtime(config.effective_worker_threads())?.block_on(serve(config))?
        }
        Command::Worker(args) => {
            let config = args.load()?;
            runtime(config.effective_worker_threads())?.block_on(worker(config))?
        }
        // The rest is one-shot work: one thread is plenty.
        Command::Migrate(args) => runtime(1)?.block_on(async {
            let config = args.load()?;
            let store = warder::app::open_store(&config).await?;
            writeln!(
                std::io::stdout(),
                "migrations applied ({:?})",
                store.dialect()
            )?;
            anyhow::Ok(0)
        })?,
        Command::Config {
            command: ConfigCommand::Check(args),
        } => match args.load() {
            Ok(config) => {
                write!(std::io::stdout(), "{}", config.redacted_toml())?;
                0
            }
            Err(e) => {
                writeln!(std::io::stderr(), "{e}")?;
                2
            }
        },
        Command::Admin(args) => runtime(1)?.block_on(warder::cli::run_client(
            warder::cli::ClientCommand::Admin(args),
        ))?,
        Command::Predict(args) => runtime(1)?.block_on(warder::cli::run_client(
            warder::cli::ClientCommand::Predict(args),
        ))?,
        Command::Async(args) => runtime(1)?.block_on(warder::cli::run_async(args))?,
    };
    std::process::exit(code);
}

/// The async runtime for `threads` threads. One thread gets tokio's
/// single-threaded scheduler: with no other worker to steal work from, the
/// multi-threaded one only adds synchronisation (`bench/`: the bare proxy
/// serves ~10 % more requests per CPU-second on one core with it).
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(config: Config) -> anyhow::Result<i32> {
    let _logs = warder::telemetry::init_logging(&config);
    let app = App::build(config).await?;
    if let Some(keys) = app.demo_keys() {
        print_demo_banner(app.public_addr(), keys)?;
    }
    app.run(shutdown_signal()).await;
    Ok(0)
}

async fn worker(config: Config) -> anyhow::Result<i32> {
    let _logs = warder::telemetry::init_logging(&config);
    warder::app::run_worker(config, shutdown_signal()).await?;
    Ok(0)
}

fn print_demo_banner(
    addr: std::net::SocketAddr,
    keys: &warder::demo::DemoKeys,
) -> anyhow::Result<()> {
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nwarder demo is running on http://{host}")?;
    writeln!(out, "  models:    {}", warder::demo::DEMO_MODELS.join(", "))?;
    writeln!(out, "  admin key: {}", keys.admin_key)?;
    writeln!(out, "  user key:  {}", keys.user_key)?;
    writeln!(out, "  docs:      http://{host}/docs")?;
    writeln!(out, "\nTry:")?;
    writeln!(
        out,
        "curl -s -X POST http://{host}/models/sentiment/predict -H 'Authorization: Api-Key {}' -H 'Content-Type: application/json' -d '{{\"text\": \"I love this gateway\"}}'",
        keys.user_key
    )?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
