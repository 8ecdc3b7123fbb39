//! Anthropic Messages stream → OpenAI `chat.completion.chunk` stream
//! ([`MessagesStreamToChat`]).

use super::error::{ApiError, StreamError};
use super::{chat_id, finish_reason, type_of, Tokens};
use serde_json::{json, Value};
use std::collections::HashMap;

/// The event the gateway's translated stream carries, once, as soon as
/// `message_start` reported the prompt's counts: data
/// `{"prompt_tokens":N,"cached_tokens":M,"cache_write_tokens":W}` (OpenAI's
/// terms). Anthropic reports
/// them at the start while OpenAI's usage chunk comes only at the end, so a
/// stream cut, failed or abandoned before `message_stop` would otherwise lose
/// them. The OpenAI relay reads it for the record and never forwards it.
pub const PROMPT_USAGE_EVENT: &str = "livery-prompt-usage";

/// Converts one Anthropic SSE stream, event by event, into OpenAI chunk JSON.
///
/// Feed every SSE event to [`on_event`](Self::on_event) with its `event:` name and
/// `data:` text; frame each returned string as `data: {chunk}\n\n`, and once
/// [`is_finished`](Self::is_finished) (after `message_stop`) append
/// `data: [DONE]\n\n`. An `Err` ends the stream: send
/// [`StreamError::to_openai_error`] as a last `data:` event, without `[DONE]`.
///
/// | Anthropic event | OpenAI chunks |
/// |---|---|
/// | `message_start` | the role chunk `delta: {"role":"assistant","content":"","refusal":null}`; input and cache usage remembered. It carries no content: hold it back until the next chunk if the route may still fall back |
/// | `content_block_start` text | nothing (a chunk only if the block starts with text) |
/// | `content_block_start` tool_use | `tool_calls: [{index, id, type: "function", function: {name, arguments: ""}}]`; `index` counts tool calls only (Anthropic's `index` counts all blocks) |
/// | `content_block_delta` `text_delta` | `delta: {"content": text}` |
/// | `content_block_delta` `input_json_delta` | `tool_calls: [{index, function: {arguments: fragment}}]` (empty fragments skipped) |
/// | thinking / signature / citation deltas, server-tool blocks | nothing (no OpenAI field) |
/// | `content_block_stop` of a tool block that sent no arguments | `tool_calls: [{index, function: {arguments: "{}"}}]` (a tool without parameters) |
/// | other `content_block_stop`, `ping`, unknown events | nothing |
/// | `message_delta` with `stop_reason` | `delta: {}` with `finish_reason`; usage updated (it is cumulative) |
/// | `message_stop` | if `include_usage`: `choices: []` with `usage`; then finished |
/// | `error` | `Err(StreamError::Upstream)` with Anthropic's type and message |
#[derive(Debug, Clone)]
pub struct MessagesStreamToChat {
    model: String,
    created: u64,
    include_usage: bool,
    id: String,
    upstream_model: Option<String>,
    role_sent: bool,
    /// Anthropic content-block index → OpenAI `tool_calls[].index` and whether
    /// any of its arguments went out yet.
    tool_blocks: HashMap<u64, (u64, bool)>,
    next_tool: u64,
    tokens: Option<Tokens>,
    finish: Option<&'static str>,
    finished: bool,
}

impl MessagesStreamToChat {
    /// `model` is what the chunks report until `message_start` names the model
    /// that serves the answer (normally the route's model), `created` the gateway's clock, `include_usage` whether the client
    /// asked for the final usage chunk (`stream_options.include_usage`).
    pub fn new(model: &str, created: u64, include_usage: bool) -> Self {
        MessagesStreamToChat {
            model: model.to_owned(),
            created,
            include_usage,
            id: "chatcmpl-livery".to_owned(),
            upstream_model: None,
            role_sent: false,
            tool_blocks: HashMap::new(),
            next_tool: 0,
            tokens: None,
            finish: None,
            finished: false,
        }
    }

    /// Converts one SSE event. `event` is the `event:` name (when empty or
    /// `message`, the data's `type` decides); `data` the event's data. Events after
    /// the end (`message_stop` or an error) are ignored.
    pub fn on_event(&mut self, event: &str, data: &str) -> Result<Vec<String>, StreamError> {
        if self.finished {
            return Ok(Vec::new());
        }
        let parsed: Result<Value, _> = serde_json::from_str(data);
        let name = match (event, &parsed) {
            ("" | "message", Ok(v)) => type_of(v).to_owned(),
            _ => event.to_owned(),
        };
        let known = matches!(
            name.as_str(),
            "message_start"
                | "content_block_start"
                | "content_block_delta"
                | "content_block_stop"
                | "message_delta"
                | "message_stop"
                | "error"
        );
        if !known {
            // `ping` and event types added later.
            return Ok(Vec::new());
        }
        let v = match parsed {
            Ok(v) if v.is_object() => v,
            Ok(_) => return Err(self.malformed(&name, "data is not a JSON object".into())),
            Err(e) => return Err(self.malformed(&name, e.to_string())),
        };
        let mut out = Vec::new();
        match name.as_str() {
            "message_start" => {
                let msg = v.get("message");
                if let Some(id) = msg.and_then(|m| m.get("id")).and_then(Value::as_str) {
                    self.id = chat_id(id);
                }
                self.upstream_model = msg
                    .and_then(|m| m.get("model"))
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned);
                // The dated model that served the answer, as OpenAI's chunks
                // name it (and the non-streamed translation does).
                if let Some(m) = &self.upstream_model {
                    self.model.clone_from(m);
                }
                self.tokens = Some(Tokens::from_anthropic(msg.and_then(|m| m.get("usage"))));
                self.role_chunk(&mut out);
            }
            "content_block_start" => {
                self.role_chunk(&mut out);
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match type_of(block) {
                    "text" => {
                        let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            out.push(self.chunk(json!({ "content": text }), None));
                        }
                    }
                    "tool_use" => {
                        let k = self.next_tool;
                        self.next_tool += 1;
                        // The input arrives as `input_json_delta`s; a non-empty
                        // `input` here is a complete one.
                        let arguments = match block.get("input") {
                            Some(Value::Object(o)) if !o.is_empty() => {
                                serde_json::to_string(o).unwrap_or_default()
                            }
                            _ => String::new(),
                        };
                        if let Some(index) = v.get("index").and_then(Value::as_u64) {
                            self.tool_blocks.insert(index, (k, !arguments.is_empty()));
                        }
                        let call = json!({
                            "index": k,
                            "id": block.get("id").and_then(Value::as_str).unwrap_or(""),
                            "type": "function",
                            "function": {
                                "name": block.get("name").and_then(Value::as_str).unwrap_or(""),
                                "arguments": arguments,
                            },
                        });
                        out.push(self.chunk(json!({ "tool_calls": [call] }), None));
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = v.get("delta").unwrap_or(&Value::Null);
                match type_of(delta) {
                    "text_delta" => {
                        let text = delta.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            self.role_chunk(&mut out);
                            out.push(self.chunk(json!({ "content": text }), None));
                        }
                    }
                    "input_json_delta" => {
                        let part = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let tool = v
                            .get("index")
                            .and_then(Value::as_u64)
                            .and_then(|i| self.tool_blocks.get_mut(&i));
                        if let (Some((k, sent)), false) = (tool, part.is_empty()) {
                            *sent = true;
                            let call = json!({"index": *k, "function": {"arguments": part}});
                            out.push(self.chunk(json!({ "tool_calls": [call] }), None));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                // A tool without parameters streams only an empty `partial_json`:
                // OpenAI sends `"{}"` there (and so does the non-streamed
                // translation), and clients parse `arguments` as JSON.
                let tool = v
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|i| self.tool_blocks.get_mut(&i));
                if let Some((k, sent @ false)) = tool {
                    *sent = true;
                    let call = json!({"index": *k, "function": {"arguments": "{}"}});
                    out.push(self.chunk(json!({ "tool_calls": [call] }), None));
                }
            }
            "message_delta" => {
                self.tokens
                    .get_or_insert_with(Tokens::default)
                    .update_from_anthropic(v.get("usage"));
                let stop = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if let Some(stop) = stop {
                    self.role_chunk(&mut out);
                    let reason = finish_reason(stop);
                    self.finish = Some(reason);
                    out.push(self.chunk(json!({}), Some(reason)));
                }
            }
            "message_stop" => {
                self.finished = true;
                if self.include_usage {
                    let usage = self.tokens.unwrap_or_default().to_openai();
                    let chunk = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage,
                    });
                    out.push(chunk.to_string());
                }
            }
            _ => {
                // "error"
                self.finished = true;
                let err = v.get("error").unwrap_or(&Value::Null);
                return Err(StreamError::Upstream(Box::new(
                    ApiError::from_anthropic_error(None, err),
                )));
            }
        }
        Ok(out)
    }

    fn malformed(&mut self, event: &str, detail: String) -> StreamError {
        self.finished = true;
        StreamError::Malformed {
            event: event.to_owned(),
            detail,
        }
    }

    /// The role chunk, once, before anything else.
    fn role_chunk(&mut self, out: &mut Vec<String>) {
        if !self.role_sent {
            self.role_sent = true;
            out.push(self.chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ));
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish,
            }],
        })
        .to_string()
    }

    /// True after `message_stop` or an error: append `data: [DONE]` if it was
    /// `message_stop` (and [`saw_finish`](Self::saw_finish)).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// True once a finish chunk went out (`message_delta` with a `stop_reason`).
    pub fn saw_finish(&self) -> bool {
        self.finish.is_some()
    }

    /// The `finish_reason` sent, if any.
    pub fn finish_reason(&self) -> Option<&'static str> {
        self.finish
    }

    /// `(prompt_tokens, completion_tokens)` in OpenAI's terms (prompt includes
    /// cache reads and writes), whether or not the client asked for the usage
    /// chunk. `None` before `message_start`. Mid-stream it is the usage so far.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.tokens.map(|t| (t.prompt(), t.output))
    }

    /// `(prompt_tokens, cached_tokens, cache_write_tokens)` in OpenAI's terms,
    /// as reported so far (by `message_start`, before the answer). `None`
    /// before `message_start`.
    pub fn prompt_usage(&self) -> Option<(u64, u64, u64)> {
        self.tokens
            .map(|t| (t.prompt(), t.cache_read, t.cache_creation))
    }

    /// The full OpenAI `usage` object (with cached and cache-write tokens).
    pub fn openai_usage(&self) -> Option<Value> {
        self.tokens.map(Tokens::to_openai)
    }

    /// The model the provider reported in `message_start` (e.g.
    /// `claude-sonnet-4-5-20250929` for the alias `claude-sonnet-4-5`).
    pub fn upstream_model(&self) -> Option<&str> {
        self.upstream_model.as_deref()
    }
}
