//! OpenAI `chat.completion.chunk` stream → Anthropic Messages stream events, for
//! `/v1/messages` clients on OpenAI routes ([`ChatStreamToMessages`]).

use super::error::{ApiError, StreamError};
use super::{message_id, stop_reason, Tokens};
use serde_json::{json, Value};

/// Frames one Anthropic SSE event: `event: {name}\ndata: {data}\n\n`. Data of
/// several lines (a provider's event may spread its JSON over `data:` lines,
/// which the parser joins with `\n`) gets one `data:` per line, as
/// `sse::frame` writes it: a bare continuation line would be a field named
/// after its text, which clients drop.
pub fn anthropic_sse_frame(event: &str, data: &str) -> String {
    let mut out = String::with_capacity(event.len() + data.len() + 16);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The content block currently open in the Anthropic stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u64),
    Tool(u64),
}

/// Converts one OpenAI chat-completions stream into Anthropic stream events.
///
/// Feed the `data:` text of every chunk to [`on_chunk`](Self::on_chunk) (including
/// the final `[DONE]`), and call [`end_of_body`](Self::end_of_body) if the upstream
/// body ends without `[DONE]`. Each returned `(event, data)` pair is one Anthropic SSE event
/// ([`anthropic_sse_frame`] frames it). An `Err` ends the stream: send
/// `event: error` with [`StreamError::to_anthropic_event`].
///
/// - The first chunk opens the message: `message_start` (id `msg_` + the chunk
///   id's suffix, `usage.input_tokens` 0: OpenAI reports usage only at the end).
/// - Text deltas (and `refusal` deltas) go into a text block; each new tool call
///   (a new `tool_calls[].index`) closes the open block and opens a `tool_use`
///   block; `arguments` fragments become `input_json_delta`s. Blocks are numbered
///   in order of appearance, as Anthropic numbers them.
/// - `finish_reason` closes the open block; `message_delta` (mapped `stop_reason`
///   and the full usage: input, cache read/write, output) and `message_stop`
///   follow as soon as the usage chunk arrived (the request must set
///   `stream_options.include_usage`, as [`messages_to_chat`](super::messages_to_chat)
///   does), or at `[DONE]` without usage.
/// - An `{"error": ...}` chunk becomes `Err(StreamError::Upstream)`; `[DONE]`
///   before any `finish_reason` is `Err(StreamError::Truncated)`, and so is an
///   end of body before `message_stop` went out: without `[DONE]` nothing says
///   the usage chunk was not still to come.
#[derive(Debug, Clone)]
pub struct ChatStreamToMessages {
    model: String,
    started: bool,
    next_block: u64,
    open: Option<Open>,
    /// OpenAI `tool_calls[].index` → Anthropic content-block index.
    tools: Vec<(u64, u64)>,
    stop: Option<&'static str>,
    tokens: Option<Tokens>,
    finished: bool,
}

type Events = Vec<(&'static str, String)>;

impl ChatStreamToMessages {
    /// `model` is what the events report (normally the model the client asked for).
    pub fn new(model: &str) -> Self {
        ChatStreamToMessages {
            model: model.to_owned(),
            started: false,
            next_block: 0,
            open: None,
            tools: Vec::new(),
            stop: None,
            tokens: None,
            finished: false,
        }
    }

    /// Converts one chunk (the text after `data: `; `[DONE]` ends the stream).
    /// Chunks after the end are ignored.
    pub fn on_chunk(&mut self, data: &str) -> Result<Events, StreamError> {
        if self.finished {
            return Ok(Vec::new());
        }
        if data.trim() == "[DONE]" {
            return self.finish();
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err(self.malformed("data is not a JSON object".into())),
            Err(e) => return Err(self.malformed(e.to_string())),
        };
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            self.finished = true;
            let e = if err.is_object() {
                ApiError::from_openai_error(None, err)
            } else {
                ApiError::from_openai(500, &v)
            };
            return Err(StreamError::Upstream(Box::new(e)));
        }
        let mut out = Vec::new();
        let chunk_id = v.get("id").and_then(Value::as_str).unwrap_or("");
        let choices = v.get("choices").and_then(Value::as_array);
        // Azure's first chunk (`prompt_filter_results`) has an empty id and no
        // choices: the message starts with the answer's own first chunk.
        let preamble = chunk_id.is_empty()
            && choices.is_none_or(Vec::is_empty)
            && v.get("usage").is_none_or(Value::is_null);
        if !self.started && !preamble {
            self.started = true;
            let id = message_id(chunk_id);
            let start = json!({"type": "message_start", "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }});
            out.push(("message_start", start.to_string()));
        }
        let choice = choices.and_then(|c| {
            c.iter()
                .find(|ch| ch.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        if let Some(choice) = choice {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            for key in ["content", "refusal"] {
                if let Some(text) = delta.get(key).and_then(Value::as_str) {
                    if !text.is_empty() {
                        self.text(text, &mut out);
                    }
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    self.tool_call(call, &mut out);
                }
            }
            if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
                self.close(&mut out);
                self.stop = Some(stop_reason(finish));
            }
        }
        if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
            self.tokens = Some(Tokens::from_openai(usage));
        }
        if self.stop.is_some() && self.tokens.is_some() {
            self.end(&mut out);
        }
        Ok(out)
    }

    /// Ends the stream: at `[DONE]`, or when the upstream body ended. Without a
    /// finish reason the answer is incomplete: `Err(StreamError::Truncated)`.
    pub fn finish(&mut self) -> Result<Events, StreamError> {
        if self.finished {
            return Ok(Vec::new());
        }
        if self.stop.is_none() {
            self.finished = true;
            return Err(StreamError::Truncated);
        }
        let mut out = Vec::new();
        self.end(&mut out);
        Ok(out)
    }

    /// The upstream body ended without `[DONE]`. Unless `message_stop` went out
    /// already (the usage chunk came), the answer is incomplete even after a
    /// finish reason: `Err(StreamError::Truncated)`, as the OpenAI front door
    /// reports such a stream, rather than a clean end claiming 0 tokens.
    pub fn end_of_body(&mut self) -> Result<Events, StreamError> {
        if self.finished {
            return Ok(Vec::new());
        }
        self.finished = true;
        Err(StreamError::Truncated)
    }

    fn malformed(&mut self, detail: String) -> StreamError {
        self.finished = true;
        StreamError::Malformed {
            event: "chat.completion.chunk".into(),
            detail,
        }
    }

    fn text(&mut self, text: &str, out: &mut Events) {
        let index = match self.open {
            Some(Open::Text(i)) => i,
            _ => {
                self.close(out);
                let i = self.open_block(json!({"type": "text", "text": ""}), out);
                self.open = Some(Open::Text(i));
                i
            }
        };
        let delta = json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}});
        out.push(("content_block_delta", delta.to_string()));
    }

    fn tool_call(&mut self, call: &Value, out: &mut Events) {
        let k = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = call.get("function").unwrap_or(&Value::Null);
        let index = match self.tools.iter().find(|(t, _)| *t == k) {
            Some(&(_, i)) => i,
            None => {
                self.close(out);
                let block = json!({
                    "type": "tool_use",
                    "id": call.get("id").and_then(Value::as_str).unwrap_or(""),
                    "name": f.get("name").and_then(Value::as_str).unwrap_or(""),
                    "input": {},
                });
                let i = self.open_block(block, out);
                self.open = Some(Open::Tool(i));
                self.tools.push((k, i));
                i
            }
        };
        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
        if !args.is_empty() {
            let delta = json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": args}});
            out.push(("content_block_delta", delta.to_string()));
        }
    }

    fn open_block(&mut self, block: Value, out: &mut Events) -> u64 {
        let i = self.next_block;
        self.next_block += 1;
        let start = json!({"type": "content_block_start", "index": i, "content_block": block});
        out.push(("content_block_start", start.to_string()));
        i
    }

    fn close(&mut self, out: &mut Events) {
        if let Some(Open::Text(i) | Open::Tool(i)) = self.open.take() {
            let stop = json!({"type": "content_block_stop", "index": i});
            out.push(("content_block_stop", stop.to_string()));
        }
    }

    fn end(&mut self, out: &mut Events) {
        self.close(out);
        self.finished = true;
        let usage = self.tokens.unwrap_or_default().to_anthropic();
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage});
        out.push(("message_delta", delta.to_string()));
        out.push(("message_stop", json!({"type": "message_stop"}).to_string()));
    }

    /// True after `message_stop` went out or the stream failed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// True once the upstream sent a `finish_reason`.
    pub fn saw_finish(&self) -> bool {
        self.stop.is_some()
    }

    /// `(prompt_tokens, completion_tokens)` as OpenAI reported them, once the
    /// usage chunk arrived.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.tokens.map(|t| (t.prompt(), t.output))
    }
}
