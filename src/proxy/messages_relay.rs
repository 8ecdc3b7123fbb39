//! [`MessagesRelay`]: the SSE relay for `/v1/messages` clients. It forwards an
//! Anthropic event stream event by event, as it arrives, reading each event on
//! the fly for the usage (`message_start` and the cumulative `message_delta`),
//! the served model and the stream's proper end (`message_stop`).
//!
//! An `event: error` from the provider is passed on and ends the stream. Anything
//! else that ends the stream early (a broken connection, an end without
//! `message_stop`, the request's deadline, shutdown's end of grace) is
//! finished with a well-formed
//! `event: error` (`api_error`), which Anthropic's SDKs raise, so no client
//! mistakes a truncated answer for a success.

use super::forward::scrub;
use super::messages::{event_name, token_usage};
use super::record::PendingRecord;
use super::relay::{poll_frames, Ending, FrameEachEvent, UpstreamEvents};
use crate::providers::anthropic::{anthropic_sse_frame, Tokens};
use crate::usage::Outcome;
use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct MessagesRelay {
    upstream: UpstreamEvents,
    record: PendingRecord,
    tokens: Option<Tokens>,
    /// A `message_delta` reported the output count: until then the count is
    /// `message_start`'s placeholder (1), not the answer's.
    output_reported: bool,
    done: bool,
}

impl MessagesRelay {
    pub fn new(upstream: UpstreamEvents, record: PendingRecord) -> Self {
        Self {
            upstream,
            record,
            tokens: None,
            output_reported: false,
            done: false,
        }
    }

    /// Writes the record with the usage seen so far.
    fn finish(&mut self, outcome: Outcome, code: Option<&str>) {
        self.finish_as(200, outcome, code);
    }

    /// [`finish`](Self::finish) with the record's status.
    fn finish_as(&mut self, status: u16, outcome: Outcome, code: Option<&str>) {
        self.done = true;
        self.settle_tokens();
        self.record.finish(status, outcome, code);
    }

    /// Gives the record the usage seen so far.
    fn settle_tokens(&mut self) {
        if let Some(t) = self.tokens {
            let mut usage = token_usage(t);
            // Counts that are not the answer's are left unknown, for the
            // record to estimate: the output before a `message_delta` said
            // it (a stream cut short), or zero beside text (a stream bridged
            // from an upstream that reported no usage); the input as zero
            // (the bridge's `message_start`, which cannot know it).
            if !self.output_reported || (t.output == 0 && self.record.has_completion_text()) {
                usage.completion = None;
                usage.total = None;
            }
            if usage.prompt == Some(0) {
                usage.prompt = None;
                usage.total = None;
            }
            self.record.tokens = usage;
        }
    }
}

/// A stream dropped unfinished (the client left, or shutdown cut it) has its
/// record written by `PendingRecord`'s own `Drop`, which runs after this one:
/// the counts `message_start` reported are handed over first, so that the
/// record keeps them instead of estimating them from the request body.
impl Drop for MessagesRelay {
    fn drop(&mut self) {
        if !self.done {
            self.settle_tokens();
        }
    }
}

impl FrameEachEvent for MessagesRelay {
    fn finished(&self) -> bool {
        self.done
    }

    fn upstream(&mut self) -> &mut UpstreamEvents {
        &mut self.upstream
    }

    /// Looks at one upstream event; returns what to send to the client.
    fn on_event(&mut self, event: &str, data: &str) -> Bytes {
        let parsed: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        let name = event_name(event, &parsed).to_owned();
        match name.as_str() {
            "message_start" => {
                let msg = parsed.get("message");
                if let Some(m) = msg.and_then(|m| m.get("model")).and_then(Value::as_str) {
                    self.record.set_served_model(m);
                }
                self.tokens = Some(Tokens::from_anthropic(msg.and_then(|m| m.get("usage"))));
            }
            "message_delta" => {
                let usage = parsed.get("usage");
                if usage.is_some_and(|u| u.get("output_tokens").is_some_and(Value::is_u64)) {
                    self.output_reported = true;
                }
                self.tokens
                    .get_or_insert_with(Tokens::default)
                    .update_from_anthropic(usage);
            }
            "content_block_delta" => {
                if let Some(delta) = parsed.get("delta") {
                    for k in ["text", "partial_json", "thinking"] {
                        if let Some(text) = delta.get(k).and_then(Value::as_str) {
                            self.record.add_completion_text(text);
                        }
                    }
                }
            }
            "message_stop" => self.finish(Outcome::Ok, None),
            "error" => {
                let code = parsed
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream_stream_error")
                    .to_owned();
                self.finish(Outcome::UpstreamError, Some(&code));
                // As an error answered before the stream: its message scrubbed
                // of what names the provider's account, its request id dropped.
                let message = parsed
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map_or_else(|| "The upstream reported an error.".to_owned(), scrub);
                let data = json!({"type": "error", "error": {"type": code, "message": message}});
                self.record.mark_first_byte();
                return Bytes::from(anthropic_sse_frame("error", &data.to_string()));
            }
            _ => {}
        }
        self.record.mark_first_byte();
        let name = if name.is_empty() { "message" } else { &name };
        Bytes::from(anthropic_sse_frame(name, data))
    }

    /// Ends the stream with the gateway's own error event.
    fn fail(&mut self, end: Ending) -> Bytes {
        self.finish_as(end.status, Outcome::Truncated, Some(end.code));
        let data = json!({"type": "error", "error": {"type": "api_error", "message": end.message}});
        Bytes::from(anthropic_sse_frame("error", &data.to_string()))
    }
}

impl Stream for MessagesRelay {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        poll_frames(&mut *self, cx)
    }
}
