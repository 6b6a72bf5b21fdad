//! W3C trace context: the request id is the trace id.
//!
//! An incoming `traceparent` is honoured (its trace id becomes the request
//! id, its span id our parent); otherwise a fresh trace starts here. Each
//! upstream call gets a new span id under the same trace.

use warder_core::{RequestId, SpanId};

/// The trace position of one request inside warder.
#[derive(Debug, Clone, Copy)]
pub struct TraceContext {
    /// Trace id = request id.
    pub request_id: RequestId,
    /// Span id of this request in warder.
    pub span_id: SpanId,
    /// The caller's span, when it sent a `traceparent`.
    pub parent_span_id: Option<SpanId>,
    /// The caller's sampled flag (default sampled).
    pub sampled: bool,
}

impl TraceContext {
    /// From an incoming `traceparent` header value, or a fresh trace.
    pub fn from_traceparent(header: Option<&str>) -> TraceContext {
        header
            .and_then(parse_traceparent)
            .map(|(request_id, parent, sampled)| TraceContext {
                request_id,
                span_id: SpanId::generate(),
                parent_span_id: Some(parent),
                sampled,
            })
            .unwrap_or_else(|| TraceContext {
                request_id: RequestId::generate(),
                span_id: SpanId::generate(),
                parent_span_id: None,
                sampled: true,
            })
    }

    /// The `traceparent` to send to an upstream: same trace, our span as parent.
    pub fn outgoing_traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        self.request_id.push_hex(&mut out);
        out.push('-');
        self.span_id.push_hex(&mut out);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }
}

/// Parses `version-traceid-spanid-flags` (version 00; later versions are
/// read the same way, as the spec asks).
fn parse_traceparent(v: &str) -> Option<(RequestId, SpanId, bool)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        RequestId::parse(trace)?,
        SpanId::parse(span)?,
        flags & 1 == 1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_a_valid_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_traceparent(Some(tp));
        assert_eq!(ctx.request_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ctx.parent_span_id.map(|s| s.to_hex()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let out = ctx.outgoing_traceparent();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(
            !out.contains("00f067aa0ba902b7"),
            "a new span id goes upstream"
        );
        assert!(out.ends_with("-01"));
    }

    #[test]
    fn ignores_invalid_traceparents() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let ctx = TraceContext::from_traceparent(Some(bad));
            assert!(
                ctx.parent_span_id.is_none(),
                "{bad:?} should start a new trace"
            );
        }
    }
}
