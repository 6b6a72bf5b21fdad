//! The access log: one line per request answered on the public listener.
//!
//! With JSON logs (the default off a terminal) the line is formatted here,
//! straight into the batching log writer, with the same fields, order and
//! shape that `tracing-subscriber`'s JSON layer gives every other event.
//! Formatted by hand because this is the one event written for every
//! request: `tracing-subscriber` visits each field through `serde` into a
//! map and cost about 1.5 µs per request in profiles, a tenth of the whole
//! budget; a direct write into a reused buffer costs a fraction of that.
//! Other formats, and processes that did not install the JSON sink (tests
//! with their own subscriber), go through `tracing` as usual. Either way the
//! line honours the log filter (`warder::access` at `INFO`).
//!
//! Nothing secret is ever passed in: the key appears only as its public id.

use super::logwriter::BatchWriter;
use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Duration;

/// What one access-log line says.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// 32-hex request id (= trace id).
    pub request_id: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Matched route template, or `fallback`.
    pub route: &'a str,
    /// Status answered.
    pub status: u16,
    /// Public id of the key, empty when there was none.
    pub key_id: &'a str,
    /// Model id, empty when none was resolved.
    pub model: &'a str,
    /// Version id, empty when none was resolved.
    pub version: &'a str,
    /// Total time (written in milliseconds, to the microsecond).
    pub latency: Duration,
    /// Time to the upstream's response headers, when a model answered.
    pub upstream: Option<Duration>,
}

/// The JSON sink, installed by `init_logging` when logs are JSON.
static JSON_SINK: OnceLock<BatchWriter> = OnceLock::new();

/// Sends JSON access lines (and [`super::lifecycle`] lines) straight to
/// `writer` from now on.
pub(crate) fn install_json_sink(writer: BatchWriter) {
    let _ = JSON_SINK.set(writer);
}

/// Formats one line with `write` into a reused per-thread buffer and
/// appends it to the JSON sink. False (nothing written) when no sink is
/// installed: the caller logs through `tracing` instead.
pub(super) fn write_line(write: impl FnOnce(&mut Vec<u8>)) -> bool {
    let Some(sink) = JSON_SINK.get() else {
        return false;
    };
    thread_local! {
        static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    }
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        write(&mut line);
        sink.append(&line);
    });
    true
}

/// Writes the access-log line of one request.
pub fn log(r: &AccessRecord<'_>) {
    if !tracing::enabled!(target: "warder::access", tracing::Level::INFO) {
        return;
    }
    if !write_line(|line| write_json(line, r, chrono::Utc::now())) {
        tracing::info!(
            target: "warder::access",
            request_id = r.request_id,
            method = r.method,
            route = r.route,
            status = r.status,
            key_id = r.key_id,
            model = r.model,
            version = r.version,
            latency_ms = r.latency.as_secs_f64() * 1000.0,
            upstream_ms = r.upstream.map(|u| u.as_secs_f64() * 1000.0),
            "request"
        );
    }
}

/// One JSON line, as `tracing-subscriber`'s flattened JSON format writes it.
fn write_json(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: chrono::DateTime<chrono::Utc>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
    string(out, r.request_id);
    out.extend_from_slice(b",\"method\":");
    string(out, r.method);
    out.extend_from_slice(b",\"route\":");
    string(out, r.route);
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(r.status).as_bytes());
    out.extend_from_slice(b",\"key_id\":");
    string(out, r.key_id);
    out.extend_from_slice(b",\"model\":");
    string(out, r.model);
    out.extend_from_slice(b",\"version\":");
    string(out, r.version);
    out.extend_from_slice(b",\"latency_ms\":");
    millis(out, r.latency);
    if let Some(u) = r.upstream {
        out.extend_from_slice(b",\"upstream_ms\":");
        millis(out, u);
    }
    out.extend_from_slice(b",\"target\":\"warder::access\"}\n");
}

/// RFC 3339 with microseconds, UTC. The date and time up to the second are
/// formatted once per second per thread (`chrono`'s formatter is the
/// costliest part of a line otherwise).
pub(super) fn timestamp(out: &mut Vec<u8>, now: chrono::DateTime<chrono::Utc>) {
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let secs = now.timestamp();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            cached.1 = now.format("%Y-%m-%dT%H:%M:%S").to_string();
            cached.0 = secs;
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    out.push(b'.');
    // A leap second reads as 1 000 000 µs or more: shown as its last microsecond.
    digits(out, now.timestamp_subsec_micros().min(999_999), 6);
    out.push(b'Z');
}

pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    // Ids and route templates need no escaping: copied as they are.
    if crate::json_syntax::is_plain_string(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // serde_json escapes quotes, backslashes and control characters.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Milliseconds with three decimals (`12.775`), from whole microseconds.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros();
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    out.push(b'.');
    digits(out, (micros % 1000) as u32, 3);
}

/// `v` in exactly `width` decimal digits, zero-padded (`v < 10^width`).
fn digits(out: &mut Vec<u8>, v: u32, width: u32) {
    let mut rest = v;
    let start = out.len();
    for _ in 0..width {
        out.push(b'0' + (rest % 10) as u8);
        rest /= 10;
    }
    out[start..].reverse();
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{json, Value};

    fn record(upstream: Option<Duration>) -> AccessRecord<'static> {
        AccessRecord {
            request_id: "b9d645ed09d758254bd174d8caba1b1e",
            method: "POST",
            route: "/models/{model}/predict",
            status: 200,
            key_id: "zmhow5vx",
            model: "0mmlgkrv",
            version: "rg3tzmra",
            latency: Duration::from_micros(12_775),
            upstream,
        }
    }

    fn line(r: &AccessRecord<'_>) -> String {
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 8, 9, 10)
            .single()
            .expect("time")
            + chrono::Duration::microseconds(508_979);
        let mut out = Vec::new();
        write_json(&mut out, r, now);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_line_has_every_field_in_the_documented_shape() {
        let text = line(&record(Some(Duration::from_micros(5_426))));
        assert!(text.ends_with("}\n") && !text[..text.len() - 1].contains('\n'));
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v,
            json!({
                "timestamp": "2026-11-22T08:09:10.508979Z",
                "level": "INFO",
                "message": "request",
                "request_id": "b9d645ed09d758254bd174d8caba1b1e",
                "method": "POST",
                "route": "/models/{model}/predict",
                "status": 200,
                "key_id": "zmhow5vx",
                "model": "0mmlgkrv",
                "version": "rg3tzmra",
                "latency_ms": 12.775,
                "upstream_ms": 5.426,
                "target": "warder::access"
            })
        );
    }

    #[test]
    fn no_upstream_means_no_upstream_field_and_odd_text_is_escaped() {
        let mut r = record(None);
        r.route = "fallback \"quoted\" \\ \n";
        r.latency = Duration::from_micros(7_002_031);
        let v: Value = serde_json::from_str(&line(&r)).expect("valid JSON");
        assert!(v.get("upstream_ms").is_none());
        assert_eq!(v["route"], "fallback \"quoted\" \\ \n");
        assert_eq!(v["latency_ms"], json!(7002.031));
    }
}
