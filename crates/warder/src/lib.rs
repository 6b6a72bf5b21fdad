//! warder: a self-hosted gateway for ML model APIs.
//!
//! The library holds the whole server; the `warder` binary only parses the
//! command line and calls in. Start at [`app::App`].

pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod gateway;
pub mod http;
mod http1_fields;
mod json_syntax;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod state;
pub mod telemetry;
mod ttl_cache;
pub mod upstream;
pub mod usage;
pub mod webhooks;

pub use app::App;

/// The hasher of the in-process maps read on every request (key, target,
/// access and limiter caches, usage counters): aHash with per-process random
/// keys, several times cheaper than the standard SipHash on short keys and
/// still resistant to crafted collisions.
pub(crate) type FastHash = ahash::RandomState;
pub use config::Config;
