//! Domain types, the stable error-code table and the storage traits of warder.
//!
//! This crate is the vocabulary every other crate speaks. It must stay free of
//! IO: no HTTP framework, no database driver, no async runtime — only types,
//! validation and trait definitions, so that storage backends and the server
//! can evolve independently.

pub mod error;
pub mod ids;
pub mod jobs;
pub mod limits;
pub mod records;
pub mod store;

pub use error::ErrorCode;
pub use ids::{new_id, now_ms, ApiKey, KeyId, RequestId, RequestIdHex, SpanId};
pub use jobs::*;
pub use limits::{RateDecision, RateLimiter, RateLimiterUnavailable};
pub use records::*;
pub use store::*;
