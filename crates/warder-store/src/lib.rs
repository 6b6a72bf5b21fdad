//! SQLite and PostgreSQL implementations of warder's storage traits.
//!
//! Both backends share one SQL implementation ([`SqlStore`]) over sqlx's
//! `Any` driver: the control-plane queries use only portable SQL (`$n`
//! placeholders, `ON CONFLICT`, `BIGINT`/`TEXT`/`DOUBLE PRECISION` columns,
//! times as Unix milliseconds), so one body of code serves both dialects and
//! cannot drift between them. Each dialect keeps its own migrations
//! (`migrations/sqlite`, `migrations/postgres`); queries that genuinely differ
//! branch on [`Dialect`]. This crate persists data as given and never decides
//! policy.

mod control;
mod notify;
mod queue;
mod rows;
mod sql;

pub use notify::{listen_queue_events, QueueEvent};
pub use sql::{Dialect, SqlStore, StoreOptions};
