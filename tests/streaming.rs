//! Point 6: streaming. SSE is relayed event by event as the upstream produces it,
//! framed exactly like OpenAI's; the usage chunk the gateway asks for on the
//! client's behalf is hidden unless the client asked for it; a truncated stream
//! ends with an SSE error event (never `[DONE]`); a client that goes away cancels
//! the upstream request at once and still gets its usage record.

use crate::support::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A streamed chat request for `model` with the mock directives `mock` (if any).
fn stream_body(model: &str, mock: Value) -> Value {
    let mut b = chat_body(model);
    b["stream"] = json!(true);
    if !mock.is_null() {
        b["mock"] = mock;
    }
    b
}

/// POSTs `body` to `path` as tenant acme/dental through `client`.
async fn send(
    client: &reqwest::Client,
    gw: &TestGateway,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(gw.url(path))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn request_id_of(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Reads an SSE body incrementally. Returns each complete event (the text between
/// blank lines) with its arrival time since `t0`, and the raw text received.
async fn timed_events(resp: reqwest::Response, t0: Instant) -> (Vec<(Duration, String)>, String) {
    let mut events = Vec::new();
    let mut all = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("the gateway's stream broke");
        let now = t0.elapsed();
        all.extend_from_slice(&chunk);
        pending.extend_from_slice(&chunk);
        while let Some(pos) = pending.windows(2).position(|w| w == b"\n\n") {
            let ev: Vec<u8> = pending.drain(..pos + 2).collect();
            events.push((now, String::from_utf8(ev[..pos].to_vec()).unwrap()));
        }
    }
    (events, String::from_utf8(all).unwrap())
}

/// Checks OpenAI's framing: nothing but `data: <payload>\n\n` events. Returns the
/// payloads in order.
fn strict_sse_payloads(text: &str) -> Vec<String> {
    assert!(
        text.ends_with("\n\n"),
        "the stream does not end with a blank line: {text:?}"
    );
    let blocks: Vec<&str> = text[..text.len() - 2].split("\n\n").collect();
    blocks
        .iter()
        .map(|b| {
            assert!(
                !b.contains('\n'),
                "an event spans several lines (or an empty event was sent): {b:?}\nin {text:?}"
            );
            b.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event is not `data: ...`: {b:?}"))
                .to_owned()
        })
        .collect()
}

/// Checks a complete, successful stream: strict framing, `[DONE]` once and last,
/// every other event a JSON chunk of `object`, exactly one `finish_reason`
/// "stop". Returns the chunks.
fn complete_stream_chunks(text: &str, object: &str) -> Vec<Value> {
    let payloads = strict_sse_payloads(text);
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream does not end with [DONE]: {text}"
    );
    assert_eq!(
        payloads.iter().filter(|p| *p == "[DONE]").count(),
        1,
        "[DONE] must be sent exactly once: {text}"
    );
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("not JSON ({e}): {p}")))
        .collect();
    assert!(!chunks.is_empty(), "no chunk before [DONE]: {text}");
    for c in &chunks {
        assert_eq!(c["object"], object, "unexpected chunk: {c}");
    }
    let stops = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|ch| ch["finish_reason"] == "stop")
        .count();
    assert_eq!(
        stops, 1,
        "exactly one chunk must finish with \"stop\": {text}"
    );
    chunks
}

/// Chunks of the shape `{"choices": [], "usage": {...}}`.
fn usage_chunks(chunks: &[Value]) -> Vec<&Value> {
    chunks
        .iter()
        .filter(|c| c["choices"].as_array().is_some_and(|a| a.is_empty()) && c["usage"].is_object())
        .collect()
}

#[tokio::test]
async fn a_stream_reaches_the_client_event_by_event_as_it_is_produced() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let body = stream_body("gpt-4o-mini", json!({"chunks": 5, "gap_ms": 300}));
    let resp = send(&client(), &gw, "/v1/chat/completions", &body).await;
    let t0 = Instant::now();
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("text/event-stream"));
    let (events, text) = timed_events(resp, t0).await;

    // role chunk, 5 words, finish chunk, [DONE] (the hidden usage chunk is not sent).
    assert_eq!(events.len(), 8, "unexpected events: {text}");
    let (first, _) = events[0];
    let (last, _) = *events.last().unwrap();
    assert!(
        first < Duration::from_millis(250),
        "the first event arrived {first:?} after the headers: the stream was held back"
    );
    assert!(
        last > Duration::from_millis(1200),
        "the whole stream took only {last:?}: the mock's pacing was not honoured?"
    );
    // The first word is produced 300 ms in; it must not wait for the rest.
    let first_word = events
        .iter()
        .find(|(_, e)| e.contains("\"content\":\"Hello\""))
        .map(|(t, _)| *t)
        .expect("no event carries the first word");
    assert!(
        first_word < Duration::from_millis(900),
        "the first word arrived at {first_word:?} (of {last:?}): the stream was buffered"
    );
    // Spread over time: most consecutive events are separated by the mock's gap.
    let spread = events
        .windows(2)
        .filter(|w| w[1].0 - w[0].0 >= Duration::from_millis(150))
        .count();
    assert!(
        spread >= 5,
        "events arrived in bursts, not one by one: {:?}",
        events.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_stream_is_framed_like_openai_and_ends_with_done() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let resp = send(
        &client(),
        &gw,
        "/v1/chat/completions",
        &stream_body("gpt-4o-mini", Value::Null),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let chunks = complete_stream_chunks(&text, "chat.completion.chunk");
    // The streamed text is the same answer a plain request gets.
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let plain = send(
        &client(),
        &gw,
        "/v1/chat/completions",
        &chat_body("gpt-4o-mini"),
    )
    .await;
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(
        streamed,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(!streamed.is_empty());
}

#[tokio::test]
async fn the_usage_chunk_is_always_requested_but_only_shown_to_clients_that_asked() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    // The upstream's numbers for this conversation, from a plain request.
    let plain: Value = send(
        &client(),
        &gw,
        "/v1/chat/completions",
        &chat_body("gpt-4o-mini"),
    )
    .await
    .json()
    .await
    .unwrap();
    let upstream_usage = plain["usage"].clone();
    let prompt = upstream_usage["prompt_tokens"].as_u64().unwrap();
    let completion = upstream_usage["completion_tokens"].as_u64().unwrap();
    assert!(prompt > 0 && completion > 0);

    // The client did not ask (no stream_options, or include_usage false).
    for options in [Value::Null, json!({"include_usage": false})] {
        let mut body = stream_body("gpt-4o-mini", Value::Null);
        if !options.is_null() {
            body["stream_options"] = options.clone();
        }
        let resp = send(&client(), &gw, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        let rid = request_id_of(&resp);
        let text = resp.text().await.unwrap();
        assert_eq!(
            mock.last_request().body["stream_options"]["include_usage"],
            true,
            "the gateway did not ask the upstream for usage (client options {options})"
        );
        let chunks = complete_stream_chunks(&text, "chat.completion.chunk");
        assert!(
            usage_chunks(&chunks).is_empty(),
            "the client did not ask for usage but got the usage chunk: {text}"
        );
        assert!(
            !text.contains("\"prompt_tokens\""),
            "token counts reached a client that did not ask: {text}"
        );
        let record = gw.usage_for(&rid).await;
        assert_eq!(record["prompt_tokens"], prompt, "{record}");
        assert_eq!(record["completion_tokens"], completion, "{record}");
        assert_eq!(record["outcome"], "ok", "{record}");
        assert_eq!(record["stream"], true, "{record}");
    }

    // The client asked: exactly one usage chunk, with the upstream's numbers.
    let mut body = stream_body("gpt-4o-mini", Value::Null);
    body["stream_options"] = json!({"include_usage": true});
    let resp = send(&client(), &gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    let text = resp.text().await.unwrap();
    assert_eq!(
        mock.last_request().body["stream_options"]["include_usage"],
        true
    );
    let chunks = complete_stream_chunks(&text, "chat.completion.chunk");
    let usage = usage_chunks(&chunks);
    assert_eq!(usage.len(), 1, "expected one usage chunk: {text}");
    assert_eq!(usage[0]["usage"]["prompt_tokens"], prompt);
    assert_eq!(usage[0]["usage"]["completion_tokens"], completion);
    // It is the last chunk before [DONE], after the finish reason.
    assert!(std::ptr::eq(usage[0], chunks.last().unwrap()), "{text}");
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["prompt_tokens"], prompt, "{record}");
    assert_eq!(record["completion_tokens"], completion, "{record}");
}

#[tokio::test]
async fn legacy_completions_stream_too() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let body = json!({"model": "gpt-4o-mini", "prompt": "Say hello to the tests.", "stream": true, "max_tokens": 7});
    let resp = send(&client(), &gw, "/v1/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("text/event-stream"));
    let rid = request_id_of(&resp);
    let text = resp.text().await.unwrap();
    let seen = mock.last_request();
    assert_eq!(seen.path, "/v1/completions");
    assert_eq!(seen.body["stream_options"]["include_usage"], true);
    let payloads = strict_sse_payloads(&text);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{text}"
    );
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "text_completion", "{c}");
        assert!(
            !c["choices"].as_array().unwrap().is_empty(),
            "usage chunk leaked: {c}"
        );
    }
    let text_out: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text_out.split_whitespace().count(), 7, "{text}");
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"] == "length")
            .count(),
        1
    );
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["endpoint"], "completions");
    assert_eq!(record["outcome"], "ok");
    assert_eq!(record["stream"], true);
    assert_eq!(record["completion_tokens"], 7);
    assert!(
        record["prompt_tokens"].as_u64().is_some_and(|n| n > 0),
        "{record}"
    );

    // Without the usage chunk, the completion is estimated from the text.
    let mut body = body;
    body["mock"] = json!({"no_usage": true});
    let resp = send(&client(), &gw, "/v1/completions", &body).await;
    let rid = request_id_of(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_eq!(record["estimated"], true, "{record}");
    assert!(
        record["completion_tokens"].as_u64().is_some_and(|n| n >= 7),
        "{record}"
    );
}

/// Reads a stream to its end and returns (request id, payloads, raw text).
async fn read_stream(gw: &TestGateway, mock: Value) -> (String, Vec<String>, String) {
    let resp = send(
        &client(),
        gw,
        "/v1/chat/completions",
        &stream_body("gpt-4o-mini", mock),
    )
    .await;
    assert_eq!(resp.status(), 200, "a stream that started is a 200");
    assert!(content_type(&resp).starts_with("text/event-stream"));
    let rid = request_id_of(&resp);
    // The client's own stream must be well-formed even when the upstream's broke.
    let text = resp
        .text()
        .await
        .expect("the gateway must end the client's stream cleanly");
    let payloads = strict_sse_payloads(&text);
    (rid, payloads, text)
}

/// A broken stream ends with one error event and then `[DONE]` (issue 5), so
/// clients raise the error and none waits for an end marker that never comes.
fn assert_error_event(payloads: &[String], code: &str, text: &str) {
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{text}"
    );
    assert_eq!(
        payloads.iter().filter(|p| *p == "[DONE]").count(),
        1,
        "{text}"
    );
    let payloads = &payloads[..payloads.len() - 1];
    let last: Value = serde_json::from_str(payloads.last().unwrap())
        .unwrap_or_else(|e| panic!("the last event is not JSON ({e}): {text}"));
    let err = &last["error"];
    assert!(err.is_object(), "the last event is not an error: {text}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    assert!(
        err["type"].as_str().is_some_and(|t| !t.is_empty()),
        "{text}"
    );
    assert_eq!(err["code"], code, "{text}");
    // Every event before it is an ordinary chunk.
    for p in &payloads[..payloads.len() - 1] {
        let v: Value = serde_json::from_str(p).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk", "{text}");
    }
}

#[tokio::test]
async fn an_upstream_connection_dropped_mid_stream_ends_with_an_error_event() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    // With a gap: the test mock (hyper) discards its buffered head and events when
    // the body fails before anything was flushed, so without pacing the gateway
    // would see a connection closed before any response (a 502, not a stream).
    let (rid, payloads, text) = read_stream(&gw, json!({"drop_after": 3, "gap_ms": 50})).await;
    // The three events the upstream did send, then the error and [DONE].
    assert_eq!(payloads.len(), 5, "{text}");
    assert_error_event(&payloads, "stream_interrupted", &text);
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "truncated", "{record}");
    assert_eq!(record["error_code"], "stream_interrupted", "{record}");
    assert_eq!(record["stream"], true, "{record}");
}

#[tokio::test]
async fn an_upstream_stream_without_done_ends_with_an_error_event() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let (rid, payloads, text) = read_stream(&gw, json!({"omit_done": true})).await;
    assert_error_event(&payloads, "stream_truncated", &text);
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "truncated", "{record}");
    assert_eq!(record["error_code"], "stream_truncated", "{record}");
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_upstream_at_once_and_is_recorded() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let c = client();
    let body = stream_body("gpt-4o-mini", json!({"chunks": 200, "gap_ms": 20}));
    let resp = send(&c, &gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    let mut stream = resp.bytes_stream();
    let mut seen = Vec::new();
    while seen.windows(2).filter(|w| w == b"\n\n").count() < 3 {
        let chunk = stream.next().await.unwrap().unwrap();
        seen.extend_from_slice(&chunk);
    }
    drop(stream);
    drop(c);
    let took = mock.wait_cancelled(1, Duration::from_secs(2)).await;
    let sent = mock.pieces_sent();
    assert!(
        sent < 100,
        "the upstream kept streaming after the client left: {sent} of ~203 pieces sent (cancel seen after {took:?})"
    );
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "client_disconnected", "{record}");
    assert_eq!(record["client_disconnected"], true, "{record}");
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["stream"], true, "{record}");
    assert_eq!(record["tenant"], "dental", "{record}");
    assert_eq!(gw.open_records(), 0, "the abandoned record stayed open");
    // Nothing more is sent once cancelled.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mock.pieces_sent(), sent, "the upstream is still being read");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_upstream_answers_is_recorded() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let rid = "it-streaming-left-early-1";
    let err = c
        .post(gw.url("/v1/chat/completions"))
        .header("host", ACME_HOST)
        .header("x-request-id", rid)
        .bearer_auth(ACME_DENTAL.2)
        .json(&stream_body("gpt-4o-mini", json!({"delay_ms": 800})))
        .send()
        .await
        .expect_err("the client gives up before the upstream answers");
    assert!(err.is_timeout(), "{err}");
    drop(c);
    let record = gw.usage_for(rid).await;
    assert_eq!(record["outcome"], "client_disconnected", "{record}");
    assert_eq!(record["client_disconnected"], true, "{record}");
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["stream"], true, "{record}");
    assert_eq!(record["requested_model"], "gpt-4o-mini", "{record}");
    // The provider had the request: the record names it and counts (at least)
    // the prompt, which the tenant's limits are charged for.
    assert_eq!(record["provider"], "upstream", "{record}");
    assert_eq!(record["estimated"], true, "{record}");
    assert!(record["prompt_tokens"].as_u64().unwrap() > 0, "{record}");
    assert_eq!(gw.open_records(), 0, "the abandoned record stayed open");
    // Written when the client left, not when the upstream eventually answered.
    assert!(
        record["latency_ms"].as_f64().unwrap() < 700.0,
        "the record was written late: {record}"
    );
    // Exactly once.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        gw.usage().iter().filter(|r| r["request_id"] == rid).count(),
        1
    );
}

/// An error the provider sends inside a stream that was already answering:
/// the client gets what came before it and the error in OpenAI's shape,
/// scrubbed of the provider's help site and request id, then `[DONE]`; the
/// record counts (estimates) the tokens the call spent instead of nothing,
/// so the tenant's token limits are charged for them too.
#[tokio::test]
async fn an_error_inside_a_stream_is_passed_on_scrubbed_and_its_usage_counted() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let body = stream_body("gpt-4o-mini", json!({"error_after": 3}));
    let resp = send(&client(), &gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    let text = resp.text().await.unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    assert!(data.len() >= 4, "{text}");
    let err: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["type"], "server_error", "{text}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("The server had an error"), "{message}");
    for leak in ["openai.com", "req_0123"] {
        assert!(!text.contains(leak), "{leak} reached the client: {text}");
    }
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "upstream_error", "{record}");
    assert_eq!(record["estimated"], true, "{record}");
    assert!(record["prompt_tokens"].as_u64().unwrap() > 0, "{record}");
    assert!(
        record["completion_tokens"].as_u64().unwrap() > 0,
        "{record}"
    );
}

#[tokio::test]
async fn an_upstream_error_on_a_stream_is_a_plain_openai_error() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let body = stream_body("gpt-4o-mini", json!({"status": 429, "retry_after": 7}));
    let resp = send(&client(), &gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 429);
    let rid = request_id_of(&resp);
    assert!(
        content_type(&resp).starts_with("application/json"),
        "an error before the stream started must be JSON, not SSE: {}",
        content_type(&resp)
    );
    assert_eq!(resp.headers().get("retry-after").unwrap(), "7");
    let text = resp.text().await.unwrap();
    assert!(!text.contains("data:"), "{text}");
    assert!(
        !text.contains("org-livery-mock"),
        "the upstream organisation reached the client: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let err = &v["error"];
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("Rate limit")),
        "{text}"
    );
    assert!(err["type"].is_string(), "{text}");
    assert_eq!(err["code"], "rate_limit_exceeded", "{text}");
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "upstream_error", "{record}");
    assert_eq!(record["status"], 429, "{record}");
    assert_eq!(record["stream"], true, "{record}");
}

#[tokio::test]
async fn the_builtin_mock_provider_streams_too() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let resp = send(
        &client(),
        &gw,
        "/v1/chat/completions",
        &stream_body("demo", Value::Null),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("text/event-stream"));
    let rid = request_id_of(&resp);
    let text = resp.text().await.unwrap();
    let chunks = complete_stream_chunks(&text, "chat.completion.chunk");
    assert!(usage_chunks(&chunks).is_empty(), "{text}");
    assert!(
        mock.requests().is_empty(),
        "`demo` must not reach the HTTP mock"
    );
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["provider"], "builtin", "{record}");
    assert_eq!(record["outcome"], "ok", "{record}");
    assert!(
        record["prompt_tokens"].as_u64().is_some_and(|n| n > 0),
        "{record}"
    );
    assert!(
        record["completion_tokens"].as_u64().is_some_and(|n| n > 0),
        "{record}"
    );
}

#[tokio::test]
async fn an_h2_stream_reset_by_the_client_cancels_the_upstream() {
    let mock = MockProvider::start().await;
    // Over h2 the reseller comes from `:authority`, here the listener's address.
    let base = standard_config(&mock.base_url(), "");
    let config = base.replace(
        r#"domains = ["ai.acme.test"]"#,
        r#"domains = ["ai.acme.test", "127.0.0.1"]"#,
    );
    assert_ne!(config, base, "the acme domains line was not found");
    let gw = TestGateway::start(&config).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let body = stream_body("gpt-4o-mini", json!({"chunks": 200, "gap_ms": 20}));
    let resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ACME_DENTAL.2)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    let mut stream = resp.bytes_stream();
    let mut seen = Vec::new();
    while seen.windows(2).filter(|w| *w == b"\n\n").count() < 3 {
        seen.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    // Only this stream is reset (RST_STREAM); the connection stays open.
    drop(stream);
    mock.wait_cancelled(1, Duration::from_secs(2)).await;
    assert!(
        mock.pieces_sent() < 100,
        "{} pieces sent",
        mock.pieces_sent()
    );
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "client_disconnected", "{record}");
    assert_eq!(record["status"], 499, "{record}");
    // The same connection still serves the next stream to its end.
    let resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ACME_DENTAL.2)
        .json(&stream_body("gpt-4o-mini", Value::Null))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    complete_stream_chunks(&text, "chat.completion.chunk");
}

#[tokio::test]
async fn an_azure_stream_records_the_model_of_its_answer_not_of_its_filter_chunk() {
    use crate::support::mock::{ReplayProvider, AZURE_STREAM_GPT4O};
    let azure = ReplayProvider::start(AZURE_STREAM_GPT4O).await;
    let gw = TestGateway::start(&standard_config(&azure.base_url(), "")).await;
    let resp = send(
        &client(),
        &gw,
        "/v1/chat/completions",
        &stream_body("gpt-4o-mini", Value::Null),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.contains("Hallo"), "{text}");
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_eq!(record["served_model"], "gpt-4o-2024-08-06", "{record}");
}

#[tokio::test]
async fn reasoning_deltas_count_in_the_estimated_completion() {
    use crate::support::mock::ReplayProvider;
    // A reasoning model's stream without a usage chunk (DeepSeek's
    // `reasoning_content`, OpenRouter's `reasoning`), then one word of answer.
    const SSE: &str = concat!(
        r#"data: {"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning_content":"The user wants a greeting, so I will say hello to the tests politely."},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"reasoning":" A short answer is best here."},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1,"model":"deepseek-reasoner","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":"stop"}]}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );
    let upstream = ReplayProvider::start(SSE).await;
    let gw = TestGateway::start(&standard_config(&upstream.base_url(), "")).await;
    let resp = send(
        &client(),
        &gw,
        "/v1/chat/completions",
        &stream_body("gpt-4o-mini", Value::Null),
    )
    .await;
    let rid = request_id_of(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_eq!(record["estimated"], true, "{record}");
    // "Hello" alone is one token; the reasoning is about twenty more.
    assert!(
        record["completion_tokens"].as_u64().is_some_and(|n| n > 15),
        "{record}"
    );
}
