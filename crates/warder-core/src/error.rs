//! The one table of stable error codes and the HTTP status each maps to.
//!
//! Callers and scripts match on these codes, so a code is never renamed; new
//! codes may be added. The table knows nothing about HTTP libraries: statuses
//! are plain numbers.

use serde::Serialize;

/// A stable, documented error code carried in every error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request's JSON could not be parsed.
    InvalidJson,
    /// A required header or parameter is missing or malformed.
    BadRequest,
    /// No key, or a key that is malformed, unknown, revoked or expired.
    Unauthenticated,
    /// The key is valid but may not do this.
    Forbidden,
    /// The model (or version) does not exist, or is not visible to the caller.
    ModelNotFound,
    /// The route or resource does not exist, or is not visible to the caller.
    NotFound,
    /// The method is not defined for this route.
    MethodNotAllowed,
    /// The resource already exists (e.g. a unique name is taken).
    Conflict,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The body is not of a supported content type.
    UnsupportedMediaType,
    /// The body parsed but its values are not acceptable.
    InvalidInput,
    /// The per-key rate limit is exhausted; `Retry-After` says when to retry.
    RateLimited,
    /// The daily or monthly call quota is exhausted.
    QuotaExceeded,
    /// The model version is not active.
    ModelNotReady,
    /// The model version is at its concurrency limit and the wait expired.
    ModelBusy,
    /// The upstream answered with an error or could not be reached.
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// A dependency of the gateway (e.g. its database) is unavailable.
    ServiceUnavailable,
    /// A bug or an unexpected failure inside the gateway.
    Internal,
}

impl ErrorCode {
    /// Every code, in table order (used by documentation and tests).
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::InvalidJson,
        ErrorCode::BadRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::ModelNotFound,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::InvalidInput,
        ErrorCode::RateLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::ModelNotReady,
        ErrorCode::ModelBusy,
        ErrorCode::UpstreamError,
        ErrorCode::UpstreamTimeout,
        ErrorCode::ServiceUnavailable,
        ErrorCode::Internal,
    ];

    /// The wire name of the code.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::ModelNotFound => "MODEL_NOT_FOUND",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::ModelNotReady => "MODEL_NOT_READY",
            ErrorCode::ModelBusy => "MODEL_BUSY",
            ErrorCode::UpstreamError => "UPSTREAM_ERROR",
            ErrorCode::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status the code is answered with by default.
    ///
    /// `UPSTREAM_ERROR` keeps the upstream's own 4xx status; that choice is
    /// made where the upstream answer is known, not here.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::ModelNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidInput => 422,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::UpstreamError => 502,
            ErrorCode::ModelNotReady | ErrorCode::ModelBusy | ErrorCode::ServiceUnavailable => 503,
            ErrorCode::UpstreamTimeout => 504,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!(seen.insert(code.as_str()), "duplicate {code}");
        }
    }

    #[test]
    fn documented_statuses() {
        assert_eq!(ErrorCode::Unauthenticated.http_status(), 401);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::ModelNotReady.http_status(), 503);
        assert_eq!(ErrorCode::UpstreamTimeout.http_status(), 504);
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
    }
}
