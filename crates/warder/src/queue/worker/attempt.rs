//! One attempt of a job: the model call, through the upstream client and
//! the version's concurrency slots shared with sync predict, and what its
//! answer makes of the job (its output, or an error that may be retried
//! after a backoff with jitter).

use super::Worker;
use crate::catalog::Target;
use crate::upstream::UpstreamErrorKind;
use bytes::Bytes;
use http_body_util::BodyExt;
use rand::Rng;
use std::time::Duration;
use warder_core::*;

/// How an attempt ended, before the retry policy is applied.
pub(super) enum Attempt {
    Succeeded(String),
    Retryable(JobError),
    Fatal(JobError),
    Canceled,
}

impl Worker {
    /// One call of the model for a job.
    pub(super) async fn attempt(&self, job: &AsyncJob, target: &Target) -> Attempt {
        // Sync and async calls of this process share the version's slots.
        let _permit = match &target.slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        let timeout = Duration::from_millis(target.version.timeout_ms);
        let traceparent = format!("00-{}-{}-01", job.id, SpanId::generate().to_hex());
        let headers = crate::gateway::upstream_headers(&traceparent, &job.id);
        let post = crate::upstream::JsonPost {
            url: &target.upstream_uri,
            headers: &headers,
        };
        // As a sync predict's call: a small body to an `http://` model goes
        // through the hand-driven exchange, and a first try that sent
        // nothing (it could not connect, or a new connection closed before
        // the request went out) is made once more before the attempt counts
        // as failed.
        let started = tokio::time::Instant::now();
        let sent = self.deps.upstream.send_buffered(
            post,
            Bytes::from(job.input.clone()),
            started + timeout,
            timeout,
        );
        let response = match Box::pin(sent).await {
            Ok(r) => r,
            Err(e) => {
                self.deps
                    .metrics
                    .upstream_error(&job.model_id, e.kind.as_str());
                let code = match e.kind {
                    UpstreamErrorKind::Timeout => JobErrorCode::UpstreamTimeout,
                    _ => JobErrorCode::UpstreamError,
                };
                let message = match e.kind {
                    UpstreamErrorKind::Timeout => {
                        format!("the model did not answer within {} ms", timeout.as_millis())
                    }
                    UpstreamErrorKind::Connect => "the model server could not be reached".into(),
                    UpstreamErrorKind::Reset => "the model server closed the connection".into(),
                };
                return Attempt::Retryable(JobError::new(code, message));
            }
        };
        let status = response.status();
        let remaining = timeout.saturating_sub(started.elapsed());
        let limit = self.deps.config.max_upstream_response_bytes;
        let body = match tokio::time::timeout(
            remaining,
            http_body_util::Limited::new(response.into_body(), limit).collect(),
        )
        .await
        {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(_)) => {
                return Attempt::Retryable(JobError::new(
                    JobErrorCode::UpstreamError,
                    "the model's answer was cut off or too large",
                ))
            }
            Err(_) => {
                return Attempt::Retryable(JobError::new(
                    JobErrorCode::UpstreamTimeout,
                    format!("the model did not answer within {} ms", timeout.as_millis()),
                ))
            }
        };
        if status.is_success() {
            return Attempt::Succeeded(output_text(&body));
        }
        let detail = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
        let error = JobError::new(
            JobErrorCode::UpstreamError,
            format!("the model answered {}: {}", status.as_u16(), detail.trim()),
        );
        let kind = if status.is_client_error() {
            "status_4xx"
        } else {
            "status_5xx"
        };
        self.deps.metrics.upstream_error(&job.model_id, kind);
        if status.as_u16() == 429 || status.is_server_error() {
            Attempt::Retryable(error)
        } else {
            Attempt::Fatal(error)
        }
    }
}

/// A model's answer as the job's stored output: the answer itself when it
/// is JSON, else the answer as a JSON string. Invalid UTF-8 is replaced
/// (U+FFFD) first. The JSON check is the predict path's (`json_syntax`):
/// for the benchmark's 390-byte answer this costs about 3 800 instructions
/// (callgrind), where serde_json's skip after a lossy copy cost 7 400.
pub(super) fn output_text(body: &[u8]) -> String {
    let text = match std::str::from_utf8(body) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(body),
    };
    if crate::json_syntax::is_json_value(text.as_bytes()) {
        text.into_owned()
    } else {
        serde_json::Value::String(text.into_owned()).to_string()
    }
}

/// A backoff delay with jitter: uniformly within `[0.8 × base, base]`, so
/// it never exceeds the configured cap.
pub fn jittered(base_ms: u64) -> u64 {
    let spread = base_ms / 5;
    if spread == 0 {
        return base_ms;
    }
    base_ms - rand::thread_rng().gen_range(0..=spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_band() {
        for _ in 0..1000 {
            let d = jittered(1000);
            assert!((800..=1000).contains(&d), "{d}");
        }
        assert_eq!(jittered(0), 0);
    }

    #[test]
    fn an_answer_is_stored_as_json_and_anything_else_as_a_json_string() {
        let json = r#" {"choices":[{"text":"é"}],"n":1} "#;
        assert_eq!(output_text(json.as_bytes()), json);
        assert_eq!(output_text(b"plain text"), r#""plain text""#);
        assert_eq!(output_text(b"{\"cut\":"), r#""{\"cut\":""#);
        // Invalid UTF-8 is replaced, then the text is judged like any other.
        assert_eq!(output_text(b"{\"a\":\"\xff\"}"), "{\"a\":\"\u{fffd}\"}");
        assert_eq!(output_text(b"\xc3 hi"), "\"\u{fffd} hi\"");
    }
}
