//! [`ResponsesRelay`]: the SSE relay for OpenAI's Responses API
//! (`POST /v1/responses` with `"stream": true`). It forwards the typed events
//! (`event: response.created`, `response.output_text.delta`, …) as they
//! arrive, reading each on the fly for the served model, the text generated
//! so far (estimated if the stream ends early) and the usage, which
//! `response.completed` carries in its `response`.
//!
//! The stream is complete at its terminal event: `response.completed` or
//! `response.incomplete` (an answer cut by `max_output_tokens`, still a
//! served one). `response.failed` and an `error` event end it as the
//! provider's failure, their messages scrubbed of what names the provider's
//! account. Anything else that ends it early (a broken connection, an end
//! without a terminal event, the request's deadline, shutdown's end of grace)
//! is finished with the API's own `error` event, which the SDK's stream helper
//! raises, so no client mistakes a truncated answer for a complete one.
//! The API has no `[DONE]`.

use super::forward::scrub;
use super::record::{PendingRecord, UsageField};
use super::relay::{poll_frames, Ending, FrameEachEvent, UpstreamEvents};
use crate::providers::sse;
use crate::usage::event::opt_text;
use crate::usage::Outcome;
use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What the relay reads of an event; everything else goes through untouched.
#[derive(Deserialize)]
struct EventPeek<'a> {
    #[serde(default, rename = "type", borrow, deserialize_with = "opt_text")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    sequence_number: Option<u64>,
    /// A text or arguments delta (other events' `delta`s are not strings).
    #[serde(default, borrow, deserialize_with = "text_or_none")]
    delta: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    response: Option<ResponsePeek<'a>>,
}

#[derive(Deserialize)]
struct ResponsePeek<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: UsageField,
}

/// A string, or `None` for any other JSON value.
fn text_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNot<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match TextOrNot::deserialize(d)? {
        TextOrNot::Text(t) => Some(t),
        TextOrNot::Other(_) => None,
    })
}

/// The event's type: its `event:` name, else its data's `type` (a server
/// that sends no `event:` lines).
pub fn event_type<'a>(event: &'a str, data: &'a str) -> Cow<'a, str> {
    if sse::is_named(event) {
        return Cow::Borrowed(event);
    }
    serde_json::from_str::<EventPeek>(data)
        .ok()
        .and_then(|p| p.kind)
        .unwrap_or(Cow::Borrowed(""))
}

/// Whether an event commits the route (see `forward`): lifecycle events come
/// before any content and are held back while another route may still serve
/// the request; `error` and `response.failed` are the provider's refusal.
pub fn verdict(event: &str, data: &str, hold_lifecycle: bool) -> super::forward::Verdict {
    use super::forward::Verdict;
    match &*event_type(event, data) {
        "error" | "response.failed" => Verdict::InBandError,
        "response.created"
        | "response.in_progress"
        | "response.queued"
        | "response.output_item.added"
        | "response.content_part.added"
        | "keepalive"
            if hold_lifecycle =>
        {
            Verdict::Hold
        }
        _ => Verdict::Content,
    }
}

/// A Responses error event (`error`, or `response.failed`'s
/// `response.error`) as an OpenAI error body, for a failure answered before
/// the stream: its `code`, a `type` that tells a server error from the
/// client's, the message scrubbed.
pub fn error_body(data: &str) -> Bytes {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let err = v.pointer(error_at(&v)).unwrap_or(&v);
    let code = err
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("server_error");
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| "The upstream reported an error.".to_owned(), scrub);
    let kind = match code {
        "server_error" | "rate_limit_exceeded" | "vector_store_timeout" => code,
        _ => "invalid_request_error",
    };
    Bytes::from(
        json!({"error": {"message": message, "type": kind, "param": err.get("param"), "code": code}})
            .to_string(),
    )
}

/// Where a Responses error event keeps its error (`code`, `message`):
/// `response.failed` in `response.error`, `error` in its own members.
fn error_at(event: &Value) -> &'static str {
    if event
        .pointer("/response/error")
        .is_some_and(Value::is_object)
    {
        "/response/error"
    } else {
        ""
    }
}

pub struct ResponsesRelay {
    upstream: UpstreamEvents,
    record: PendingRecord,
    /// The last `sequence_number` seen, so the gateway's own event follows it.
    sequence: Option<u64>,
    model_seen: bool,
    done: bool,
}

impl ResponsesRelay {
    pub fn new(upstream: UpstreamEvents, record: PendingRecord) -> Self {
        Self {
            upstream,
            record,
            sequence: None,
            model_seen: false,
            done: false,
        }
    }

    /// A terminal event: the stream ends here, with the usage its response
    /// reports.
    fn settle(&mut self, response: Option<ResponsePeek>) {
        self.done = true;
        if let Some(UsageField(Some(u))) = response.map(|r| r.usage) {
            self.record.tokens = u;
        }
    }
}

impl FrameEachEvent for ResponsesRelay {
    fn finished(&self) -> bool {
        self.done
    }

    fn upstream(&mut self) -> &mut UpstreamEvents {
        &mut self.upstream
    }

    /// Looks at one upstream event; returns what to send to the client.
    fn on_event(&mut self, event: &str, data: &str) -> Bytes {
        let Ok(peek) = serde_json::from_str::<EventPeek>(data) else {
            self.record.mark_first_byte();
            return sse::frame(event, data, b"");
        };
        if peek.sequence_number.is_some() {
            self.sequence = peek.sequence_number;
        }
        let kind = if sse::is_named(event) {
            event
        } else {
            peek.kind.as_deref().unwrap_or("")
        };
        if let Some(r) = &peek.response {
            if let (Some(model), false) = (r.model.as_deref(), self.model_seen) {
                if !model.is_empty() {
                    self.model_seen = true;
                    self.record.set_served_model(model);
                }
            }
        }
        let mut reshaped = None;
        match kind {
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_text.delta"
            | "response.reasoning_summary_text.delta" => {
                if let Some(delta) = &peek.delta {
                    self.record.add_completion_text(delta);
                }
            }
            "response.completed" | "response.incomplete" => {
                self.settle(peek.response);
                self.record.finish(200, Outcome::Ok, None);
            }
            "response.failed" | "error" => {
                self.settle(peek.response);
                // The provider's error, its message scrubbed of what names
                // the provider's account.
                let mut failed: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                let at = error_at(&failed);
                let default = if kind == "error" {
                    "upstream_stream_error"
                } else {
                    "response_failed"
                };
                let mut code = default.to_owned();
                if let Some(err) = failed.pointer_mut(at) {
                    if let Some(c) = err.get("code").and_then(Value::as_str) {
                        c.clone_into(&mut code);
                    }
                    if let Some(Value::String(m)) = err.get_mut("message") {
                        *m = scrub(m);
                    }
                }
                self.record.finish(200, Outcome::UpstreamError, Some(&code));
                reshaped = Some(failed.to_string());
            }
            _ => {}
        }
        self.record.mark_first_byte();
        sse::frame(event, reshaped.as_deref().unwrap_or(data), b"")
    }

    /// Ends the stream with the API's `error` event.
    fn fail(&mut self, end: Ending) -> Bytes {
        self.done = true;
        self.record
            .finish(end.status, Outcome::Truncated, Some(end.code));
        let data = json!({
            "type": "error",
            "code": end.code,
            "message": end.message,
            "param": null,
            "sequence_number": self.sequence.map_or(0, |s| s + 1),
        });
        sse::frame("error", &data.to_string(), b"")
    }
}

impl Stream for ResponsesRelay {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        poll_frames(&mut *self, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::forward::Verdict;

    #[test]
    fn events_are_typed_by_name_or_by_data() {
        assert_eq!(event_type("response.created", "{}"), "response.created");
        let data = r#"{"type":"response.output_text.delta","delta":"Hi","sequence_number":4}"#;
        assert_eq!(event_type("", data), "response.output_text.delta");
        assert_eq!(event_type("message", "not json"), "");
    }

    #[test]
    fn lifecycle_events_are_held_and_errors_are_the_providers() {
        let created = r#"{"type":"response.created","response":{"id":"resp_1"}}"#;
        assert!(matches!(verdict("", created, true), Verdict::Hold));
        assert!(matches!(verdict("", created, false), Verdict::Content));
        let delta = r#"{"type":"response.output_text.delta","delta":"x"}"#;
        assert!(matches!(verdict("", delta, true), Verdict::Content));
        for (event, data) in [
            (
                "error",
                r#"{"type":"error","code":"rate_limit_exceeded","message":"m"}"#,
            ),
            (
                "",
                r#"{"type":"response.failed","response":{"error":{"code":"server_error","message":"m"}}}"#,
            ),
        ] {
            assert!(matches!(verdict(event, data, false), Verdict::InBandError));
        }
    }

    #[test]
    fn an_error_event_becomes_an_openai_error_body_scrubbed() {
        let body = error_body(
            r#"{"type":"error","code":"rate_limit_exceeded","message":"Rate limit reached in organization org-abc123 on tokens","param":null}"#,
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
        assert!(
            !v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("org-abc123"),
            "{v}"
        );
        let failed = error_body(
            r#"{"type":"response.failed","response":{"error":{"code":"invalid_prompt","message":"bad"}}}"#,
        );
        let v: Value = serde_json::from_slice(&failed).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "bad");
    }
}
