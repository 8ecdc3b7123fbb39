//! A mock Anthropic Messages API over real HTTP for the integration tests. It
//! checks what the real API requires (`POST /v1/messages`, `x-api-key` equal to
//! the key it was started with: 401 `authentication_error`; `anthropic-version`:
//! 400 `invalid_request_error`; `model` and `max_tokens` in the body), always in
//! Anthropic's error shape, and answers by replaying the wire captures in
//! `tests/fixtures/wire/anthropic/` byte for byte: the text answer, or the
//! `tool_use` one when the request has tools, as JSON or as an event stream.
//! `POST /v1/messages/count_tokens` is checked the same way (no `max_tokens`
//! there: Anthropic refuses any field its count does not take) and answers
//! Anthropic's `{"input_tokens":N}`, N being [`count_of`] the body.
//! A top-level field the Messages API does not take is refused as Anthropic
//! refuses it (`{field}: Extra inputs are not permitted`), so an OpenAI-only
//! parameter leaking through a translation fails the request. A structured
//! output (`output_config.format`, or the beta's `output_format`, of type
//! `json_schema`) is answered with JSON that follows its schema
//! (`livery::providers::mock::example_of` it) in the captures' text block.
//!
//! Faults are queued with [`AnthropicMock::push_fault`]; each request takes the
//! next one, if any (the gateway's translated body cannot carry directives).
//! [`AnthropicMock::set_cache_writes`] makes every later answer report other
//! cache writes than the captures' (with any fault).
//! Every request is recorded, headers and body, refused ones included.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub const MESSAGE_JSON: &str = include_str!("../fixtures/wire/anthropic/messages_response.json");
pub const TOOL_USE_JSON: &str =
    include_str!("../fixtures/wire/anthropic/messages_response_tool_use.json");
pub const STREAM_SSE: &str = include_str!("../fixtures/wire/anthropic/messages_stream.sse");
pub const TOOL_USE_SSE: &str =
    include_str!("../fixtures/wire/anthropic/messages_stream_tool_use.sse");
pub const STREAM_ERROR_SSE: &str = include_str!("../fixtures/wire/anthropic/stream_error.sse");
const ERROR_429: &str = include_str!("../fixtures/wire/anthropic/error_429.json");
const ERROR_529: &str = include_str!("../fixtures/wire/anthropic/error_overloaded.json");
const ERROR_401: &str = include_str!("../fixtures/wire/anthropic/error_401.json");

/// A fault for one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer `status` with Anthropic's error body for it (429 and 529 from the
    /// captures), and `retry-after` if given.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Stream: send this many events, then reset the connection.
    DropAfter(usize),
    /// Stream: send this many events, then wait 10 s before each of the rest
    /// (a client can leave mid-stream while the upstream is still open).
    SlowAfter(usize),
    /// Stream: replay `stream_error.sse` (two text deltas, then `event: error`).
    StreamError,
    /// Stream: `stream_error.sse` without its text deltas (`message_start`,
    /// the empty text block, `ping`, then `event: error`, overloaded).
    ErrorBeforeContent,
    /// Stream: `stream_error.sse` whose error names the account and carries a
    /// request id, as Anthropic's error bodies do.
    StreamErrorNamingTheAccount,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
pub struct State {
    key: String,
    pub requests: Mutex<Vec<Recorded>>,
    faults: Mutex<VecDeque<Fault>>,
    /// `(five_minutes, one_hour)` cache writes to report instead of the
    /// captures'.
    cache_writes: Mutex<Option<(u64, u64)>>,
}

pub struct AnthropicMock {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AnthropicMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

impl AnthropicMock {
    /// Starts the mock; requests must carry `x-api-key: {key}`.
    pub async fn start(key: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            key: key.to_owned(),
            ..State::default()
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(serve(st, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`, the provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, answers report `five_minutes + one_hour` tokens written
    /// to the cache, split as given (`usage.cache_creation`): the JSON
    /// answer and the stream's `message_start`; the stream's `message_delta`
    /// repeats the total without the split, as Anthropic's does.
    pub fn set_cache_writes(&self, five_minutes: u64, one_hour: u64) {
        *self.state.cache_writes.lock().unwrap() = Some((five_minutes, one_hour));
    }

    pub fn push_fault(&self, fault: Fault) {
        self.state.faults.lock().unwrap().push_back(fault);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last_request(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the Anthropic mock received no request")
    }
}

/// Anthropic's error response: compact JSON, `{"type":"error","error":{...}}`.
fn error(status: u16, typ: &str, message: &str) -> Response<Body> {
    let body = json!({"type": "error", "error": {"type": typ, "message": message}, "request_id": "req_011CMockMockMockMockMock01"});
    respond(status, "application/json", body.to_string(), None)
}

fn respond(
    status: u16,
    content_type: &'static str,
    body: String,
    retry_after: Option<u64>,
) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert(
        "request-id",
        HeaderValue::from_static("req_011CMockMockMockMockMock01"),
    );
    if let Some(ra) = retry_after {
        h.insert("retry-after", HeaderValue::from(ra));
    }
    if status == 529 {
        h.insert("x-should-retry", HeaderValue::from_static("true"));
    }
    r
}

async fn serve(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let raw = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: json.clone(),
    });
    let count = parts.uri.path() == "/v1/messages/count_tokens";
    if !(count || parts.uri.path() == "/v1/messages") || parts.method != http::Method::POST {
        return error(404, "not_found_error", "Not found");
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    match header("x-api-key") {
        None => return error(401, "authentication_error", "x-api-key header is required"),
        Some(k) if k != state.key => {
            return respond(401, "application/json", ERROR_401.to_owned(), None)
        }
        Some(_) => {}
    }
    if header("anthropic-version").is_none() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    if !json.is_object() {
        return error(
            400,
            "invalid_request_error",
            "There was an error parsing the body of your request",
        );
    }
    if !json["model"].is_string() {
        return error(400, "invalid_request_error", "model: Field required");
    }
    if count {
        if let Some(extra) = json
            .as_object()
            .and_then(|o| o.keys().find(|k| !COUNT_FIELDS.contains(&k.as_str())))
        {
            return error(
                400,
                "invalid_request_error",
                &format!("{extra}: Extra inputs are not permitted"),
            );
        }
    } else if !json["max_tokens"].is_u64() {
        return error(400, "invalid_request_error", "max_tokens: Field required");
    } else if let Some(extra) = json
        .as_object()
        .and_then(|o| o.keys().find(|k| !MESSAGES_FIELDS.contains(&k.as_str())))
    {
        return error(
            400,
            "invalid_request_error",
            &format!("{extra}: Extra inputs are not permitted"),
        );
    }
    let structured = match structured_output(&json) {
        Ok(s) => s,
        Err(message) => return error(400, "invalid_request_error", &message),
    };
    if json.get("messages").and_then(Value::as_array).is_none() {
        return error(400, "invalid_request_error", "messages: Field required");
    }
    let fault = state.faults.lock().unwrap().pop_front();
    if let Some(Fault::Status {
        status,
        retry_after,
    }) = fault
    {
        let body = match status {
            429 => ERROR_429.to_owned(),
            529 => ERROR_529.to_owned(),
            _ => json!({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}).to_string(),
        };
        return respond(status, "application/json", body, retry_after);
    }
    if count {
        let body = json!({"input_tokens": count_of(&json)}).to_string();
        return respond(200, "application/json", body, None);
    }
    let tools = json
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let stream = json["stream"].as_bool().unwrap_or(false);
    let cache_writes = *state.cache_writes.lock().unwrap();
    if !stream {
        let body = match &structured {
            Some(text) => answering(MESSAGE_JSON, CAPTURED_TEXT, text),
            None if tools => TOOL_USE_JSON.to_owned(),
            None => MESSAGE_JSON.to_owned(),
        };
        let body = with_cache_writes(&body, cache_writes);
        return respond(200, "application/json", body, None);
    }
    let sse = match fault {
        Some(Fault::StreamError) => STREAM_ERROR_SSE,
        _ if tools => TOOL_USE_SSE,
        _ => STREAM_SSE,
    };
    let drop_after = match fault {
        Some(Fault::DropAfter(n)) => Some(n),
        _ => None,
    };
    let slow_after = match fault {
        Some(Fault::SlowAfter(n)) => Some(n),
        _ => None,
    };
    let sse = match &structured {
        Some(text) if sse == STREAM_SSE => answering(sse, CAPTURED_DELTA, text),
        _ => sse.to_owned(),
    };
    let mut events = sse_events(&with_cache_writes(&sse, cache_writes));
    if matches!(fault, Some(Fault::ErrorBeforeContent)) {
        events = sse_events(STREAM_ERROR_SSE);
        events.retain(|e| !e.starts_with("event: content_block_delta"));
    }
    if matches!(fault, Some(Fault::StreamErrorNamingTheAccount)) {
        events = sse_events(STREAM_ERROR_SSE);
        if let Some(last) = events.last_mut() {
            *last = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded (org: a22cf6e6-a940-4fff-8c4c-1580816ac7be)\"},\"request_id\":\"req_011CSHoEeqs5C35K2UUqR7Fy\"}\n\n".to_owned();
        }
    }
    let pieces = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, ev)| async move {
            if drop_after.is_some_and(|n| i >= n) {
                // Let hyper flush what it holds first, so the drop is mid-body.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock drop",
                ));
            }
            if slow_after.is_some_and(|n| i >= n) {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(Frame::data(Bytes::from(ev)))
        },
    );
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(pieces)));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

/// The members of a count_tokens body (Anthropic's `MessageCountTokensParams`,
/// its beta-only ones left out).
const COUNT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
];

/// The top-level members of a Messages body (Anthropic's
/// `MessageCreateParams`, with the beta's `output_format`).
const MESSAGES_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
];

/// The text of the captured answer, and of the captured stream's one delta,
/// which a structured output replaces.
const CAPTURED_TEXT: &str =
    "It's 18 °C with light rain in Paris right now, so pack an umbrella and a light jacket.";
const CAPTURED_DELTA: &str = "2";

/// The JSON text a structured output answers with, if `body` asks for one; a
/// format Anthropic would refuse, as its message.
fn structured_output(body: &Value) -> Result<Option<String>, String> {
    let (format, param) = match (
        body.pointer("/output_config/format"),
        body.get("output_format"),
    ) {
        (Some(f), _) => (f, "output_config.format"),
        (None, Some(f)) => (f, "output_format"),
        (None, None) => return Ok(None),
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err(format!("{param}.type: Input should be 'json_schema'"));
    }
    let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
        return Err(format!("{param}.schema: Field required"));
    };
    Ok(Some(
        livery::providers::mock::example_of(schema).to_string(),
    ))
}

/// `capture` with its answer text `captured` replaced by `text` (a JSON
/// string inside the capture's JSON).
fn answering(capture: &str, captured: &str, text: &str) -> String {
    let from = format!("\"text\":{}", serde_json::to_string(captured).unwrap());
    assert!(capture.contains(&from), "no {from} in the capture");
    capture.replacen(
        &from,
        &format!("\"text\":{}", serde_json::to_string(text).unwrap()),
        1,
    )
}

/// What the mock's count_tokens answers for `body`: not a tokenizer's count,
/// but one that changes with every part of the prompt (and so shows that the
/// gateway forwarded them).
pub fn count_of(body: &Value) -> u64 {
    let text: usize = ["system", "messages", "tools"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(|v| v.to_string().len())
        .sum();
    (text / 4 + 3) as u64
}

/// `body` (a capture) reporting `writes` as its cache writes, if given: the
/// total in every `cache_creation_input_tokens`, the split in every
/// `cache_creation` object (added beside a total that has none).
fn with_cache_writes(body: &str, writes: Option<(u64, u64)>) -> String {
    let Some((five_minutes, one_hour)) = writes else {
        return body.to_owned();
    };
    let total = format!(
        "\"cache_creation_input_tokens\":{}",
        five_minutes + one_hour
    );
    let split = format!(
        "\"cache_creation\":{{\"ephemeral_5m_input_tokens\":{five_minutes},\"ephemeral_1h_input_tokens\":{one_hour}}}"
    );
    let mut out = String::new();
    for line in body.split_inclusive('\n') {
        let mut line = line.to_owned();
        if let Some(at) = line.find("\"cache_creation_input_tokens\":") {
            let end = at + line[at..].find([',', '}']).unwrap();
            line.replace_range(at..end, &total);
            // `message_delta` carries the total only.
            if !line.contains("\"message_delta\"") {
                if let Some(s) = line.find("\"cache_creation\":{") {
                    let e = s + line[s..].find('}').unwrap() + 1;
                    line.replace_range(s..e, &split);
                } else {
                    line.insert_str(at + total.len(), &format!(",{split}"));
                }
            }
        }
        out.push_str(&line);
    }
    assert!(out.contains(&total), "no usage to rewrite in {body}");
    out
}

/// The events of an SSE capture, each with its `\n\n`.
pub fn sse_events(sse: &str) -> Vec<String> {
    sse.split_inclusive("\n\n").map(str::to_owned).collect()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}
