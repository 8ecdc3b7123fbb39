//! Issue 5, Anthropic: OpenAI clients on Anthropic routes (translated both ways,
//! streamed and not, system prompts and tools, usage with cache tokens), fallback
//! from Anthropic's 529 and 429, mid-stream failures, and the `/v1/messages`
//! front door on OpenAI routes (translated) and Anthropic routes (native), with
//! errors in Anthropic's shape. The Anthropic upstream is
//! `support::anthropic_mock`, which checks the headers the real API requires.

use crate::support::anthropic_mock::{self, AnthropicMock, Fault};
use crate::support::*;
use serde_json::{json, Value};

/// A gateway and its two mocks; a test that destructures it binds every
/// field, since a mock dropped stops serving.
struct Setup {
    gw: TestGateway,
    openai: MockProvider,
    claude: AnthropicMock,
}

/// The standard gateway plus provider `claude` (kind `anthropic`, the mock) and
/// models `claude-sonnet` (claude only) and `smart` (claude, then the OpenAI
/// mock), both in plan `pro`. `key_line` is the provider's `api_key_env` line, or empty.
pub(crate) fn anthropic_config(openai_base: &str, claude_base: &str, key_line: &str) -> String {
    let extra = format!(
        r#"
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{claude_base}"
{key_line}
connect_timeout_ms = 1000
first_byte_timeout_ms = 1500
stream_idle_timeout_ms = 3000
default_max_tokens = 1000

[[models]]
name = "claude-sonnet"
provider = "claude"
upstream_model = "claude-sonnet-4-5"

[[models]]
name = "smart"
routes = [{{ provider = "claude", model = "claude-sonnet-4-5" }}, {{ provider = "upstream", model = "gpt-4o-mini-2024-07-18", priority = 1 }}]
"#
    );
    let pro = r#"models = ["gpt-4o-mini", "embed", "premium", "demo"]"#;
    let config = standard_config(openai_base, &extra);
    assert!(config.contains(pro), "standard config changed");
    config.replace(
        pro,
        r#"models = ["gpt-4o-mini", "embed", "premium", "demo", "claude-sonnet", "smart"]"#,
    )
}

async fn setup() -> Setup {
    setup_with("").await
}

/// `routing` is appended to the standard `[routing]` table.
async fn setup_with(routing: &str) -> Setup {
    setup_edited(PROVIDER_KEY, |c| {
        replaced(&c, "[routing]\n", &format!("[routing]\n{routing}"))
    })
    .await
}

/// The gateway of [`setup`], its Anthropic mock taking `claude_key`, its
/// configuration passed through `edit` first.
async fn setup_edited(claude_key: &str, edit: impl FnOnce(String) -> String) -> Setup {
    let openai = MockProvider::start().await;
    let claude = AnthropicMock::start(claude_key).await;
    let key_line = format!("api_key_env = \"{PROVIDER_KEY_ENV}\"");
    let config = edit(anthropic_config(
        &openai.base_url(),
        &claude.base_url(),
        &key_line,
    ));
    let gw = TestGateway::start(&config).await;
    Setup { gw, openai, claude }
}

/// `config` with its first `from` replaced by `to`; `from` must be there.
fn replaced(config: &str, from: &str, to: &str) -> String {
    assert!(
        config.contains(from),
        "standard config changed: no {from:?}"
    );
    config.replacen(from, to, 1)
}

/// The standard configuration takes bodies of 64 KiB; some tests need 4 MiB.
fn with_4_mib_bodies(config: String) -> String {
    replaced(
        &config,
        "max_body_bytes = 65536",
        "max_body_bytes = 4194304",
    )
}

/// Claude Sonnet's list prices per million tokens: input 3, output 15, cache
/// reads 0.30; cache writes left to their defaults (1.25 × and 2 × input).
const SONNET_PRICES: &str = r#"
[prices]
currency = "USD"

[[prices.models]]
model = "claude-sonnet-4-5"
provider = "claude"
input_per_million = "3"
output_per_million = "15"
cached_input_per_million = "0.30"
"#;

/// [`setup`] with [`SONNET_PRICES`].
async fn setup_priced() -> Setup {
    setup_edited(PROVIDER_KEY, |config| {
        assert!(!config.contains("[prices]"), "standard config changed");
        format!("{config}\n{SONNET_PRICES}")
    })
    .await
}

async fn chat(gw: &TestGateway, body: &Value) -> reqwest::Response {
    post(
        gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        body,
    )
    .await
}

/// POSTs to `/v1/messages` the way Anthropic's SDK does: `x-api-key` and
/// `anthropic-version`.
async fn messages(gw: &TestGateway, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut rb = client()
        .post(gw.url("/v1/messages"))
        .header("host", ACME_HOST)
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(k) = key {
        rb = rb.header("x-api-key", k);
    }
    rb.send().await.unwrap()
}

fn tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}])
}

/// The Anthropic error shape; returns `error.type`.
async fn anthropic_error(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v.get("request_id").is_none(), "{v}");
    v["error"]["type"].as_str().unwrap().to_owned()
}

fn outcomes(record: &Value) -> Vec<(String, String, Option<u64>)> {
    record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap().to_owned(),
                a["outcome"].as_str().unwrap().to_owned(),
                a["status"].as_u64(),
            )
        })
        .collect()
}

#[tokio::test]
async fn chat_with_system_and_tools_is_translated_to_messages_and_back() {
    let s = setup().await;
    let body = json!({
        "model": "claude-sonnet",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        "tools": tools(),
        "tool_choice": "auto",
        "max_completion_tokens": 300,
        "temperature": 1.5,
        "stop": ["END"],
    });
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["id"], "chatcmpl-019Q1hrJbZG26Fb9BQhrkHEr");
    assert_eq!(v["model"], "claude-sonnet-4-5-20250929");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(
        choice["message"]["content"],
        "I'll check the current weather in Paris for you."
    );
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01NRLabsLyVHZPKxbKvkfSMn");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris", "unit": "celsius"}));
    assert_eq!(v["usage"]["prompt_tokens"], 377);
    assert_eq!(v["usage"]["completion_tokens"], 65);
    assert_eq!(v["usage"]["total_tokens"], 442);

    // What went upstream: Anthropic's headers and the translated body.
    let up = s.claude.last_request();
    assert_eq!(
        (up.method.as_str(), up.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(up.headers["x-api-key"], PROVIDER_KEY);
    assert_eq!(up.headers["anthropic-version"], "2023-06-01");
    assert_eq!(up.headers["content-type"], "application/json");
    assert!(!up.headers.contains_key("authorization"));
    let b = &up.body;
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert_eq!(b["system"], json!([{"type": "text", "text": "Be brief."}]));
    let msgs = b["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(b["max_tokens"], 300);
    assert_eq!(b["temperature"], 1.0);
    assert_eq!(b["stop_sequences"], json!(["END"]));
    assert_eq!(
        b["tools"],
        json!([{
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }])
    );
    assert_eq!(b["tool_choice"], json!({"type": "auto"}));
    assert!(b.get("stream_options").is_none() && b.get("tool_calls").is_none());

    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["provider"], "claude");
    assert_eq!(r["served_model"], "claude-sonnet-4-5-20250929");
    assert_eq!(r["requested_model"], "claude-sonnet");
    assert_eq!(r["endpoint"], "chat.completions");
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["prompt_tokens"], 377);
    assert_eq!(r["completion_tokens"], 65);
    assert_eq!(r["total_tokens"], 442);
    assert_eq!(r["estimated"], false);
    assert_eq!(outcomes(&r), vec![("claude".into(), "ok".into(), None)]);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn default_max_tokens_and_cache_tokens_are_exact() {
    let s = setup().await;
    let resp = chat(&s.gw, &chat_body("claude-sonnet")).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "It's 18 °C with light rain in Paris right now, so pack an umbrella and a light jacket."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // input 187 + cache writes 418 + cache reads 1111.
    assert_eq!(v["usage"]["prompt_tokens"], 1716);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1111);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cache_write_tokens"],
        418
    );
    assert_eq!(v["usage"]["completion_tokens"], 33);
    assert_eq!(s.claude.last_request().body["max_tokens"], 1000);
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["prompt_tokens"], 1716);
    assert_eq!(r["cached_tokens"], 1111);
    assert_eq!(r["completion_tokens"], 33);
    assert_eq!(r["total_tokens"], 1749);
    assert_eq!(r["key_owner"], "platform");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn streamed_chat_becomes_openai_chunks_with_usage_and_done() {
    let s = setup().await;
    let mut body = chat_body("claude-sonnet");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = chat(&s.gw, &body).await;
    let (id, text) = streamed(resp).await;
    assert!(!text.contains("event:"), "{text}");
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    // The dated model of message_start, as the non-streamed answer names it.
    assert!(
        chunks
            .iter()
            .all(|c| c["model"] == "claude-sonnet-4-5-20250929"),
        "{text}"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "2");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 20);
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    let up = s.claude.last_request();
    assert_eq!(up.body["stream"], true);
    assert!(up.body.get("stream_options").is_none());
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["stream"], true);
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["served_model"], "claude-sonnet-4-5-20250929");
    assert_eq!(r["prompt_tokens"], 20);
    assert_eq!(r["completion_tokens"], 5);
    assert_eq!(r["estimated"], false);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn streamed_tool_calls_without_include_usage() {
    let s = setup().await;
    let mut body = chat_body("claude-sonnet");
    body["stream"] = json!(true);
    body["tools"] = tools();
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // The client did not ask for usage: no usage chunk, but the record has it.
    assert!(chunks.iter().all(|c| c["usage"].is_null()), "{text}");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .map(|_| &c["choices"][0]["delta"]["tool_calls"][0])
        })
        .collect();
    assert_eq!(calls[0]["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"city": "Paris", "unit": "celsius"}"#);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["prompt_tokens"], 412);
    assert_eq!(r["completion_tokens"], 71);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn overloaded_anthropic_falls_back_to_the_next_route() {
    let s = setup().await;
    // Plain request.
    s.claude.push_fault(Fault::Status {
        status: 529,
        retry_after: None,
    });
    let resp = chat(&s.gw, &chat_body("smart")).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["provider"], "upstream");
    assert_eq!(
        outcomes(&r),
        vec![
            ("claude".into(), "overloaded".into(), Some(529)),
            ("upstream".into(), "ok".into(), None)
        ]
    );

    // A stream, after a 429 with retry-after.
    s.claude.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(1),
    });
    let mut body = chat_body("smart");
    body["stream"] = json!(true);
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("error"), "{text}");
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(
        outcomes(&r),
        vec![
            ("claude".into(), "rate_limited".into(), Some(429)),
            ("upstream".into(), "ok".into(), None)
        ]
    );
    assert_eq!(s.openai.requests().len(), 2);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_breaks_before_content_falls_back() {
    let s = setup_with("stream_commit = \"first_content\"\n").await;
    // message_start and the empty text block's start are held back.
    s.claude.push_fault(Fault::DropAfter(2));
    let mut body = chat_body("smart");
    body["stream"] = json!(true);
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("\"error\""), "{text}");
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["provider"], "upstream");
    assert_eq!(
        outcomes(&r)[0],
        ("claude".into(), "stream_failed_before_content".into(), None)
    );
    s.gw.shutdown().await;
}

/// An error event before any content (under `first_content`, nothing has
/// been sent): the client gets it as the answer that error stands for,
/// overloaded as 503 `overloaded` in OpenAI's shape and as Anthropic's 529
/// `overloaded_error` on `/v1/messages`, not a 502 whatever its type.
#[tokio::test]
async fn an_error_event_before_content_keeps_the_status_of_its_type() {
    let s = setup_with("stream_commit = \"first_content\"\n").await;
    let mut body = chat_body("claude-sonnet");
    body["stream"] = json!(true);
    s.claude.push_fault(Fault::ErrorBeforeContent);
    let resp = chat(&s.gw, &body).await;
    let id = rid(&resp);
    assert_eq!(error_code(resp, 503).await, "overloaded");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "upstream_error");
    assert_eq!(outcomes(&r)[0].1, "overloaded");

    let mut body = messages_body("claude-sonnet");
    body["stream"] = json!(true);
    s.claude.push_fault(Fault::ErrorBeforeContent);
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 529);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn mid_stream_failures_end_with_a_well_formed_error() {
    let s = setup().await;
    let mut body = chat_body("claude-sonnet");
    body["stream"] = json!(true);

    // The connection drops after the first text delta: no retry, an error chunk.
    s.claude.push_fault(Fault::DropAfter(4));
    let resp = chat(&s.gw, &body).await;
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "stream_interrupted", "{text}");
    assert!(text.contains("\"content\":\"2\""), "{text}");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "truncated");
    // message_start's exact counts, though the usage chunk never came; only
    // the output is estimated.
    assert_eq!(r["prompt_tokens"], 20, "{r}");
    assert_eq!(r["cached_tokens"], 0, "{r}");
    assert_eq!(r["estimated"], true, "{r}");
    assert!(!text.contains("livery-prompt-usage"), "{text}");
    assert_eq!(s.claude.requests().len(), 1);

    // Anthropic's `event: error` after content: passed on in OpenAI's shape.
    s.claude.push_fault(Fault::StreamError);
    let resp = chat(&s.gw, &body).await;
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(text.contains("Paris in late"), "{text}");
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["type"], "server_error");
    assert_eq!(err["error"]["code"], "overloaded");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "upstream_error");
    assert_eq!(r["error_code"], "overloaded");
    // The answer was under way: its tokens are counted, not refunded, the
    // prompt's as message_start reported them.
    assert_eq!(r["prompt_tokens"], 25, "{r}");
    assert_eq!(r["cached_tokens"], 0, "{r}");
    assert!(r["completion_tokens"].as_u64().unwrap() > 0, "{r}");

    // A client that leaves mid-stream: its record keeps them too.
    s.claude.push_fault(Fault::SlowAfter(4));
    let c = client();
    let resp = c
        .post(s.gw.url("/v1/chat/completions"))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .json(&body)
        .send()
        .await
        .unwrap();
    let id = rid(&resp);
    read_until_and_leave(c, resp, "\"content\":\"2\"").await;
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "client_disconnected", "{r}");
    assert_eq!(r["prompt_tokens"], 20, "{r}");
    assert_eq!(r["cached_tokens"], 0, "{r}");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn anthropic_errors_reach_openai_clients_in_openai_shape() {
    let s = setup().await;
    s.claude.push_fault(Fault::Status {
        status: 529,
        retry_after: None,
    });
    let resp = chat(&s.gw, &chat_body("claude-sonnet")).await;
    assert_eq!(error_code(resp, 503).await, "overloaded");

    s.claude.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(2),
    });
    let resp = chat(&s.gw, &chat_body("claude-sonnet")).await;
    assert_eq!(resp.headers()["retry-after"], "2");
    let id = rid(&resp);
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.starts_with("This request would exceed"), "{m}");
    assert!(!m.contains("claude.com") && !m.contains("a22cf6e6"), "{m}");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "upstream_error");
    assert_eq!(r["status"], 429);

    // A request Messages cannot express is the client's error, not retried.
    let mut body = chat_body("smart");
    body["n"] = json!(2);
    let before = s.claude.requests().len();
    let resp = chat(&s.gw, &body).await;
    assert_eq!(error_code(resp, 400).await, "unsupported_value");
    assert_eq!(s.claude.requests().len(), before);
    assert!(s.openai.requests().is_empty());
    s.gw.shutdown().await;
}

#[tokio::test]
async fn the_mock_requires_anthropic_headers() {
    let claude = AnthropicMock::start(PROVIDER_KEY).await;
    let url = format!("{}/v1/messages", claude.base_url());
    let body = json!({"model": "m", "max_tokens": 10, "messages": []});
    let r = client()
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = client()
        .post(&url)
        .header("x-api-key", PROVIDER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    // Its count_tokens: the same checks, no `max_tokens`, Anthropic's answer.
    let url = format!("{}/v1/messages/count_tokens", claude.base_url());
    let count = json!({"model": "m", "messages": []});
    let send = |key: &'static str, version: bool, body: &Value| {
        let mut rb = client().post(&url).json(body);
        if !key.is_empty() {
            rb = rb.header("x-api-key", key);
        }
        if version {
            rb = rb.header("anthropic-version", "2023-06-01");
        }
        rb.send()
    };
    for (key, version, body, status, typ) in [
        ("", true, &count, 401, "authentication_error"),
        (
            "fake-test-wrong-key",
            true,
            &count,
            401,
            "authentication_error",
        ),
        (PROVIDER_KEY, false, &count, 400, "invalid_request_error"),
        (PROVIDER_KEY, true, &body, 400, "invalid_request_error"),
    ] {
        let r = send(key, version, body).await.unwrap();
        assert_eq!(r.status(), status, "{key} {version} {body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], typ, "{v}");
    }
    let r = send(PROVIDER_KEY, true, &count).await.unwrap();
    assert_eq!(r.status(), 200);
    let want = anthropic_mock::count_of(&count);
    assert_eq!(
        r.text().await.unwrap(),
        format!("{{\"input_tokens\":{want}}}")
    );

    // A provider configured without a key: the mock refuses, and the gateway
    // does not pass a provider 401 on as the client's.
    let openai = MockProvider::start().await;
    let gw = TestGateway::start(&anthropic_config(
        &openai.base_url(),
        &claude.base_url(),
        "",
    ))
    .await;
    let resp = chat(&gw, &chat_body("claude-sonnet")).await;
    assert_eq!(error_code(resp, 502).await, "upstream_auth_failed");
    assert!(!claude.last_request().headers.contains_key("x-api-key"));
    gw.shutdown().await;
}

fn messages_body(model: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 200,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Say hello to the tests."}],
    })
}

#[tokio::test]
async fn messages_on_an_openai_route_are_translated() {
    let s = setup().await;
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &messages_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"), "{v}");
    assert_eq!(v["content"][0]["type"], "text");
    assert!(!v["content"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(v["stop_reason"], "end_turn");
    let input = v["usage"]["input_tokens"].as_u64().unwrap();
    let output = v["usage"]["output_tokens"].as_u64().unwrap();
    assert!(input > 0 && output > 0, "{v}");

    let up = s.openai.last_request();
    assert_eq!(up.path, "/v1/chat/completions");
    assert_eq!(
        up.headers["authorization"],
        format!("Bearer {PROVIDER_KEY}").as_str()
    );
    assert_eq!(up.body["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(
        up.body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(up.body["max_tokens"], 200);

    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["endpoint"], "messages");
    assert_eq!(r["provider"], "upstream");
    assert_eq!(r["requested_model"], "gpt-4o-mini");
    assert_eq!(r["prompt_tokens"], input);
    assert_eq!(r["completion_tokens"], output);
    assert_eq!(r["outcome"], "ok");

    // The built-in `mock` provider is bridged the same way.
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &messages_body("demo")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "text");
    s.gw.shutdown().await;
}

/// `max_tokens_field = "max_completion_tokens"` on an OpenAI provider (its
/// reasoning models refuse `max_tokens`): a `/v1/messages` request's required
/// `max_tokens` goes there under OpenAI's current name.
#[tokio::test]
async fn messages_can_send_max_completion_tokens_to_an_openai_provider() {
    let upstream = "name = \"upstream\"\nkind = \"openai\"\n";
    let Setup {
        gw,
        openai,
        claude: _claude,
    } = setup_edited(PROVIDER_KEY, |c| {
        replaced(
            &c,
            upstream,
            &format!("{upstream}max_tokens_field = \"max_completion_tokens\"\n"),
        )
    })
    .await;
    let resp = messages(&gw, Some(ACME_DENTAL.2), &messages_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200);
    let up = openai.last_request();
    assert_eq!(up.body["max_completion_tokens"], 200, "{}", up.body);
    assert!(up.body.get("max_tokens").is_none(), "{}", up.body);
    gw.shutdown().await;
}

#[tokio::test]
async fn streamed_messages_on_an_openai_route_are_translated() {
    let s = setup().await;
    let mut body = messages_body("gpt-4o-mini");
    body["stream"] = json!(true);
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    let events = named_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["message_start", "content_block_start"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(
        names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count()
            > 1
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let output = delta["usage"]["output_tokens"].as_u64().unwrap();
    assert!(output > 0);
    // The upstream was asked for the usage chunk.
    let up = s.openai.last_request();
    assert_eq!(up.body["stream_options"]["include_usage"], true);
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["endpoint"], "messages");
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["completion_tokens"], output);
    assert_eq!(r["prompt_tokens"], delta["usage"]["input_tokens"]);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn messages_on_an_anthropic_route_pass_through() {
    let s = setup().await;
    let mut body = messages_body("claude-sonnet");
    body["top_k"] = json!(5);
    body["metadata"] = json!({"user_id": "u-1"});
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    assert_eq!(resp.text().await.unwrap(), anthropic_mock::MESSAGE_JSON);
    let up = s.claude.last_request();
    let mut expected = body.clone();
    expected["model"] = json!("claude-sonnet-4-5");
    assert_eq!(up.body, expected);
    // The platform's key upstream, never the tenant's gateway key.
    assert_eq!(up.headers["x-api-key"], PROVIDER_KEY);
    assert_eq!(up.headers["anthropic-version"], "2023-06-01");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["endpoint"], "messages");
    assert_eq!(r["served_model"], "claude-sonnet-4-5-20250929");
    assert_eq!(r["prompt_tokens"], 1716);
    assert_eq!(r["cached_tokens"], 1111);
    assert_eq!(r["completion_tokens"], 33);

    // Streamed: the capture comes through byte for byte.
    body["stream"] = json!(true);
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    assert_eq!(resp.text().await.unwrap(), anthropic_mock::STREAM_SSE);
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["stream"], true);
    assert_eq!(r["prompt_tokens"], 20);
    assert_eq!(r["completion_tokens"], 5);
    assert!(s
        .claude
        .last_request()
        .headers
        .get("anthropic-beta")
        .is_none());

    // The client's beta features go with its body (a body that uses one is
    // refused without the header).
    let beta = "context-1m-2025-08-07,token-efficient-tools-2025-02-19";
    let resp = client()
        .post(s.gw.url("/v1/messages"))
        .header("host", ACME_HOST)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", beta)
        .header("x-api-key", ACME_DENTAL.2)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await;
    assert_eq!(s.claude.last_request().headers["anthropic-beta"], beta);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn messages_errors_are_in_anthropic_shape() {
    let s = setup().await;
    let gw = &s.gw;
    let body = messages_body("claude-sonnet");
    assert_eq!(
        anthropic_error(messages(gw, None, &body).await, 401).await,
        "authentication_error"
    );
    assert_eq!(
        anthropic_error(messages(gw, Some("sk-wrong"), &body).await, 401).await,
        "authentication_error"
    );
    assert_eq!(
        anthropic_error(
            messages(gw, Some(ACME_DENTAL.2), &messages_body("nope")).await,
            404
        )
        .await,
        "not_found_error"
    );
    assert_eq!(
        anthropic_error(
            messages(gw, Some(ACME_REALTY.2), &messages_body("premium")).await,
            403
        )
        .await,
        "permission_error"
    );
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("host", ACME_HOST)
        .header("x-api-key", ACME_DENTAL.2)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(anthropic_error(resp, 400).await, "invalid_request_error");
    let resp = client()
        .get(gw.url("/v1/messages"))
        .header("host", ACME_HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(anthropic_error(resp, 405).await, "invalid_request_error");

    // Upstream errors: Anthropic's own statuses, scrubbed.
    s.claude.push_fault(Fault::Status {
        status: 529,
        retry_after: None,
    });
    let resp = messages(gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(anthropic_error(resp, 529).await, "overloaded_error");
    s.claude.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(3),
    });
    let resp = messages(gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.headers()["retry-after"], "3");
    assert_eq!(anthropic_error(resp, 429).await, "rate_limit_error");

    // An Anthropic-only tool cannot go to an OpenAI route.
    let mut web = messages_body("gpt-4o-mini");
    web["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"}]);
    let resp = messages(gw, Some(ACME_DENTAL.2), &web).await;
    assert_eq!(anthropic_error(resp, 400).await, "invalid_request_error");
    assert!(s.openai.requests().is_empty());

    // Mid-stream: the provider's error event is passed on; a broken stream ends
    // with the gateway's own.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    s.claude.push_fault(Fault::StreamError);
    let resp = messages(gw, Some(ACME_DENTAL.2), &stream).await;
    let id = rid(&resp);
    let events = named_events(&resp.text().await.unwrap());
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    let r = gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "upstream_error");
    assert_eq!(r["error_code"], "overloaded_error");
    // message_start's input count is the provider's; its output count (1)
    // is a placeholder, so the output is estimated from the text streamed.
    assert_eq!(r["prompt_tokens"], 25, "{r}");
    assert_eq!(r["estimated"], true, "{r}");
    assert!(r["completion_tokens"].as_u64().unwrap() > 1, "{r}");

    // Its message scrubbed of the provider's account, its request id dropped,
    // as an error answered before the stream is.
    s.claude.push_fault(Fault::StreamErrorNamingTheAccount);
    let resp = messages(gw, Some(ACME_DENTAL.2), &stream).await;
    let text = resp.text().await.unwrap();
    let events = named_events(&text);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(
        data["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Overloaded"),
        "{data}"
    );
    for leak in ["a22cf6e6", "req_011"] {
        assert!(!text.contains(leak), "{leak} reached the client: {text}");
    }

    s.claude.push_fault(Fault::DropAfter(4));
    let resp = messages(gw, Some(ACME_DENTAL.2), &stream).await;
    let id = rid(&resp);
    let events = named_events(&resp.text().await.unwrap());
    assert_eq!(events[3].0, "content_block_delta");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "api_error");
    let r = gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "truncated");
    assert_eq!(r["error_code"], "stream_interrupted");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn messages_fall_back_from_anthropic_to_an_openai_route() {
    let s = setup().await;
    s.claude.push_fault(Fault::Status {
        status: 529,
        retry_after: None,
    });
    let mut body = messages_body("smart");
    body["stream"] = json!(true);
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let events = named_events(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap().0, "message_stop");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(
        outcomes(&r),
        vec![
            ("claude".into(), "overloaded".into(), Some(529)),
            ("upstream".into(), "ok".into(), None)
        ]
    );
    s.gw.shutdown().await;
}

/// Reads `resp` until `needle` arrived, then drops it and its client.
async fn read_until_and_leave(c: reqwest::Client, resp: reqwest::Response, needle: &str) {
    use futures_util::StreamExt;
    let mut stream = resp.bytes_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let chunk = stream.next().await.unwrap().unwrap();
        seen.extend_from_slice(&chunk);
    }
    drop(stream);
    drop(c);
}

#[tokio::test]
async fn a_messages_client_that_leaves_mid_stream_keeps_the_exact_input_count() {
    let s = setup().await;
    let mut body = messages_body("claude-sonnet");
    body["stream"] = json!(true);
    // message_start, the text block, ping and one delta; then the upstream stalls.
    s.claude.push_fault(Fault::SlowAfter(4));
    let c = client();
    let resp = c
        .post(s.gw.url("/v1/messages"))
        .header("host", ACME_HOST)
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", ACME_DENTAL.2)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    read_until_and_leave(c, resp, "event: content_block_delta").await;
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "client_disconnected", "{r}");
    // The capture's message_start: input_tokens 20, no cache.
    assert_eq!(r["prompt_tokens"], 20, "{r}");
    assert_eq!(r["cached_tokens"], 0, "{r}");
    // Its output count is a placeholder: the output is estimated.
    assert_eq!(r["estimated"], true, "{r}");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_bridged_azure_stream_takes_its_message_id_from_the_answer() {
    use crate::support::mock::{ReplayProvider, AZURE_STREAM_GPT4O};
    let azure = ReplayProvider::start(AZURE_STREAM_GPT4O).await;
    let gw = TestGateway::start(&standard_config(&azure.base_url(), "")).await;
    let mut body = messages_body("gpt-4o-mini");
    body["stream"] = json!(true);
    let resp = messages(&gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let events = named_events(&resp.text().await.unwrap());
    assert_eq!(events[0].0, "message_start");
    assert_eq!(
        events[0].1["message"]["id"], "msg_BleatwEUn3D8iXsgXpDqeOPEMuW3j",
        "{:?}",
        events[0]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bridged_stream_cut_after_its_finish_reason_is_not_a_clean_end() {
    use crate::support::mock::ReplayProvider;
    // A finish reason, then the body ends: no usage chunk, no `[DONE]`.
    const SSE: &str = concat!(
        r#"data: {"id":"chatcmpl-cut","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-cut","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        "\n\n",
    );
    let upstream = ReplayProvider::start(SSE).await;
    let gw = TestGateway::start(&standard_config(&upstream.base_url(), "")).await;
    let mut body = messages_body("gpt-4o-mini");
    body["stream"] = json!(true);
    let resp = messages(&gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let events = named_events(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(!names.contains(&"message_stop"), "{names:?}");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{names:?}");
    assert_eq!(data["error"]["type"], "api_error");
    let r = gw.usage_for(&id).await;
    assert_ne!(r["outcome"], "ok", "{r}");
    // No count was reported: both are estimated, not zero.
    assert_eq!(r["estimated"], true, "{r}");
    assert!(r["prompt_tokens"].as_u64().unwrap() > 0, "{r}");
    gw.shutdown().await;
}

/// Anthropic bills cache writes above the input price (1.25 × for five
/// minutes): an OpenAI client's answer that wrote the cache is recorded with
/// its writes apart from the rest of the prompt and costed at that price,
/// plain, streamed, and streamed but cut before its usage chunk.
#[tokio::test]
async fn cache_writes_of_a_translated_answer_are_recorded_and_billed_at_their_price() {
    let s = setup_priced().await;
    // The capture: 187 input, 418 written (five minutes), 1111 read, 33 out.
    let resp = chat(&s.gw, &chat_body("claude-sonnet")).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["usage"]["prompt_tokens_details"],
        json!({"cached_tokens": 1111, "cache_write_tokens": 418})
    );
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["prompt_tokens"], 1716, "{r}");
    assert_eq!(r["cached_tokens"], 1111, "{r}");
    assert_eq!(r["cache_write_tokens"], 418, "{r}");
    // OpenAI's usage has no one-hour count (and a translated request cannot
    // ask for that cache: `cache_control` is Anthropic's).
    assert_eq!(r["cache_write_1h_tokens"], Value::Null, "{r}");
    // 187×3 + 1111×0.30 + 418×3.75 + 33×15 = 561 + 333.3 + 1567.5 + 495
    // (the writes at the input price made 2643).
    assert_eq!(r["cost_micros"], 2957, "{r}");

    // Streamed: the stream capture (20 input, 5 out) writing 500.
    s.claude.set_cache_writes(500, 0);
    let mut body = chat_body("claude-sonnet");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 520, "{text}");
    assert_eq!(
        usage["usage"]["prompt_tokens_details"]["cache_write_tokens"], 500,
        "{text}"
    );
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["prompt_tokens"], 520, "{r}");
    assert_eq!(r["cache_write_tokens"], 500, "{r}");
    // 20×3 + 500×3.75 + 5×15.
    assert_eq!(r["cost_micros"], 60 + 1875 + 75, "{r}");

    // Cut after the first text delta: message_start's writes are kept.
    s.claude.push_fault(Fault::DropAfter(4));
    let resp = chat(&s.gw, &body).await;
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.contains("stream_interrupted"), "{text}");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "truncated");
    assert_eq!(r["prompt_tokens"], 520, "{r}");
    assert_eq!(r["cache_write_tokens"], 500, "{r}");
    s.gw.shutdown().await;
}

/// On `/v1/messages` to an Anthropic route the answer goes through untouched
/// and the record has its writes split: the hour's at 2 × input, the five
/// minutes' at 1.25 ×, plain and streamed (where `message_delta` repeats the
/// total of the writes without the split `message_start` gave).
#[tokio::test]
async fn native_messages_bill_five_minute_and_one_hour_cache_writes_apart() {
    let s = setup_priced().await;
    s.claude.set_cache_writes(400, 100);
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &messages_body("claude-sonnet")).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 500);
    assert_eq!(
        v["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
        100
    );
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["prompt_tokens"], 187 + 500 + 1111, "{r}");
    assert_eq!(r["cached_tokens"], 1111, "{r}");
    assert_eq!(r["cache_write_tokens"], 500, "{r}");
    assert_eq!(r["cache_write_1h_tokens"], 100, "{r}");
    // 187×3 + 1111×0.30 + 400×3.75 + 100×6 + 33×15
    // = 561 + 333.3 + 1500 + 600 + 495.
    assert_eq!(r["cost_micros"], 3489, "{r}");

    let mut body = messages_body("claude-sonnet");
    body["stream"] = json!(true);
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let events = named_events(&resp.text().await.unwrap());
    let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["usage"]["cache_creation_input_tokens"], 500);
    assert!(delta["usage"].get("cache_creation").is_none(), "{delta}");
    let r = s.gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["prompt_tokens"], 520, "{r}");
    assert_eq!(r["cache_write_tokens"], 500, "{r}");
    assert_eq!(r["cache_write_1h_tokens"], 100, "{r}");
    // 20×3 + 400×3.75 + 100×6 + 5×15.
    assert_eq!(r["cost_micros"], 60 + 1500 + 600 + 75, "{r}");
    s.gw.shutdown().await;
}

/// `POST /v1/messages/count_tokens` the way Anthropic's SDK sends it
/// (`messages.count_tokens`): `x-api-key`, `anthropic-version`.
async fn count_tokens(
    gw: &TestGateway,
    host: &str,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut rb = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .header("host", host)
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(k) = key {
        rb = rb.header("x-api-key", k);
    }
    rb.send().await.unwrap()
}

/// A count_tokens body as Claude Code sends one: a system prompt, a turn and
/// a tool.
fn count_body(model: &str) -> Value {
    json!({
        "model": model,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "How many tokens is this prompt?"}],
        "tools": [{
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }],
    })
}

/// A count takes no tokens: its record says 0 of each, whoever counted.
fn assert_counts_nothing(r: &Value) {
    assert_eq!(r["endpoint"], "messages.count_tokens", "{r}");
    assert_eq!(r["prompt_tokens"], 0, "{r}");
    assert_eq!(r["completion_tokens"], 0, "{r}");
    assert_eq!(r["total_tokens"], 0, "{r}");
    assert_eq!(r["estimated"], false, "{r}");
    assert!(r["cost_micros"].as_u64().unwrap_or(0) == 0, "{r}");
}

/// On an Anthropic route the provider counts: the body goes to its
/// count_tokens with the route's model, the platform's key, the client's
/// `anthropic-version` and `anthropic-beta`, and its answer comes back as it
/// is; the record bills nothing, although the route's model has prices.
#[tokio::test]
async fn count_tokens_on_an_anthropic_route_is_the_providers_count() {
    let s = setup_priced().await;
    let body = count_body("claude-sonnet");
    let beta = "token-efficient-tools-2025-02-19";
    let resp = client()
        .post(s.gw.url("/v1/messages/count_tokens"))
        .header("host", ACME_HOST)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", beta)
        .header("x-api-key", ACME_DENTAL.2)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    assert!(resp.headers().get("x-livery-estimated").is_none());
    assert_eq!(resp.headers()["x-livery-model"], "claude-sonnet");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let mut upstream_body = body.clone();
    upstream_body["model"] = json!("claude-sonnet-4-5");
    let want = anthropic_mock::count_of(&upstream_body);
    assert_eq!(
        resp.text().await.unwrap(),
        format!("{{\"input_tokens\":{want}}}")
    );
    let up = s.claude.last_request();
    assert_eq!(up.path, "/v1/messages/count_tokens");
    assert_eq!(up.body, upstream_body);
    assert_eq!(up.headers["x-api-key"], PROVIDER_KEY);
    assert_eq!(up.headers["anthropic-version"], "2023-06-01");
    assert_eq!(up.headers["anthropic-beta"], beta);
    let r = s.gw.usage_for(&id).await;
    assert_counts_nothing(&r);
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["provider"], "claude", "{r}");
    assert_eq!(r["key_owner"], "platform", "{r}");
    assert_eq!(r["requested_model"], "claude-sonnet", "{r}");
    assert_eq!(outcomes(&r), [("claude".into(), "ok".into(), None)]);

    // A bearer token (the SDK's `auth_token`) opens the same door.
    let resp = client()
        .post(s.gw.url("/v1/messages/count_tokens"))
        .header("host", ACME_HOST)
        .header("anthropic-version", "2023-06-01")
        .bearer_auth(ACME_DENTAL.2)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["input_tokens"], want);
    s.gw.shutdown().await;
}

/// On a model served only by OpenAI-speaking routes, which have nothing to
/// count with, the gateway's tokenizer answers, says so, calls no provider
/// and bills nothing; the tools count too.
#[tokio::test]
async fn count_tokens_on_an_openai_route_is_the_gateways_estimate() {
    let s = setup().await;
    for (model, upstream_model) in [
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("demo", "mock-1"),
    ] {
        let body = count_body(model);
        let resp = count_tokens(&s.gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
        assert_eq!(resp.status(), 200, "{model}");
        let id = rid(&resp);
        assert_eq!(resp.headers()["x-livery-estimated"], "true", "{model}");
        assert_eq!(resp.headers()["x-livery-model"], model);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: Value = resp.json().await.unwrap();
        let want = livery::providers::estimate_input_tokens(upstream_model, &body);
        assert_eq!(v, json!({"input_tokens": want}), "{model}");
        let mut without_tools = body.clone();
        without_tools.as_object_mut().unwrap().remove("tools");
        let prompt_only = livery::usage::estimate::estimate_prompt_tokens(upstream_model, &body);
        assert_eq!(
            prompt_only,
            livery::usage::estimate::estimate_prompt_tokens(upstream_model, &without_tools)
        );
        assert!(
            want > prompt_only + 10,
            "{want} vs {prompt_only}: tools left out"
        );
        let r = s.gw.usage_for(&id).await;
        assert_counts_nothing(&r);
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(r["provider"], Value::Null, "{r}");
        assert_eq!(r["attempts"], json!([]), "{r}");
    }
    assert!(s.openai.requests().is_empty());
    assert!(s.claude.requests().is_empty());
    s.gw.shutdown().await;
}

/// Refused at the front door in Anthropic's shape, before any provider is
/// called: no key, another reseller's tenant's key, a key at another
/// reseller's Host, an unknown Host, a model outside the plan or unknown, a
/// body that is not a count's.
#[tokio::test]
async fn count_tokens_refusals_are_anthropics_and_reach_no_provider() {
    let s = setup().await;
    let gw = &s.gw;
    let body = count_body("claude-sonnet");
    let refused = [
        (ACME_HOST, None, 401, "authentication_error"),
        (
            ACME_HOST,
            Some(GLOBEX_CLINIC.2),
            401,
            "authentication_error",
        ),
        (
            GLOBEX_HOST,
            Some(ACME_DENTAL.2),
            401,
            "authentication_error",
        ),
        (
            "nobody.example",
            Some(ACME_DENTAL.2),
            404,
            "not_found_error",
        ),
        (
            ACME_HOST,
            Some("fake-test-not-a-tenant-key"),
            401,
            "authentication_error",
        ),
    ];
    for (host, key, status, typ) in refused {
        let resp = count_tokens(gw, host, key, &body).await;
        assert_eq!(anthropic_error(resp, status).await, typ, "{host} {key:?}");
    }
    // realty's plan (basic) lacks the model: refused, and recorded.
    let resp = count_tokens(gw, ACME_HOST, Some(ACME_REALTY.2), &body).await;
    let id = rid(&resp);
    assert_eq!(anthropic_error(resp, 403).await, "permission_error");
    let r = gw.usage_for(&id).await;
    assert_eq!(r["endpoint"], "messages.count_tokens", "{r}");
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(r["error_code"], "model_not_allowed", "{r}");
    let resp = count_tokens(gw, ACME_HOST, Some(ACME_DENTAL.2), &count_body("nope")).await;
    assert_eq!(anthropic_error(resp, 404).await, "not_found_error");
    let mut no_messages = body.clone();
    no_messages.as_object_mut().unwrap().remove("messages");
    let resp = count_tokens(gw, ACME_HOST, Some(ACME_DENTAL.2), &no_messages).await;
    assert_eq!(anthropic_error(resp, 400).await, "invalid_request_error");
    let resp = client()
        .get(gw.url("/v1/messages/count_tokens"))
        .header("host", ACME_HOST)
        .header("x-api-key", ACME_DENTAL.2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(anthropic_error(resp, 405).await, "invalid_request_error");
    assert!(s.claude.requests().is_empty());
    assert!(s.openai.requests().is_empty());
    s.gw.shutdown().await;
}

/// A provider's errors are reshaped as `/v1/messages` reshapes them (status
/// and type kept, `retry-after` passed on, its request id dropped); a model
/// with another route falls back to it, here an OpenAI one, whose count is
/// the gateway's estimate.
#[tokio::test]
async fn count_tokens_provider_errors_are_reshaped_or_fallen_back() {
    let s = setup().await;
    let gw = &s.gw;
    s.claude.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(3),
    });
    let resp = count_tokens(
        gw,
        ACME_HOST,
        Some(ACME_DENTAL.2),
        &count_body("claude-sonnet"),
    )
    .await;
    let id = rid(&resp);
    assert_eq!(resp.headers()["retry-after"], "3");
    assert_eq!(anthropic_error(resp, 429).await, "rate_limit_error");
    let r = gw.usage_for(&id).await;
    assert_counts_nothing(&r);
    assert_eq!(r["outcome"], "upstream_error", "{r}");
    assert_eq!(r["error_code"], "rate_limit_error", "{r}");
    s.claude.push_fault(Fault::Status {
        status: 529,
        retry_after: None,
    });
    let resp = count_tokens(
        gw,
        ACME_HOST,
        Some(ACME_DENTAL.2),
        &count_body("claude-sonnet"),
    )
    .await;
    assert_eq!(anthropic_error(resp, 529).await, "overloaded_error");
    // The provider judges the body: a field its count does not take.
    let mut extra = count_body("claude-sonnet");
    extra["max_tokens"] = json!(100);
    let resp = count_tokens(gw, ACME_HOST, Some(ACME_DENTAL.2), &extra).await;
    assert_eq!(anthropic_error(resp, 400).await, "invalid_request_error");

    // `smart`: claude first, then the OpenAI mock.
    let body = count_body("smart");
    let resp = count_tokens(gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-livery-estimated").is_none());
    let mut upstream_body = body.clone();
    upstream_body["model"] = json!("claude-sonnet-4-5");
    let want = anthropic_mock::count_of(&upstream_body);
    assert_eq!(resp.json::<Value>().await.unwrap()["input_tokens"], want);
    s.claude.push_fault(Fault::Status {
        status: 429,
        retry_after: None,
    });
    let resp = count_tokens(gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    assert_eq!(resp.headers()["x-livery-estimated"], "true");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let want = livery::providers::estimate_input_tokens("gpt-4o-mini-2024-07-18", &body);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"input_tokens": want})
    );
    let r = gw.usage_for(&id).await;
    assert_counts_nothing(&r);
    // The OpenAI provider has nothing to count with: it was not called, so
    // the record lists no attempt of it and names no provider or key.
    assert_eq!(
        outcomes(&r),
        [("claude".into(), "rate_limited".into(), Some(429))]
    );
    assert_eq!(r["provider"], Value::Null, "{r}");
    assert_eq!(r["key_owner"], Value::Null, "{r}");
    assert!(s.openai.requests().is_empty());
    s.gw.shutdown().await;
}

/// The state of `provider`'s breaker under the platform's key, as
/// `/readyz?detail=1` shows it to the operator.
async fn breaker_state(gw: &TestGateway, provider: &str) -> String {
    let resp = client()
        .get(gw.url("/readyz?detail=1"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    let b = v["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["provider"] == provider && b["owner"] == "platform")
        .unwrap_or_else(|| panic!("no breaker of {provider}: {v}"));
    b["state"].as_str().unwrap().to_owned()
}

/// A count fallen back to an OpenAI-speaking route is the gateway's
/// estimate, which calls no provider: that route's breaker neither refuses
/// it while open nor takes it for the probe that closes it (a dead OpenAI
/// fallback was closed again by every count that reached it after each
/// cool-down, and chat traffic sent back to it).
#[tokio::test]
async fn a_counts_estimate_neither_waits_on_nor_closes_an_openai_routes_breaker() {
    // The "open" phase below must end within the cool-down: a generous one,
    // as a loaded host can take seconds over it (1.5 s was not enough).
    let cooldown = std::time::Duration::from_secs(5);
    let s = setup_with(&format!(
        "breaker_failures = 1\nbreaker_cooldown_ms = {}\n",
        cooldown.as_millis()
    ))
    .await;
    let gw = &s.gw;
    let body = count_body("smart");
    // Before the breaker opens: the first estimate loads the tokenizer, which
    // takes a second or more in a debug build.
    let want = livery::providers::estimate_input_tokens("gpt-4o-mini-2024-07-18", &body);
    // The OpenAI mock fails a chat: its breaker opens.
    let mut failing = chat_body("gpt-4o-mini");
    failing["mock"] = json!({"status": 500});
    let resp = chat(gw, &failing).await;
    assert_eq!(resp.status(), 500);
    // The breaker opened before this answer: its cool-down ends within
    // `cooldown` from here.
    let opened = std::time::Instant::now();
    assert_eq!(breaker_state(gw, "upstream").await, "open");
    for phase in ["open", "half_open"] {
        if phase == "half_open" {
            // Past the cool-down, however long the open phase took.
            let past = cooldown + std::time::Duration::from_millis(100);
            tokio::time::sleep(past.saturating_sub(opened.elapsed())).await;
        }
        s.claude.push_fault(Fault::Status {
            status: 429,
            retry_after: None,
        });
        let resp = count_tokens(gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
        assert_eq!(resp.status(), 200, "{phase}");
        assert_eq!(resp.headers()["x-livery-estimated"], "true", "{phase}");
        let id = rid(&resp);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"input_tokens": want}),
            "{phase}"
        );
        let r = gw.usage_for(&id).await;
        assert_eq!(
            outcomes(&r),
            [("claude".into(), "rate_limited".into(), Some(429))],
            "{phase}"
        );
        // Still waiting for a probe that reaches the provider.
        assert_eq!(breaker_state(gw, "upstream").await, phase);
    }
    assert_eq!(s.openai.requests().len(), 1);
    s.gw.shutdown().await;
}

/// A prompt holding a long run of whitespace (here a mebibyte of blanks,
/// under a body limit of 4 MiB) is counted by the gateway's tokenizer like
/// any other; it was answered 500 `internal_error` (the tokenizer library
/// panics on such a run). A chat whose upstream reports no usage has its
/// prompt estimated from the same text: it is answered, and recorded.
#[tokio::test]
async fn a_prompt_of_a_mebibyte_of_blanks_is_counted_and_recorded() {
    let Setup {
        gw,
        openai: _openai,
        claude: _claude,
    } = setup_edited(PROVIDER_KEY, with_4_mib_bodies).await;
    let blanks = format!("{}?", " ".repeat(1 << 20));
    let mut body = count_body("gpt-4o-mini");
    body["messages"][0]["content"] = json!(blanks);
    let resp = count_tokens(&gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<Value>().await.unwrap()["input_tokens"].as_u64() > Some(5_000));

    let mut chat_req = chat_body("gpt-4o-mini");
    chat_req["messages"][1]["content"] = json!(blanks);
    chat_req["mock"] = json!({"no_usage": true});
    let resp = chat(&gw, &chat_req).await;
    assert_eq!(resp.status(), 200);
    let r = gw.usage_for(&rid(&resp)).await;
    assert_eq!(r["estimated"], true, "{r}");
    // The record tokenizes the first 64 KiB of text (it is finished on the
    // request thread) and counts the rest at 1 token per 5 bytes at least:
    // the blanks' own ratio (about 128 bytes a token) would make the bulk of
    // any prompt behind them nearly free. Tokenized whole it was about 8,200.
    let rest = ((1u64 << 20) - (64 << 10)) / 5;
    assert!(r["prompt_tokens"].as_u64() >= Some(rest), "{r}");
    gw.shutdown().await;
}

/// A count's tokenizing runs off the request threads: a big prompt being
/// counted (CPU in proportion to its size) does not hold up the other
/// requests of the thread it came on, here a health check on a runtime of
/// one thread, the test's.
#[tokio::test]
async fn a_big_count_does_not_hold_up_other_requests() {
    let Setup {
        gw,
        openai: _openai,
        claude: _claude,
    } = setup_edited(PROVIDER_KEY, with_4_mib_bodies).await;
    let mut body = count_body("gpt-4o-mini");
    body["messages"][0]["content"] = json!("a".repeat(256 << 10));
    let done = std::sync::atomic::AtomicBool::new(false);
    let count = async {
        let started = std::time::Instant::now();
        let resp = count_tokens(&gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
        assert_eq!(resp.status(), 200);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        started.elapsed()
    };
    // Health checks one after the other while the count is under way: the
    // slowest of them.
    let health = async {
        let mut slowest = std::time::Duration::ZERO;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let started = std::time::Instant::now();
            let resp = client().get(gw.url("/healthz")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        slowest
    };
    let (count, slowest) = tokio::join!(count, health);
    assert!(
        slowest * 4 < count,
        "a health check waited {slowest:?} (the count took {count:?})"
    );
    gw.shutdown().await;
}

const COUNT_KEK_ENV: &str = "LIVERY_TEST_COUNT_TOKENS_KEK";
const DENTAL_ANTHROPIC_KEY: &str = "fake-test-dental-anthropic-key";

/// `provider` key of `owner`, sealed under a KEK of these tests' own (the
/// vault tests set theirs once; sharing the variable would race them).
fn seal(owner: &str, provider: &str, key: &str) -> String {
    use livery::vault::{CredentialOwner, EnvKek, Keyring};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(COUNT_KEK_ENV, livery::vault::generate_kek().unwrap()));
    let mut keyring = Keyring::default();
    keyring.add(std::sync::Arc::new(
        EnvKek::load("count-kek", COUNT_KEK_ENV).unwrap(),
    ));
    keyring
        .seal(&CredentialOwner::parse(owner).unwrap(), provider, key)
        .unwrap()
        .to_sealed_string()
}

/// A tenant with its own Anthropic key has its counts made with it, unsealed
/// as for its messages; a tenant without one (globex's clinic, same plan)
/// has the platform's sent, never another tenant's.
#[tokio::test]
async fn count_tokens_goes_with_the_tenants_own_key() {
    let dental = format!("key_hashes = [\"{}\"]", hash(ACME_DENTAL.2));
    let sealed = seal("tenant:acme/dental", "claude", DENTAL_ANTHROPIC_KEY);
    let Setup {
        gw,
        openai: _openai,
        claude,
    } = setup_edited(DENTAL_ANTHROPIC_KEY, |c| {
        replaced(
            &c,
            &dental,
            &format!("{dental}\ncredentials = {{ claude = \"{sealed}\" }}"),
        ) + &format!("\n[vault]\n[[vault.keks]]\nid = \"count-kek\"\nenv = \"{COUNT_KEK_ENV}\"\n")
    })
    .await;
    let body = count_body("claude-sonnet");
    let resp = count_tokens(&gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let up = claude.last_request();
    assert_eq!(up.path, "/v1/messages/count_tokens");
    assert_eq!(up.headers["x-api-key"], DENTAL_ANTHROPIC_KEY);
    let r = gw.usage_for(&id).await;
    assert_eq!(r["key_owner"], "tenant", "{r}");
    assert_counts_nothing(&r);

    // The mock takes dental's key only: the platform's is refused, which
    // under the gateway's key is the operator's fault, not the tenant's.
    let resp = count_tokens(&gw, GLOBEX_HOST, Some(GLOBEX_CLINIC.2), &body).await;
    assert_eq!(claude.last_request().headers["x-api-key"], PROVIDER_KEY);
    assert_eq!(anthropic_error(resp, 502).await, "api_error");
    gw.shutdown().await;
}

/// A count is admitted like any request, for no tokens: it takes a request
/// of the per-minute bucket, and reserves nothing of the token bucket or the
/// month (here one token each, which any reservation or any counted usage
/// would exhaust at once).
#[tokio::test]
async fn count_tokens_takes_a_request_but_no_tokens() {
    let limits = "requests_per_minute = 3\ntokens_per_minute = 1\ntokens_per_month = 1";
    let Setup {
        gw,
        openai: _openai,
        claude: _claude,
    } = limited_gateway(limits).await;
    let mut big = count_body("claude-sonnet");
    big["messages"][0]["content"] = json!("many words ".repeat(500));
    for model in ["claude-sonnet", "gpt-4o-mini", "claude-sonnet"] {
        big["model"] = json!(model);
        let resp = count_tokens(&gw, ACME_HOST, Some(ACME_DENTAL.2), &big).await;
        assert_eq!(
            resp.status(),
            200,
            "{model}: {}",
            resp.text().await.unwrap()
        );
        // Nothing reserved: the bucket of one token is still full.
        assert_eq!(
            resp.headers()["x-ratelimit-remaining-tokens"],
            "1",
            "{model}"
        );
    }
    let resp = count_tokens(&gw, ACME_HOST, Some(ACME_DENTAL.2), &big).await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("requests per min"), "{v}");
    gw.shutdown().await;
}

/// A count takes a concurrency slot: a stream holding the tenant's only one
/// refuses it, and its end frees it.
#[tokio::test]
async fn count_tokens_takes_a_concurrency_slot() {
    let Setup {
        gw,
        openai: _openai,
        claude,
    } = limited_gateway("max_concurrent = 1").await;
    let body = count_body("claude-sonnet");
    claude.push_fault(Fault::SlowAfter(2));
    let mut stream = messages_body("claude-sonnet");
    stream["stream"] = json!(true);
    let held = messages(&gw, Some(ACME_DENTAL.2), &stream).await;
    assert_eq!(held.status(), 200);
    let resp = count_tokens(&gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrent"),
        "{v}"
    );
    drop(held);
    let start = std::time::Instant::now();
    loop {
        let resp = count_tokens(&gw, ACME_HOST, Some(ACME_DENTAL.2), &body).await;
        if resp.status() == 200 {
            break;
        }
        // Until the stream's record is written, which frees its slot.
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gw.shutdown().await;
}

/// The gateway of [`setup`] with `limits` in plan `pro` (dental's).
async fn limited_gateway(limits: &str) -> Setup {
    let pro = "name = \"pro\"\n";
    setup_edited(PROVIDER_KEY, |c| {
        replaced(&c, pro, &format!("{pro}{limits}\n"))
    })
    .await
}

/// A plan that downgrades a model outside it downgrades a count the same way.
#[tokio::test]
async fn count_tokens_is_downgraded_as_messages_are() {
    let Setup {
        gw,
        openai: _openai,
        claude,
    } = setup_edited(PROVIDER_KEY, |c| {
        replaced(
            &c,
            "name = \"basic\"\n",
            "name = \"basic\"\ndisallowed_model = \"downgrade\"\ndowngrade_to = \"gpt-4o-mini\"\n",
        )
    })
    .await;
    let body = count_body("claude-sonnet");
    let resp = count_tokens(&gw, ACME_HOST, Some(ACME_REALTY.2), &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-livery-model"], "gpt-4o-mini");
    assert_eq!(resp.headers()["x-livery-downgraded-from"], "claude-sonnet");
    assert_eq!(resp.headers()["x-livery-estimated"], "true");
    assert!(claude.requests().is_empty());
    gw.shutdown().await;
}

/// A schema as the `openai` SDK's `parse()` sends a pydantic model's.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": false,
        "$defs": {"Pet": {
            "type": "object",
            "properties": {"kind": {"type": "string"}},
            "required": ["kind"],
            "additionalProperties": false,
        }},
    })
}

/// Structured outputs on an Anthropic route: `response_format` `json_schema`
/// reaches Anthropic as `output_config.format` with the schema unchanged,
/// and the answer's text, the JSON, comes back as the message's content,
/// whole and streamed. The mock refuses top-level fields the Messages API
/// does not take, so `response_format` itself must not go upstream.
#[tokio::test]
async fn structured_outputs_reach_anthropic_as_output_config() {
    let s = setup().await;
    let want = livery::providers::mock::example_of(&person_schema());
    let mut body = chat_body("claude-sonnet");
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(content).unwrap(), want, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let up = s.claude.last_request();
    assert_eq!(
        up.body["output_config"],
        json!({"format": {"type": "json_schema", "schema": person_schema()}})
    );
    assert!(up.body.get("response_format").is_none());

    body["stream"] = json!(true);
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let streamed: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&streamed).unwrap(), want);
    assert_eq!(
        s.claude.last_request().body["output_config"]["format"]["schema"],
        person_schema()
    );

    // `json_object` has no Anthropic counterpart and is not sent; a schema-less
    // `json_schema` is refused before any provider is asked.
    body["stream"] = json!(false);
    body["response_format"] = json!({"type": "json_object"});
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(s.claude.last_request().body.get("output_config").is_none());
    let asked = s.claude.requests().len();
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person"}});
    let resp = chat(&s.gw, &body).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
    assert_eq!(
        err["error"]["param"], "response_format.json_schema.schema",
        "{err}"
    );
    assert_eq!(s.claude.requests().len(), asked);
    s.gw.shutdown().await;
}

/// The other way: an Anthropic client's structured output on an OpenAI route
/// goes up as `response_format` `json_schema`, strict (the schema closes and
/// requires everything), and the JSON answer comes back as its text block.
#[tokio::test]
async fn structured_outputs_on_an_openai_route_become_response_format() {
    let s = setup().await;
    let mut body = messages_body("gpt-4o-mini");
    body["output_config"] = json!({"format": {"type": "json_schema", "schema": person_schema()}});
    let resp = messages(&s.gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["content"][0]["type"], "text", "{v}");
    let text = v["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        livery::providers::mock::example_of(&person_schema())
    );
    let up = s.openai.last_request();
    assert_eq!(
        up.body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "output", "schema": person_schema(), "strict": true}})
    );
    assert!(up.body.get("output_config").is_none());
    s.gw.shutdown().await;
}

/// A `/v1/messages` stream still running when shutdown's grace period ends
/// ends with Anthropic's `event: error` (which its SDKs raise) and a whole
/// body, not a cut one; its record says the gateway ended it, with the input
/// count `message_start` reported.
#[tokio::test]
async fn a_messages_stream_at_the_end_of_grace_ends_with_an_error_event() {
    let Setup {
        mut gw,
        openai: _openai,
        claude,
    } = setup().await;
    let mut body = messages_body("claude-sonnet");
    body["stream"] = json!(true);
    // message_start, the text block, ping and one delta; then the upstream stalls.
    claude.push_fault(Fault::SlowAfter(4));
    let resp = messages(&gw, Some(ACME_DENTAL.2), &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    // Shut down once the stream is mid-way: its delta is out, the upstream stalls.
    let reader = read_past(resp, "event: content_block_delta").await;
    let gateway = gw.gateway.take().unwrap();
    gateway
        .shutdown(std::time::Duration::from_millis(300))
        .await;
    let text = tokio::time::timeout(std::time::Duration::from_secs(2), reader)
        .await
        .expect("the client's stream ends")
        .unwrap();
    let events = named_events(&text);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert_eq!(data["error"]["type"], "api_error", "{text}");
    assert!(
        data["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{text}"
    );
    assert!(
        events.iter().any(|(n, _)| n == "content_block_delta"),
        "{text}"
    );
    assert!(!events.iter().any(|(n, _)| n == "message_stop"), "{text}");
    let r = read_usage(&gw.usage_path)
        .into_iter()
        .find(|r| r["request_id"] == id.as_str())
        .expect("the record is written when shutdown returns");
    assert_eq!(r["status"], 503, "{r}");
    assert_eq!(r["outcome"], "truncated", "{r}");
    assert_eq!(r["error_code"], "gateway_shutdown", "{r}");
    assert_eq!(r["prompt_tokens"], 20, "{r}");
}
