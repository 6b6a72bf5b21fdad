//! warder's integration tests: real sockets, a real store (SQLite and
//! PostgreSQL), fake model servers on loopback ports. Read a module as the
//! manual of the behaviour it covers.

mod admin;
mod async_behaviour;
mod async_cli;
mod async_crash;
mod async_handoff;
mod async_predict;
mod async_queue_claims;
mod async_queue_postgres;
mod async_queue_store;
mod async_quota;
mod async_submit;
mod async_support;
mod async_webhooks;
mod auth;
mod binary;
mod cli;
mod cluster;
mod counting_store;
mod dispatch;
mod fake_upstream;
mod helpers;
mod lifecycle;
mod observability;
mod outage;
mod predict;
mod predict_versions;
mod ratelimit;
mod upstream_faults;
mod worker_ops;
