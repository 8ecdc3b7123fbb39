//! OpenAI's Responses API, `POST /v1/responses`: forwarded to routes that
//! speak OpenAI's API with the model rewritten, the usage recorded exactly
//! from the answer (`input_tokens`, `output_tokens`) or from the stream's
//! `response.completed`, streams relayed event by event with their `event:`
//! names and no `[DONE]`, failures mid-stream ended with the API's own
//! `error` event, lifecycle events held back so that a route failing before
//! content falls back, and Anthropic routes served through Messages.

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
    let (id, text) = streamed(responses(&gw, &b).await).await;
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

/// On an Anthropic route a response is made through Messages: instructions
/// and input become `system` and messages, `max_output_tokens` becomes
/// `max_tokens`, and Claude's answer comes back as a `response` with its
/// text as an `output_text`, its usage (cache reads and writes included) in
/// the answer and in the usage record.
#[tokio::test]
async fn an_anthropic_route_makes_a_response_through_messages() {
    let (gw, openai, claude) = crate::sdk::anthropic_gateway().await;
    let mut b = body("claude-sonnet");
    b["max_output_tokens"] = json!(200);
    b["metadata"] = json!({"ticket": "42"});
    let resp = responses(&gw, &b).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "response", "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["role"], "assistant");
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("It's 18 °C with light rain in Paris"),
        "{v}"
    );
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["usage"]["input_tokens"], 1716, "{v}");
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 1111);
    assert_eq!(v["usage"]["output_tokens"], 33);
    assert_eq!(v["usage"]["total_tokens"], 1749);
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(v["max_output_tokens"], 200);
    assert_eq!(v["metadata"]["ticket"], "42");
    assert_eq!(v["store"], false);

    let up = claude.last_request();
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(up.body["model"], "claude-sonnet-4-5");
    assert_eq!(up.body["max_tokens"], 200);
    assert_eq!(up.body["system"][0]["text"], "Be brief.");
    assert_eq!(
        up.body["messages"],
        json!([{"role": "user", "content": "Say hello to the tests."}])
    );
    assert!(up.body.get("metadata").is_none(), "{}", up.body);
    assert!(openai.requests().is_empty());
    let r = gw.usage_for(&id).await;
    assert_eq!(r["endpoint"], "responses");
    assert_eq!(r["provider"], "claude");
    assert_eq!(r["served_model"], "claude-sonnet-4-5-20250929");
    assert_eq!(r["prompt_tokens"], 1716);
    assert_eq!(r["cached_tokens"], 1111);
    assert_eq!(r["completion_tokens"], 33);
    gw.shutdown().await;
}

/// Streamed, Claude's events become the Responses API's, in order and
/// numbered, ending with `response.completed` and its usage, which the
/// record takes; a function tool is sent as Claude's tool and its
/// `tool_use` comes back as a `function_call` item, streamed and not.
#[tokio::test]
async fn an_anthropic_route_streams_a_response_and_calls_functions() {
    let (gw, _openai, claude) = crate::sdk::anthropic_gateway().await;
    let mut b = body("claude-sonnet");
    b["stream"] = json!(true);
    let (id, text) = streamed(responses(&gw, &b).await).await;
    let evs = events(&text);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ],
        "{text}"
    );
    assert_eq!(names.last(), Some(&"response.completed"), "{text}");
    for (i, (_, d)) in evs.iter().enumerate() {
        assert_eq!(d["sequence_number"], i as u64, "{text}");
    }
    let deltas: String = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], deltas.as_str());
    assert!(!deltas.is_empty());
    assert_eq!(done["usage"]["input_tokens"], 20, "{text}");
    assert_eq!(done["usage"]["output_tokens"], 5, "{text}");
    assert!(
        !text.contains("livery-prompt-usage") && !text.contains("[DONE]"),
        "{text}"
    );
    let r = gw.usage_for(&id).await;
    assert_eq!(r["endpoint"], "responses");
    assert_eq!(
        (r["prompt_tokens"].as_u64(), r["completion_tokens"].as_u64()),
        (Some(20), Some(5)),
        "{r}"
    );
    assert_eq!(r["outcome"], "ok", "{r}");

    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    for stream in [false, true] {
        let mut b = body("claude-sonnet");
        b["tools"] = tools.clone();
        b["tool_choice"] = json!("required");
        b["stream"] = json!(stream);
        let resp = responses(&gw, &b).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let done = if stream {
            let evs = events(&text);
            assert!(
                evs.iter()
                    .any(|(n, _)| n == "response.function_call_arguments.delta"),
                "{text}"
            );
            evs.last().unwrap().1["response"].clone()
        } else {
            serde_json::from_str(&text).unwrap()
        };
        let call = done["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "function_call")
            .unwrap_or_else(|| panic!("no function_call: {done}"))
            .clone();
        assert_eq!(call["name"], "get_weather");
        assert!(
            call["call_id"].as_str().unwrap().starts_with("toolu_"),
            "{call}"
        );
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["city"], "Paris", "{call}");
        let up = claude.last_request();
        assert_eq!(up.body["tools"][0]["name"], "get_weather");
        assert_eq!(
            up.body["tools"][0]["input_schema"]["required"],
            json!(["city"])
        );
        assert_eq!(up.body["tool_choice"]["type"], "any");
    }
    gw.shutdown().await;
}

/// A tool's result goes back as Claude's `tool_result`, after the call it
/// answers; what Messages cannot express is refused before anything is sent;
/// Claude's 529 falls back to the model's next route as on any endpoint.
#[tokio::test]
async fn an_anthropic_route_takes_tool_results_refuses_what_it_cannot_and_falls_back() {
    let (gw, openai, claude) = crate::sdk::anthropic_gateway().await;
    let mut b = body("claude-sonnet");
    b["input"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "toolu_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call_output", "call_id": "toolu_1", "output": "18C, light rain"}
    ]);
    let resp = responses(&gw, &b).await;
    assert_eq!(resp.status(), 200);
    let up = claude.last_request();
    let messages = up.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{}", up.body);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"][0]["type"], "tool_use");
    assert_eq!(messages[1]["content"][0]["id"], "toolu_1");
    assert_eq!(messages[1]["content"][0]["input"]["city"], "Paris");
    assert_eq!(messages[2]["role"], "user");
    assert_eq!(messages[2]["content"][0]["type"], "tool_result");
    assert_eq!(messages[2]["content"][0]["tool_use_id"], "toolu_1");

    let before = claude.requests().len();
    for (edit, code) in [
        (
            json!({"previous_response_id": "resp_abc"}),
            "unsupported_parameter",
        ),
        (
            json!({"tools": [{"type": "web_search"}]}),
            "unsupported_value",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]}),
            "unsupported_value",
        ),
    ] {
        let mut b = body("claude-sonnet");
        for (k, v) in edit.as_object().unwrap() {
            b[k] = v.clone();
        }
        let resp = responses(&gw, &b).await;
        assert_eq!(error_code(resp, 400).await, code, "{edit}");
    }
    assert_eq!(
        claude.requests().len(),
        before,
        "nothing sent for a refused request"
    );

    // `smart`: Claude first, then the OpenAI mock.
    claude.push_fault(crate::support::anthropic_mock::Fault::Status {
        status: 529,
        retry_after: None,
    });
    let resp = responses(&gw, &body("smart")).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18", "{v}");
    assert_eq!(openai.last_request().path, "/v1/responses");
    let r = gw.usage_for(&id).await;
    let outcomes: Vec<&str> = r["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["overloaded", "ok"], "{r}");
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

/// A Claude stream that fails or breaks off mid-way ends as any Responses
/// stream does: with the API's `error` event (Claude's error, or the
/// gateway's `stream_interrupted`), never a `response.completed`, and the
/// record says so.
#[tokio::test]
async fn an_anthropic_stream_that_fails_mid_way_ends_with_an_error_event() {
    use crate::support::anthropic_mock::Fault;
    let (gw, _openai, claude) = crate::sdk::anthropic_gateway().await;
    for (fault, code, outcome) in [
        (Fault::StreamError, "overloaded", "upstream_error"),
        (Fault::DropAfter(6), "stream_interrupted", "truncated"),
    ] {
        let what = format!("{fault:?}");
        claude.push_fault(fault);
        let mut b = body("claude-sonnet");
        b["stream"] = json!(true);
        let resp = responses(&gw, &b).await;
        assert_eq!(resp.status(), 200, "{what}");
        let id = rid(&resp);
        let text = resp.text().await.unwrap();
        let evs = events(&text);
        let (name, last) = evs.last().unwrap();
        assert_eq!(name, "error", "{what}: {text}");
        assert_eq!(last["code"], code, "{what}: {text}");
        assert!(
            evs.iter().any(|(n, _)| n == "response.output_text.delta"),
            "{what}: {text}"
        );
        assert!(
            !evs.iter().any(|(n, _)| n == "response.completed"),
            "{what}: {text}"
        );
        let r = gw.usage_for(&id).await;
        assert_eq!(r["outcome"], outcome, "{what}: {r}");
    }
    gw.shutdown().await;
}
