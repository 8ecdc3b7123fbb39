//! The Anthropic front door on OpenAI routes: a client's `POST /v1/messages` body →
//! an OpenAI chat-completions body ([`messages_to_chat`]), and the OpenAI answer →
//! an Anthropic message ([`chat_to_message`]). Streams: see
//! [`ChatStreamToMessages`](super::ChatStreamToMessages).

use super::error::TranslateError;
use super::{field, message_id, stop_reason, type_of, Tokens};
use serde_json::{json, Map, Value};

/// Which OpenAI field carries Anthropic's `max_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MaxTokensField {
    /// `max_tokens`: understood by every OpenAI-compatible server (vLLM, Ollama,
    /// Groq, Together, Mistral...) and by OpenAI's non-reasoning models. OpenAI's
    /// reasoning models (o-series, gpt-5) reject it with `unsupported_parameter`.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's current name, required by its reasoning
    /// models; not understood by every compatible server.
    MaxCompletionTokens,
}

impl MaxTokensField {
    fn key(self) -> &'static str {
        match self {
            MaxTokensField::MaxTokens => "max_tokens",
            MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// [`messages_to_chat_with`] sending `max_tokens` ([`MaxTokensField::MaxTokens`]),
/// the choice that works with the widest range of OpenAI-compatible servers.
pub fn messages_to_chat(req: &Value, upstream_model: &str) -> Result<Value, TranslateError> {
    messages_to_chat_with(req, upstream_model, MaxTokensField::MaxTokens)
}

/// Translates an Anthropic `POST /v1/messages` body into an OpenAI
/// `POST /v1/chat/completions` body for `upstream_model`.
///
/// - `system` (a string, or text blocks joined with `\n`) → one leading system
///   message; `cache_control` is dropped everywhere.
/// - user blocks: text → text parts, images → `image_url` parts (base64 sources as
///   `data:` URLs), base64 PDF documents → `file` parts, plain-text documents →
///   text. `tool_result` blocks → `tool` messages, placed before the rest of the
///   user turn; their images (OpenAI tool messages carry text only) move into the
///   user message that follows. `is_error` has no OpenAI field and is dropped.
/// - assistant blocks: text → `content` (concatenated; `null` when the turn is only
///   tool calls), `tool_use` → `tool_calls` with `arguments` = the input as a JSON
///   string; `thinking` / `redacted_thinking` are dropped.
/// - `max_tokens` → the field chosen by `max_tokens_field`; `stop_sequences` →
///   `stop`; `temperature`, `top_p` passed; `top_k` and `thinking` dropped (no
///   OpenAI field); `metadata.user_id` → `user` (its SHA-256 in hex when longer
///   than the 64 characters OpenAI accepts).
/// - `tools` (`input_schema` → `parameters`) and `tool_choice` (`auto` / `any` /
///   `none` / `tool` → `auto` / `required` / `none` / named function;
///   `disable_parallel_tool_use` → the opposite `parallel_tool_calls`). Anthropic's
///   server tools (`web_search_...`, `bash_...`) only run on Anthropic and are
///   refused.
/// - `output_config.format` (or the beta's top-level `output_format`), a
///   `json_schema` format → `response_format` `json_schema` named `output`,
///   `strict` when OpenAI's strict mode takes the schema (every object closed
///   with `additionalProperties: false` and all its properties required), so
///   the answer is constrained as Anthropic's would be; otherwise the schema
///   still guides the answer, where strict mode would refuse the request.
///   `output_config.effort` has no OpenAI field every server takes and is
///   dropped.
/// - `stream: true` also sets `stream_options.include_usage: true`, the only way
///   to learn a streamed answer's usage.
pub fn messages_to_chat_with(
    req: &Value,
    upstream_model: &str,
    max_tokens_field: MaxTokensField,
) -> Result<Value, TranslateError> {
    let obj = req.as_object().ok_or_else(TranslateError::not_an_object)?;
    let mut messages = Vec::new();
    if let Some(system) = field(obj, "system") {
        let text = system_text(system)?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let input = field(obj, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            TranslateError::invalid(
                "messages",
                "`messages` must be an array of messages.".into(),
            )
        })?;
    for (i, m) in input.iter().enumerate() {
        convert_message(m, &format!("messages.{i}"), &mut messages)?;
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = field(obj, "max_tokens") {
        let max = max.as_u64().ok_or_else(|| {
            TranslateError::invalid(
                "max_tokens",
                "`max_tokens` must be a positive integer.".into(),
            )
        })?;
        out.insert(max_tokens_field.key().into(), json!(max));
    }
    if let Some(stop) = field(obj, "stop_sequences") {
        let stops = stop
            .as_array()
            .filter(|a| a.iter().all(Value::is_string))
            .ok_or_else(|| {
                TranslateError::invalid(
                    "stop_sequences",
                    "`stop_sequences` must be an array of strings.".into(),
                )
            })?;
        if !stops.is_empty() {
            out.insert("stop".into(), stop.clone());
        }
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = field(obj, key) {
            if !v.is_number() {
                return Err(TranslateError::invalid(
                    key,
                    format!("`{key}` must be a number."),
                ));
            }
            out.insert(key.into(), v.clone());
        }
    }
    let tools = convert_tools(obj)?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = field(obj, "tool_choice") {
            let (choice, parallel) = convert_tool_choice(choice)?;
            out.insert("tool_choice".into(), choice);
            if let Some(parallel) = parallel {
                out.insert("parallel_tool_calls".into(), json!(parallel));
            }
        }
    }
    if let Some(format) = convert_output_format(obj)? {
        out.insert("response_format".into(), format);
    }
    let user = field(obj, "metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    if let Some(user) = user {
        out.insert("user".into(), json!(openai_user(user)));
    }
    if let Some(stream) = field(obj, "stream") {
        let stream = stream.as_bool().ok_or_else(|| {
            TranslateError::invalid("stream", "`stream` must be a boolean.".into())
        })?;
        out.insert("stream".into(), json!(stream));
        if stream {
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
    }
    Ok(Value::Object(out))
}

/// `output_config.format` (or `output_format`) as OpenAI's `response_format`.
fn convert_output_format(obj: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let (format, param) = match field(obj, "output_config").and_then(|c| c.get("format")) {
        Some(f) => (f, "output_config.format"),
        None => match field(obj, "output_format") {
            Some(f) => (f, "output_format"),
            None => return Ok(None),
        },
    };
    if format.is_null() {
        return Ok(None);
    }
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err(TranslateError::unsupported_value(
            format!("{param}.type"),
            format!("`{param}.type` must be `json_schema`."),
        ));
    }
    let schema = format
        .get("schema")
        .filter(|s| s.is_object())
        .ok_or_else(|| {
            TranslateError::invalid(
                format!("{param}.schema"),
                format!("`{param}.schema` must be a JSON schema object."),
            )
        })?;
    Ok(Some(json!({
        "type": "json_schema",
        "json_schema": {
            "name": "output",
            "schema": schema,
            "strict": strict_compatible(schema),
        },
    })))
}

/// Whether OpenAI's strict mode takes `schema`: each object schema in it is
/// closed (`additionalProperties: false`) and requires all its properties.
/// Anthropic asks for the first only, so a schema with an optional property
/// would fail the whole request in strict mode.
fn strict_compatible(schema: &Value) -> bool {
    let Some(node) = schema.as_object() else {
        // `true`/`false` schemas, or an array of `items` (draft 4 tuples).
        return schema
            .as_array()
            .is_none_or(|a| a.iter().all(strict_compatible));
    };
    let properties = node.get("properties").and_then(Value::as_object);
    let is_object =
        node.get("type").and_then(Value::as_str) == Some("object") || properties.is_some();
    if is_object {
        if node.get("additionalProperties") != Some(&Value::Bool(false)) {
            return false;
        }
        let required: Vec<&str> = node
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = properties {
            if !props.keys().all(|k| required.contains(&k.as_str())) {
                return false;
            }
        }
    }
    let nested_maps = ["properties", "$defs", "definitions"];
    let maps_ok = nested_maps.iter().all(|k| {
        node.get(*k)
            .and_then(Value::as_object)
            .is_none_or(|m| m.values().all(strict_compatible))
    });
    let nested = ["items", "anyOf", "allOf", "oneOf", "prefixItems"];
    maps_ok
        && nested
            .iter()
            .all(|k| node.get(*k).is_none_or(strict_compatible))
}

/// The longest `user` OpenAI accepts ("string too long. Expected a string with
/// maximum length 64").
const OPENAI_USER_MAX_CHARS: usize = 64;

/// `metadata.user_id` as OpenAI's `user`. Claude Code sends ids of well over 64
/// characters (device, account and session in one string), which OpenAI refuses
/// with a 400 for the whole request; such an id is sent as its SHA-256 in hex
/// (64 characters), which still tells one end user from another.
fn openai_user(user_id: &str) -> String {
    if user_id.chars().count() <= OPENAI_USER_MAX_CHARS {
        return user_id.to_owned();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, user_id.as_bytes());
    hex::encode(digest.as_ref())
}

fn system_text(system: &Value) -> Result<String, TranslateError> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                let text = b
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|_| type_of(b) == "text")
                    .ok_or_else(|| {
                        TranslateError::invalid(
                            format!("system.{j}"),
                            format!("`system.{j}` must be a text block."),
                        )
                    })?;
                texts.push(text);
            }
            Ok(texts.join("\n"))
        }
        _ => Err(TranslateError::invalid(
            "system",
            "`system` must be a string or an array of text blocks.".into(),
        )),
    }
}

fn convert_message(m: &Value, p: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    let content = m.get("content").unwrap_or(&Value::Null);
    match role {
        "user" => convert_user(content, p, out),
        "assistant" => {
            out.push(convert_assistant(content, p)?);
            Ok(())
        }
        other => Err(TranslateError::invalid(
            format!("{p}.role"),
            format!("`{p}.role` must be `user` or `assistant` (got `{other}`)."),
        )),
    }
}

fn blocks_of<'a>(content: &'a Value, p: &str) -> Result<&'a [Value], TranslateError> {
    content.as_array().map(Vec::as_slice).ok_or_else(|| {
        TranslateError::invalid(
            format!("{p}.content"),
            format!("`{p}.content` must be a string or an array of content blocks."),
        )
    })
}

fn convert_user(content: &Value, p: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    if let Value::String(s) = content {
        out.push(json!({"role": "user", "content": s}));
        return Ok(());
    }
    let mut parts = Vec::new();
    let mut tool_images = Vec::new();
    for (j, b) in blocks_of(content, p)?.iter().enumerate() {
        let bp = format!("{p}.content.{j}");
        match type_of(b) {
            "tool_result" => {
                out.push(tool_message(b, &bp, &mut tool_images)?);
            }
            _ => parts.push(user_part(b, &bp)?),
        }
    }
    tool_images.extend(parts);
    let parts = tool_images;
    if parts.is_empty() {
        return Ok(());
    }
    let content = match parts.as_slice() {
        [only] if type_of(only) == "text" => only.get("text").cloned().unwrap_or(json!("")),
        _ => Value::Array(parts),
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

/// One user content block → an OpenAI content part.
fn user_part(b: &Value, bp: &str) -> Result<Value, TranslateError> {
    match type_of(b) {
        "text" => {
            let text = b.get("text").and_then(Value::as_str).ok_or_else(|| {
                TranslateError::invalid(
                    format!("{bp}.text"),
                    format!("`{bp}.text` must be a string."),
                )
            })?;
            Ok(json!({"type": "text", "text": text}))
        }
        "image" => {
            let url = source_url(b, bp)?;
            Ok(json!({"type": "image_url", "image_url": {"url": url}}))
        }
        "document" => {
            let source = b.get("source").unwrap_or(&Value::Null);
            match (type_of(source), source.get("media_type").and_then(Value::as_str)) {
                ("base64", Some("application/pdf")) => {
                    let url = source_url(b, bp)?;
                    let name = b
                        .get("title")
                        .and_then(Value::as_str)
                        .unwrap_or("document.pdf");
                    Ok(json!({"type": "file", "file": {"filename": name, "file_data": url}}))
                }
                ("text", _) => {
                    let text = source.get("data").and_then(Value::as_str).unwrap_or("");
                    Ok(json!({"type": "text", "text": text}))
                }
                _ => Err(TranslateError::unsupported_value(
                    format!("{bp}.source"),
                    format!("`{bp}.source`: only base64 PDF and plain-text documents are supported for this model."),
                )),
            }
        }
        other => Err(TranslateError::unsupported_value(
            format!("{bp}.type"),
            format!("`{bp}`: content blocks of type `{other}` are not supported for this model."),
        )),
    }
}

/// An image block's source → a URL (`data:` for base64).
fn source_url(b: &Value, bp: &str) -> Result<String, TranslateError> {
    let source = b.get("source").unwrap_or(&Value::Null);
    let s = |k: &str| source.get(k).and_then(Value::as_str);
    match (type_of(source), s("media_type"), s("data"), s("url")) {
        ("base64", Some(media), Some(data), _) => Ok(format!("data:{media};base64,{data}")),
        ("url", _, _, Some(url)) => Ok(url.to_owned()),
        (kind, ..) => Err(TranslateError::unsupported_value(
            format!("{bp}.source"),
            format!("`{bp}.source`: sources of type `{kind}` are not supported for this model (use base64 or url)."),
        )),
    }
}

/// A `tool_result` block → a `tool` message; its images go to `images`.
fn tool_message(b: &Value, bp: &str, images: &mut Vec<Value>) -> Result<Value, TranslateError> {
    let id = b
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            TranslateError::invalid(
                format!("{bp}.tool_use_id"),
                format!("`{bp}.tool_use_id` must be a string."),
            )
        })?;
    let content = match b.get("content") {
        None | Some(Value::Null) => json!(""),
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (k, c) in blocks.iter().enumerate() {
                let cp = format!("{bp}.content.{k}");
                match type_of(c) {
                    "text" => texts.push(user_part(c, &cp)?),
                    "image" => images.push(user_part(c, &cp)?),
                    other => {
                        return Err(TranslateError::unsupported_value(
                            format!("{cp}.type"),
                            format!("`{cp}`: tool results of type `{other}` are not supported for this model."),
                        ))
                    }
                }
            }
            match texts.as_slice() {
                [] => json!(""),
                [only] => only.get("text").cloned().unwrap_or(json!("")),
                _ => Value::Array(texts),
            }
        }
        Some(_) => {
            return Err(TranslateError::invalid(
                format!("{bp}.content"),
                format!("`{bp}.content` must be a string or an array of blocks."),
            ))
        }
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

fn convert_assistant(content: &Value, p: &str) -> Result<Value, TranslateError> {
    if let Value::String(s) = content {
        return Ok(json!({"role": "assistant", "content": s}));
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks_of(content, p)?.iter().enumerate() {
        let bp = format!("{p}.content.{j}");
        match type_of(b) {
            "text" => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            "tool_use" => {
                let id = b.get("id").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::invalid(
                        format!("{bp}.id"),
                        format!("`{bp}.id` must be a string."),
                    )
                })?;
                let name = b.get("name").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::invalid(
                        format!("{bp}.name"),
                        format!("`{bp}.name` must be a string."),
                    )
                })?;
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(TranslateError::unsupported_value(
                    format!("{bp}.type"),
                    format!(
                    "`{bp}`: content blocks of type `{other}` are not supported for this model."
                ),
                ))
            }
        }
    }
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    msg.insert("content".into(), content);
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(msg))
}

fn convert_tools(obj: &Map<String, Value>) -> Result<Vec<Value>, TranslateError> {
    let Some(tools) = field(obj, "tools") else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| TranslateError::invalid("tools", "`tools` must be an array.".into()))?;
    let mut out = Vec::new();
    for (k, t) in tools.iter().enumerate() {
        let tp = format!("tools.{k}");
        let kind = type_of(t);
        if !kind.is_empty() && kind != "custom" {
            return Err(TranslateError::unsupported_value(
                format!("{tp}.type"),
                format!(
                    "`{tp}`: Anthropic server tools (`{kind}`) are not available for this model."
                ),
            ));
        }
        let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
            TranslateError::invalid(
                format!("{tp}.name"),
                format!("`{tp}.name` must be a string."),
            )
        })?;
        let mut function = Map::new();
        function.insert("name".into(), json!(name));
        if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
            function.insert("description".into(), d.clone());
        }
        let schema = t
            .get("input_schema")
            .filter(|s| !s.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        function.insert("parameters".into(), schema);
        out.push(json!({"type": "function", "function": Value::Object(function)}));
    }
    Ok(out)
}

/// Anthropic `tool_choice` → OpenAI `tool_choice` and `parallel_tool_calls`.
fn convert_tool_choice(choice: &Value) -> Result<(Value, Option<bool>), TranslateError> {
    let converted = match type_of(choice) {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => {
            let name = choice.get("name").and_then(Value::as_str).ok_or_else(|| {
                TranslateError::invalid(
                    "tool_choice.name",
                    "`tool_choice.name` must be a string.".into(),
                )
            })?;
            json!({"type": "function", "function": {"name": name}})
        }
        other => {
            return Err(TranslateError::invalid(
                "tool_choice.type",
                format!("`tool_choice.type` must be auto, any, none or tool (got `{other}`)."),
            ))
        }
    };
    // Only `auto`, `any` and `tool` carry `disable_parallel_tool_use`; an explicit
    // `false` is kept as `parallel_tool_calls: true`.
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disable| !disable);
    Ok((converted, parallel))
}

/// Translates an OpenAI `chat.completion` (its first choice) into an Anthropic
/// message, for a `/v1/messages` client: `id` `chatcmpl-X` → `msg_X`, `model` as
/// given by the caller, content blocks (text, then one `tool_use` per tool call
/// with `arguments` parsed into `input`), `stop_reason` (`stop` → `end_turn`,
/// `length` → `max_tokens`, `tool_calls` → `tool_use`, `content_filter` →
/// `refusal`; OpenAI never says a stop sequence was hit, so `stop_sequence` stays
/// `null`) and usage (`input_tokens` = prompt − cached − cache writes,
/// `cache_read_input_tokens` = cached).
///
/// A model's `arguments` that are not a JSON object (invalid or truncated JSON)
/// cannot become an `input` object; they are kept whole as
/// `{"_raw_arguments": "<the string>"}` rather than lost. A `refusal` becomes a
/// text block.
pub fn chat_to_message(resp: &Value, model: &str) -> Value {
    let choice = resp
        .get("choices")
        .and_then(|c| c.get(0))
        .unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    for key in ["content", "refusal"] {
        if let Some(text) = message.get(key).and_then(text_of).filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let f = call.get("function").unwrap_or(&Value::Null);
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
            content.push(json!({
                "type": "tool_use",
                "id": call.get("id").and_then(Value::as_str).unwrap_or(""),
                "name": f.get("name").and_then(Value::as_str).unwrap_or(""),
                "input": input_of(args),
            }));
        }
    }
    let stop = stop_reason(
        choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("stop"),
    );
    let usage = resp
        .get("usage")
        .map(Tokens::from_openai)
        .unwrap_or_default();
    json!({
        "id": message_id(resp.get("id").and_then(Value::as_str).unwrap_or("")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage.to_anthropic(),
    })
}

/// Message content as text: a string, or the text of its text/refusal parts.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").or_else(|| p.get("refusal")))
                .filter_map(Value::as_str)
                .collect(),
        ),
        _ => None,
    }
}

/// Tool-call `arguments` → Anthropic `input`: the parsed object, `{}` for an empty
/// string, else the raw string under `_raw_arguments`.
fn input_of(args: &str) -> Value {
    if args.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "_raw_arguments": args }),
    }
}
