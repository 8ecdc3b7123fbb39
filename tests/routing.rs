//! Issue 5: routes, fallbacks, retries, circuit breakers and plan policies.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Two HTTP mocks (`first`, `second`) and a dead address (`dead`); model `chain`
/// tries first → second; `dead-first` tries dead → first.
async fn fallback_gateway(routing: &str) -> (TestGateway, MockProvider, MockProvider) {
    let first = MockProvider::start().await;
    let second = MockProvider::start().await;
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let extra = format!(
        r#"
{}first_byte_timeout_ms = 400
stream_idle_timeout_ms = 400

{}
[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:{dead_port}/v1"
connect_timeout_ms = 300

[[models]]
name = "chain"
routes = [{{ provider = "first", model = "first-model" }}, {{ provider = "second", model = "second-model", priority = 1 }}]

[[models]]
name = "dead-first"
routes = [{{ provider = "dead", model = "x" }}, {{ provider = "first", model = "first-model", priority = 1 }}]
"#,
        openai_provider("first", &first.base_url()),
        openai_provider("second", &second.base_url())
    );
    let gw = gateway_with(&first.base_url(), &extra, routing, &["chain", "dead-first"]).await;
    (gw, first, second)
}

/// The standard configuration against `mock_url` plus `extra` (providers and
/// models), with `routing` as its `[routing]` table and `models` added to the
/// plan.
async fn gateway_with(mock_url: &str, extra: &str, routing: &str, models: &[&str]) -> TestGateway {
    let plan = "models = [\"gpt-4o-mini\", \"embed\", \"premium\", \"demo\"";
    let added: String = models.iter().map(|m| format!(", \"{m}\"")).collect();
    let config = standard_config(mock_url, extra)
        .replace(
            "[routing]\nretries_per_route = 0\nbackoff_base_ms = 10\n",
            routing,
        )
        .replace(&format!("{plan}]"), &format!("{plan}{added}]"));
    TestGateway::start(&config).await
}

/// An OpenAI provider table for `name` at `base_url`, with the test key.
fn openai_provider(name: &str, base_url: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{base_url}\"\napi_key_env = \"{PROVIDER_KEY_ENV}\"\n"
    )
}

const NO_RETRY: &str = "[routing]\nretries_per_route = 0\nbackoff_base_ms = 10\n";

async fn chat(gw: &TestGateway, model: &str, mock: Value, stream: bool) -> reqwest::Response {
    let mut body = chat_body(model);
    body["mock"] = mock;
    if stream {
        body["stream"] = json!(true);
    }
    post(
        gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &body,
    )
    .await
}

fn outcomes(record: &Value) -> Vec<(String, String)> {
    record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap().to_owned(),
                a["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Fault directives that only the route serving `first-model` obeys.
fn on_first(fault: Value) -> Value {
    let mut f = fault;
    f["only_for_model"] = json!("first-model");
    f
}

#[tokio::test]
async fn every_fallback_cause_ends_in_one_clean_success_on_the_next_route() {
    // Twelve failures in a row would open the breaker; this test is about causes.
    let (gw, _first, second) =
        fallback_gateway("[routing]\nretries_per_route = 0\nbreaker_failures = 1000\n").await;
    let resp = chat(&gw, "chain", json!({}), false).await;
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await;
    assert!(
        second.requests().is_empty(),
        "a healthy first route must not fall back"
    );
    for (fault, cause) in [
        (json!({"status": 429, "retry_after": 1}), "rate_limited"),
        (json!({"status": 408}), "timeout"),
        (json!({"status": 500}), "server_error"),
        (json!({"status": 503}), "server_error"),
        (json!({"status": 529}), "overloaded"),
        (json!({"delay_ms": 1000}), "timeout"),
    ] {
        for stream in [false, true] {
            let resp = chat(&gw, "chain", on_first(fault.clone()), stream).await;
            let id = rid(&resp);
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert_eq!(status, 200, "{fault}: {text}");
            if stream {
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
                assert!(
                    !text.contains("error"),
                    "the failed attempt leaked into the stream: {text}"
                );
                assert!(text.contains("\"model\":\"second-model\""), "{text}");
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["object"], "chat.completion");
                assert_eq!(v["model"], "second-model", "served by the second route");
            }
            let record = gw.usage_for(&id).await;
            assert_eq!(
                outcomes(&record),
                pairs(&[("first", cause), ("second", "ok")]),
                "{fault}: {record}"
            );
            assert_eq!(record["provider"], "second");
            assert_eq!(record["outcome"], "ok");
        }
    }
}

#[tokio::test]
async fn connect_failures_and_streams_that_fail_before_content_fall_back() {
    let (gw, first, _second) =
        fallback_gateway(&format!("{NO_RETRY}stream_commit = \"first_content\"\n")).await;
    let resp = chat(&gw, "dead-first", json!({}), false).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[("dead", "connect_error"), ("first", "ok")])
    );
    assert_eq!(first.requests().len(), 1);

    // A stream that dies after its role chunk, before any content: invisible.
    for (fault, cause) in [
        (
            json!({"drop_after": 1, "gap_ms": 30}),
            "stream_failed_before_content",
        ),
        (json!({"stall_after": 1}), "stream_failed_before_content"),
    ] {
        let resp = chat(&gw, "chain", on_first(fault.clone()), true).await;
        let id = rid(&resp);
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(
            text.ends_with("data: [DONE]\n\n") && !text.contains("error"),
            "{fault}: {text}"
        );
        // One role chunk only: the failed route's held frames were never sent.
        assert_eq!(text.matches("\"role\":\"assistant\"").count(), 1, "{text}");
        assert_eq!(
            outcomes(&gw.usage_for(&id).await),
            pairs(&[("first", cause), ("second", "ok")])
        );
    }
}

/// A stream whose head came but whose first event does not within
/// `first_event_timeout_ms` (here well under the idle and header timeouts)
/// is cut and the next route serves it, the client none the wiser; with no
/// route left it is a 504 `upstream_timeout`.
#[tokio::test]
async fn a_stream_silent_before_its_first_event_falls_back_at_first_event_timeout() {
    let (gw, first, second) =
        fallback_gateway(&format!("{NO_RETRY}first_event_timeout_ms = 200\n")).await;
    let started = Instant::now();
    let resp = chat(&gw, "chain", on_first(json!({"stall_after": 0})), true).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let took = started.elapsed();
    assert!(
        text.ends_with("data: [DONE]\n\n") && !text.contains("error"),
        "{text}"
    );
    assert!(text.contains("\"model\":\"second-model\""), "{text}");
    // Not before the first-event timeout; its outcome (below) tells it from
    // the idle timeout (400 ms), which would be `stream_failed_before_content`.
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    let record = gw.usage_for(&id).await;
    assert_eq!(
        outcomes(&record),
        pairs(&[("first", "first_event_timeout"), ("second", "ok")]),
        "{record}"
    );
    assert_eq!((first.requests().len(), second.requests().len()), (1, 1));

    // Nothing else to try: the timeout is the answer.
    let mut body = chat_body("chain");
    body["stream"] = json!(true);
    body["mock"] = json!({"stall_after": 0});
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &body,
    )
    .await;
    let id = rid(&resp);
    assert_eq!(error_code(resp, 504).await, "upstream_timeout");
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[
            ("first", "first_event_timeout"),
            ("second", "first_event_timeout")
        ])
    );
}

#[tokio::test]
async fn by_default_a_stream_is_committed_at_its_first_event() {
    let (gw, _first, second) = fallback_gateway(NO_RETRY).await;
    // The role chunk went to the client at once; the break after it is shown
    // as an error event, and nothing is retried.
    let resp = chat(
        &gw,
        "chain",
        on_first(json!({"drop_after": 1, "gap_ms": 30})),
        true,
    )
    .await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert_eq!(text.matches("\"role\":\"assistant\"").count(), 1, "{text}");
    assert!(text.contains("\"code\":\"stream_interrupted\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let record = gw.usage_for(&id).await;
    assert_eq!(outcomes(&record), pairs(&[("first", "ok")]));
    assert_eq!(record["outcome"], "truncated");
    assert!(second.requests().is_empty());
}

#[tokio::test]
async fn a_client_error_is_returned_not_retried() {
    let (gw, first, second) =
        fallback_gateway("[routing]\nretries_per_route = 2\nbackoff_base_ms = 10\n").await;
    let resp = chat(&gw, "chain", on_first(json!({"status": 400})), false).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 400);
    assert_eq!(first.requests().len(), 1, "a 400 must not be retried");
    assert!(second.requests().is_empty(), "a 400 must not fall back");
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[("first", "client_error")])
    );
}

#[tokio::test]
async fn a_stream_that_breaks_after_content_ends_with_an_error_event_and_done_without_retry() {
    let (gw, first, second) =
        fallback_gateway("[routing]\nretries_per_route = 2\nbackoff_base_ms = 10\n").await;
    let resp = chat(
        &gw,
        "chain",
        on_first(json!({"drop_after": 3, "gap_ms": 30})),
        true,
    )
    .await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(5), resp.text())
        .await
        .expect("no hang")
        .unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "stream_interrupted");
    assert_eq!(first.requests().len(), 1);
    assert!(
        second.requests().is_empty(),
        "no retry after the first event went out"
    );
    let record = gw.usage_for(&id).await;
    assert_eq!(record["outcome"], "truncated");
    assert_eq!(outcomes(&record), pairs(&[("first", "ok")]));
}

#[tokio::test]
async fn retries_back_off_and_honour_retry_after_within_the_cap() {
    let (gw, first, second) = fallback_gateway(
        "[routing]\nretries_per_route = 2\nbackoff_base_ms = 10\nbackoff_max_ms = 20\nretry_after_cap_ms = 1500\n",
    )
    .await;
    // retry-after 1 s (under the cap): the route is retried after waiting it out.
    let started = Instant::now();
    let resp = chat(
        &gw,
        "chain",
        on_first(json!({"status": 429, "retry_after": 1})),
        false,
    )
    .await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "retry-after was not honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(first.requests().len(), 3);
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[
            ("first", "rate_limited"),
            ("first", "rate_limited"),
            ("first", "rate_limited"),
            ("second", "ok")
        ])
    );
    // retry-after 30 s (over the cap): straight to the next route.
    let started = Instant::now();
    let resp = chat(
        &gw,
        "chain",
        on_first(json!({"status": 429, "retry_after": 30})),
        false,
    )
    .await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[("first", "rate_limited"), ("second", "ok")])
    );
    let _ = second;
}

/// A retry-after the route may wait (under the cap) but the request's deadline
/// may not: the next route is tried at once, not the first route's error
/// returned.
#[tokio::test]
async fn a_wait_past_the_deadline_moves_on_to_the_next_route() {
    let (gw, first, second) = fallback_gateway(
        "[routing]\nretries_per_route = 1\nbackoff_base_ms = 10\nretry_after_cap_ms = 5000\nrequest_deadline_ms = 1500\n",
    )
    .await;
    let started = Instant::now();
    let resp = chat(
        &gw,
        "chain",
        on_first(json!({"status": 503, "retry_after": 2})),
        false,
    )
    .await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(first.requests().len(), 1);
    assert_eq!(second.requests().len(), 1);
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[("first", "server_error"), ("second", "ok")])
    );
    // A retry-after beyond any duration (it once panicked the request): too
    // long to wait, so the next route at once.
    let resp = chat(
        &gw,
        "chain",
        on_first(json!({"status": 429, "retry_after": u64::MAX})),
        false,
    )
    .await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[("first", "rate_limited"), ("second", "ok")])
    );
}

/// A breaker's probe that the provider answers with the client's error (a
/// 400) shows the provider up: the breaker closes, and the next request goes to
/// the route (the probe's slot stayed taken, and the route skipped, for
/// another cool-down).
#[tokio::test]
async fn a_probe_answered_with_a_client_error_closes_the_breaker() {
    let (gw, _first, _second) = fallback_gateway(
        "[routing]\nretries_per_route = 0\nbackoff_base_ms = 10\nbreaker_failures = 1\nbreaker_cooldown_ms = 300\n",
    )
    .await;
    let resp = chat(&gw, "chain", on_first(json!({"status": 500})), false).await;
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let resp = chat(&gw, "chain", on_first(json!({"status": 400})), false).await;
    assert_eq!(resp.status(), 400);
    let _ = resp.text().await;
    let resp = chat(&gw, "chain", json!({}), false).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[("first", "ok")])
    );
}

#[tokio::test]
async fn when_every_route_fails_the_last_error_is_returned_with_all_attempts() {
    let (gw, _first, _second) = fallback_gateway(NO_RETRY).await;
    // Both mocks obey an unscoped fault.
    let resp = chat(
        &gw,
        "chain",
        json!({"status": 503, "retry_after": 2}),
        false,
    )
    .await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    let _ = resp.text().await;
    let record = gw.usage_for(&id).await;
    assert_eq!(
        outcomes(&record),
        pairs(&[("first", "server_error"), ("second", "server_error")])
    );
    assert_eq!(record["outcome"], "upstream_error");
}

/// Retries stop at the deadline: 21 tries on each of two routes, with waits
/// of up to 200 ms between them, would take about 4 s; a 700 ms deadline
/// leaves room for a handful, whatever the host's speed.
#[tokio::test]
async fn no_request_outlives_its_deadline() {
    let (gw, first, second) = fallback_gateway("[routing]\nretries_per_route = 20\nbackoff_base_ms = 200\nbackoff_max_ms = 200\nrequest_deadline_ms = 700\n").await;
    let started = Instant::now();
    let resp = chat(&gw, "chain", json!({"status": 500}), false).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(resp.status().is_server_error());
    let tries = first.requests().len() + second.requests().len();
    assert!((1..42).contains(&tries), "{tries} tries");
    // A long stream is cut at the deadline with an error event and [DONE].
    let started = Instant::now();
    let resp = chat(&gw, "chain", json!({"chunks": 100, "gap_ms": 50}), true).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert!(
        text.contains("request_deadline_exceeded") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
}

/// A cool-down of 2 s: the checks that the breaker is open come well within
/// it on a loaded host, and the test waits for its end by watching the
/// breaker turn half-open (operators' readyz), not for a fixed time.
#[tokio::test]
async fn the_circuit_breaker_opens_skips_probes_and_closes() {
    let (gw, first, second) = fallback_gateway(
        "[routing]\nretries_per_route = 0\nbreaker_failures = 3\nbreaker_cooldown_ms = 2000\n",
    )
    .await;
    for _ in 0..3 {
        let resp = chat(&gw, "chain", on_first(json!({"status": 500})), false).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(first.requests().len(), 3);
    // Open: `first` is skipped without being called.
    let resp = chat(&gw, "chain", json!({}), false).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    assert_eq!(first.requests().len(), 3);
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[("first", "breaker_open"), ("second", "ok")])
    );
    let detail = readyz_detail(&gw).await;
    assert!(detail.contains("\"state\":\"open\""), "{detail}");
    // After the cool-down one probe goes through; it fails, so the breaker reopens.
    until_half_open(&gw).await;
    let resp = chat(&gw, "chain", on_first(json!({"status": 500})), false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(first.requests().len(), 4);
    let resp = chat(&gw, "chain", json!({}), false).await;
    assert_eq!(
        outcomes(&gw.usage_for(&rid(&resp)).await)[0].1,
        "breaker_open"
    );
    // Next probe succeeds: closed again.
    until_half_open(&gw).await;
    let resp = chat(&gw, "chain", json!({}), false).await;
    assert_eq!(
        outcomes(&gw.usage_for(&rid(&resp)).await),
        pairs(&[("first", "ok")])
    );
    let resp = chat(&gw, "chain", json!({}), false).await;
    assert_eq!(
        outcomes(&gw.usage_for(&rid(&resp)).await),
        pairs(&[("first", "ok")])
    );
    assert!(readyz_detail(&gw).await.contains("\"state\":\"closed\""));
    let _ = second;
}

/// Waits until the one breaker of `gw`, open, has turned half-open (its
/// cool-down over, the next request its probe); 20 s at most.
async fn until_half_open(gw: &TestGateway) {
    let start = Instant::now();
    loop {
        let detail = readyz_detail(gw).await;
        if detail.contains("\"state\":\"half_open\"") {
            return;
        }
        assert!(detail.contains("\"state\":\"open\""), "{detail}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the breaker stayed open: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz_detail(gw: &TestGateway) -> String {
    let resp = client()
        .get(gw.url("/readyz?detail=1"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

#[tokio::test]
async fn readyz_detail_is_for_operators_only() {
    let (gw, _first, _second) = fallback_gateway(NO_RETRY).await;
    // A breaker to show: `first` fails once and opens.
    let resp = chat(&gw, "chain", on_first(json!({"status": 500})), false).await;
    assert_eq!(resp.status(), 200);
    let operator = readyz_detail(&gw).await;
    assert!(
        operator.contains("breakers") && operator.contains("\"provider\":\"first\""),
        "{operator}"
    );
    for (what, headers) in non_operator_credentials() {
        let mut rb = client().get(gw.url("/readyz?detail=1"));
        for (name, value) in headers {
            rb = rb.header(name, value);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        let text = resp.text().await.unwrap();
        assert_eq!(text, r#"{"status":"ok"}"#, "{what}");
    }
}

#[tokio::test]
async fn weights_spread_load_among_routes_of_equal_priority() {
    let a = MockProvider::start().await;
    let b = MockProvider::start().await;
    let extra = format!(
        "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"{}\"\n\n[[providers]]\nname = \"b\"\nkind = \"openai\"\nbase_url = \"{}\"\n\n[[models]]\nname = \"spread\"\nroutes = [{{ provider = \"a\", weight = 3 }}, {{ provider = \"b\", weight = 1 }}]\n",
        a.base_url(),
        b.base_url()
    );
    let config = standard_config(&a.base_url(), &extra).replace(
        "models = [\"gpt-4o-mini\", \"embed\", \"premium\", \"demo\"]",
        "models = [\"gpt-4o-mini\", \"embed\", \"premium\", \"demo\", \"spread\"]",
    );
    let gw = TestGateway::start(&config).await;
    for _ in 0..200 {
        let resp = post(
            &gw,
            "/v1/chat/completions",
            Some(ACME_HOST),
            Some(ACME_DENTAL.2),
            &chat_body("spread"),
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    let (na, nb) = (a.requests().len(), b.requests().len());
    assert_eq!(na + nb, 200);
    // Expected 150/50; allow generous noise (p < 1e-6 to fail by chance).
    assert!((110..=185).contains(&na), "a={na} b={nb}");
}

#[tokio::test]
async fn a_plan_can_downgrade_instead_of_rejecting() {
    let mock = MockProvider::start().await;
    let config = standard_config(&mock.base_url(), "").replace(
        "name = \"basic\"\n",
        "name = \"basic\"\ndisallowed_model = \"downgrade\"\ndowngrade_to = \"gpt-4o-mini\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_REALTY.2),
        &chat_body("premium"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-livery-model"], "gpt-4o-mini");
    assert_eq!(resp.headers()["x-livery-downgraded-from"], "premium");
    let id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["model"], "gpt-4o-mini-2024-07-18",
        "the response tells the truth"
    );
    assert_eq!(mock.last_request().body["model"], "gpt-4o-mini-2024-07-18");
    let record = gw.usage_for(&id).await;
    assert_eq!(record["requested_model"], "premium");
    assert_eq!(record["served_model"], "gpt-4o-mini-2024-07-18");
    // Plan pro keeps premium.
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &chat_body("premium"),
    )
    .await;
    assert_eq!(resp.headers()["x-livery-model"], "premium");
    assert!(resp.headers().get("x-livery-downgraded-from").is_none());
}

#[tokio::test]
async fn azure_openai_routes_use_deployment_urls_api_version_and_the_api_key_header() {
    let mock = MockProvider::start().await;
    let extra = format!(
        "[[providers]]\nname = \"azure\"\nkind = \"azure_openai\"\nbase_url = \"http://{}\"\napi_key_env = \"{PROVIDER_KEY_ENV}\"\napi_version = \"2024-10-21\"\n\n[[models]]\nname = \"az\"\nprovider = \"azure\"\nupstream_model = \"gpt-4o-prod\"\n",
        mock.addr
    );
    let config = standard_config(&mock.base_url(), &extra).replace(
        "models = [\"gpt-4o-mini\", \"embed\", \"premium\", \"demo\"]",
        "models = [\"gpt-4o-mini\", \"embed\", \"premium\", \"demo\", \"az\"]",
    );
    let gw = TestGateway::start(&config).await;
    for stream in [false, true] {
        let mut body = chat_body("az");
        body["stream"] = json!(stream);
        let text = dental_chat(&gw, &body).await;
        assert!(!stream || text.ends_with("data: [DONE]\n\n"), "{text}");
        let seen = mock.last_request();
        assert_eq!(
            seen.path,
            "/openai/deployments/gpt-4o-prod/chat/completions"
        );
        assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
        assert_eq!(seen.headers["api-key"], PROVIDER_KEY);
        assert!(
            seen.headers.get("authorization").is_none(),
            "Azure takes the key in api-key only"
        );
    }
    let resp = post(
        &gw,
        "/v1/embeddings",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &json!({"model": "az", "input": "hi"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.last_request().path,
        "/openai/deployments/gpt-4o-prod/embeddings"
    );
    // The Responses API is on Azure's v1 API only: the deployment goes in
    // the body, and no api-version.
    let resp = post(
        &gw,
        "/v1/responses",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &json!({"model": "az", "input": "hi"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = mock.last_request();
    assert_eq!(seen.path, "/openai/v1/responses");
    assert_eq!(seen.query, None);
    assert_eq!(seen.body["model"], "gpt-4o-prod");
    assert_eq!(seen.headers["api-key"], PROVIDER_KEY);
}

#[tokio::test]
async fn metrics_count_attempts_and_breakers_for_operators_only() {
    let (gw, _first, _second) = fallback_gateway(
        "[routing]\nretries_per_route = 0\nbreaker_failures = 1\nbreaker_cooldown_ms = 60000\n",
    )
    .await;
    let resp = chat(&gw, "chain", on_first(json!({"status": 500})), false).await;
    assert_eq!(resp.status(), 200);
    for (what, headers) in non_operator_credentials() {
        let mut rb = client().get(gw.url("/metrics"));
        for (name, value) in headers {
            rb = rb.header(name, value);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(
            error_code(resp, 404).await,
            "unknown_url",
            "{what}: tenants and strangers do not see metrics"
        );
    }
    let text = operator_metrics(&gw).await;
    assert!(
        text.contains(
            "livery_upstream_attempts_total{provider=\"first\",outcome=\"server_error\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("livery_upstream_attempts_total{provider=\"second\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("livery_breaker_open{provider=\"first\",owner=\"platform\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("livery_responses_total{class=\"2xx\"}"),
        "{text}"
    );
    assert!(!text.contains("dental"), "tenant ids stay out of metrics");
}

/// Ways of asking for operator-only views that are not the operator's, each
/// a list of request headers: none, tenant keys in each header the gateway
/// reads keys from (and a key of another reseller), a wrong key, and the
/// operator's token where it does not count: in `x-api-key` or `api-key`
/// behind an `Authorization` that is not a bearer token (which is the one
/// read), or with another scheme.
fn non_operator_credentials() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let bearer = |k: &str| format!("Bearer {k}");
    vec![
        ("no key", vec![]),
        (
            "tenant bearer",
            vec![("authorization", bearer(ACME_DENTAL.2))],
        ),
        (
            "tenant x-api-key",
            vec![("x-api-key", ACME_DENTAL.2.to_owned())],
        ),
        (
            "tenant api-key",
            vec![("api-key", ACME_DENTAL.2.to_owned())],
        ),
        (
            "another reseller's tenant",
            vec![("authorization", bearer(GLOBEX_CLINIC.2))],
        ),
        ("wrong key", vec![("authorization", bearer("wrong"))]),
        (
            "operator token behind a Basic Authorization",
            vec![
                ("authorization", "Basic dXNlcjpwYXNz".to_owned()),
                ("x-api-key", OPERATOR_TOKEN.to_owned()),
                ("api-key", OPERATOR_TOKEN.to_owned()),
            ],
        ),
        (
            "operator token behind an empty Bearer",
            vec![
                ("authorization", "Bearer".to_owned()),
                ("x-api-key", OPERATOR_TOKEN.to_owned()),
            ],
        ),
        (
            "operator token under another scheme",
            vec![("authorization", format!("Token {OPERATOR_TOKEN}"))],
        ),
    ]
}

const ROUTING_KEK_ENV: &str = "LIVERY_TEST_ROUTING_KEK";

/// `key` sealed for `owner` and `provider` under KEK `routing-kek`
/// (from [`ROUTING_KEK_ENV`]).
fn seal_for(owner: &str, provider: &str, key: &str) -> String {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var(ROUTING_KEK_ENV, livery::vault::generate_kek().unwrap());
    });
    let mut ring = livery::vault::Keyring::default();
    ring.add(std::sync::Arc::new(
        livery::vault::EnvKek::load("routing-kek", ROUTING_KEK_ENV).unwrap(),
    ));
    ring.seal(
        &livery::vault::CredentialOwner::parse(owner).unwrap(),
        provider,
        key,
    )
    .unwrap()
    .to_sealed_string()
}

/// A tenant's own key (BYOK) that fails opens the breaker of that tenant's
/// key alone: /metrics shows it as owner kind `tenant`, never naming the
/// tenant or its reseller, and the platform's key on the same provider
/// still serves other tenants.
#[tokio::test]
async fn metrics_show_a_tenants_own_breaker_by_owner_kind_without_naming_it() {
    let first = MockProvider::start().await;
    let second = MockProvider::start().await;
    let extra = format!(
        "{}{}\n[[models]]\nname = \"chain\"\nroutes = [{{ provider = \"first\", model = \"first-model\" }}, {{ provider = \"second\", model = \"second-model\", priority = 1 }}]\n",
        openai_provider("first", &first.base_url()),
        openai_provider("second", &second.base_url())
    );
    let own_key = "sk-fake-test-dental-own-first";
    let hash_line = format!("key_hashes = [\"{}\"]", hash(ACME_DENTAL.2));
    let config = standard_config(&first.base_url(), &extra)
        .replace(
            "[routing]\nretries_per_route = 0\nbackoff_base_ms = 10\n",
            "[routing]\nretries_per_route = 0\nbreaker_failures = 1\nbreaker_cooldown_ms = 60000\n",
        )
        .replace(
            "models = [\"gpt-4o-mini\", \"embed\", \"premium\", \"demo\"]",
            "models = [\"gpt-4o-mini\", \"embed\", \"premium\", \"demo\", \"chain\"]",
        )
        .replace(
            &hash_line,
            &format!(
                "{hash_line}\ncredentials = {{ first = \"{}\" }}",
                seal_for("tenant:acme/dental", "first", own_key)
            ),
        )
        + &format!(
            "\n[vault]\n[[vault.keks]]\nid = \"routing-kek\"\nenv = \"{ROUTING_KEK_ENV}\"\n"
        );
    assert!(config.contains("credentials = { first"));
    let gw = TestGateway::start(&config).await;
    let resp = chat(&gw, "chain", on_first(json!({"status": 500})), false).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    let record = gw.usage_for(&id).await;
    assert_eq!(
        outcomes(&record),
        pairs(&[("first", "server_error"), ("second", "ok")])
    );
    assert_eq!(
        first.last_request().headers["authorization"],
        format!("Bearer {own_key}").as_str(),
        "the tenant's own key was tried"
    );
    // Dental's key on `first` is now skipped; globex's clinic, on the
    // platform's key, is still served by `first`.
    let resp = chat(&gw, "chain", json!({}), false).await;
    assert_eq!(
        outcomes(&gw.usage_for(&rid(&resp)).await),
        pairs(&[("first", "breaker_open"), ("second", "ok")])
    );
    let mut body = chat_body("chain");
    body["mock"] = json!({});
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(GLOBEX_HOST),
        Some(GLOBEX_CLINIC.2),
        &body,
    )
    .await;
    assert_eq!(
        outcomes(&gw.usage_for(&rid(&resp)).await),
        pairs(&[("first", "ok")])
    );

    let text = operator_metrics(&gw).await;
    for line in [
        "livery_breaker_open{provider=\"first\",owner=\"tenant\"} 1",
        "livery_breaker_opened_total{provider=\"first\",owner=\"tenant\"} 1",
    ] {
        assert!(text.contains(line), "`{line}` missing: {text}");
    }
    assert!(
        !text.contains("livery_breaker_open{provider=\"first\",owner=\"platform\"} 1"),
        "{text}"
    );
    for name in ["dental", "acme", "globex", "clinic", own_key] {
        assert!(!text.contains(name), "`{name}` in the metrics: {text}");
    }
    // The operator's detailed view does name the owner.
    assert!(
        readyz_detail(&gw).await.contains("tenant:acme/dental"),
        "the breaker is the tenant's own"
    );
}

/// An h2c server that sheds each connection at its first request, as a server
/// does after a burst of stream resets: GOAWAY `ENHANCE_YOUR_CALM`, then closed.
async fn shedding_h2c_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                if let Some(Ok((_request, _respond))) = conn.accept().await {
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    while conn.accept().await.is_some() {}
                }
            });
        }
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_provider_connection_that_goes_away_does_not_open_the_breaker() {
    let first = MockProvider::start().await;
    let shedding = shedding_h2c_server().await;
    let extra = format!(
        r#"
{}
{}http2_prior_knowledge = true

[[models]]
name = "shed-first"
routes = [{{ provider = "shedding", model = "x" }}, {{ provider = "first", model = "first-model", priority = 1 }}]
"#,
        openai_provider("first", &first.base_url()),
        openai_provider("shedding", &shedding)
    );
    let gw = gateway_with(
        &first.base_url(),
        &extra,
        "[routing]\nretries_per_route = 0\nbreaker_failures = 2\nbreaker_cooldown_ms = 60000\n",
        &["shed-first"],
    )
    .await;
    // Twice the breaker's threshold: every request still tries `shedding`
    // (its GOAWAY says nothing about its health) and falls back to `first`.
    for _ in 0..4 {
        let resp = chat(&gw, "shed-first", json!({}), false).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            outcomes(&gw.usage_for(&rid(&resp)).await),
            pairs(&[("shedding", "upstream_goaway"), ("first", "ok")])
        );
    }
    let detail = readyz_detail(&gw).await;
    assert!(!detail.contains("\"state\":\"open\""), "{detail}");
}

/// A failure of the route's own setup under the gateway's key (its key
/// refused, a model the provider does not serve, its account out of credit)
/// goes to the next route at once: the same answer would come on every retry.
/// A 404 does not count against the provider's breaker (its other models
/// answer).
#[tokio::test]
async fn the_gateways_route_faults_fall_back_without_retrying_the_route() {
    let (gw, first, second) = fallback_gateway(
        "[routing]\nretries_per_route = 2\nbackoff_base_ms = 10\nbreaker_failures = 1\n",
    )
    .await;
    let (quota_gw, quota_first, quota_second) =
        fallback_gateway("[routing]\nretries_per_route = 2\nbackoff_base_ms = 10\n").await;
    for (gw, first, second, fault, cause) in [
        (&gw, &first, &second, json!({"status": 404}), "client_error"),
        (
            &quota_gw,
            &quota_first,
            &quota_second,
            json!({"status": 429, "error": "insufficient_quota"}),
            "rate_limited",
        ),
    ] {
        let before = (first.requests().len(), second.requests().len());
        let resp = chat(gw, "chain", on_first(fault.clone()), false).await;
        let id = rid(&resp);
        assert_eq!(resp.status(), 200, "{fault}");
        assert_eq!(first.requests().len(), before.0 + 1, "{fault}: retried");
        assert_eq!(second.requests().len(), before.1 + 1, "{fault}");
        assert_eq!(
            outcomes(&gw.usage_for(&id).await),
            pairs(&[("first", cause), ("second", "ok")]),
            "{fault}"
        );
        if fault["status"] == 404 {
            // Not the provider's health: the next request still tries it.
            let resp = chat(gw, "chain", json!({}), false).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(
                first.requests().len(),
                before.0 + 2,
                "breaker opened by a 404"
            );
        }
    }
    // The gateway's key refused: the breaker (one failure) opens too.
    let before = first.requests().len();
    let resp = chat(&gw, "chain", on_first(json!({"status": 401})), false).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        outcomes(&gw.usage_for(&id).await),
        pairs(&[("first", "client_error"), ("second", "ok")])
    );
    assert_eq!(first.requests().len(), before + 1);
    let resp = chat(&gw, "chain", json!({}), false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        first.requests().len(),
        before + 1,
        "the breaker stayed closed"
    );
    gw.shutdown().await;
}

/// When every route fails so, the tenant is told the gateway's side failed,
/// without the provider's words (its message names the route's upstream model,
/// or sends the tenant to check its own billing).
#[tokio::test]
async fn the_gateways_route_faults_are_not_passed_on_as_the_tenants() {
    let (gw, _first, _second) = fallback_gateway(NO_RETRY).await;
    for (fault, status, code) in [
        (json!({"status": 404}), 502, "upstream_model_unavailable"),
        (
            json!({"status": 429, "error": "insufficient_quota"}),
            503,
            "upstream_quota_exhausted",
        ),
    ] {
        let resp = chat(&gw, "chain", fault.clone(), false).await;
        assert_eq!(resp.status().as_u16(), status, "{fault}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        for word in ["second-model", "first-model", "billing", "quota, please"] {
            assert!(!message.contains(word), "{word} in {message}");
        }
    }
    gw.shutdown().await;
}

/// An error body longer than the gateway reads is still the provider's answer
/// with its status: a 400 is the client's, not retried nor fallen back from.
#[tokio::test]
async fn a_long_client_error_body_keeps_its_status() {
    let (gw, first, second) =
        fallback_gateway("[routing]\nretries_per_route = 2\nbackoff_base_ms = 10\n").await;
    let resp = chat(
        &gw,
        "chain",
        on_first(json!({"status": 400, "error_pad": 100_000})),
        false,
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(first.requests().len(), 1);
    assert!(second.requests().is_empty());
    gw.shutdown().await;
}

/// A success whose body breaks off after its head is not sent again: the
/// provider did (and billed) the work. The client gets a 502 and the record
/// keeps the call as served, with its usage estimated.
#[tokio::test]
async fn a_success_whose_body_breaks_is_not_sent_again() {
    let (gw, first, second) =
        fallback_gateway("[routing]\nretries_per_route = 2\nbackoff_base_ms = 10\n").await;
    let resp = chat(&gw, "chain", on_first(json!({"drop_after": 0})), false).await;
    let id = rid(&resp);
    assert_eq!(resp.status(), 502);
    assert_eq!(first.requests().len(), 1);
    assert!(second.requests().is_empty());
    let record = gw.usage_for(&id).await;
    assert_eq!(record["error_code"], "upstream_incomplete", "{record}");
    assert_eq!(record["outcome"], "truncated", "{record}");
    assert_eq!(record["provider"], "first", "{record}");
    assert_eq!(record["estimated"], true, "{record}");
    assert!(record["prompt_tokens"].as_u64() > Some(0), "{record}");
    gw.shutdown().await;
}

/// Azure's content filter says which category stopped the prompt; the detail
/// reaches the client (apps read `innererror.content_filter_result`).
#[tokio::test]
async fn a_content_filter_refusal_keeps_its_detail() {
    let (gw, _first, second) = fallback_gateway(NO_RETRY).await;
    let resp = chat(
        &gw,
        "chain",
        on_first(json!({"status": 400, "error": "content_filter"})),
        false,
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "content_filter", "{v}");
    assert_eq!(
        v["error"]["innererror"]["content_filter_result"]["jailbreak"]["filtered"], true,
        "{v}"
    );
    assert!(second.requests().is_empty());
    gw.shutdown().await;
}
