//! Anthropic Messages response → OpenAI `chat.completion` ([`message_to_chat`]).

use super::{chat_id, finish_reason, type_of, Tokens};
use serde_json::{json, Map, Value};

/// Translates a non-streamed Anthropic message into an OpenAI `chat.completion`,
/// in OpenAI's key order (`id`, `object`, `created`, `model`, `choices`, `usage`).
///
/// - `id`: `msg_X` becomes `chatcmpl-X` (the gateway does not reveal its provider;
///   the suffix still correlates with the provider's logs).
/// - `model`: what the caller passes, normally the model the client asked for
///   (the provider's resolved name, e.g. `claude-sonnet-4-5-20250929`, is in
///   `resp["model"]` if the caller prefers it).
/// - `created`: the gateway's clock (Anthropic sends none).
/// - Text blocks are concatenated into `message.content`; `tool_use` blocks become
///   `message.tool_calls` with `arguments` as a JSON **string**; `content` is
///   `null` when there are only tool calls (as OpenAI sends it). `thinking`,
///   `redacted_thinking` and server-tool blocks have no OpenAI field and are
///   dropped.
/// - `stop_reason` → `finish_reason` as documented on the crate-private mapping:
///   `end_turn`/`stop_sequence`/`pause_turn` → `stop`, `max_tokens` → `length`,
///   `tool_use` → `tool_calls`, `refusal` → `content_filter`.
/// - `usage`: `prompt_tokens` = input + cache writes + cache reads,
///   `prompt_tokens_details.cached_tokens` = cache reads, `cache_write_tokens` =
///   cache writes, `completion_tokens` = output, `total_tokens` = the sum.
pub fn message_to_chat(resp: &Value, model: &str, created: u64) -> Value {
    let blocks = resp
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match type_of(b) {
            "text" => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            "tool_use" => tool_calls.push(tool_call(b)),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".into(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    message.insert("refusal".into(), Value::Null);
    message.insert("annotations".into(), json!([]));

    let finish = finish_reason(
        resp.get("stop_reason")
            .and_then(Value::as_str)
            .unwrap_or("end_turn"),
    );
    let id = chat_id(resp.get("id").and_then(Value::as_str).unwrap_or(""));
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": Tokens::from_anthropic(resp.get("usage")).to_openai(),
    })
}

/// A `tool_use` block → an OpenAI tool call with string `arguments`.
fn tool_call(block: &Value) -> Value {
    let arguments = block
        .get("input")
        .map(|i| serde_json::to_string(i).unwrap_or_else(|_| "{}".to_owned()))
        .unwrap_or_else(|| "{}".to_owned());
    json!({
        "id": block.get("id").and_then(Value::as_str).unwrap_or(""),
        "type": "function",
        "function": {
            "name": block.get("name").and_then(Value::as_str).unwrap_or(""),
            "arguments": arguments,
        },
    })
}
