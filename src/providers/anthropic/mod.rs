//! Translation between OpenAI's Chat Completions wire format and Anthropic's
//! Messages API, in both directions, streamed and not. Pure functions on
//! `serde_json` values and small stateful stream converters: no I/O, no clock, no
//! configuration. The caller (the request path) supplies the upstream model, the
//! `created` timestamp and the SSE framing. The field mapping follows MAPPING.md of
//! the wire-format notes (OpenAI ⇄ Anthropic); wherever it leaves a choice open,
//! the choice taken is documented on the function that takes it. The golden tests
//! run on the captures in `tests/fixtures/wire/`.
//!
//! | direction | request | response | stream |
//! |---|---|---|---|
//! | OpenAI client → Anthropic route | [`chat_to_messages`] | [`message_to_chat`] | [`MessagesStreamToChat`] |
//! | Anthropic client (`POST /v1/messages`) → OpenAI route | [`messages_to_chat`] | [`chat_to_message`] | [`ChatStreamToMessages`] |
//!
//! Errors: a request that cannot be translated is a [`TranslateError`] (HTTP 400
//! for the client); an upstream error body is converted with
//! [`anthropic_error_to_openai`] / [`openai_error_to_anthropic`]; an error in the
//! middle of a stream is a [`StreamError`], which renders itself in either API's
//! shape.
//!
//! Everything is one choice: Anthropic has no `n`, so a request with `n > 1` is
//! refused and only `choices[0]` of an OpenAI answer is translated back.

mod error;
mod front_stream;
mod messages_front;
mod request;
mod response;
mod stream;

pub use error::{
    anthropic_error_to_openai, openai_error_to_anthropic, ApiError, StreamError, TranslateError,
};
pub use front_stream::{anthropic_sse_frame, ChatStreamToMessages};
pub use messages_front::{
    chat_to_message, messages_to_chat, messages_to_chat_with, MaxTokensField,
};
pub use request::chat_to_messages;
pub use response::message_to_chat;
pub use stream::{MessagesStreamToChat, PROMPT_USAGE_EVENT};

use serde_json::{json, Map, Value};

/// The `anthropic-version` header value every Messages API request must carry.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
///
/// `end_turn`, `stop_sequence` → `stop` (OpenAI does not say which sequence hit);
/// `max_tokens`, `model_context_window_exceeded` → `length`; `tool_use` →
/// `tool_calls`; `refusal` → `content_filter` (envoy's convention); `pause_turn`
/// (a server-tool loop paused) → `stop`, which is lossy, but OpenAI has nothing
/// closer; anything unknown → `stop`.
pub(crate) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`: `stop` → `end_turn` (OpenAI
/// does not report whether a stop sequence was hit, so `stop_sequence` is never
/// produced), `length` → `max_tokens`, `tool_calls` / `function_call` →
/// `tool_use`, `content_filter` → `refusal`, anything else → `end_turn`.
pub(crate) fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// `msg_01ABC` → `chatcmpl-01ABC`. The gateway is white-label, so the provider's
/// prefix is not shown; the rest stays, so logs still correlate.
pub(crate) fn chat_id(message_id: &str) -> String {
    let rest = message_id.strip_prefix("msg_").unwrap_or(message_id);
    format!("chatcmpl-{rest}")
}

/// `chatcmpl-XYZ` → `msg_XYZ` (the inverse of [`chat_id`]).
pub(crate) fn message_id(chat_id: &str) -> String {
    let rest = chat_id.strip_prefix("chatcmpl-").unwrap_or(chat_id);
    if rest.is_empty() {
        "msg_livery".to_owned()
    } else {
        format!("msg_{rest}")
    }
}

/// Token counts in Anthropic's terms. `input` excludes both cache reads and cache
/// writes; OpenAI's `prompt_tokens` includes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub input: u64,
    pub cache_creation: u64,
    /// The part of `cache_creation` written for an hour
    /// (`cache_creation.ephemeral_1h_input_tokens`), priced apart; `None`
    /// when the answer does not break its writes down (older API versions,
    /// an OpenAI upstream).
    pub cache_creation_1h: Option<u64>,
    pub cache_read: u64,
    pub output: u64,
}

impl Tokens {
    /// Reads an Anthropic `usage` object; missing fields count as 0.
    pub fn from_anthropic(usage: Option<&Value>) -> Self {
        let mut t = Tokens::default();
        t.update_from_anthropic(usage);
        t
    }

    /// Overwrites the counts present in `usage` (Anthropic's stream usage is
    /// cumulative, and a `message_delta` may repeat the input counts or not).
    pub fn update_from_anthropic(&mut self, usage: Option<&Value>) {
        let Some(u) = usage else { return };
        let get = |k: &str| u.get(k).and_then(Value::as_u64);
        if let Some(v) = get("input_tokens") {
            self.input = v;
        }
        if let Some(v) = get("cache_creation_input_tokens") {
            self.cache_creation = v;
        }
        if let Some(v) = get("cache_read_input_tokens") {
            self.cache_read = v;
        }
        // `message_delta` repeats the total of the writes but not always
        // their breakdown: `message_start`'s is kept then.
        if let Some(v) = u
            .get("cache_creation")
            .and_then(|c| c.get("ephemeral_1h_input_tokens"))
            .and_then(Value::as_u64)
        {
            self.cache_creation_1h = Some(v);
        }
        if let Some(v) = get("output_tokens") {
            self.output = v;
        }
    }

    /// Reads an OpenAI `usage` object: `cached_tokens` are cache reads,
    /// `cache_write_tokens` cache writes, and the rest of `prompt_tokens` is input.
    pub fn from_openai(usage: &Value) -> Self {
        let get = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let details = usage.get("prompt_tokens_details");
        let prompt = get(usage.get("prompt_tokens"));
        let cache_read = get(details.and_then(|d| d.get("cached_tokens")));
        let cache_creation = get(details.and_then(|d| d.get("cache_write_tokens")));
        Tokens {
            input: prompt
                .saturating_sub(cache_read)
                .saturating_sub(cache_creation),
            cache_creation,
            cache_creation_1h: None,
            cache_read,
            output: get(usage.get("completion_tokens")),
        }
    }

    /// OpenAI's `prompt_tokens`: input plus cache writes plus cache reads.
    pub fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read)
    }

    /// OpenAI's `usage` object. `prompt_tokens_details.cache_write_tokens` is in
    /// the current OpenAI spec ("prompt tokens written to cache") and kept for
    /// accounting, since cache writes are priced differently.
    pub fn to_openai(self) -> Value {
        let prompt = self.prompt();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
            "prompt_tokens_details": {
                "cached_tokens": self.cache_read,
                "cache_write_tokens": self.cache_creation,
            },
        })
    }

    /// Anthropic's `usage` object.
    pub fn to_anthropic(self) -> Value {
        json!({
            "input_tokens": self.input,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": self.output,
        })
    }
}

/// `obj[key]`, treating an explicit `null` like an absent key (OpenAI clients send
/// `null` for "not set").
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// `v["type"]` as a string, or `""`.
pub(crate) fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests;
