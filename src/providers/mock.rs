//! The built-in mock provider: deterministic, offline answers in OpenAI's exact wire
//! format (2-space JSON bodies, `data: ` SSE framing, the usage chunk, `[DONE]`,
//! 4-space error bodies with `retry-after` and rate-limit headers).
//!
//! A request may carry a `"mock"` object to shape the answer or inject a fault:
//! `{"status": 429, "retry_after": 2, "delay_ms": 50, "gap_ms": 10, "chunks": 20,
//!   "drop_after": 3, "omit_done": true, "no_usage": true, "stall_after": 2,
//!   "stall_ms": 60000, "error_after": 3, "only_for_model": "gpt-4o"}`. The same generator backs
//! the `mock` provider kind, the test suite's HTTP mock and the benchmark mock.
//!
//! A chat request with `response_format` `json_schema` is answered, as by
//! OpenAI's structured outputs, with JSON that follows the schema
//! ([`example_of`] it), streamed in pieces of a few characters.

use super::{ByteStream, Endpoint, ProviderError, UpstreamBody, UpstreamResponse};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::time::Duration;

const WORDS: &[&str] = &[
    "Hello",
    "from",
    "the",
    "Livery",
    "mock",
    "provider.",
    "This",
    "answer",
    "is",
    "deterministic,",
    "offline",
    "and",
    "shaped",
    "exactly",
    "like",
    "OpenAI's",
    "wire",
    "format.",
];

/// Test and benchmark knobs read from the request's `"mock"` object.
#[derive(Debug, Default, Clone)]
pub struct MockDirectives {
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    pub delay_ms: u64,
    pub gap_ms: u64,
    pub chunks: Option<usize>,
    /// Drop the connection after this many SSE events (or body bytes for JSON).
    pub drop_after: Option<usize>,
    pub omit_done: bool,
    pub no_usage: bool,
    /// After this many pieces, go silent for `stall_ms` (default 60 s).
    pub stall_after: Option<usize>,
    pub stall_ms: u64,
    /// After this many SSE events, an in-band error event (OpenAI's
    /// `data: {"error": …}`, a server error naming its help site and request
    /// id) ends the stream.
    pub error_after: Option<usize>,
    /// With `status`: one of the providers' recorded error bodies instead of
    /// the generic one: `insufficient_quota` (OpenAI's 429 for an account
    /// out of credit), `content_filter` (Azure's 400 with its
    /// `innererror`).
    pub error: Option<String>,
    /// With `status`: this many more characters in the error's message (an
    /// error body larger than the gateway reads whole).
    pub error_pad: usize,
}

impl MockDirectives {
    pub fn from_body(body: &Value) -> Self {
        let m = body.get("mock");
        // `only_for_model` scopes the directives to one upstream model, so a test
        // can fail the first route of a fallback chain and not the next.
        let scoped = m
            .and_then(|m| m.get("only_for_model"))
            .and_then(Value::as_str);
        if scoped.is_some_and(|only| body.get("model").and_then(Value::as_str) != Some(only)) {
            return Self::default();
        }
        let u = |k: &str| m.and_then(|m| m.get(k)).and_then(Value::as_u64);
        let b = |k: &str| {
            m.and_then(|m| m.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        Self {
            status: u("status").and_then(|s| u16::try_from(s).ok()),
            retry_after: u("retry_after"),
            delay_ms: u("delay_ms").unwrap_or(0),
            gap_ms: u("gap_ms").unwrap_or(0),
            chunks: u("chunks").and_then(|c| usize::try_from(c).ok()),
            drop_after: u("drop_after").and_then(|c| usize::try_from(c).ok()),
            omit_done: b("omit_done"),
            no_usage: b("no_usage"),
            stall_after: u("stall_after").and_then(|c| usize::try_from(c).ok()),
            stall_ms: u("stall_ms").unwrap_or(60_000),
            error_after: u("error_after").and_then(|c| usize::try_from(c).ok()),
            error: m
                .and_then(|m| m.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            error_pad: u("error_pad")
                .and_then(|c| usize::try_from(c).ok())
                .unwrap_or(0),
        }
    }
}

/// A complete mock answer: status, headers and the body as the events/pieces it is
/// sent in, plus the pacing to send them with.
#[derive(Debug)]
pub struct MockReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub pieces: Vec<Bytes>,
    pub directives: MockDirectives,
}

impl MockReply {
    /// Builds the answer for `endpoint` given the parsed request body.
    pub fn for_request(endpoint: Endpoint, body: &Value) -> Self {
        Self::for_request_keyed(endpoint, body, None)
    }

    /// Like [`Self::for_request`]; a 401 echoes `presented_key` masked the way
    /// OpenAI does (`sk-proj-****…wXyZ`), as leak tests need.
    pub fn for_request_keyed(
        endpoint: Endpoint,
        body: &Value,
        presented_key: Option<&str>,
    ) -> Self {
        let d = MockDirectives::from_body(body);
        let mut headers = provider_headers();
        if let Some(status) = d.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            if status.as_u16() >= 400 {
                let model = body
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                if status == StatusCode::TOO_MANY_REQUESTS || status.as_u16() >= 500 {
                    let ra = d.retry_after.unwrap_or(1).to_string();
                    if let Ok(v) = HeaderValue::from_str(&ra) {
                        headers.insert(http::header::RETRY_AFTER, v);
                    }
                }
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                return Self {
                    status,
                    headers,
                    pieces: vec![match d.error.as_deref() {
                        Some("insufficient_quota") => Bytes::from_static(INSUFFICIENT_QUOTA),
                        Some("content_filter") => Bytes::from_static(CONTENT_FILTER),
                        _ => error_body(status, model, presented_key, d.error_pad),
                    }],
                    directives: d,
                };
            }
        }
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false)
            && endpoint != Endpoint::Embeddings;
        let include_usage = !d.no_usage
            && body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let pieces = match (endpoint, stream) {
            (Endpoint::Embeddings, _) => vec![pretty(&embeddings(body, &d))],
            (Endpoint::Responses, false) => vec![pretty(&responses::answer(body, &d))],
            (Endpoint::Responses, true) => {
                let mut pieces = responses::events(body, &d);
                if let Some(n) = d.error_after.filter(|n| *n < pieces.len()) {
                    pieces.truncate(n);
                    pieces.push(responses::error_event(n));
                }
                pieces
            }
            (e, false) => vec![pretty(&completion(e, body, &d))],
            (e, true) => {
                let mut pieces = completion_stream(e, body, &d, include_usage);
                if let Some(n) = d.error_after.filter(|n| *n < pieces.len()) {
                    pieces.truncate(n);
                    pieces.push(Bytes::from_static(IN_BAND_ERROR));
                }
                pieces
            }
        };
        let ct = if stream {
            "text/event-stream; charset=utf-8"
        } else {
            "application/json"
        };
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        Self {
            status: StatusCode::OK,
            headers,
            pieces,
            directives: d,
        }
    }

    /// Turns the reply into an in-process upstream response, honouring the pacing
    /// and fault directives.
    pub async fn into_response(self) -> Result<UpstreamResponse, ProviderError> {
        if self.directives.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.directives.delay_ms)).await;
        }
        let gap = Duration::from_millis(self.directives.gap_ms);
        let drop_after = self.directives.drop_after;
        let stall_after = self.directives.stall_after;
        let stall = Duration::from_millis(self.directives.stall_ms);
        let pieces = self.pieces.into_iter().enumerate();
        let stream = futures_util::stream::unfold(pieces, move |mut it| async move {
            let (i, piece) = it.next()?;
            if drop_after.is_some_and(|n| i >= n) {
                return Some((
                    Err(ProviderError::Body("connection reset by mock".into())),
                    it.fuse_end(),
                ));
            }
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if stall_after == Some(i) {
                tokio::time::sleep(stall).await;
            }
            Some((Ok(piece), it))
        });
        let body: ByteStream = Box::pin(stream);
        Ok(UpstreamResponse {
            status: self.status,
            headers: self.headers,
            body: UpstreamBody::Stream(body),
        })
    }
}

trait FuseEnd: Sized {
    fn fuse_end(self) -> Self;
}
impl<I: Iterator> FuseEnd for std::iter::Enumerate<I> {
    /// Exhausts the iterator so the stream ends after the injected error.
    fn fuse_end(mut self) -> Self {
        for _ in self.by_ref() {}
        self
    }
}

/// The error event OpenAI sends inside a stream that fails after it began.
const IN_BAND_ERROR: &[u8] = b"data: {\"error\":{\"message\":\"The server had an error while processing your request. Sorry about that! You can retry your request, or contact us through our help center at help.openai.com if the error persists. (Please include the request ID req_0123456789abcdef0123456789abcdef in your message.)\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";

/// Headers a real OpenAI answer carries and which the gateway must not pass on.
fn provider_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    let pairs: [(&str, &str); 8] = [
        ("openai-organization", "org-livery-mock"),
        ("openai-project", "proj_livery_mock"),
        ("openai-processing-ms", "7"),
        ("openai-version", "2020-10-01"),
        ("x-request-id", "req_0123456789abcdef0123456789abcdef"),
        ("x-ratelimit-limit-requests", "500"),
        ("x-ratelimit-remaining-requests", "499"),
        ("server", "cloudflare"),
    ];
    for (k, v) in pairs {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn pretty(v: &Value) -> Bytes {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// The tests' way to panic inside a request's handling, once its usage
/// record exists: `"mock": {"panic": true}` to the built-in mock, in builds
/// with the mock server only.
#[cfg(feature = "mock-server")]
#[expect(clippy::panic, reason = "the panic is what is tested")]
pub fn panic_if_asked(body: &Value) {
    if body.pointer("/mock/panic").and_then(Value::as_bool) == Some(true) {
        panic!("the mock provider was asked to panic");
    }
}

/// OpenAI's 429 for an account out of credit (`wire/openai/`).
const INSUFFICIENT_QUOTA: &[u8] = br#"{
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota",
        "param": null,
        "code": "insufficient_quota"
    }
}
"#;

/// Azure OpenAI's 400 for a prompt its content filter stopped (`wire/azure/`).
const CONTENT_FILTER: &[u8] = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":true,"detected":true},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}}}"#;

fn error_body(status: StatusCode, model: &str, presented_key: Option<&str>, pad: usize) -> Bytes {
    let (message, typ, code): (String, &str, Value) = match status.as_u16() {
        400 => ("Invalid request (injected by the mock provider).".into(), "invalid_request_error", Value::Null),
        401 => (
            format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                mask_key(presented_key.unwrap_or("sk-proj-unknown-key-wXyZ"))
            ),
            "invalid_request_error",
            json!("invalid_api_key"),
        ),
        404 => (format!("The model `{model}` does not exist or you do not have access to it."), "invalid_request_error", json!("model_not_found")),
        429 => (
            format!("Rate limit reached for {model} in organization org-livery-mock on tokens per min (TPM): Limit 200000, Used 199112, Requested 1406. Please try again in 155ms."),
            "tokens",
            json!("rate_limit_exceeded"),
        ),
        _ => (
            "The server had an error processing your request. Sorry about that! You can retry your request, or contact us through our help center at help.openai.com if you keep seeing this error. (Please include the request ID req_0123456789abcdef0123456789abcdef in your email.)".into(),
            "server_error",
            Value::Null,
        ),
    };
    let message = message + &" ".repeat(pad);
    let v = json!({"error": {"message": message, "type": typ, "param": null, "code": code}});
    // OpenAI's edge errors are indented with four spaces.
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if serde::Serialize::serialize(&v, &mut ser).is_err() {
        out.clear();
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// OpenAI's masking of a key in its 401 message: the first 8 characters, one `*`
/// per hidden character, the last 4.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 12))
}

/// Rough tokens of a text: about four characters a token, as OpenAI's docs say.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn prompt_tokens(endpoint: Endpoint, body: &Value) -> u64 {
    match endpoint {
        Endpoint::ChatCompletions => {
            let msgs = body.get("messages").and_then(Value::as_array);
            let mut n = 3;
            for m in msgs.into_iter().flatten() {
                n += 4;
                match m.get("content") {
                    Some(Value::String(s)) => n += estimate_tokens(s),
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            if let Some(t) = p.get("text").and_then(Value::as_str) {
                                n += estimate_tokens(t);
                            }
                        }
                    }
                    _ => {}
                }
            }
            n
        }
        _ => match body.get("prompt").or_else(|| body.get("input")) {
            Some(Value::String(s)) => estimate_tokens(s).max(1),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => estimate_tokens(s).max(1),
                    Value::Array(toks) => toks.len() as u64,
                    _ => 1,
                })
                .sum(),
            _ => 1,
        },
    }
}

/// The answer's text as the pieces it is streamed in (a chat answer's words
/// after the first, and every word of a legacy completion, with the space
/// before them), and its finish reason.
fn answer_pieces(
    endpoint: Endpoint,
    body: &Value,
    d: &MockDirectives,
) -> (Vec<Cow<'static, str>>, &'static str) {
    let chat = matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Responses);
    if let Some(text) = structured_answer(body).filter(|_| chat) {
        let chars: Vec<char> = text.chars().collect();
        let pieces = chars
            .chunks(STRUCTURED_PIECE_CHARS)
            .map(|c| Cow::Owned(c.iter().collect()))
            .collect();
        return (pieces, "stop");
    }
    let (words, finish) = answer_words(body, d);
    let pieces = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 && chat {
                Cow::Borrowed(*w)
            } else {
                Cow::Owned(format!(" {w}"))
            }
        })
        .collect();
    (pieces, finish)
}

/// How many characters each streamed piece of a structured answer has.
const STRUCTURED_PIECE_CHARS: usize = 8;

/// The JSON text answering a request for a JSON schema: chat's
/// `response_format` `json_schema`, or the Responses API's `text.format`.
fn structured_answer(body: &Value) -> Option<String> {
    let (format, responses) = match body.get("response_format") {
        Some(f) => (f, false),
        None => (body.pointer("/text/format")?, true),
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    let schema = if responses {
        format.get("schema")?
    } else {
        format.get("json_schema")?.get("schema")?
    };
    Some(example_of(schema).to_string())
}

/// How deep [`example_of`] follows a schema (a recursive `$ref` ends there).
const EXAMPLE_DEPTH: usize = 16;

/// A small JSON value that `schema` accepts: the first `const` or `enum`
/// value, the first branch of `anyOf`/`oneOf`, every `allOf` object merged,
/// local `$ref`s (`#/$defs/…`, `#/definitions/…`) followed, every required
/// property of an object (all of them when none is listed), one item for an
/// array; strings `"example"`, numbers 0, booleans `false`. What a provider's
/// structured output returns, without its content: enough for a client's
/// parser.
pub fn example_of(schema: &Value) -> Value {
    example_at(schema, schema, 0)
}

fn example_at(schema: &Value, root: &Value, depth: usize) -> Value {
    if depth > EXAMPLE_DEPTH {
        return Value::Null;
    }
    let Some(node) = schema.as_object() else {
        return Value::Null;
    };
    if let Some(target) = node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|pointer| root.pointer(pointer))
    {
        return example_at(target, root, depth + 1);
    }
    if let Some(c) = node.get("const") {
        return c.clone();
    }
    if let Some(first) = node
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = node
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return example_at(first, root, depth + 1);
        }
    }
    if let Some(all) = node.get("allOf").and_then(Value::as_array) {
        let mut merged = serde_json::Map::new();
        for part in all {
            match example_at(part, root, depth + 1) {
                Value::Object(o) => merged.extend(o),
                other if all.len() == 1 => return other,
                _ => {}
            }
        }
        return Value::Object(merged);
    }
    let kind = match node.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // `["string", "null"]`: the first type.
        Some(Value::Array(types)) => types.first().and_then(Value::as_str).unwrap_or("null"),
        _ if node.contains_key("properties") => "object",
        _ if node.contains_key("items") => "array",
        _ => "null",
    };
    match kind {
        "object" => {
            let props = node.get("properties").and_then(Value::as_object);
            let required: Option<Vec<&str>> = node
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect());
            let mut out = serde_json::Map::new();
            for (name, sub) in props.into_iter().flatten() {
                if required.as_ref().is_none_or(|r| r.contains(&name.as_str())) {
                    out.insert(name.clone(), example_at(sub, root, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => match node.get("items") {
            Some(items) if items.is_object() => {
                Value::Array(vec![example_at(items, root, depth + 1)])
            }
            _ => json!([]),
        },
        "string" => json!("example"),
        "integer" | "number" => json!(0),
        "boolean" => json!(false),
        _ => Value::Null,
    }
}

fn answer_words(body: &Value, d: &MockDirectives) -> (Vec<&'static str>, &'static str) {
    let want = d.chunks.unwrap_or(12);
    // The Responses API's cap is `max_output_tokens`.
    let cap = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body.get(*k))
        .and_then(Value::as_u64)
        .map(|c| usize::try_from(c).unwrap_or(usize::MAX));
    let (n, finish) = match cap {
        Some(c) if c < want => (c, "length"),
        _ => (want, "stop"),
    };
    ((0..n).map(|i| WORDS[i % WORDS.len()]).collect(), finish)
}

fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn response_id(prefix: &str, body: &Value) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, body.to_string().as_bytes());
    format!("{prefix}-mock{}", hex::encode(&d.as_ref()[..12]))
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

fn completion(endpoint: Endpoint, body: &Value, d: &MockDirectives) -> Value {
    let (pieces, finish) = answer_pieces(endpoint, body, d);
    let prompt = prompt_tokens(endpoint, body);
    let completion = pieces.len() as u64;
    let text = pieces.concat();
    let model = model_of(body);
    let mut v = if endpoint == Endpoint::ChatCompletions {
        json!({
            "id": response_id("chatcmpl", body),
            "object": "chat.completion",
            "created": now(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": finish
            }],
            "usage": usage(prompt, completion),
            "service_tier": "default",
            "system_fingerprint": "fp_livery_mock"
        })
    } else {
        json!({
            "id": response_id("cmpl", body),
            "object": "text_completion",
            "created": now(),
            "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        })
    };
    if d.no_usage {
        if let Some(o) = v.as_object_mut() {
            o.remove("usage");
        }
    }
    v
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn completion_stream(
    endpoint: Endpoint,
    body: &Value,
    d: &MockDirectives,
    include_usage: bool,
) -> Vec<Bytes> {
    let (pieces, finish) = answer_pieces(endpoint, body, d);
    let prompt = prompt_tokens(endpoint, body);
    let id = response_id(
        if endpoint == Endpoint::ChatCompletions {
            "chatcmpl"
        } else {
            "cmpl"
        },
        body,
    );
    let created = now();
    let model = model_of(body);
    let usage_null = if include_usage {
        Some(Value::Null)
    } else {
        None
    };
    let mut out = Vec::with_capacity(pieces.len() + 4);
    let chat = endpoint == Endpoint::ChatCompletions;
    let chunk = |delta: Value, finish: Value| {
        let mut v = if chat {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_livery_mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            })
        } else {
            let text = delta.get("content").cloned().unwrap_or(json!(""));
            json!({
                "id": id, "object": "text_completion", "created": created,
                "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
                "model": model
            })
        };
        if let (Some(u), Some(o)) = (&usage_null, v.as_object_mut()) {
            o.insert("usage".into(), u.clone());
        }
        sse(&v)
    };
    if chat {
        out.push(chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ));
    }
    for piece in &pieces {
        out.push(chunk(json!({ "content": piece }), Value::Null));
    }
    out.push(chunk(json!({}), json!(finish)));
    if include_usage {
        let completion = pieces.len() as u64;
        let u = if chat {
            usage(prompt, completion)
        } else {
            json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
        };
        let v = if chat {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_livery_mock",
                "choices": [], "usage": u
            })
        } else {
            json!({"id": id, "object": "text_completion", "created": created, "choices": [], "model": model, "usage": u})
        };
        out.push(sse(&v));
    }
    if !d.omit_done {
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    out
}

fn embeddings(body: &Value, d: &MockDirectives) -> Value {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        _ => vec![String::new()],
    };
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=3072).contains(n))
        .unwrap_or(1536);
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let vector = embed(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let prompt = prompt_tokens(Endpoint::Embeddings, body);
    let mut v = json!({
        "object": "list",
        "data": data,
        "model": model_of(body),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt}
    });
    if d.no_usage {
        if let Some(o) = v.as_object_mut() {
            o.remove("usage");
        }
    }
    v
}

/// A deterministic unit vector derived from the text.
fn embed(text: &str, dims: usize) -> Vec<f32> {
    let seed = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut state = u64::from_le_bytes(seed.as_ref()[..8].try_into().unwrap_or([7; 8])) | 1;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            // xorshift64*: cheap, deterministic, good enough for a mock.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((r >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    for x in &mut v {
        *x /= norm;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(reply: &MockReply) -> String {
        let body: Value = serde_json::from_slice(&reply.pieces[0]).unwrap();
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A schema as the `openai` SDK sends one for a pydantic model: `$defs`,
    /// a `$ref`, an optional field as `anyOf` with null, an enum.
    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
                "mood": {"enum": ["calm", "busy"]},
                "note": {"type": "string"},
            },
            "required": ["name", "age", "nickname", "pets", "mood"],
            "additionalProperties": false,
            "$defs": {"Pet": {"type": "object", "properties": {"kind": {"const": "cat"}, "indoor": {"type": "boolean"}}}},
        })
    }

    #[test]
    fn an_example_follows_its_schema() {
        assert_eq!(
            example_of(&schema()),
            json!({"name": "example", "age": 0, "nickname": "example", "pets": [{"kind": "cat", "indoor": false}], "mood": "calm"})
        );
        // A schema that refers to itself ends, at a depth.
        let list =
            json!({"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]});
        let mut v = example_of(&list);
        let mut depth = 0;
        while let Some(next) = v.get("next").cloned() {
            v = next;
            depth += 1;
        }
        assert!((1..=EXAMPLE_DEPTH + 1).contains(&depth), "{depth}");
    }

    /// Structured outputs: the chat answer is the example's JSON, whole and
    /// streamed; without a schema, the usual words.
    #[test]
    fn a_json_schema_request_is_answered_with_json() {
        let mut body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": true, "schema": schema()}}});
        let reply = MockReply::for_request(Endpoint::ChatCompletions, &body);
        let text = text_of(&reply);
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            example_of(&schema())
        );

        body["stream"] = json!(true);
        let reply = MockReply::for_request(Endpoint::ChatCompletions, &body);
        let streamed: String = reply
            .pieces
            .iter()
            .filter_map(|p| std::str::from_utf8(p).ok()?.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(streamed, text);
        assert!(reply.pieces.len() > 4, "streamed in pieces");

        for format in [json!({"type": "json_object"}), json!({"type": "text"})] {
            body["response_format"] = format;
            body["stream"] = json!(false);
            let reply = MockReply::for_request(Endpoint::ChatCompletions, &body);
            assert!(text_of(&reply).starts_with("Hello from the Livery mock"));
        }
    }
}

/// The Responses API (`POST /v1/responses`) as OpenAI answers it: a
/// `response` object, or its typed events (`event:` lines, a
/// `sequence_number` each, no `[DONE]`), ending with `response.completed`,
/// or `response.incomplete` when `max_output_tokens` cut the answer.
mod responses {
    use super::*;

    /// Input tokens: `instructions` and the `input` (a string, or items'
    /// text), about four characters a token.
    fn input_tokens(body: &Value) -> u64 {
        let mut text = String::new();
        if let Some(i) = body.get("instructions").and_then(Value::as_str) {
            text.push_str(i);
        }
        match body.get("input") {
            Some(Value::String(s)) => text.push_str(s),
            Some(Value::Array(items)) => {
                for item in items {
                    match item.get("content") {
                        Some(Value::String(s)) => text.push_str(s),
                        Some(Value::Array(parts)) => {
                            for p in parts {
                                if let Some(t) = p.get("text").and_then(Value::as_str) {
                                    text.push_str(t);
                                }
                            }
                        }
                        _ => {}
                    }
                    if let Some(o) = item.get("output").and_then(Value::as_str) {
                        text.push_str(o);
                    }
                }
            }
            _ => {}
        }
        estimate_tokens(&text).max(1)
    }

    /// The answer's text pieces and whether `max_output_tokens` cut it.
    fn pieces(body: &Value, d: &MockDirectives) -> (Vec<Cow<'static, str>>, bool) {
        let (pieces, finish) = answer_pieces(Endpoint::Responses, body, d);
        (pieces, finish == "length")
    }

    /// The `response` object; `text` is `None` while it is in progress.
    fn response(body: &Value, d: &MockDirectives, text: Option<(&str, u64, bool)>) -> Value {
        let id = response_id("resp", body).replace('-', "_");
        let status = match text {
            None => "in_progress",
            Some((_, _, true)) => "incomplete",
            Some(_) => "completed",
        };
        let output = match text {
            None => json!([]),
            Some((t, ..)) => json!([message_item(&id, "completed", Some(t))]),
        };
        let usage = match text {
            Some((_, n, _)) if !d.no_usage => {
                let input = input_tokens(body);
                json!({
                    "input_tokens": input,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": n,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input + n,
                })
            }
            _ => Value::Null,
        };
        let incomplete = match text {
            Some((_, _, true)) => json!({"reason": "max_output_tokens"}),
            _ => Value::Null,
        };
        let field = |k: &str, default: Value| body.get(k).cloned().unwrap_or(default);
        json!({
            "id": id,
            "object": "response",
            "created_at": now(),
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": field("instructions", Value::Null),
            "max_output_tokens": field("max_output_tokens", Value::Null),
            "model": model_of(body),
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": field("previous_response_id", Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": field("store", json!(true)),
            "temperature": 1.0,
            "text": field("text", json!({"format": {"type": "text"}})),
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    }

    fn message_item(response_id: &str, status: &str, text: Option<&str>) -> Value {
        let content = match text {
            Some(t) => {
                json!([{"type": "output_text", "annotations": [], "logprobs": [], "text": t}])
            }
            None => json!([]),
        };
        json!({
            "id": response_id.replacen("resp_", "msg_", 1),
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        })
    }

    pub(super) fn answer(body: &Value, d: &MockDirectives) -> Value {
        let (pieces, capped) = pieces(body, d);
        let text = pieces.concat();
        response(body, d, Some((&text, pieces.len() as u64, capped)))
    }

    fn event(kind: &str, seq: usize, mut data: Value) -> Bytes {
        if let Some(o) = data.as_object_mut() {
            // `type` first, `sequence_number` after the payload, as OpenAI's.
            let mut out = serde_json::Map::new();
            out.insert("type".into(), json!(kind));
            out.extend(std::mem::take(o));
            out.insert("sequence_number".into(), json!(seq));
            data = Value::Object(out);
        }
        Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
    }

    pub(super) fn events(body: &Value, d: &MockDirectives) -> Vec<Bytes> {
        let (pieces, capped) = pieces(body, d);
        let text = pieces.concat();
        let started = response(body, d, None);
        let id = started["id"].as_str().unwrap_or("resp_mock").to_owned();
        let item_id = id.replacen("resp_", "msg_", 1);
        let part =
            |t: &str| json!({"type": "output_text", "annotations": [], "logprobs": [], "text": t});
        let mut out = Vec::with_capacity(pieces.len() + 9);
        let mut push = |kind: &str, data: Value| {
            let seq = out.len();
            out.push(event(kind, seq, data));
        };
        push("response.created", json!({ "response": started }));
        push("response.in_progress", json!({ "response": started }));
        push(
            "response.output_item.added",
            json!({"output_index": 0, "item": message_item(&id, "in_progress", None)}),
        );
        push(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")}),
        );
        for p in &pieces {
            push(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": p, "logprobs": []}),
            );
        }
        push(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        );
        push(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part(&text)}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": 0, "item": message_item(&id, "completed", Some(&text))}),
        );
        if !d.omit_done {
            let done = response(body, d, Some((&text, pieces.len() as u64, capped)));
            let kind = if capped {
                "response.incomplete"
            } else {
                "response.completed"
            };
            push(kind, json!({ "response": done }));
        }
        out
    }

    /// The `error` event OpenAI sends when a stream fails mid-way.
    pub(super) fn error_event(seq: usize) -> Bytes {
        event(
            "error",
            seq,
            json!({
                "code": "server_error",
                "message": "The server had an error while processing your request. Sorry about that! (Please include the request ID req_0123456789abcdef0123456789abcdef in your message.)",
                "param": null,
            }),
        )
    }
}
