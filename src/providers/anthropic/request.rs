//! OpenAI chat-completions request → Anthropic Messages request
//! ([`chat_to_messages`]).

use super::error::TranslateError;
use super::{field, type_of};
use serde_json::{json, Map, Value};

/// A tool result's content when the OpenAI tool message has none.
const EMPTY_TOOL_RESULT: &str = "(no output)";

/// Image media types the Messages API accepts in a base64 source.
const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Translates an OpenAI `POST /v1/chat/completions` body into an Anthropic
/// `POST /v1/messages` body for `upstream_model`.
///
/// - **system / developer** messages, wherever they are, become top-level
///   `system` text blocks in their order (a system message in mid-conversation
///   loses its position; Anthropic has no other place for it).
/// - **user / assistant** turns keep their order; consecutive turns of the same
///   role are merged. Assistant `tool_calls` become `tool_use` blocks after the
///   text (`arguments`, a JSON string, is parsed into the `input` object: invalid
///   JSON or a non-object is a [`TranslateError`]). `refusal`, `audio` and `name`
///   are dropped; a `refusal` content part becomes text.
/// - **tool** messages become `tool_result` blocks in a user turn; consecutive tool
///   messages (parallel calls) share one turn, and tool results come before any
///   other content of that turn; an empty result is sent as `(no output)`, which
///   Anthropic accepts where it refuses empty content. `is_error` is never set:
///   OpenAI has no such field and guessing it from the content would misfire.
/// - **images**: `data:` URLs become base64 sources (jpeg, png, gif, webp; a PDF
///   becomes a `document` block), `http(s)` URLs become URL sources (a `.pdf` URL a
///   URL `document`); `detail` is dropped. `input_audio` and `file` parts, role
///   `function` and the legacy `functions` / `function_call` parameters are
///   refused: Messages cannot carry them, and ignoring them would change the
///   answer silently.
/// - **tools**: only `type: "function"` tools; `parameters` → `input_schema`
///   (an empty object schema when absent, `type: "object"` added when missing);
///   `strict` is dropped (Anthropic's own compatibility layer ignores it too, and
///   older models reject it). `tool_choice`
///   `auto`/`required`/`none`/named → `auto`/`any`/`none`/`tool`;
///   `parallel_tool_calls` → `disable_parallel_tool_use` inside `tool_choice` (with
///   `{"type":"auto"}` when the client sent `parallel_tool_calls: false` and no
///   `tool_choice`). Without tools, `tool_choice` and `parallel_tool_calls` are
///   dropped.
/// - **max_tokens** (required by Anthropic) = `max_completion_tokens` ??
///   `max_tokens` ?? `default_max_tokens`.
/// - **temperature** is clamped to Anthropic's range: values above 1 are sent as 1
///   (as Anthropic's own OpenAI-compatibility layer does) rather than refused, so
///   a client tuned for OpenAI's 0–2 scale keeps working. `top_p` is passed;
///   `top_k` too when a client sends it (a common extension).
/// - **stop** (string or array) → `stop_sequences`; **user** (else
///   `safety_identifier`) → `metadata.user_id`; **stream** is passed (Anthropic
///   always reports usage, so `stream_options` is not needed).
/// - **response_format** `json_schema` → `output_config.format` `json_schema`
///   with the same schema (Anthropic's structured outputs: the answer is a text
///   block holding the JSON, so the answer's translation is unchanged and
///   `client.beta.chat.completions.parse` works). Anthropic constrains every such
///   answer, so `strict` needs no field; a schema Anthropic cannot constrain (it
///   refuses numeric and string bounds, for one) or a model without structured
///   outputs gets Anthropic's 400, translated. A format without a `schema`, or of
///   another type than `text`, `json_object` and `json_schema`, is refused.
///   `json_object` is ignored: Anthropic has no JSON mode without a schema, and
///   OpenAI too requires the prompt to ask for JSON in that mode.
/// - `n` other than 1 is refused. Ignored, as by Anthropic's compatibility layer:
///   `seed`, `logprobs`, `top_logprobs`, `logit_bias`, `presence_penalty`,
///   `frequency_penalty`, `store`, `metadata`, `modalities`, `audio`, `prediction`,
///   `service_tier`, `reasoning_effort`, `stream_options`.
pub fn chat_to_messages(
    req: &Value,
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Value, TranslateError> {
    let obj = req.as_object().ok_or_else(TranslateError::not_an_object)?;
    check_unsupported_parameters(obj)?;

    let messages = field(obj, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            TranslateError::invalid(
                "messages",
                "`messages` must be an array of messages.".into(),
            )
        })?;
    let (system, turns) = convert_messages(messages)?;

    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert(
        "max_tokens".into(),
        json!(max_tokens(obj, default_max_tokens)?),
    );
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert(
        "messages".into(),
        Value::Array(turns.into_iter().map(Turn::into_json).collect()),
    );
    let tools = convert_tools(obj)?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = convert_tool_choice(obj)? {
            out.insert("tool_choice".into(), choice);
        }
    }
    if let Some(format) = convert_response_format(obj)? {
        out.insert("output_config".into(), json!({ "format": format }));
    }
    if let Some(t) = field(obj, "temperature") {
        let n = t.as_f64().ok_or_else(|| number_error("temperature"))?;
        out.insert(
            "temperature".into(),
            if n > 1.0 { json!(1.0) } else { t.clone() },
        );
    }
    if let Some(p) = field(obj, "top_p") {
        p.as_f64().ok_or_else(|| number_error("top_p"))?;
        out.insert("top_p".into(), p.clone());
    }
    if let Some(k) = field(obj, "top_k") {
        k.as_u64().ok_or_else(|| {
            TranslateError::invalid("top_k", "`top_k` must be a positive integer.".into())
        })?;
        out.insert("top_k".into(), k.clone());
    }
    if let Some(stop) = convert_stop(obj)? {
        out.insert("stop_sequences".into(), stop);
    }
    let user = ["user", "safety_identifier"].iter().find_map(|k| {
        field(obj, k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    });
    if let Some(user) = user {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(stream) = field(obj, "stream") {
        let b = stream.as_bool().ok_or_else(|| {
            TranslateError::invalid("stream", "`stream` must be a boolean.".into())
        })?;
        out.insert("stream".into(), json!(b));
    }
    Ok(Value::Object(out))
}

/// `response_format` as Anthropic's `output_config.format`, when it asks for
/// a schema.
fn convert_response_format(obj: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let Some(format) = field(obj, "response_format") else {
        return Ok(None);
    };
    let kind = format.get("type").and_then(Value::as_str);
    match kind {
        Some("text" | "json_object") => Ok(None),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    TranslateError::invalid(
                        "response_format.json_schema.schema",
                        "`response_format.json_schema.schema` must be a JSON schema object for this model: its provider constrains answers to a schema only when it is given one.".into(),
                    )
                })?;
            Ok(Some(json!({"type": "json_schema", "schema": schema})))
        }
        _ => Err(TranslateError::invalid(
            "response_format.type",
            "`response_format.type` must be one of `text`, `json_object` or `json_schema`.".into(),
        )),
    }
}

fn number_error(param: &str) -> TranslateError {
    TranslateError::invalid(param, format!("`{param}` must be a number."))
}

/// `n`, and the legacy function-calling parameters.
fn check_unsupported_parameters(obj: &Map<String, Value>) -> Result<(), TranslateError> {
    if let Some(n) = field(obj, "n") {
        if n.as_u64() != Some(1) {
            return Err(TranslateError::unsupported_value(
                "n",
                format!(
                    "`n` must be 1 for this model (got {n}): it returns one choice per request."
                ),
            ));
        }
    }
    for legacy in ["functions", "function_call"] {
        if field(obj, legacy).is_some() {
            return Err(TranslateError::unsupported_parameter(
                legacy,
                format!("`{legacy}` (deprecated function calling) is not supported for this model; use `tools` and `tool_choice`."),
            ));
        }
    }
    Ok(())
}

fn max_tokens(obj: &Map<String, Value>, default: u64) -> Result<u64, TranslateError> {
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = field(obj, key) {
            return v.as_u64().ok_or_else(|| {
                TranslateError::invalid(key, format!("`{key}` must be a positive integer."))
            });
        }
    }
    Ok(default)
}

fn convert_stop(obj: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let stops: Vec<Value> = match field(obj, "stop") {
        None => return Ok(None),
        Some(Value::String(s)) => vec![json!(s)],
        Some(Value::Array(a)) => {
            for (i, s) in a.iter().enumerate() {
                if !s.is_string() {
                    return Err(TranslateError::invalid(
                        format!("stop[{i}]"),
                        format!("`stop[{i}]` must be a string."),
                    ));
                }
            }
            a.clone()
        }
        Some(_) => {
            return Err(TranslateError::invalid(
                "stop",
                "`stop` must be a string or an array of strings.".into(),
            ))
        }
    };
    Ok((!stops.is_empty()).then_some(Value::Array(stops)))
}

/// One Anthropic message under construction.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

impl Turn {
    /// A turn that is a single plain text block is sent as a string, as clients
    /// of the Messages API usually write it.
    fn into_json(mut self) -> Value {
        let plain_text = self.blocks.len() == 1
            && self.blocks[0].as_object().is_some_and(|b| {
                b.len() == 2 && b.get("type") == Some(&json!("text")) && b.contains_key("text")
            });
        let content = if plain_text {
            self.blocks
                .swap_remove(0)
                .get("text")
                .cloned()
                .unwrap_or(json!(""))
        } else if self.blocks.is_empty() {
            json!("")
        } else {
            Value::Array(self.blocks)
        };
        json!({ "role": self.role, "content": content })
    }
}

/// Appends blocks as a turn of `role`, merged into the previous turn when it has
/// the same role (the Messages API wants alternating roles).
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    match turns.last_mut() {
        Some(last) if last.role == role => last.blocks.extend(blocks),
        _ => turns.push(Turn { role, blocks }),
    }
}

fn convert_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Turn>), TranslateError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let p = format!("messages[{i}]");
        let obj = m.as_object().ok_or_else(|| {
            TranslateError::invalid(p.clone(), format!("`{p}` must be an object."))
        })?;
        let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
        let content = field(obj, "content");
        match role {
            "system" | "developer" => {
                system.extend(text_blocks(content, &p, role)?);
            }
            "user" => {
                let blocks = user_blocks(content, &p)?;
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                let mut blocks = assistant_blocks(content, &p)?;
                if let Some(calls) = field(obj, "tool_calls") {
                    blocks.extend(tool_use_blocks(calls, &p)?);
                }
                // An assistant turn with nothing in it carries no information and
                // would be rejected as empty.
                if !blocks.is_empty() {
                    push_turn(&mut turns, "assistant", blocks);
                }
            }
            "tool" => {
                let block = tool_result_block(obj, content, &p)?;
                push_turn(&mut turns, "user", vec![block]);
            }
            "function" => {
                return Err(TranslateError::unsupported_parameter(
                    format!("{p}.role"),
                    format!("`{p}.role`: role `function` (deprecated function calling) is not supported for this model; use `tools` and role `tool`."),
                ))
            }
            other => {
                return Err(TranslateError::invalid(
                    format!("{p}.role"),
                    format!("`{p}.role` must be one of system, developer, user, assistant, tool (got `{other}`)."),
                ))
            }
        }
    }
    // Tool results first within a user turn (the Messages API requires it when a
    // tool result answers the preceding assistant turn).
    for t in turns.iter_mut().filter(|t| t.role == "user") {
        let (mut results, rest): (Vec<Value>, Vec<Value>) = std::mem::take(&mut t.blocks)
            .into_iter()
            .partition(|b| type_of(b) == "tool_result");
        results.extend(rest);
        t.blocks = results;
    }
    Ok((system, turns))
}

/// System, developer content: text only. Empty texts are skipped (Anthropic
/// rejects empty text blocks).
fn text_blocks(content: Option<&Value>, p: &str, role: &str) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    match content {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => out.push(json!({"type": "text", "text": s})),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{p}.content[{j}]");
                if type_of(part) != "text" {
                    return Err(TranslateError::unsupported_value(
                        format!("{pp}.type"),
                        format!("`{pp}`: {role} messages may only contain text parts."),
                    ));
                }
                if let Some(b) = text_part(part, &pp)? {
                    out.push(b);
                }
            }
        }
        Some(_) => return Err(content_type_error(p)),
    }
    Ok(out)
}

fn content_type_error(p: &str) -> TranslateError {
    TranslateError::invalid(
        format!("{p}.content"),
        format!("`{p}.content` must be a string or an array of content parts."),
    )
}

fn text_part(part: &Value, pp: &str) -> Result<Option<Value>, TranslateError> {
    let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
        TranslateError::invalid(
            format!("{pp}.text"),
            format!("`{pp}.text` must be a string."),
        )
    })?;
    Ok((!text.is_empty()).then(|| json!({"type": "text", "text": text})))
}

/// User (and tool-result) content: text and images.
fn user_blocks(content: Option<&Value>, p: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(if s.is_empty() {
            Vec::new()
        } else {
            vec![json!({"type": "text", "text": s})]
        }),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{p}.content[{j}]");
                match type_of(part) {
                    "text" => out.extend(text_part(part, &pp)?),
                    "image_url" => out.push(image_block(part, &pp)?),
                    other => return Err(unsupported_part(other, &pp)),
                }
            }
            Ok(out)
        }
        Some(_) => Err(content_type_error(p)),
    }
}

fn unsupported_part(kind: &str, pp: &str) -> TranslateError {
    match kind {
        "input_audio" | "file" => TranslateError::unsupported_value(
            format!("{pp}.type"),
            format!("`{pp}`: content parts of type `{kind}` are not supported for this model."),
        ),
        _ => TranslateError::invalid(
            format!("{pp}.type"),
            format!("`{pp}.type`: unknown or misplaced content part type `{kind}`."),
        ),
    }
}

/// Assistant content: text (and refusal parts, as text).
fn assistant_blocks(content: Option<&Value>, p: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{p}.content[{j}]");
                match type_of(part) {
                    "text" => out.extend(text_part(part, &pp)?),
                    "refusal" => {
                        if let Some(r) = part.get("refusal").and_then(Value::as_str) {
                            if !r.is_empty() {
                                out.push(json!({"type": "text", "text": r}));
                            }
                        }
                    }
                    other => return Err(unsupported_part(other, &pp)),
                }
            }
            Ok(out)
        }
        other => user_blocks(other, p),
    }
}

fn tool_use_blocks(calls: &Value, p: &str) -> Result<Vec<Value>, TranslateError> {
    let calls = calls.as_array().ok_or_else(|| {
        TranslateError::invalid(
            format!("{p}.tool_calls"),
            format!("`{p}.tool_calls` must be an array."),
        )
    })?;
    let mut out = Vec::new();
    for (k, call) in calls.iter().enumerate() {
        let cp = format!("{p}.tool_calls[{k}]");
        let kind = type_of(call);
        if !kind.is_empty() && kind != "function" {
            return Err(TranslateError::unsupported_value(
                format!("{cp}.type"),
                format!("`{cp}.type`: only function tool calls are supported for this model (got `{kind}`)."),
            ));
        }
        let id = call.get("id").and_then(Value::as_str).ok_or_else(|| {
            TranslateError::invalid(format!("{cp}.id"), format!("`{cp}.id` must be a string."))
        })?;
        let function = call.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TranslateError::invalid(
                    format!("{cp}.function.name"),
                    format!("`{cp}.function.name` must be a string."),
                )
            })?;
        let input = parse_arguments(
            function.and_then(|f| f.get("arguments")),
            &format!("{cp}.function.arguments"),
        )?;
        out.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(out)
}

/// A tool call's `arguments` (a JSON string) → the `input` object. Absent or
/// blank means no arguments.
fn parse_arguments(args: Option<&Value>, ap: &str) -> Result<Value, TranslateError> {
    let parsed = match args {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(json!({})),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
            TranslateError::invalid(
                ap.to_owned(),
                format!(
                    "`{ap}` is not valid JSON ({e}); the tool call cannot be sent to this model."
                ),
            )
        })?,
        // Some clients send the object itself.
        Some(v) => v.clone(),
    };
    if parsed.is_object() {
        Ok(parsed)
    } else {
        Err(TranslateError::invalid(
            ap.to_owned(),
            format!("`{ap}` must encode a JSON object."),
        ))
    }
}

fn tool_result_block(
    obj: &Map<String, Value>,
    content: Option<&Value>,
    p: &str,
) -> Result<Value, TranslateError> {
    let id = obj
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            TranslateError::invalid(
                format!("{p}.tool_call_id"),
                format!("`{p}.tool_call_id` must be a string."),
            )
        })?;
    let content = match content {
        None => Value::Null,
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(_)) => Value::Array(user_blocks(content, p)?),
        Some(_) => return Err(content_type_error(p)),
    };
    // A tool that printed nothing is an ordinary OpenAI tool message, but
    // Anthropic refuses a tool result with empty content (as it refuses empty
    // text), failing the whole conversation from then on; say so in words.
    let empty = match &content {
        Value::String(s) => s.is_empty(),
        Value::Array(blocks) => blocks.is_empty(),
        _ => true,
    };
    let content = if empty {
        json!(EMPTY_TOOL_RESULT)
    } else {
        content
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

/// An `image_url` part → an `image` (or, for PDFs, a `document`) block.
fn image_block(part: &Value, pp: &str) -> Result<Value, TranslateError> {
    let up = format!("{pp}.image_url.url");
    let url = match part.get("image_url") {
        Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
    .ok_or_else(|| TranslateError::invalid(up.clone(), format!("`{up}` must be a string.")))?;

    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            TranslateError::invalid(up.clone(), format!("`{up}` is not a valid data URL."))
        })?;
        let mut meta = meta.split(';');
        let media_type = meta.next().unwrap_or("").trim().to_ascii_lowercase();
        if !meta.any(|m| m.trim().eq_ignore_ascii_case("base64")) {
            return Err(TranslateError::invalid(
                up.clone(),
                format!("`{up}`: only base64 data URLs are supported."),
            ));
        }
        let media_type = if media_type == "image/jpg" {
            "image/jpeg".to_owned()
        } else {
            media_type
        };
        let source = json!({"type": "base64", "media_type": media_type, "data": data});
        if IMAGE_TYPES.contains(&media_type.as_str()) {
            Ok(json!({"type": "image", "source": source}))
        } else if media_type == "application/pdf" {
            Ok(json!({"type": "document", "source": source}))
        } else {
            Err(TranslateError::unsupported_value(
                up.clone(),
                format!("`{up}`: media type `{media_type}` is not supported for this model (use image/jpeg, image/png, image/gif, image/webp or application/pdf)."),
            ))
        }
    } else if is_http_url(url) {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let kind = if path.to_ascii_lowercase().ends_with(".pdf") {
            "document"
        } else {
            "image"
        };
        Ok(json!({"type": kind, "source": {"type": "url", "url": url}}))
    } else {
        Err(TranslateError::invalid(
            up.clone(),
            format!("`{up}` must be an https URL or a base64 data URL."),
        ))
    }
}

fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
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
        let tp = format!("tools[{k}]");
        let kind = type_of(t);
        if kind != "function" {
            return Err(TranslateError::unsupported_value(
                format!("{tp}.type"),
                format!(
                    "`{tp}.type`: only function tools are supported for this model (got `{kind}`)."
                ),
            ));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                TranslateError::invalid(
                    format!("{tp}.function"),
                    format!("`{tp}.function` must be an object."),
                )
            })?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            TranslateError::invalid(
                format!("{tp}.function.name"),
                format!("`{tp}.function.name` must be a string."),
            )
        })?;
        let mut tool = Map::new();
        tool.insert("name".into(), json!(name));
        if let Some(d) = field(f, "description") {
            tool.insert("description".into(), d.clone());
        }
        let mut schema = field(f, "parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        // OpenAI takes a schema without a top-level `type` (`{}`, or just
        // `properties`, as many MCP and agent tools send it); Anthropic refuses
        // the whole request ("input_schema.type: Field required"). Arguments
        // are always an object, so `object` is what such a schema means.
        if let Some(o) = schema.as_object_mut() {
            o.entry("type").or_insert_with(|| json!("object"));
        }
        tool.insert("input_schema".into(), schema);
        out.push(Value::Object(tool));
    }
    Ok(out)
}

/// `tool_choice` and `parallel_tool_calls` → Anthropic's `tool_choice` object.
fn convert_tool_choice(obj: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let parallel = match field(obj, "parallel_tool_calls") {
        None => None,
        Some(v) => Some(v.as_bool().ok_or_else(|| {
            TranslateError::invalid(
                "parallel_tool_calls",
                "`parallel_tool_calls` must be a boolean.".into(),
            )
        })?),
    };
    let mut choice = match field(obj, "tool_choice") {
        None => match parallel {
            Some(false) => json!({"type": "auto"}),
            _ => return Ok(None),
        },
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            // `none` takes no `disable_parallel_tool_use`.
            "none" => return Ok(Some(json!({"type": "none"}))),
            other => {
                return Err(TranslateError::invalid(
                    "tool_choice",
                    format!(
                        "`tool_choice` must be auto, required, none or a function (got `{other}`)."
                    ),
                ))
            }
        },
        Some(v @ Value::Object(_)) if type_of(v) == "function" => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::invalid(
                        "tool_choice.function.name",
                        "`tool_choice.function.name` must be a string.".into(),
                    )
                })?;
            json!({"type": "tool", "name": name})
        }
        Some(v) => {
            return Err(TranslateError::unsupported_value(
                "tool_choice",
                format!(
                    "`tool_choice` of type `{}` is not supported for this model.",
                    type_of(v)
                ),
            ))
        }
    };
    if let (Some(parallel), Some(o)) = (parallel, choice.as_object_mut()) {
        o.insert("disable_parallel_tool_use".into(), json!(!parallel));
    }
    Ok(Some(choice))
}
