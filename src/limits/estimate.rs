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

/// Prompt tokens of a chat, completions or embeddings body: characters / 4 of
/// every text it carries (message contents, names, tool definitions and calls,
/// `prompt`, `input`), plus a small overhead per message.
pub fn estimate_prompt_tokens(request: &Value) -> u64 {
    let mut chars = 0u64;
    let mut overhead = 0u64;
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        overhead += PER_REQUEST + PER_MESSAGE * messages.len() as u64;
        for m in messages {
            chars += text_chars(m.get("content"));
            chars += text_chars(m.get("name"));
            if let Some(calls) = m.get("tool_calls") {
                chars += json_chars(calls);
            }
        }
    }
    for key in ["tools", "functions", "response_format"] {
        if let Some(v) = request.get(key) {
            chars += json_chars(v);
        }
    }
    chars += text_chars(request.get("prompt"));
    chars += text_chars(request.get("input"));
    chars.div_ceil(CHARS_PER_TOKEN) + overhead
}

/// The whole reservation for a request: the prompt estimate plus what it may
/// generate: `max_completion_tokens`, else `max_tokens`, else the plan's default
/// completion cap, times `n` choices. Embeddings generate nothing.
pub fn estimate_request_tokens(request: &Value, limits: &EffectiveLimits) -> u64 {
    let prompt = estimate_prompt_tokens(request);
    let is_embedding = request.get("input").is_some()
        && request.get("messages").is_none()
        && request.get("prompt").is_none();
    if is_embedding {
        return prompt;
    }
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_u64))
        .unwrap_or_else(|| limits.default_completion_tokens());
    let n = request
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128);
    prompt.saturating_add(completion.saturating_mul(n))
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
