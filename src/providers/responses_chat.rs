//! OpenAI's Responses API re-expressed as Chat Completions, both ways, for
//! routes that speak no Responses API of their own (Anthropic's: the chat
//! request is then translated once more, to Messages, by [`super::anthropic`]).
//! Pure functions on `serde_json` values and one stream converter; no I/O.
//!
//! | direction | what |
//! |---|---|
//! | request | [`responses_to_chat`]: `instructions` → a system message; `input` (a string, or items: messages with text and image parts, `function_call`s, `function_call_output`s) → messages; function `tools` and `tool_choice`; `text.format` → `response_format`; `max_output_tokens` → `max_completion_tokens` |
//! | answer | [`chat_to_response`]: the message's text → a `message` item with one `output_text` part, each tool call → a `function_call` item; `finish_reason` `length` → `status: "incomplete"` (`max_output_tokens`) |
//! | stream | [`ChatStreamToResponses`]: chunks → `response.created`, `response.in_progress`, the items' `added`/`delta`/`done` events, and `response.completed` (or `response.incomplete`) carrying the usage |
//!
//! What a chat completion cannot express is refused before anything is sent
//! (400, naming the field): a `previous_response_id` or `conversation` (the
//! route stores no responses), hosted tools (`web_search`, `file_search`, …),
//! `input_file` parts, images by `file_id`, item references. `reasoning`
//! items of an earlier answer are dropped (they are another provider's
//! opaque state); `include`, `reasoning`, `store`, `truncation`, `metadata`
//! and `service_tier` are not sent, and the answer says `"store": false`.

use super::anthropic::TranslateError;
use serde_json::{json, Map, Value};

/// The request's fields a response echoes back, as OpenAI's do.
#[derive(Debug, Clone)]
pub struct Echo(Map<String, Value>);

impl Echo {
    pub fn of(req: &Value) -> Self {
        let field = |k: &str, default: Value| {
            req.get(k)
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or(default)
        };
        let mut m = Map::new();
        m.insert("instructions".into(), field("instructions", Value::Null));
        m.insert(
            "max_output_tokens".into(),
            field("max_output_tokens", Value::Null),
        );
        m.insert("metadata".into(), field("metadata", json!({})));
        m.insert(
            "parallel_tool_calls".into(),
            field("parallel_tool_calls", json!(true)),
        );
        m.insert("previous_response_id".into(), Value::Null);
        m.insert("store".into(), json!(false));
        m.insert("temperature".into(), field("temperature", json!(1.0)));
        m.insert(
            "text".into(),
            field("text", json!({"format": {"type": "text"}})),
        );
        m.insert("tool_choice".into(), field("tool_choice", json!("auto")));
        m.insert("tools".into(), field("tools", json!([])));
        m.insert("top_p".into(), field("top_p", json!(1.0)));
        m.insert("truncation".into(), json!("disabled"));
        m.insert("user".into(), field("user", Value::Null));
        Self(m)
    }
}

fn unsupported(param: impl Into<String>, what: &str) -> TranslateError {
    TranslateError::unsupported_parameter(
        param,
        format!("{what} This model's route has no Responses API of its own."),
    )
}

fn invalid(param: impl Into<String>, message: &str) -> TranslateError {
    TranslateError::invalid(param, message.to_owned())
}

/// A Responses request → a chat-completions request (same model).
pub fn responses_to_chat(req: &Value) -> Result<Value, TranslateError> {
    let obj = req.as_object().ok_or_else(TranslateError::not_an_object)?;
    for (param, what) in [
        (
            "previous_response_id",
            "`previous_response_id` needs the response stored by the provider that made it; send the conversation in `input` instead.",
        ),
        (
            "conversation",
            "`conversation` needs a conversation stored by the provider; send it in `input` instead.",
        ),
        ("prompt", "Stored prompt templates (`prompt`) are not supported."),
    ] {
        if obj.get(param).is_some_and(|v| !v.is_null()) {
            return Err(unsupported(param, what));
        }
    }
    let mut messages = Vec::new();
    if let Some(instructions) = obj.get("instructions").filter(|v| !v.is_null()) {
        let text = instructions
            .as_str()
            .ok_or_else(|| invalid("instructions", "`instructions` must be a string."))?;
        messages.push(json!({"role": "system", "content": text}));
    }
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut messages)?;
            }
        }
        _ => {
            return Err(invalid(
                "input",
                "`input` must be a string or an array of input items.",
            ))
        }
    }

    let mut out = Map::new();
    out.insert(
        "model".into(),
        obj.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| invalid("tools", "`tools` must be an array."))?;
        let tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| function_tool(t, i))
            .collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        out.insert("tool_choice".into(), tool_choice(choice)?);
    }
    for key in ["parallel_tool_calls", "temperature", "top_p"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(v) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
        out.insert("max_completion_tokens".into(), v.clone());
    }
    if let Some(user) = obj
        .get("safety_identifier")
        .or_else(|| obj.get("user"))
        .filter(|v| !v.is_null())
    {
        out.insert("user".into(), user.clone());
    }
    if let Some(format) = obj.get("text").and_then(|t| t.get("format")) {
        if let Some(f) = response_format(format)? {
            out.insert("response_format".into(), f);
        }
    }
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// One `input` item, appended to `messages` (a `function_call` joins the
/// assistant message before it, as parallel calls share one in chat).
fn input_item(item: &Value, i: usize, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).ok_or_else(|| {
                invalid(format!("input[{i}].role"), "A message item needs a `role`.")
            })?;
            if !matches!(role, "user" | "assistant" | "system" | "developer") {
                return Err(TranslateError::unsupported_value(
                    format!("input[{i}].role"),
                    format!("Role `{role}` is not supported."),
                ));
            }
            let content = match item.get("content") {
                Some(Value::String(s)) => json!(s),
                Some(Value::Array(parts)) => {
                    let parts = parts
                        .iter()
                        .enumerate()
                        .map(|(j, p)| content_part(p, i, j))
                        .collect::<Result<Vec<_>, _>>()?;
                    if role == "user" {
                        Value::Array(parts)
                    } else {
                        // Chat's other roles take text only: joined.
                        let mut text = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            let t = p.get("text").and_then(Value::as_str).ok_or_else(|| {
                                TranslateError::unsupported_value(
                                    format!("input[{i}].content[{j}]"),
                                    format!("A `{role}` message carries text only."),
                                )
                            })?;
                            text.push_str(t);
                        }
                        json!(text)
                    }
                }
                _ => {
                    return Err(invalid(
                        format!("input[{i}].content"),
                        "A message's `content` must be a string or an array of parts.",
                    ))
                }
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let text = |k: &str| {
                item.get(k).and_then(Value::as_str).ok_or_else(|| {
                    invalid(
                        format!("input[{i}].{k}"),
                        "A `function_call` item needs `call_id`, `name` and `arguments` strings.",
                    )
                })
            };
            let call = json!({"id": text("call_id")?, "type": "function",
                "function": {"name": text("name")?, "arguments": text("arguments")?}});
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    let calls = last
                        .as_object_mut()
                        .map(|m| m.entry("tool_calls").or_insert_with(|| json!([])));
                    if let Some(Value::Array(calls)) = calls {
                        calls.push(call);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                invalid(
                    format!("input[{i}].call_id"),
                    "A `function_call_output` item needs a `call_id`.",
                )
            })?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                _ => {
                    return Err(invalid(
                        format!("input[{i}].output"),
                        "A `function_call_output` item needs an `output`.",
                    ))
                }
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // An earlier answer's reasoning is its provider's opaque state.
        "reasoning" => {}
        other => {
            return Err(TranslateError::unsupported_value(
                format!("input[{i}].type"),
                format!("Input items of type `{other}` are not supported on this model's route."),
            ))
        }
    }
    Ok(())
}

fn content_part(part: &Value, i: usize, j: usize) -> Result<Value, TranslateError> {
    let param = || format!("input[{i}].content[{j}]");
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            let text = part
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(param(), "A text part needs its `text`."))?;
            Ok(json!({"type": "text", "text": text}))
        }
        Some("input_image") => {
            let url = part
                .get("image_url")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::unsupported_value(
                        param(),
                        "Images are taken by `image_url` (a URL or a data URL); a `file_id` needs the provider's file store.".into(),
                    )
                })?;
            let mut image = json!({"url": url});
            if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
                image["detail"] = detail.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some(other) => Err(TranslateError::unsupported_value(
            param(),
            format!("Content parts of type `{other}` are not supported on this model's route."),
        )),
        None => Err(invalid(param(), "A content part needs a `type`.")),
    }
}

fn function_tool(tool: &Value, i: usize) -> Result<Value, TranslateError> {
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {
            let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid(format!("tools[{i}].name"), "A function tool needs a `name`.")
            })?;
            let mut function = json!({"name": name});
            for key in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function[key] = v.clone();
                }
            }
            Ok(json!({"type": "function", "function": function}))
        }
        other => Err(TranslateError::unsupported_value(
            format!("tools[{i}].type"),
            format!(
                "Tools of type `{}` are run by OpenAI's platform; on this model's route only `function` tools are supported.",
                other.unwrap_or("?")
            ),
        )),
    }
}

fn tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(json!(s)),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid(
                    "tool_choice.name",
                    "A function `tool_choice` needs a `name`.",
                )
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(TranslateError::unsupported_value(
            "tool_choice",
            "On this model's route `tool_choice` is `auto`, `none`, `required` or a function."
                .into(),
        )),
    }
}

fn response_format(format: &Value) -> Result<Option<Value>, TranslateError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "description", "schema", "strict"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(
                json!({"type": "json_schema", "json_schema": Value::Object(schema)}),
            ))
        }
        Some(other) => Err(TranslateError::unsupported_value(
            "text.format.type",
            format!("`text.format` of type `{other}` is not supported."),
        )),
    }
}

/// The Responses `usage` of a chat completion's.
fn usage_of(chat_usage: &Value) -> Value {
    let n = |p: &str| chat_usage.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let input = n("/prompt_tokens");
    let output = n("/completion_tokens");
    let mut input_details = json!({"cached_tokens": n("/prompt_tokens_details/cached_tokens")});
    let written = n("/prompt_tokens_details/cache_write_tokens");
    if written > 0 {
        input_details["cache_write_tokens"] = json!(written);
    }
    json!({
        "input_tokens": input,
        "input_tokens_details": input_details,
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n("/completion_tokens_details/reasoning_tokens")},
        "total_tokens": input + output,
    })
}

/// A response id from a chat completion's id (`resp_` and its characters
/// that are safe in an id).
fn response_id(chat_id: &str) -> String {
    let tail: String = chat_id
        .trim_start_matches("chatcmpl-")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    format!("resp_{tail}")
}

fn status_of(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// The `response` object; `head` is its id, `created_at` and model.
fn response(
    (id, created_at, model): (&str, u64, &str),
    (status, incomplete): (&str, Value),
    output: Vec<Value>,
    usage: Value,
    echo: &Echo,
) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("object".into(), json!("response"));
    m.insert("created_at".into(), json!(created_at));
    m.insert("status".into(), json!(status));
    m.insert("background".into(), json!(false));
    m.insert("error".into(), Value::Null);
    m.insert("incomplete_details".into(), incomplete);
    m.insert("model".into(), json!(model));
    m.insert("output".into(), Value::Array(output));
    m.extend(echo.0.clone());
    m.insert("usage".into(), usage);
    Value::Object(m)
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    let content = text.map_or_else(|| json!([]), |t| json!([text_part(t)]));
    json!({"id": id, "type": "message", "status": status, "content": content, "role": "assistant"})
}

fn call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments,
        "call_id": call_id, "name": name})
}

/// A chat completion → a `response` (`created_at` from the completion's
/// `created`).
pub fn chat_to_response(chat: &Value, echo: &Echo) -> Value {
    let id = response_id(chat.get("id").and_then(Value::as_str).unwrap_or(""));
    let model = chat.get("model").and_then(Value::as_str).unwrap_or("");
    let created = chat.get("created").and_then(Value::as_u64).unwrap_or(0);
    let choice = chat.pointer("/choices/0");
    let message = choice.and_then(|c| c.get("message"));
    let mut output = Vec::new();
    if let Some(text) = message
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(
            &id.replacen("resp_", "msg_", 1),
            "completed",
            Some(text),
        ));
    }
    for call in message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or("");
        let call_id = s("/id");
        output.push(call_item(
            &format!("fc_{call_id}"),
            "completed",
            call_id,
            s("/function/name"),
            s("/function/arguments"),
        ));
    }
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str);
    let usage = chat.get("usage").map_or(Value::Null, usage_of);
    response(
        (&id, created, model),
        status_of(finish),
        output,
        usage,
        echo,
    )
}

/// An output item being streamed.
enum Item {
    Message {
        id: String,
        text: String,
        open: bool,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        open: bool,
    },
}

/// Chat-completion chunks (the `data:` of each event) → Responses events,
/// each `(name, data)` with `type` first and `sequence_number` last, as
/// OpenAI's. The terminal event (`response.completed` or
/// `response.incomplete`) goes out at `[DONE]`, once the usage chunk is in;
/// an error chunk becomes the API's `error` event. A stream that ends
/// without a finish reason gets no terminal event: the relay reports it cut.
pub struct ChatStreamToResponses {
    echo: Echo,
    created_at: u64,
    id: String,
    model: String,
    started: bool,
    seq: u64,
    items: Vec<Item>,
    /// Output index of each chat tool call's index.
    calls: Vec<(u64, usize)>,
    /// The message item text goes to, while one is open.
    text_item: Option<usize>,
    finish: Option<String>,
    usage: Value,
    finished: bool,
}

impl ChatStreamToResponses {
    pub fn new(echo: Echo, model: &str, created_at: u64) -> Self {
        Self {
            echo,
            created_at,
            id: String::new(),
            model: model.to_owned(),
            started: false,
            seq: 0,
            items: Vec::new(),
            calls: Vec::new(),
            text_item: None,
            finish: None,
            usage: Value::Null,
            finished: false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn event(&mut self, out: &mut Vec<(String, String)>, kind: &str, payload: Value) {
        let mut m = Map::new();
        m.insert("type".into(), json!(kind));
        if let Value::Object(p) = payload {
            m.extend(p);
        }
        m.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        out.push((kind.to_owned(), Value::Object(m).to_string()));
    }

    fn snapshot(&self, status: &str, incomplete: Value, with_output: bool) -> Value {
        let output = if with_output {
            self.items
                .iter()
                .map(|it| self.item_json(it, "completed"))
                .collect()
        } else {
            Vec::new()
        };
        let usage = if with_output {
            self.usage.clone()
        } else {
            Value::Null
        };
        response(
            (&self.id, self.created_at, &self.model),
            (status, incomplete),
            output,
            usage,
            &self.echo,
        )
    }

    fn item_json(&self, item: &Item, status: &str) -> Value {
        match item {
            Item::Message { id, text, .. } => message_item(id, status, Some(text)),
            Item::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => call_item(id, status, call_id, name, arguments),
        }
    }

    /// Closes output item `idx` if it is open.
    fn close(&mut self, out: &mut Vec<(String, String)>, idx: usize) {
        let (events, done): (Vec<(&str, Value)>, Value) = match &mut self.items[idx] {
            Item::Message { id, text, open } if *open => {
                *open = false;
                let (id, text) = (id.clone(), text.clone());
                (
                    vec![
                        (
                            "response.output_text.done",
                            json!({"item_id": id, "output_index": idx, "content_index": 0, "text": text, "logprobs": []}),
                        ),
                        (
                            "response.content_part.done",
                            json!({"item_id": id, "output_index": idx, "content_index": 0, "part": text_part(&text)}),
                        ),
                    ],
                    message_item(&id, "completed", Some(&text)),
                )
            }
            Item::Call {
                id,
                call_id,
                name,
                arguments,
                open,
            } if *open => {
                *open = false;
                (
                    vec![(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": idx, "arguments": arguments}),
                    )],
                    call_item(id, "completed", call_id, name, arguments),
                )
            }
            _ => return,
        };
        for (kind, payload) in events {
            self.event(out, kind, payload);
        }
        self.event(
            out,
            "response.output_item.done",
            json!({"output_index": idx, "item": done}),
        );
        if self.text_item == Some(idx) {
            self.text_item = None;
        }
    }

    fn close_all(&mut self, out: &mut Vec<(String, String)>) {
        for idx in 0..self.items.len() {
            self.close(out, idx);
        }
    }

    /// One chunk's `data:`; answers the events to send.
    pub fn on_chunk(&mut self, data: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if data.trim() == "[DONE]" {
            if let Some(finish) = self.finish.clone() {
                self.close_all(&mut out);
                let (status, incomplete) = status_of(Some(&finish));
                let done = self.snapshot(status, incomplete, true);
                let kind = if status == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                self.event(&mut out, kind, json!({ "response": done }));
                self.finished = true;
            }
            return out;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        if let Some(err) = chunk.get("error") {
            let s = |k: &str| err.get(k).cloned().unwrap_or(Value::Null);
            self.event(
                &mut out,
                "error",
                json!({"code": s("code"), "message": s("message"), "param": s("param")}),
            );
            self.finished = true;
            return out;
        }
        if !self.started {
            self.started = true;
            self.id = response_id(chunk.get("id").and_then(Value::as_str).unwrap_or(""));
            if let Some(m) = chunk.get("model").and_then(Value::as_str) {
                self.model = m.to_owned();
            }
            let started = self.snapshot("in_progress", Value::Null, false);
            self.event(&mut out, "response.created", json!({ "response": started }));
            self.event(
                &mut out,
                "response.in_progress",
                json!({ "response": started }),
            );
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = usage_of(usage);
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = choice.get("delta");
        if let Some(text) = delta
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let idx = match self.text_item {
                Some(idx) => idx,
                None => {
                    let idx = self.items.len();
                    let id = format!("msg_{}_{idx}", self.id.trim_start_matches("resp_"));
                    self.items.push(Item::Message {
                        id: id.clone(),
                        text: String::new(),
                        open: true,
                    });
                    self.text_item = Some(idx);
                    self.event(
                        &mut out,
                        "response.output_item.added",
                        json!({"output_index": idx, "item": message_item(&id, "in_progress", None)}),
                    );
                    self.event(
                        &mut out,
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": idx, "content_index": 0, "part": text_part("")}),
                    );
                    idx
                }
            };
            if let Item::Message { id, text: all, .. } = &mut self.items[idx] {
                all.push_str(text);
                let id = id.clone();
                self.event(
                    &mut out,
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": idx, "content_index": 0, "delta": text, "logprobs": []}),
                );
            }
        }
        for call in delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let idx = match self.calls.iter().find(|(i, _)| *i == index) {
                Some(&(_, idx)) => idx,
                None => {
                    if let Some(t) = self.text_item {
                        self.close(&mut out, t);
                    }
                    let idx = self.items.len();
                    let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or("");
                    let call_id = s("/id").to_owned();
                    let name = s("/function/name").to_owned();
                    let id = format!("fc_{call_id}");
                    self.event(
                        &mut out,
                        "response.output_item.added",
                        json!({"output_index": idx, "item": call_item(&id, "in_progress", &call_id, &name, "")}),
                    );
                    self.items.push(Item::Call {
                        id,
                        call_id,
                        name,
                        arguments: String::new(),
                        open: true,
                    });
                    self.calls.push((index, idx));
                    idx
                }
            };
            if let Some(piece) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                if let Item::Call { id, arguments, .. } = &mut self.items[idx] {
                    arguments.push_str(piece);
                    let id = id.clone();
                    self.event(
                        &mut out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": idx, "delta": piece}),
                    );
                }
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(finish.to_owned());
            self.close_all(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_a_chat_request() {
        let req = json!({
            "model": "claude-sonnet-4-5",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "And this:"},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}
                ]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "20C"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Done."}]}
            ],
            "tools": [{"type": "function", "name": "get_weather", "description": "Weather",
                "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 100,
            "temperature": 0.5,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "store": true,
            "include": ["reasoning.encrypted_content"],
            "stream": true
        });
        let chat = responses_to_chat(&req).unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "claude-sonnet-4-5",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "And this:"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
                    ]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "20C"},
                    {"role": "assistant", "content": "Done."}
                ],
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"type": "object"}, "strict": true}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "temperature": 0.5,
                "max_completion_tokens": 100,
                "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}},
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn what_a_chat_completion_cannot_express_is_refused_by_name() {
        for (req, param) in [
            (
                json!({"input": "hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"input": "hi", "conversation": "conv_1"}),
                "conversation",
            ),
            (
                json!({"input": "hi", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0]",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0]",
            ),
            (
                json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input[0].type",
            ),
            (
                json!({"input": [{"type": "function_call", "call_id": "c"}]}),
                "input[0].name",
            ),
            (json!({"input": 3}), "input"),
            (
                json!({"input": "hi", "tool_choice": {"type": "web_search"}}),
                "tool_choice",
            ),
            (
                json!({"input": "hi", "text": {"format": {"type": "grammar"}}}),
                "text.format.type",
            ),
        ] {
            let err = responses_to_chat(&req).unwrap_err();
            assert_eq!(err.param(), Some(param), "{req}: {err}");
        }
    }

    #[test]
    fn a_chat_completion_becomes_a_response() {
        let chat = json!({
            "id": "chatcmpl-msg_01abc", "object": "chat.completion", "created": 1700000000,
            "model": "claude-sonnet-4-5-20250929",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "toolu_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 377, "completion_tokens": 65, "total_tokens": 442,
                "prompt_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 3}}
        });
        let echo = Echo::of(&json!({"instructions": "Be brief.", "max_output_tokens": 50}));
        let r = chat_to_response(&chat, &echo);
        assert_eq!(r["id"], "resp_msg_01abc");
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["created_at"], 1700000000);
        assert_eq!(r["model"], "claude-sonnet-4-5-20250929");
        assert_eq!(r["instructions"], "Be brief.");
        assert_eq!(r["max_output_tokens"], 50);
        assert_eq!(r["store"], false);
        assert_eq!(r["output"][0]["type"], "message");
        assert_eq!(r["output"][0]["content"][0]["text"], "Checking.");
        assert_eq!(
            r["output"][1],
            json!({"id": "fc_toolu_1", "type": "function_call", "status": "completed",
                "arguments": "{\"city\":\"Paris\"}", "call_id": "toolu_1", "name": "get_weather"})
        );
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 377, "input_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 3},
                "output_tokens": 65, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 442})
        );

        let mut cut = chat.clone();
        cut["choices"][0]["finish_reason"] = json!("length");
        let r = chat_to_response(&cut, &echo);
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }

    fn run(conv: &mut ChatStreamToResponses, chunks: &[Value]) -> Vec<(String, Value)> {
        let mut all = Vec::new();
        for c in chunks {
            let data = if c == "[DONE]" {
                "[DONE]".to_owned()
            } else {
                c.to_string()
            };
            for (name, data) in conv.on_chunk(&data) {
                let v: Value = serde_json::from_str(&data).unwrap();
                assert_eq!(v["type"], name.as_str());
                all.push((name, v));
            }
        }
        for (i, (_, v)) in all.iter().enumerate() {
            assert_eq!(v["sequence_number"], i as u64);
        }
        all
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-msg_9", "object": "chat.completion.chunk", "created": 1,
            "model": "claude-sonnet-4-5-20250929",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn a_chat_stream_becomes_responses_events() {
        let mut conv = ChatStreamToResponses::new(Echo::of(&json!({})), "claude-sonnet-4-5", 5);
        let events = run(
            &mut conv,
            &[
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Hel"}), Value::Null),
                chunk(json!({"content": "lo."}), Value::Null),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                    Value::Null,
                ),
                chunk(json!({}), json!("tool_calls")),
                json!({"id": "chatcmpl-msg_9", "object": "chat.completion.chunk", "created": 1,
                    "model": "claude-sonnet-4-5-20250929", "choices": [],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}}),
                json!("[DONE]"),
            ],
        );
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert!(conv.is_finished());
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[0].1["response"]["id"], "resp_msg_9");
        assert_eq!(events[6].1["text"], "Hello.");
        assert_eq!(events[12].1["arguments"], "{\"city\":\"Paris\"}");
        let done = &events[14].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello.");
        assert_eq!(done["output"][1]["call_id"], "toolu_1");
        assert_eq!(done["usage"]["input_tokens"], 10);
        assert_eq!(done["usage"]["output_tokens"], 4);
    }

    #[test]
    fn a_cut_stream_is_incomplete_an_error_ends_it_and_a_truncated_one_has_no_end() {
        let mut conv = ChatStreamToResponses::new(Echo::of(&json!({})), "m", 5);
        let events = run(
            &mut conv,
            &[
                chunk(json!({"content": "Hel"}), Value::Null),
                chunk(json!({}), json!("length")),
                json!("[DONE]"),
            ],
        );
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );

        let mut conv = ChatStreamToResponses::new(Echo::of(&json!({})), "m", 5);
        let events = run(
            &mut conv,
            &[
                chunk(json!({"content": "Hel"}), Value::Null),
                json!({"error": {"message": "Overloaded", "type": "server_error", "code": "overloaded"}}),
            ],
        );
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(last["code"], "overloaded");
        assert!(conv.is_finished());

        let mut conv = ChatStreamToResponses::new(Echo::of(&json!({})), "m", 5);
        let events = run(
            &mut conv,
            &[
                chunk(json!({"content": "Hel"}), Value::Null),
                json!("[DONE]"),
            ],
        );
        assert!(events
            .iter()
            .all(|(n, _)| !n.starts_with("response.complete")));
        assert!(!conv.is_finished());
    }
}
