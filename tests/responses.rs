//! OpenAI's Responses API, `POST /v1/responses`: forwarded to routes that
//! speak OpenAI's API with the model rewritten, the usage recorded exactly
//! from the answer (`input_tokens`, `output_tokens`) or from the stream's
//! `response.completed`, streams relayed event by event with their `event:`
//! names and no `[DONE]`, failures mid-stream ended with the API's own
//! `error` event, lifecycle events held back so that a route failing before
//! content falls back, and Anthropic routes skipped (or, alone, refused).

use crate::support::anthropic_mock::AnthropicMock;
use crate::support::*;
use serde_json::{json, Value};

async fn responses(gw: &TestGateway, body: &Value) -> reqwest::Response {
    post(
        gw,
        "/v1/responses",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        body,
    )
    .await
}

fn rid(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

fn body(model: &str) -> Value {
    json!({"model": model, "instructions": "Be brief.", "input": "Say hello to the tests."})
}

/// `(event name, data)` of a Responses stream, checking that every event is
/// named and that its data's `type` is its name.
fn events(text: &str) -> Vec<(String, Value)> {
    let events = named_events(text);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "{text}");
    }
    events
}

/// The standard configuration plus model `duo`: two routes on the OpenAI
/// mock (its `gpt-4o-mini-2024-07-18`, then `gpt-4o`), in plan `pro`.
fn duo_config(mock: &MockProvider) -> String {
    let pro = r#"models = ["gpt-4o-mini", "embed", "premium", "demo"]"#;
    let config = standard_config(&mock.base_url(), "");
    assert!(config.contains(pro), "standard config changed");
    let config = config.replacen(
        pro,
        r#"models = ["gpt-4o-mini", "embed", "premium", "demo", "duo"]"#,
        1,
    );
    format!(
        "{config}\n[[models]]\nname = \"duo\"\nroutes = [{{ provider = \"upstream\", model = \"gpt-4o-mini-2024-07-18\" }}, {{ provider = \"upstream\", model = \"gpt-4o\", priority = 1 }}]\n"
    )
}

#[tokio::test]
async fn a_response_is_forwarded_with_its_model_rewritten_and_its_usage_recorded() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let resp = responses(&gw, &body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "response", "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("Hello from the Livery mock"), "{v}");

    let up = mock.last_request();
    assert_eq!(up.path, "/v1/responses");
    assert_eq!(up.body["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(up.body["instructions"], "Be brief.");
    assert_eq!(
        up.headers["authorization"],
        format!("Bearer {PROVIDER_KEY}").as_str()
    );

    let r = gw.usage_for(&id).await;
    assert_eq!(r["endpoint"], "responses");
    assert_eq!(r["requested_model"], "gpt-4o-mini");
    assert_eq!(r["served_model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["prompt_tokens"], v["usage"]["input_tokens"]);
    assert_eq!(r["completion_tokens"], v["usage"]["output_tokens"]);
    assert_eq!(r["total_tokens"], v["usage"]["total_tokens"]);
    assert_eq!(r["estimated"], false);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_streamed_response_is_relayed_event_by_event_with_its_usage() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut b = body("gpt-4o-mini");
    b["stream"] = json!(true);
    let resp = responses(&gw, &b).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let id = rid(&resp);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    let evs = events(&text);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["response.created", "response.in_progress"]);
    assert_eq!(*names.last().unwrap(), "response.completed");
    let deltas: String = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], deltas.as_str());
    // Responses streams always end with their usage: nothing is asked for.
    let up = mock.last_request();
    assert_eq!(up.body["stream"], true);
    assert!(up.body.get("stream_options").is_none(), "{}", up.body);

    let r = gw.usage_for(&id).await;
    assert_eq!(r["stream"], true);
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["served_model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(r["prompt_tokens"], done["usage"]["input_tokens"]);
    assert_eq!(r["completion_tokens"], done["usage"]["output_tokens"]);
    assert_eq!(r["estimated"], false);
    gw.shutdown().await;
}

/// A stream that breaks off, or ends without its terminal event, ends with
/// the API's `error` event after the provider's last one; an `error` event
/// from the provider is passed on, scrubbed of its request id, and ends it.
/// None of them is recorded as a complete answer.
#[tokio::test]
async fn a_stream_that_fails_mid_way_ends_with_an_error_event() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for (directive, code, outcome) in [
        (json!({"drop_after": 6}), "stream_interrupted", "truncated"),
        (json!({"omit_done": true}), "stream_truncated", "truncated"),
        (json!({"error_after": 6}), "server_error", "upstream_error"),
    ] {
        let mut b = body("gpt-4o-mini");
        b["stream"] = json!(true);
        b["mock"] = directive.clone();
        let resp = responses(&gw, &b).await;
        assert_eq!(resp.status(), 200, "{directive}");
        let id = rid(&resp);
        let text = resp.text().await.unwrap();
        let evs = events(&text);
        let (name, last) = evs.last().unwrap();
        assert_eq!(name, "error", "{directive}: {text}");
        assert_eq!(last["code"], code, "{directive}: {text}");
        assert!(
            !last["message"].as_str().unwrap().contains("req_"),
            "{text}"
        );
        let before = evs[evs.len() - 2].1["sequence_number"].as_u64().unwrap();
        assert_eq!(last["sequence_number"], before + 1, "{text}");
        assert!(
            !evs.iter().any(|(n, _)| n == "response.completed"),
            "{text}"
        );
        assert!(evs.iter().any(|(n, _)| n == "response.output_text.delta"));
        let r = gw.usage_for(&id).await;
        assert_eq!(r["outcome"], outcome, "{directive}: {r}");
        assert_eq!(r["error_code"], code, "{directive}: {r}");
        assert!(r["completion_tokens"].as_u64() > Some(0), "{r}");
    }
    gw.shutdown().await;
}

/// `max_output_tokens` that cuts the answer: `response.incomplete` is the
/// stream's proper end, and the answer is served.
#[tokio::test]
async fn an_answer_cut_by_max_output_tokens_is_served_whole() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut b = body("gpt-4o-mini");
    b["max_output_tokens"] = json!(3);
    b["stream"] = json!(true);
    let resp = responses(&gw, &b).await;
    let id = rid(&resp);
    let evs = events(&resp.text().await.unwrap());
    let (name, last) = evs.last().unwrap();
    assert_eq!(name, "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    let r = gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["completion_tokens"], 3, "{r}");
    gw.shutdown().await;
}

/// A route refused before any content (a 429 answer, or, with
/// `stream_commit = "first_content"`, an `error` event after the lifecycle
/// events that were held back) falls back to the next; the client sees only
/// the second route's answer.
#[tokio::test]
async fn a_rate_limited_route_falls_back_to_the_next() {
    let mock = MockProvider::start().await;
    let config = duo_config(&mock);
    assert!(config.contains("[routing]\n"), "standard config changed");
    let config = config.replacen(
        "[routing]\n",
        "[routing]\nstream_commit = \"first_content\"\n",
        1,
    );
    let gw = TestGateway::start(&config).await;
    let only_first = |m: Value| {
        let mut m = m;
        m["only_for_model"] = json!("gpt-4o-mini-2024-07-18");
        m
    };
    for (stream, directive) in [
        (false, json!({"status": 429})),
        (true, json!({"status": 429})),
        (true, json!({"error_after": 2})),
    ] {
        let mut b = body("duo");
        b["stream"] = json!(stream);
        b["mock"] = only_first(directive.clone());
        let resp = responses(&gw, &b).await;
        assert_eq!(resp.status(), 200, "{directive}");
        let id = rid(&resp);
        let text = resp.text().await.unwrap();
        if stream {
            let evs = events(&text);
            assert_eq!(evs.last().unwrap().0, "response.completed", "{text}");
            assert!(evs.iter().all(|(n, _)| n != "error"), "{text}");
            assert!(
                evs.iter()
                    .all(|(_, d)| d.pointer("/response/model").is_none_or(|m| m == "gpt-4o")),
                "{text}"
            );
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["model"], "gpt-4o");
        }
        let r = gw.usage_for(&id).await;
        assert_eq!(r["served_model"], "gpt-4o", "{directive}: {r}");
        let attempts = r["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{directive}: {r}");
    }
    gw.shutdown().await;
}

/// On a model served by Anthropic only, the Responses API is refused (400
/// `unsupported_endpoint`, nothing sent); on one whose Anthropic route falls
/// back to an OpenAI one, that route serves it.
#[tokio::test]
async fn anthropic_routes_are_skipped_or_refused() {
    let openai = MockProvider::start().await;
    let claude = AnthropicMock::start(PROVIDER_KEY).await;
    let key_line = format!("api_key_env = \"{PROVIDER_KEY_ENV}\"");
    let config =
        crate::anthropic::anthropic_config(&openai.base_url(), &claude.base_url(), &key_line);
    let gw = TestGateway::start(&config).await;
    let resp = responses(&gw, &body("claude-sonnet")).await;
    assert_eq!(error_code(resp, 400).await, "unsupported_endpoint");
    let resp = responses(&gw, &body("smart")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
    assert!(claude.requests().is_empty());
    gw.shutdown().await;
}

/// Only creating a response is served: a stored response's retrieval,
/// deletion or cancellation is the gateway's 404 (which provider and key
/// stored it is not known here), and nothing reaches a provider.
#[tokio::test]
async fn stored_responses_are_not_served() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/responses/resp_abc"),
        (reqwest::Method::DELETE, "/v1/responses/resp_abc"),
        (reqwest::Method::POST, "/v1/responses/resp_abc/cancel"),
        (reqwest::Method::GET, "/v1/responses/resp_abc/input_items"),
    ] {
        let resp = client()
            .request(method.clone(), gw.url(path))
            .header("host", ACME_HOST)
            .bearer_auth(ACME_DENTAL.2)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unknown_url", "{method} {path}: {v}");
    }
    assert!(mock.requests().is_empty());
    gw.shutdown().await;
}

/// A background response is fetched later from `GET /v1/responses/{id}`,
/// which the gateway does not serve: it is refused up front, naming the
/// parameter, instead of being queued at the provider where the client could
/// never collect it.
#[tokio::test]
async fn a_background_response_is_refused_naming_the_parameter() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut b = body("gpt-4o-mini");
    b["background"] = json!(true);
    let resp = responses(&gw, &b).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unsupported_parameter", "{v}");
    assert_eq!(v["error"]["param"], "background", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(mock.requests().is_empty());
    let r = gw.usage_for(&id).await;
    assert_eq!(r["outcome"], "rejected", "{r}");
    // `background: false` is an ordinary request.
    b["background"] = json!(false);
    assert_eq!(responses(&gw, &b).await.status(), 200);
    gw.shutdown().await;
}
