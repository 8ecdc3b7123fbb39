//! [`SseRelay`]: forwards an upstream SSE stream to the client event by event, as it
//! arrives, while reading each event on the fly for usage and for the stream's
//! proper end. Nothing is accumulated beyond the event being parsed.
//!
//! A stream is complete only if some choice reported a `finish_reason` and the
//! upstream sent `data: [DONE]`. Anything else (a broken connection, an end without
//! `[DONE]`) is finished with a well-formed SSE error event, so that no client
//! mistakes a truncated answer for a success. The usage chunk that the gateway
//! asked for on the client's behalf is removed from what the client sees.

use super::record::{PendingRecord, UsageField};
use super::stream_cut::CutWatch;
use crate::providers::anthropic::PROMPT_USAGE_EVENT;
use crate::providers::sse::{self, Event, EventError, EventStream};
use crate::providers::ProviderError;
use crate::usage::event::opt_text;
use crate::usage::Outcome;
use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;
use serde::Deserialize;
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The parts of a streamed chunk the gateway looks at; everything else is
/// forwarded untouched. Strings are borrowed where the JSON has no escapes, so that a typical
/// chunk is read without allocating (`#[serde(borrow)]` alone does not borrow
/// an `Option<Cow<str>>`, hence [`opt_text`]).
#[derive(Deserialize)]
struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoicePeek<'a>>>,
    #[serde(default)]
    usage: UsageField,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoicePeek<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaPeek<'a>>,
    /// A legacy `/v1/completions` chunk's text (it has no `delta`).
    #[serde(default, borrow, deserialize_with = "opt_text")]
    text: Option<Cow<'a, str>>,
}

/// The text of a delta, kept for estimating completion tokens when the
/// upstream reports no usage.
#[derive(Deserialize)]
struct DeltaPeek<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    refusal: Option<Cow<'a, str>>,
    /// Reasoning text, billed as completion tokens: DeepSeek's and vLLM's
    /// `reasoning_content`, OpenRouter's and Ollama's `reasoning`.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallPeek<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallPeek<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionPeek<'a>>,
}

#[derive(Deserialize)]
struct FunctionPeek<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    arguments: Option<Cow<'a, str>>,
}

/// The data of a [`PROMPT_USAGE_EVENT`].
#[derive(Deserialize)]
struct PromptUsage {
    prompt_tokens: u64,
    cached_tokens: u64,
    cache_write_tokens: u64,
}

pub struct SseRelay {
    upstream: UpstreamEvents,
    record: PendingRecord,
    client_wants_usage: bool,
    saw_finish: bool,
    model_seen: bool,
    done: bool,
}

impl SseRelay {
    pub fn new(upstream: UpstreamEvents, record: PendingRecord, client_wants_usage: bool) -> Self {
        Self {
            upstream,
            record,
            client_wants_usage,
            saw_finish: false,
            model_seen: false,
            done: false,
        }
    }

    /// Ends the stream with an error event, then `[DONE]` so that clients waiting
    /// for the end marker are not left hanging.
    fn fail(&mut self, end: Ending) -> Bytes {
        self.done = true;
        self.record
            .finish(end.status, Outcome::Truncated, Some(end.code));
        let ev = serde_json::json!({"error": {
            "message": end.message,
            "type": end.kind,
            "param": null,
            "code": end.code,
        }});
        Bytes::from(format!("data: {ev}\n\ndata: [DONE]\n\n"))
    }

    /// Looks at one upstream event; returns what to send to the client, if anything.
    fn on_event(&mut self, event: &str, data: &str) -> Option<Bytes> {
        if event == PROMPT_USAGE_EVENT {
            // The gateway's own, from a translated stream: counts for the
            // record until the usage chunk replaces them, never the client's.
            if let (Ok(u), None) = (
                serde_json::from_str::<PromptUsage>(data),
                self.record.tokens.prompt,
            ) {
                self.record.tokens.prompt = Some(u.prompt_tokens);
                self.record.tokens.cached = Some(u.cached_tokens);
                self.record.tokens.cache_write = Some(u.cache_write_tokens);
            }
            return None;
        }
        if data.trim() == "[DONE]" {
            if !self.saw_finish {
                return Some(self.fail(Ending::upstream(
                    "stream_truncated",
                    "The upstream stream ended without a finish reason; the answer is incomplete.",
                )));
            }
            self.done = true;
            self.record.finish(200, Outcome::Ok, None);
            return Some(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        let mut forward = true;
        let mut end_after = false;
        let mut reshaped = None;
        if let Ok(peek) = serde_json::from_str::<ChunkPeek>(data) {
            // Azure's first chunk (`prompt_filter_results`) names no model:
            // `""`, not the answer's.
            let model = peek.model.filter(|m| !m.is_empty());
            if let (Some(model), false) = (model, self.model_seen) {
                self.model_seen = true;
                self.record.set_served_model(&model);
            }
            let choices = peek.choices.unwrap_or_default();
            for c in &choices {
                if c.finish_reason.is_some() {
                    self.saw_finish = true;
                }
                if let Some(text) = &c.text {
                    self.record.add_completion_text(text);
                }
                if let Some(d) = &c.delta {
                    let texts = [&d.content, &d.refusal, &d.reasoning_content, &d.reasoning];
                    for text in texts.into_iter().flatten() {
                        self.record.add_completion_text(text);
                    }
                    for f in d
                        .tool_calls
                        .iter()
                        .flatten()
                        .filter_map(|t| t.function.as_ref())
                    {
                        for text in [&f.name, &f.arguments].into_iter().flatten() {
                            self.record.add_completion_text(text);
                        }
                    }
                }
            }
            if let UsageField(Some(u)) = peek.usage {
                self.record.tokens = u;
                if choices.is_empty() && !self.client_wants_usage {
                    forward = false;
                }
            }
            if let Some(err) = peek.error {
                // An error the upstream sent in-band: pass it on and end there.
                self.done = true;
                end_after = true;
                let code = err
                    .get("code")
                    .and_then(|c| c.as_str())
                    .unwrap_or("upstream_stream_error");
                let code = code.to_owned();
                self.record.finish(200, Outcome::UpstreamError, Some(&code));
                reshaped = Some(in_band_error(&err));
            }
        }
        if !forward {
            return None;
        }
        self.record.mark_first_byte();
        let tail: &[u8] = if end_after { b"data: [DONE]\n\n" } else { b"" };
        Some(sse::frame(event, reshaped.as_deref().unwrap_or(data), tail))
    }
}

/// An error the upstream sent inside its stream, as the client gets it: in
/// OpenAI's shape, its type and code kept, its message scrubbed of what names
/// the provider or the platform's account there (as an error answered before
/// the stream is), and nothing else of the provider's object.
fn in_band_error(err: &serde_json::Value) -> String {
    let text = |k: &str| err.get(k).and_then(serde_json::Value::as_str);
    let message = text("message").map_or_else(
        || "The upstream reported an error; the answer is incomplete.".to_owned(),
        super::forward::scrub,
    );
    serde_json::json!({"error": {
        "message": message,
        "type": text("type").unwrap_or("upstream_error"),
        "param": null,
        "code": text("code"),
    }})
    .to_string()
}

impl Stream for SseRelay {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.upstream.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Upstream::Event(ev)) => {
                    if let Some(bytes) = this.on_event(&ev.event, &ev.data) {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                Poll::Ready(Upstream::End(end)) => {
                    let bytes = this.fail(end);
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
            }
        }
    }
}

/// What every relay reads: the events held while the route was chosen,
/// then the upstream's as they come, until the request's total deadline or
/// shutdown's end of grace ends them first.
pub struct UpstreamEvents {
    events: EventStream,
    held: std::collections::VecDeque<Event>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    cut: CutWatch,
}

impl UpstreamEvents {
    pub fn new(
        events: EventStream,
        held: Vec<Event>,
        deadline: tokio::time::Instant,
        cut: CutWatch,
    ) -> Self {
        Self {
            events,
            held: held.into(),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            cut,
        }
    }

    /// The next event, or why the stream ends first.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Upstream> {
        if let Some(ev) = self.held.pop_front() {
            return Poll::Ready(Upstream::Event(ev));
        }
        poll_upstream(&mut self.events, self.deadline.as_mut(), &mut self.cut, cx)
    }
}

/// A relay that answers every upstream event with one frame, and its end
/// with one of its own (Anthropic's and the Responses API's: each event goes
/// through, named); the OpenAI relay drops some and loops instead.
pub(super) trait FrameEachEvent {
    fn finished(&self) -> bool;
    fn upstream(&mut self) -> &mut UpstreamEvents;
    fn on_event(&mut self, event: &str, data: &str) -> Bytes;
    fn fail(&mut self, end: Ending) -> Bytes;
}

/// `Stream::poll_next` of a [`FrameEachEvent`] relay.
pub(super) fn poll_frames<R: FrameEachEvent>(
    relay: &mut R,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
    if relay.finished() {
        return Poll::Ready(None);
    }
    let bytes = match relay.upstream().poll_next(cx) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Upstream::Event(ev)) => relay.on_event(&ev.event, &ev.data),
        Poll::Ready(Upstream::End(end)) => relay.fail(end),
    };
    Poll::Ready(Some(Ok(Frame::data(bytes))))
}

/// What a relay reads next from the upstream.
pub(super) enum Upstream {
    Event(Event),
    /// The answer cannot go on.
    End(Ending),
}

/// Why a stream ends before its answer is complete, as its record and its
/// client's final error event say it.
pub(super) struct Ending {
    /// The record's status (the client's was 200, sent with the headers).
    pub status: u16,
    /// The OpenAI error's `type`.
    pub kind: &'static str,
    pub code: &'static str,
    pub message: &'static str,
}

impl Ending {
    /// The upstream's answer ended early, or the request's deadline came.
    fn upstream(code: &'static str, message: &'static str) -> Self {
        Ending {
            status: 200,
            kind: "upstream_error",
            code,
            message,
        }
    }

    /// Shutdown's grace period is over: as a stream cut without a word is
    /// recorded (`PendingRecord`'s drop).
    const SHUTDOWN: Ending = Ending {
        status: 503,
        kind: "server_error",
        code: "gateway_shutdown",
        message: "The gateway is shutting down; the answer is incomplete. Retry the request.",
    };
}

/// The upstream's next event, or why the stream ends first: the request's
/// total deadline, shutdown's end of grace, a stream that broke off, or one
/// that stopped early.
fn poll_upstream(
    events: &mut EventStream,
    deadline: Pin<&mut tokio::time::Sleep>,
    cut: &mut CutWatch,
    cx: &mut Context<'_>,
) -> Poll<Upstream> {
    if deadline.poll(cx).is_ready() {
        return Poll::Ready(Upstream::End(Ending::upstream(
            "request_deadline_exceeded",
            "The request reached its total deadline before the answer was complete.",
        )));
    }
    if cut.fired() {
        return Poll::Ready(Upstream::End(Ending::SHUTDOWN));
    }
    match Pin::new(events).poll_next(cx) {
        // Only a stream about to wait registers for the cut (a lock in
        // tokio's `Notify`): one that has its next event has checked the
        // flag above.
        Poll::Pending if cut.poll_fired(cx) => Poll::Ready(Upstream::End(Ending::SHUTDOWN)),
        Poll::Pending => Poll::Pending,
        Poll::Ready(Some(Ok(ev))) => Poll::Ready(Upstream::Event(ev)),
        Poll::Ready(Some(Err(e))) => {
            let detail = match &e {
                EventError::Transport(ProviderError::Body(m)) => m.clone(),
                other => other.to_string(),
            };
            tracing::warn!(error = %detail, "upstream stream broke off");
            Poll::Ready(Upstream::End(Ending::upstream(
                "stream_interrupted",
                "The upstream stream broke off before the answer was complete.",
            )))
        }
        Poll::Ready(None) => Poll::Ready(Upstream::End(Ending::upstream(
            "stream_truncated",
            "The upstream stream ended before the answer was complete.",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_peeked_without_copying_its_strings() {
        let data = r#"{"model":"gpt-4o","choices":[{"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#;
        let peek: ChunkPeek = serde_json::from_str(data).unwrap();
        assert!(matches!(peek.model, Some(Cow::Borrowed("gpt-4o"))));
        let choice = &peek.choices.as_ref().unwrap()[0];
        let content = &choice.delta.as_ref().unwrap().content;
        assert!(matches!(content, Some(Cow::Borrowed("Hi"))));
        assert!(choice.finish_reason.is_none() && peek.usage.0.is_none());
        // Escapes still read correctly, into an owned string.
        let peek: ChunkPeek =
            serde_json::from_str(r#"{"choices":[{"delta":{"content":"a\nb"}}]}"#).unwrap();
        let choices = peek.choices.unwrap();
        let content = &choices[0].delta.as_ref().unwrap().content;
        assert!(matches!(content, Some(Cow::Owned(s)) if s == "a\nb"));
    }

    #[test]
    fn the_usage_chunk_is_read_and_an_odd_usage_does_not_hide_the_rest() {
        let data = r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
        let peek: ChunkPeek = serde_json::from_str(data).unwrap();
        let u = peek.usage.0.expect("usage");
        assert_eq!(
            (u.prompt, u.completion, u.total, u.cached),
            (Some(9), Some(12), Some(21), Some(4))
        );
        for odd in ["5", "\"x\"", "[1,{}]", "true", "null"] {
            let data = format!(r#"{{"usage":{odd},"choices":[{{"finish_reason":"stop"}}]}}"#);
            let peek: ChunkPeek = serde_json::from_str(&data).unwrap();
            assert!(peek.usage.0.is_none(), "{odd}");
            assert!(peek.choices.unwrap()[0].finish_reason.is_some(), "{odd}");
        }
    }
}
