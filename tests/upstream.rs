//! Point 5: what goes upstream (provider key injected, gateway key never
//! forwarded, body unchanged but for `model` and `stream_options`), what comes
//! back (identifying headers stripped, errors reshaped), timeouts, and h2c.

use crate::support::*;
use serde_json::{json, Value};

#[tokio::test]
async fn provider_key_replaces_gateway_key_and_only_model_is_rewritten() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut body = chat_body("gpt-4o-mini");
    body["temperature"] = json!(0.25);
    body["user"] = json!("end-user-7");
    body["tools"] =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .header("x-api-key", ACME_DENTAL.2)
        .header("openai-organization", "org-client")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = mock.last_request();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.headers.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {PROVIDER_KEY}")
    );
    let all_headers = format!("{:?}", seen.headers);
    assert!(
        !all_headers.contains(ACME_DENTAL.2),
        "gateway key leaked upstream: {all_headers}"
    );
    assert!(!all_headers.contains("org-client"));
    let mut expected = body.clone();
    expected["model"] = json!("gpt-4o-mini-2024-07-18");
    assert_eq!(seen.body, expected);
}

const IDENTIFYING: &[&str] = &[
    "server",
    "openai-organization",
    "openai-project",
    "openai-processing-ms",
    "openai-version",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-powered-by",
];

fn assert_white_label(headers: &reqwest::header::HeaderMap) {
    for name in IDENTIFYING {
        assert!(
            !headers.contains_key(*name),
            "upstream header `{name}` reached the client"
        );
    }
    let rid = headers.get("x-request-id").unwrap().to_str().unwrap();
    assert!(
        !rid.starts_with("req_"),
        "the provider's request id reached the client: {rid}"
    );
}

#[tokio::test]
async fn provider_identifying_headers_never_reach_the_client() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &chat_body("gpt-4o-mini"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_white_label(resp.headers());
    // The gateway's request id is the one the provider was sent, for correlation.
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(mock.last_request().headers["x-request-id"], rid.as_str());

    let mut stream = chat_body("gpt-4o-mini");
    stream["stream"] = json!(true);
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &stream,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_white_label(resp.headers());
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let _ = resp.text().await.unwrap();

    let mut failing = chat_body("gpt-4o-mini");
    failing["mock"] = json!({"status": 429});
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &failing,
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_white_label(resp.headers());
}

#[tokio::test]
async fn upstream_errors_keep_their_status_in_openai_shape_without_provider_details() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for (status, retry_after) in [
        (429u16, Some("3")),
        (400, None),
        (404, None),
        (500, Some("1")),
        (503, Some("1")),
    ] {
        let mut body = chat_body("gpt-4o-mini");
        body["mock"] = json!({"status": status, "retry_after": 3});
        let resp = post(
            &gw,
            "/v1/chat/completions",
            Some(ACME_HOST),
            Some(ACME_DENTAL.2),
            &body,
        )
        .await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            retry_after.map(|r| if status >= 500 { "3" } else { r }),
            "retry-after for {status}"
        );
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}"
        );
        assert!(err["type"].is_string(), "{text}");
        for leak in ["org-livery-mock", "req_0123", "openai.com"] {
            assert!(
                !text.contains(leak),
                "`{leak}` leaked in the {status} error: {text}"
            );
        }
        if status == 429 {
            assert_eq!(err["code"], "rate_limit_exceeded");
        }
        if status == 404 {
            assert_eq!(err["code"], "model_not_found");
        }
    }
}

#[tokio::test]
async fn reload_swaps_the_whole_snapshot_and_in_flight_streams_finish_on_the_old_one() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut slow = chat_body("gpt-4o-mini");
    slow["stream"] = json!(true);
    slow["mock"] = json!({"chunks": 6, "gap_ms": 100});
    let in_flight = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &slow,
    )
    .await;
    assert_eq!(in_flight.status(), 200);

    // The new configuration drops tenant `dental` and adds a new key to `realty`.
    let base = standard_config(&mock.base_url(), "");
    let next = base
        .replace(&hash(ACME_DENTAL.2), &hash("sk-acme-new-key"))
        .replace("id = \"dental\"", "id = \"dental-2\"");
    let mut config = livery::config::GatewayConfig::parse(&next).unwrap();
    config.usage.jsonl_path = Some(gw.usage_path.clone());
    gw.gateway.as_ref().unwrap().reload(&config).unwrap();

    let old = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &chat_body("gpt-4o-mini"),
    )
    .await;
    assert_eq!(old.status(), 401);
    let new = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some("sk-acme-new-key"),
        &chat_body("gpt-4o-mini"),
    )
    .await;
    assert_eq!(new.status(), 200);

    let text = in_flight.text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the in-flight stream was cut by the reload: {text}"
    );

    // An invalid configuration is refused and the running snapshot stays.
    let broken =
        livery::config::GatewayConfig::parse(&next.replace("plan = \"basic\"", "plan = \"nope\""))
            .unwrap();
    assert!(gw.gateway.as_ref().unwrap().reload(&broken).is_err());
    let still = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some("sk-acme-new-key"),
        &chat_body("gpt-4o-mini"),
    )
    .await;
    assert_eq!(still.status(), 200);
}

#[tokio::test]
async fn a_stream_that_stalls_is_cut_with_an_error_event_after_the_idle_timeout() {
    let mock = MockProvider::start().await;
    let config = standard_config(&mock.base_url(), "").replace(
        "stream_idle_timeout_ms = 3000",
        "stream_idle_timeout_ms = 300",
    );
    let gw = TestGateway::start(&config).await;
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    // The role chunk and one word, then silence.
    body["mock"] = json!({"chunks": 3, "stall_after": 2});
    let started = std::time::Instant::now();
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let text = resp.text().await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the stall was not cut: {:?}",
        started.elapsed()
    );
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{text}");
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["outcome"], "truncated");
    mock.wait_cancelled(1, std::time::Duration::from_secs(6))
        .await;
}

/// `http2_prior_knowledge`: requests and streams to a plain-HTTP provider go
/// over HTTP/2 (h2c) and share a connection instead of holding one each.
#[tokio::test]
async fn http2_prior_knowledge_multiplexes_upstream_requests_over_h2c() {
    let mock = MockProvider::start().await;
    let toml = standard_config(&mock.base_url(), "").replace(
        "first_byte_timeout_ms = 1500",
        "first_byte_timeout_ms = 1500\nhttp2_prior_knowledge = true",
    );
    assert!(toml.contains("http2_prior_knowledge = true"));
    let gw = TestGateway::start(&toml).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = gw.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let mut body = chat_body("gpt-4o-mini");
            body["stream"] = json!(i % 2 == 0);
            body["mock"] = json!({"gap_ms": 20, "chunks": 4});
            let resp = client()
                .post(url)
                .header("host", ACME_HOST)
                .bearer_auth(ACME_DENTAL.2)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        }));
    }
    for t in tasks {
        let text = t.await.unwrap();
        assert!(text.contains("chat.completion"), "{text}");
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|r| r.version == http::Version::HTTP_2));
    let connections = mock
        .state
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(connections, 1, "20 concurrent requests, one h2c connection");
}
