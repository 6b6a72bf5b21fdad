//! Telemetry in one place: log setup, the metric registry and W3C trace context.
//!
//! Nothing here decides what a request does; it only records what happened.

pub mod access;
pub mod lifecycle;
pub mod logwriter;
pub mod metrics;
pub mod trace;

use crate::config::{Config, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Keeps the background log writer alive; drop it last (it flushes).
pub struct LogGuard(
    #[expect(
        dead_code,
        reason = "held only for its Drop, which flushes the log writer"
    )]
    logwriter::BatchGuard,
);

/// The JSON log layer: one flat object per line. A line inside a span (an
/// async request's queue phase, attempts and deliveries) carries the span's
/// fields, its trace id among them.
pub(crate) fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
}

/// Installs the global log subscriber. Lines are written in batches by a
/// background thread so that a slow stdout never stalls a request.
pub fn init_logging(config: &Config) -> LogGuard {
    let (writer, guard) = logwriter::BatchWriter::new(std::io::stdout());
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = config
        .log_format
        .unwrap_or(if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(json_layer(writer.clone()))
            .try_init()
            // Access lines go straight to the same writer, in the same shape.
            .map(|()| access::install_json_sink(writer)),
        LogFormat::Pretty => registry
            .with(fmt::layer().compact().with_writer(writer))
            .try_init(),
    };
    // A second initialisation (several apps in one test process) keeps the first.
    let _ = result;
    LogGuard(guard)
}
