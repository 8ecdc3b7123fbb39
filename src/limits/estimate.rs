//! A cheap estimate of what a request will cost, charged to the token buckets
//! before the call and corrected with the real usage after it. It needs to be
//! fast and roughly right, not exact: the correction makes the buckets converge
//! on real consumption whatever the estimate was.

use super::plan::EffectiveLimits;
use serde_json::Value;

/// Characters per token of typical English text with OpenAI's tokenizers.
const CHARS_PER_TOKEN: u64 = 4;
/// Tokens each chat message adds around its content (role, separators).
const PER_MESSAGE: u64 = 4;
/// Tokens that prime the assistant's reply.
const PER_REQUEST: u64 = 3;

/// A request body's top-level members as JSON text, read without building a
/// tree of the whole body (the proxy's `RequestBody` locates them in the
/// received bytes). A key that appears twice gives its last value.
pub trait RequestFields {
    fn field(&self, key: &str) -> Option<&str>;
}

/// Prompt tokens of a chat, completions or embeddings body: characters / 4 of
/// every text it carries (message contents, names, tool definitions and calls,
/// `prompt`, `input`), plus a small overhead per message.
pub fn estimate_prompt_tokens(request: &impl RequestFields) -> u64 {
    prompt_tokens(request, &TextMembers::of(request))
}

/// The whole reservation for a request: the prompt estimate plus what it may
/// generate: `max_completion_tokens`, else `max_tokens`, else the plan's default
/// completion cap, times `n` choices. Embeddings generate nothing.
pub fn estimate_request_tokens(request: &impl RequestFields, limits: &EffectiveLimits) -> u64 {
    let text = TextMembers::of(request);
    let prompt = prompt_tokens(request, &text);
    if text.input.is_some() && text.messages.is_none() && text.prompt.is_none() {
        // An embeddings request.
        return prompt;
    }
    let whole = |k: &str| {
        request
            .field(k)
            .and_then(|raw| serde_json::from_str::<u64>(raw).ok())
    };
    let completion = whole("max_completion_tokens")
        .or_else(|| whole("max_tokens"))
        .unwrap_or_else(|| limits.default_completion_tokens());
    let n = whole("n").unwrap_or(1).clamp(1, 128);
    prompt.saturating_add(completion.saturating_mul(n))
}

/// The whole reservation for a Responses API request (`POST /v1/responses`):
/// the text of `instructions` and `input` (a string, or items: a message's
/// `content` counts as a chat message's, a function call's `arguments` and a
/// call output's `output` as text, each item with a message's overhead), the
/// tool definitions and the `text` format, plus what it may generate:
/// `max_output_tokens`, else the plan's default completion cap.
pub fn estimate_response_tokens(request: &impl RequestFields, limits: &EffectiveLimits) -> u64 {
    let mut chars = raw_text_chars(request.field("instructions"));
    let mut overhead = PER_REQUEST;
    match request.field("input") {
        Some(raw) if raw.trim_start().starts_with('[') => {
            if let Ok(items) = serde_json::from_str::<Vec<Value>>(raw) {
                overhead += PER_MESSAGE * items.len() as u64;
                for item in &items {
                    for key in ["content", "output", "arguments"] {
                        chars += text_chars(item.get(key));
                    }
                }
            }
        }
        text => chars += raw_text_chars(text),
    }
    for key in ["tools", "text"] {
        if let Some(v) = request.field(key) {
            chars += raw_json_chars(v);
        }
    }
    let prompt = chars.div_ceil(CHARS_PER_TOKEN) + overhead;
    let completion = request
        .field("max_output_tokens")
        .and_then(|raw| serde_json::from_str::<u64>(raw).ok())
        .unwrap_or_else(|| limits.default_completion_tokens());
    prompt.saturating_add(completion)
}

/// The members that carry the prompt's text, each looked up once.
struct TextMembers<'a> {
    messages: Option<&'a str>,
    prompt: Option<&'a str>,
    input: Option<&'a str>,
}

impl<'a> TextMembers<'a> {
    fn of(request: &'a impl RequestFields) -> Self {
        Self {
            messages: request.field("messages"),
            prompt: request.field("prompt"),
            input: request.field("input"),
        }
    }
}

fn prompt_tokens(request: &impl RequestFields, text: &TextMembers) -> u64 {
    let mut chars = 0u64;
    let mut overhead = 0u64;
    if let Some(Ok(messages)) = text.messages.map(serde_json::from_str::<Vec<MessagePeek>>) {
        overhead += PER_REQUEST + PER_MESSAGE * messages.len() as u64;
        for m in &messages {
            chars += raw_text_chars(m.content);
            chars += raw_text_chars(m.name);
            if let Some(calls) = m.tool_calls {
                chars += raw_json_chars(calls);
            }
        }
    }
    for key in ["tools", "functions", "response_format"] {
        if let Some(v) = request.field(key) {
            chars += raw_json_chars(v);
        }
    }
    chars += raw_text_chars(text.prompt);
    chars += raw_text_chars(text.input);
    chars.div_ceil(CHARS_PER_TOKEN) + overhead
}

/// The members of a chat message the estimate reads, borrowed from the body.
/// Anything that is not an object counts as a message with no text.
#[derive(Default)]
struct MessagePeek<'a> {
    content: Option<&'a str>,
    name: Option<&'a str>,
    tool_calls: Option<&'a str>,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for MessagePeek<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        use serde_json::value::RawValue;
        struct Peek;
        impl<'de> Visitor<'de> for Peek {
            type Value = MessagePeek<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut m = MessagePeek::default();
                while let Some(key) = map.next_key::<PeekKey>()? {
                    let slot = match key {
                        PeekKey::Content => &mut m.content,
                        PeekKey::Name => &mut m.name,
                        PeekKey::ToolCalls => &mut m.tool_calls,
                        PeekKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?.get());
                }
                Ok(m)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MessagePeek::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MessagePeek::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MessagePeek::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MessagePeek::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MessagePeek::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MessagePeek::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MessagePeek::default())
            }
        }
        d.deserialize_any(Peek)
    }
}

/// A message key, matched without being copied.
enum PeekKey {
    Content,
    Name,
    ToolCalls,
    Other,
}

impl<'de> serde::Deserialize<'de> for PeekKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PeekKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<PeekKey, E> {
                Ok(match v {
                    "content" => PeekKey::Content,
                    "name" => PeekKey::Name,
                    "tool_calls" => PeekKey::ToolCalls,
                    _ => PeekKey::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// [`text_chars`] of a member's JSON text: a plain string is counted where it
/// lies; arrays (content parts, token arrays) are parsed.
fn raw_text_chars(raw: Option<&str>) -> u64 {
    let Some(raw) = raw else { return 0 };
    match raw.as_bytes().first() {
        Some(b'"') => match serde_json::from_str::<&str>(raw) {
            Ok(s) => s.chars().count() as u64,
            // Escapes in it: it cannot be borrowed.
            Err(_) => serde_json::from_str::<String>(raw).map_or(0, |s| s.chars().count() as u64),
        },
        Some(b'[') => serde_json::from_str::<Value>(raw).map_or(0, |v| text_chars(Some(&v))),
        _ => 0,
    }
}

/// [`json_chars`] of a member's JSON text (its compact form, as before).
fn raw_json_chars(raw: &str) -> u64 {
    serde_json::from_str::<Value>(raw).map_or(0, |v| json_chars(&v))
}

/// Characters of a string, of an array of strings or content parts (their
/// `text`), or of token arrays (one token each, counted as 4 characters).
fn text_chars(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.chars().count() as u64,
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.chars().count() as u64,
                Value::Number(_) => CHARS_PER_TOKEN,
                Value::Object(part) => match part.get("text") {
                    Some(t) => text_chars(Some(t)),
                    // An image or audio part: a fixed, modest charge.
                    None => 85 * CHARS_PER_TOKEN,
                },
                Value::Array(_) => text_chars(Some(item)),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Length of a value's JSON text, without allocating it.
fn json_chars(v: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}
