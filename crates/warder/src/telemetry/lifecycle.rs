//! The lines written for every async request: "async request queued" (in its
//! `async.queue` span), "async request finished" (in the `async.attempt`
//! span of its last attempt) and, when it has a webhook, "webhook delivery"
//! (in the `async.webhook` span of each delivery attempt); plus the spans
//! themselves, for the rarer lines.
//!
//! With JSON logs these lines are formatted here, straight into the
//! batching log writer, in the shape `tracing-subscriber`'s JSON layer gives
//! a line inside a span (the span's fields under `"span"`, its name last).
//! Why by hand: that layer formats a span's fields into JSON when the span
//! is created, then parses and re-serialises them for every line in it; with
//! the event itself the queued and finished lines were about a seventh of
//! warder's instructions per async job (callgrind, SQLite, `bench/`). The
//! tests below hold both shapes equal, byte for byte. Other formats, and processes without the JSON sink, log the
//! same lines through `tracing`, inside the real span. Either way the line
//! honours the filter's directives for its target and level; directives
//! that name a span (`[async.attempt]=info`) select these lines only on the
//! `tracing` path, as no span exists on the other.

use super::access::{string, timestamp, write_line};
use tracing::{Level, Span};

const QUEUE: &str = "warder::queue";
const WORKER: &str = "warder::queue::worker";
const WEBHOOKS: &str = "warder::webhooks";

/// The span of an async request's queue phase (its id is the trace id).
pub fn queue_span(id: &str, model: &str) -> Span {
    tracing::info_span!(target: QUEUE, "async.queue", trace_id = %id, request_id = %id, model = %model)
}

/// The span of one attempt of an async request.
pub fn attempt_span(id: &str, model: &str, attempt: u32) -> Span {
    tracing::info_span!(
        target: WORKER,
        "async.attempt",
        trace_id = %id,
        request_id = %id,
        model = %model,
        attempt = attempt,
    )
}

/// "async request queued": the submit of `id` for `model` was committed.
/// Its span is the request's own trace (`id`); its `trace_id` field is the
/// trace the submit came in on (`submit_trace`): `id` again, unless the
/// caller sent its own `traceparent`, whose trace this line then links to
/// the request's.
pub fn queued(id: &str, submit_trace: &str, model: &str) {
    if tracing::enabled!(target: QUEUE, Level::INFO)
        && !write_line(|out| queued_line(out, id, submit_trace, model))
    {
        queued_by_tracing(id, submit_trace, model);
    }
}

/// "async request finished": the outcome of attempt `attempt` of `id`
/// (`succeeded`, `failed` or `canceled`) was recorded.
pub fn finished(id: &str, model: &str, attempt: u32, outcome: &str) {
    if tracing::enabled!(target: WORKER, Level::INFO)
        && !write_line(|out| finished_line(out, id, model, attempt, outcome))
    {
        finished_by_tracing(id, model, attempt, outcome);
    }
}

/// The span of one webhook delivery attempt of an async request.
pub fn webhook_span(id: &str, attempt: u32) -> Span {
    tracing::info_span!(target: WEBHOOKS, "async.webhook", trace_id = %id, request_id = %id, attempt = attempt)
}

/// What one webhook delivery attempt of an async request did.
pub struct Delivered<'a> {
    /// The request id.
    pub id: &'a str,
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// The receiver's status, when it answered.
    pub status_code: Option<u16>,
    /// Why it failed, empty when it did not.
    pub error: &'a str,
    /// `succeeded`, `retry` or `failed`.
    pub outcome: &'a str,
}

/// "webhook delivery": one delivery attempt and what follows it.
pub fn webhook_delivery(d: &Delivered<'_>) {
    if tracing::enabled!(target: WEBHOOKS, Level::INFO) && !write_line(|out| delivery_line(out, d))
    {
        delivery_by_tracing(d);
    }
}

fn delivery_line(out: &mut Vec<u8>, d: &Delivered<'_>) {
    head(out, "webhook delivery");
    if let Some(code) = d.status_code {
        out.extend_from_slice(b",\"status_code\":");
        out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    }
    out.extend_from_slice(b",\"error\":");
    string(out, d.error);
    out.extend_from_slice(b",\"outcome\":");
    string(out, d.outcome);
    tail(out, WEBHOOKS, "async.webhook", d.id, None, Some(d.attempt));
}

fn delivery_by_tracing(d: &Delivered<'_>) {
    webhook_span(d.id, d.attempt).in_scope(|| {
        tracing::info!(
            target: WEBHOOKS,
            status_code = d.status_code,
            error = d.error,
            outcome = d.outcome,
            "webhook delivery"
        )
    });
}

fn queued_line(out: &mut Vec<u8>, id: &str, submit_trace: &str, model: &str) {
    head(out, "async request queued");
    out.extend_from_slice(b",\"trace_id\":");
    string(out, submit_trace);
    out.extend_from_slice(b",\"model\":");
    string(out, model);
    tail(out, QUEUE, "async.queue", id, Some(model), None);
}

fn queued_by_tracing(id: &str, submit_trace: &str, model: &str) {
    queue_span(id, model).in_scope(|| {
        tracing::info!(target: QUEUE, trace_id = %submit_trace, model = %model, "async request queued")
    });
}

fn finished_line(out: &mut Vec<u8>, id: &str, model: &str, attempt: u32, outcome: &str) {
    head(out, "async request finished");
    out.extend_from_slice(b",\"outcome\":");
    string(out, outcome);
    tail(out, WORKER, "async.attempt", id, Some(model), Some(attempt));
}

fn finished_by_tracing(id: &str, model: &str, attempt: u32, outcome: &str) {
    attempt_span(id, model, attempt)
        .in_scope(|| tracing::info!(target: WORKER, outcome = outcome, "async request finished"));
}

fn head(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, chrono::Utc::now());
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":");
    string(out, message);
}

/// The target and the span, in the order the JSON layer writes them: the
/// span's fields sorted by name, then its name.
fn tail(
    out: &mut Vec<u8>,
    target: &str,
    span: &str,
    id: &str,
    model: Option<&str>,
    attempt: Option<u32>,
) {
    out.extend_from_slice(b",\"target\":");
    string(out, target);
    out.extend_from_slice(b",\"span\":{");
    if let Some(a) = attempt {
        out.extend_from_slice(b"\"attempt\":");
        out.extend_from_slice(itoa::Buffer::new().format(a).as_bytes());
        out.push(b',');
    }
    if let Some(m) = model {
        out.extend_from_slice(b"\"model\":");
        string(out, m);
        out.push(b',');
    }
    out.extend_from_slice(b"\"request_id\":");
    string(out, id);
    out.extend_from_slice(b",\"trace_id\":");
    string(out, id);
    out.extend_from_slice(b",\"name\":");
    string(out, span);
    out.extend_from_slice(b"}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::logwriter::tests::Sink;
    use serde_json::Value;
    use tracing_subscriber::prelude::*;

    /// The one line `tracing-subscriber`'s JSON layer, configured as
    /// warder's, prints for what `log` logs.
    fn by_tracing(log: impl FnOnce()) -> String {
        let captured = Sink::default();
        let sink = captured.clone();
        let subscriber =
            tracing_subscriber::registry().with(crate::telemetry::json_layer(move || sink.clone()));
        tracing::subscriber::with_default(subscriber, log);
        let text = captured.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        text
    }

    fn by_hand(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    /// The line without its timestamp, which must be RFC 3339 UTC with
    /// microseconds.
    fn untimed(line: &str) -> &str {
        let rest = line
            .strip_prefix("{\"timestamp\":\"")
            .unwrap_or_else(|| panic!("no timestamp first: {line}"));
        let (time, rest) = rest.split_at(27);
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'),
            "{line}"
        );
        rest
    }

    /// Byte for byte the JSON layer's line, but for the time.
    fn same_but_time(traced: &str, hand: &str) -> Value {
        assert_eq!(untimed(hand), untimed(traced));
        serde_json::from_str(hand).expect("JSON")
    }

    const ID: &str = "b9d645ed09d758254bd174d8caba1b1e";
    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn the_queued_line_is_the_json_layers_line_even_for_odd_text() {
        for (model, trace) in [("0mmlgkrv", ID), ("odd \"model\" \\ \n", CALLER_TRACE)] {
            let traced = by_tracing(|| queued_by_tracing(ID, trace, model));
            let hand = by_hand(|out| queued_line(out, ID, trace, model));
            let line = same_but_time(&traced, &hand);
            assert_eq!(line["span"]["name"], "async.queue");
            assert_eq!(line["span"]["model"], model);
            assert_eq!(line["span"]["trace_id"], ID);
            assert_eq!(line["span"]["request_id"], ID);
            assert_eq!(line["trace_id"], trace, "the trace the submit came in on");
        }
    }

    #[test]
    fn the_finished_line_is_the_json_layers_line_even_for_odd_text() {
        for model in ["0mmlgkrv", "odd \"model\" \\ \n"] {
            let traced = by_tracing(|| finished_by_tracing(ID, model, 3, "failed"));
            let hand = by_hand(|out| finished_line(out, ID, model, 3, "failed"));
            let line = same_but_time(&traced, &hand);
            assert_eq!(line["span"]["attempt"], 3);
            assert_eq!(line["span"]["model"], model);
            assert_eq!(line["outcome"], "failed");
        }
    }

    #[test]
    fn the_delivery_line_is_the_json_layers_line_with_or_without_a_status() {
        for (status_code, error, outcome) in [
            (Some(200), "", "succeeded"),
            (Some(503), "the receiver answered 503", "retry"),
            (None, "connect: \"refused\"", "failed"),
        ] {
            let d = Delivered {
                id: ID,
                attempt: 2,
                status_code,
                error,
                outcome,
            };
            let traced = by_tracing(|| delivery_by_tracing(&d));
            let line = same_but_time(&traced, &by_hand(|out| delivery_line(out, &d)));
            assert_eq!(line["span"]["name"], "async.webhook");
            assert_eq!(line["span"]["attempt"], 2);
            assert_eq!(line["status_code"].as_u64(), status_code.map(u64::from));
            assert_eq!(line["error"], error);
        }
    }

    #[test]
    fn without_the_sink_the_lines_go_through_tracing_in_their_span() {
        // Only the binary installs the JSON sink; this test process does not.
        let parse = |text: String| serde_json::from_str::<Value>(&text).expect("JSON");
        let line = parse(by_tracing(|| finished(ID, "m1", 1, "succeeded")));
        assert_eq!(line["message"], "async request finished");
        assert_eq!(line["span"]["name"], "async.attempt");
        assert_eq!(line["span"]["trace_id"], ID);
        let line = parse(by_tracing(|| queued(ID, CALLER_TRACE, "m1")));
        assert_eq!(line["span"]["name"], "async.queue");
        assert_eq!(line["span"]["trace_id"], ID);
        assert_eq!(line["trace_id"], CALLER_TRACE);
        let line = parse(by_tracing(|| {
            webhook_delivery(&Delivered {
                id: ID,
                attempt: 1,
                status_code: Some(200),
                error: "",
                outcome: "succeeded",
            })
        }));
        assert_eq!(line["message"], "webhook delivery");
        assert_eq!(line["span"]["name"], "async.webhook");
        assert_eq!(line["span"]["trace_id"], ID);
    }
}
