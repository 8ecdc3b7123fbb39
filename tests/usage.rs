//! Point 7: every finished request of a known tenant produces exactly one usage
//! record (success or error, streamed or not), with the upstream's token counts;
//! requests refused before a tenant is known produce none; the usage file never
//! holds a key; records written before shutdown returns are all in the file.

use crate::support::*;
use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// POSTs `body` to `path` on `addr` as tenant acme/dental, with an optional
/// client-chosen request id.
async fn post_to(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    rid: Option<&str>,
) -> reqwest::Response {
    let mut rb = client()
        .post(format!("http://{addr}{path}"))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .json(body);
    if let Some(r) = rid {
        rb = rb.header("x-request-id", r);
    }
    rb.send().await.unwrap()
}

async fn post_acme(gw: &TestGateway, path: &str, body: &Value) -> reqwest::Response {
    post_to(gw.addr, path, body, None).await
}

fn request_id_of(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

fn with_mock(mut body: Value, mock: Value) -> Value {
    body["mock"] = mock;
    body
}

/// Waits until the usage file holds at least `n` records, then a little longer
/// for stragglers, and returns them.
async fn settled_usage(path: &Path, n: usize) -> Vec<Value> {
    let start = Instant::now();
    while read_usage(path).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "only {} of {n} usage records were written",
            read_usage(path).len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    read_usage(path)
}

/// Records of `rid` once the file has settled (waits for at least one).
async fn records_of(gw: &TestGateway, rid: &str) -> Vec<Value> {
    gw.usage_for(rid).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.usage()
        .into_iter()
        .filter(|r| r["request_id"] == rid)
        .collect()
}

async fn one_record_of(gw: &TestGateway, rid: &str) -> Value {
    let mut records = records_of(gw, rid).await;
    assert_eq!(
        records.len(),
        1,
        "expected one record for {rid}: {records:?}"
    );
    records.pop().unwrap()
}

#[tokio::test]
async fn a_successful_request_is_recorded_with_the_upstreams_numbers() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut body = chat_body("gpt-4o-mini");
    body["mock"] = json!({"chunks": 9});
    let resp = post_acme(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    let answer: Value = resp.json().await.unwrap();
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    let completion = answer["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(completion, 9);

    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["request_id"], rid.as_str());
    // The request id (fresh, a UUIDv7) and `ts` come from one clock read,
    // and the event id and `ended_at` from another.
    let millis = |t: &Value| {
        let t = time::OffsetDateTime::parse(
            t.as_str().expect("a timestamp"),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        (t.unix_timestamp_nanos() / 1_000_000) as u64
    };
    let uuid_millis = |id: &Value| {
        let (secs, nanos) = uuid::Uuid::parse_str(id.as_str().unwrap())
            .unwrap()
            .get_timestamp()
            .expect("a UUIDv7")
            .to_unix();
        secs * 1000 + u64::from(nanos) / 1_000_000
    };
    assert_eq!(uuid_millis(&r["request_id"]), millis(&r["ts"]), "{r}");
    assert_eq!(uuid_millis(&r["event_id"]), millis(&r["ended_at"]), "{r}");
    assert!(millis(&r["ts"]) <= millis(&r["ended_at"]), "{r}");
    assert_eq!(r["reseller"], "acme", "{r}");
    assert_eq!(r["tenant"], "dental", "{r}");
    assert_eq!(r["endpoint"], "chat.completions", "{r}");
    assert_eq!(r["requested_model"], "gpt-4o-mini", "{r}");
    assert_eq!(r["served_model"], answer["model"], "{r}");
    assert_eq!(r["served_model"], "gpt-4o-mini-2024-07-18", "{r}");
    assert_eq!(r["provider"], "upstream", "{r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert!(r["error_code"].is_null(), "{r}");
    assert_eq!(r["prompt_tokens"], prompt, "{r}");
    assert_eq!(r["completion_tokens"], completion, "{r}");
    assert_eq!(r["stream"], false, "{r}");
    assert_eq!(r["client_disconnected"], false, "{r}");
    let latency = r["latency_ms"].as_f64().expect("latency_ms");
    let ttfb = r["ttfb_ms"].as_f64().expect("ttfb_ms");
    assert!(
        ttfb >= 0.0 && latency >= ttfb,
        "latency {latency} ttfb {ttfb}: {r}"
    );
}

#[tokio::test]
async fn a_streamed_request_records_latency_and_time_to_first_byte() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    body["mock"] = json!({"delay_ms": 200, "gap_ms": 40, "chunks": 10});
    let resp = post_acme(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["stream"], true, "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["completion_tokens"], 10, "{r}");
    let latency = r["latency_ms"].as_f64().unwrap();
    let ttfb = r["ttfb_ms"].as_f64().expect("ttfb_ms of a stream");
    // First byte after the upstream's 200 ms delay; the end ~12 gaps later.
    assert!(ttfb >= 190.0, "ttfb {ttfb}: {r}");
    assert!(
        latency >= ttfb + 300.0,
        "latency {latency} ttfb {ttfb}: {r}"
    );
}

#[tokio::test]
async fn embeddings_are_recorded_and_base64_vectors_pass_through() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let body =
        json!({"model": "embed", "input": ["The quick brown fox", "jumps over the lazy dog"]});
    let resp = post_acme(&gw, "/v1/embeddings", &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 1536);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["endpoint"], "embeddings", "{r}");
    assert_eq!(r["requested_model"], "embed", "{r}");
    assert_eq!(r["served_model"], "text-embedding-3-small", "{r}");
    assert_eq!(r["prompt_tokens"], prompt, "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["stream"], false, "{r}");

    // What the Python SDK sends by default.
    let body = json!({"model": "embed", "input": "hello", "encoding_format": "base64"});
    let resp = post_acme(&gw, "/v1/embeddings", &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id_of(&resp);
    assert_eq!(mock.last_request().body["encoding_format"], "base64");
    let v: Value = resp.json().await.unwrap();
    let b64 = v["data"][0]["embedding"]
        .as_str()
        .unwrap_or_else(|| panic!("a base64 embedding is a string: {v}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("valid base64");
    assert_eq!(bytes.len(), 1536 * 4);
    let norm: f32 = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-3,
        "the vector was mangled: norm {norm}"
    );
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["prompt_tokens"], v["usage"]["prompt_tokens"], "{r}");
}

#[tokio::test]
async fn upstream_errors_are_recorded_once() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let resp = post_acme(
        &gw,
        "/v1/chat/completions",
        &with_mock(chat_body("gpt-4o-mini"), json!({"status": 500})),
    )
    .await;
    let rid = request_id_of(&resp);
    error_code(resp, 500).await;
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["outcome"], "upstream_error", "{r}");
    assert_eq!(r["status"], 500, "{r}");
    assert!(
        r["error_code"].as_str().is_some_and(|c| !c.is_empty()),
        "{r}"
    );
    assert_eq!(r["tenant"], "dental", "{r}");
    assert_eq!(r["provider"], "upstream", "{r}");

    // The provider refuses the platform's key: not the tenant's fault, so not a 401.
    let resp = post_acme(
        &gw,
        "/v1/chat/completions",
        &with_mock(chat_body("gpt-4o-mini"), json!({"status": 401})),
    )
    .await;
    let rid = request_id_of(&resp);
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("sk-proj-"),
        "the provider's key hint reached the client: {text}"
    );
    assert!(!text.contains("openai.com"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "upstream_auth_failed", "{text}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["outcome"], "upstream_error", "{r}");
    assert_eq!(r["status"], 502, "{r}");
    assert_eq!(r["error_code"], "upstream_auth_failed", "{r}");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_is_recorded() {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = TestGateway::start(&standard_config(
        &format!("http://127.0.0.1:{closed_port}/v1"),
        "",
    ))
    .await;
    for stream in [false, true] {
        let mut body = chat_body("gpt-4o-mini");
        body["stream"] = json!(stream);
        let resp = post_acme(&gw, "/v1/chat/completions", &body).await;
        let rid = request_id_of(&resp);
        assert_eq!(resp.status(), 502);
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains(&format!("127.0.0.1:{closed_port}")),
            "the upstream's address reached the client: {text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "upstream_unreachable", "{text}");
        let r = one_record_of(&gw, &rid).await;
        assert_eq!(r["outcome"], "upstream_unavailable", "{r}");
        assert_eq!(r["status"], 502, "{r}");
        assert_eq!(r["error_code"], "upstream_unreachable", "{r}");
        assert_eq!(r["stream"], stream, "{r}");
    }
}

#[tokio::test]
async fn a_first_byte_timeout_is_a_504_and_is_recorded() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let started = Instant::now();
    let resp = post_acme(
        &gw,
        "/v1/chat/completions",
        &with_mock(chat_body("gpt-4o-mini"), json!({"delay_ms": 3000})),
    )
    .await;
    let took = started.elapsed();
    let rid = request_id_of(&resp);
    assert_eq!(error_code(resp, 504).await, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2500),
        "first_byte_timeout_ms = 1500, answered after {took:?}"
    );
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["status"], 504, "{r}");
    assert_eq!(r["outcome"], "upstream_unavailable", "{r}");
    assert_eq!(r["error_code"], "upstream_timeout", "{r}");
}

#[tokio::test]
async fn rejections_after_authentication_are_recorded_and_refusals_before_are_not() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let c = client();
    let url = gw.url("/v1/chat/completions");

    // Known tenant, bad request: one record each, outcome "rejected".
    let bad_json = c
        .post(&url)
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .header("content-type", "application/json")
        .body("{\"model\": \"gpt-4o-mini\", \"messages\": [")
        .send()
        .await
        .unwrap();
    let rid = request_id_of(&bad_json);
    assert_eq!(error_code(bad_json, 400).await, "invalid_json");
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(r["error_code"], "invalid_json", "{r}");
    assert_eq!(r["status"], 400, "{r}");
    assert_eq!(r["reseller"], "acme", "{r}");
    assert_eq!(r["tenant"], "dental", "{r}");
    assert_eq!(r["endpoint"], "chat.completions", "{r}");

    let resp = post_acme(&gw, "/v1/chat/completions", &chat_body("gpt-17-ultra")).await;
    let rid = request_id_of(&resp);
    assert_eq!(error_code(resp, 404).await, "model_not_found");
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(r["error_code"], "model_not_found", "{r}");
    assert_eq!(r["status"], 404, "{r}");

    let resp = post_acme(&gw, "/v1/chat/completions", &json!({"messages": []})).await;
    let rid = request_id_of(&resp);
    assert_eq!(error_code(resp, 400).await, "missing_model");
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(r["error_code"], "missing_model", "{r}");

    // A model outside the tenant's plan, for the other acme tenant.
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_REALTY.2),
        &chat_body("premium"),
    )
    .await;
    let rid = request_id_of(&resp);
    assert_eq!(error_code(resp, 403).await, "model_not_allowed");
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["tenant"], "realty", "{r}");
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(
        mock.requests().len(),
        0,
        "a rejected request reached the upstream"
    );
    let recorded = gw.usage().len();
    assert_eq!(recorded, 4);

    // Refused before a tenant is known: no record.
    let refusals: [(&str, Option<&str>, Option<&str>, u16); 5] = [
        (
            "it-usage-bad-key",
            Some(ACME_HOST),
            Some("sk-acme-wrong-key"),
            401,
        ),
        ("it-usage-no-key", Some(ACME_HOST), None, 401),
        (
            "it-usage-other-reseller-key",
            Some(ACME_HOST),
            Some(GLOBEX_CLINIC.2),
            401,
        ),
        (
            "it-usage-unknown-host",
            Some("ai.nobody.test"),
            Some(ACME_DENTAL.2),
            404,
        ),
        (
            "it-usage-suspended",
            Some(ACME_HOST),
            Some(ACME_SUSPENDED_KEY),
            403,
        ),
    ];
    for (rid, host, key, status) in refusals {
        let mut rb = c
            .post(&url)
            .header("x-request-id", rid)
            .json(&chat_body("gpt-4o-mini"));
        if let Some(h) = host {
            rb = rb.header("host", h);
        }
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{rid}");
        assert_eq!(request_id_of(&resp), rid);
    }
    // Records are written in order: once a later request's record is there, any
    // record of the refusals would be too.
    let resp = post_acme(&gw, "/v1/chat/completions", &chat_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200);
    let last = request_id_of(&resp);
    gw.usage_for(&last).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records = gw.usage();
    for (rid, ..) in refusals {
        assert!(
            !records.iter().any(|r| r["request_id"] == rid),
            "a request refused before a tenant was known was recorded: {rid}"
        );
    }
    assert_eq!(records.len(), recorded + 1, "{records:?}");
}

#[tokio::test]
async fn an_oversized_body_streamed_by_a_known_tenant_is_recorded_as_rejected() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    // Chunked: the size is only known while reading (limit: 65536 bytes).
    let mut big = chat_body("gpt-4o-mini");
    big["messages"][1]["content"] = json!("x".repeat(70_000));
    let bytes = serde_json::to_vec(&big).unwrap();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    let rid = request_id_of(&resp);
    assert_eq!(error_code(resp, 413).await, "request_too_large");
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(r["error_code"], "request_too_large", "{r}");
    assert_eq!(r["status"], 413, "{r}");
}

// GATEWAY BUG (expected to fail until fixed): a body whose Content-Length exceeds
// the limit is refused in `proxy::handler::forward` *before* the `PendingRecord`
// is created, so this rejection of an authenticated tenant leaves no usage record,
// unlike the same body sent chunked (test above).
#[tokio::test]
async fn an_oversized_body_declared_by_a_known_tenant_is_recorded_as_rejected() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut big = chat_body("gpt-4o-mini");
    big["messages"][1]["content"] = json!("x".repeat(70_000));
    let resp = post_acme(&gw, "/v1/chat/completions", &big).await;
    let rid = request_id_of(&resp);
    assert_eq!(error_code(resp, 413).await, "request_too_large");
    let r = one_record_of(&gw, &rid).await;
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(r["error_code"], "request_too_large", "{r}");
    assert_eq!(r["tenant"], "dental", "{r}");
}

/// One of the mixed requests of the concurrency test; returns its request id.
async fn mixed_request(addr: SocketAddr, i: usize) -> String {
    let (path, body) = match i % 6 {
        0 => ("/v1/chat/completions", chat_body("gpt-4o-mini")),
        1 => {
            let mut b = chat_body("gpt-4o-mini");
            b["stream"] = json!(true);
            b["mock"] = json!({"gap_ms": 10});
            ("/v1/chat/completions", b)
        }
        2 => (
            "/v1/embeddings",
            json!({"model": "embed", "input": format!("text {i}")}),
        ),
        3 => {
            let mut b = chat_body("demo");
            b["stream"] = json!(true);
            b["stream_options"] = json!({"include_usage": true});
            ("/v1/chat/completions", b)
        }
        4 => (
            "/v1/chat/completions",
            with_mock(chat_body("gpt-4o-mini"), json!({"status": 503})),
        ),
        _ => {
            let mut b = json!({"model": "gpt-4o-mini", "prompt": "hi", "stream": true});
            // Paced, so that the mock flushes its head before dropping.
            b["mock"] = json!({"drop_after": 2, "gap_ms": 20});
            ("/v1/completions", b)
        }
    };
    let resp = post_to(addr, path, &body, None).await;
    let rid = request_id_of(&resp);
    let _ = resp.bytes().await;
    rid
}

#[tokio::test]
async fn concurrent_mixed_requests_get_exactly_one_record_each() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        set.spawn(mixed_request(gw.addr, i));
    }
    let mut rids = HashSet::new();
    while let Some(rid) = set.join_next().await {
        assert!(
            rids.insert(rid.unwrap()),
            "two responses share a request id"
        );
    }
    assert_eq!(rids.len(), 20);
    let records = settled_usage(&gw.usage_path, 20).await;
    assert_eq!(records.len(), 20, "{records:#?}");
    let recorded: HashSet<String> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recorded, rids, "records and responses disagree");
    let outcomes: HashSet<&str> = records
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    for o in ["ok", "upstream_error", "truncated"] {
        assert!(outcomes.contains(o), "no `{o}` among {outcomes:?}");
    }
    assert_eq!(gw.open_records(), 0, "a record stayed open");
}

#[tokio::test]
async fn the_usage_file_never_contains_a_key() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let c = client();
    let url = gw.url("/v1/chat/completions");
    let mut rids = Vec::new();
    let mut stream = chat_body("gpt-4o-mini");
    stream["stream"] = json!(true);
    let bodies = [
        chat_body("gpt-4o-mini"),
        stream,
        with_mock(chat_body("gpt-4o-mini"), json!({"status": 401})),
        with_mock(chat_body("gpt-4o-mini"), json!({"status": 429})),
        chat_body("no-such-model"),
    ];
    for (i, body) in bodies.iter().enumerate() {
        // Each way of presenting the key.
        let rb = c.post(&url).header("host", ACME_HOST).json(body);
        let rb = match i % 3 {
            0 => rb.bearer_auth(ACME_DENTAL.2),
            1 => rb.header("api-key", ACME_DENTAL.2),
            _ => rb.header("x-api-key", ACME_DENTAL.2),
        };
        let resp = rb.send().await.unwrap();
        rids.push(request_id_of(&resp));
        let _ = resp.bytes().await;
    }
    // A wrong key too, and another tenant's.
    let _ = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some("sk-acme-not-a-key"),
        &chat_body("gpt-4o-mini"),
    )
    .await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_REALTY.2),
        &chat_body("gpt-4o-mini"),
    )
    .await;
    rids.push(request_id_of(&resp));
    for rid in &rids {
        gw.usage_for(rid).await;
    }
    let text = std::fs::read_to_string(&gw.usage_path).unwrap();
    assert_eq!(text.lines().count(), rids.len());
    for secret in [
        ACME_DENTAL.2,
        ACME_REALTY.2,
        "sk-acme-not-a-key",
        PROVIDER_KEY,
        "sk-proj-",
    ] {
        assert!(
            !text.contains(secret),
            "`{secret}` is in the usage file:\n{text}"
        );
    }
}

#[tokio::test]
async fn every_record_is_in_the_file_when_shutdown_returns() {
    set_provider_key_env();
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let usage_path = dir.path().join("usage.jsonl");
    let mut config =
        livery::config::GatewayConfig::parse(&standard_config(&mock.base_url(), "")).unwrap();
    config.usage.jsonl_path = Some(usage_path.clone());
    let gateway = livery::Gateway::start(config).await.unwrap();
    let addr = gateway.local_addr();

    let mut rids = Vec::new();
    for i in 0..12 {
        rids.push(mixed_request(addr, i).await);
    }
    // One stream still running when shutdown starts: it is let finish.
    let mut slow = chat_body("gpt-4o-mini");
    slow["stream"] = json!(true);
    slow["mock"] = json!({"chunks": 8, "gap_ms": 100});
    let resp = post_to(
        addr,
        "/v1/chat/completions",
        &slow,
        Some("it-usage-in-flight"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    rids.push(request_id_of(&resp));
    let reader = tokio::spawn(async move {
        let mut text = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            text.extend_from_slice(&chunk);
        }
        String::from_utf8(text).unwrap()
    });
    tokio::time::sleep(Duration::from_millis(150)).await;

    gateway.shutdown(Duration::from_secs(5)).await;
    // No waiting from here on: the file must be complete already.
    let records = read_usage(&usage_path);
    let recorded: Vec<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    for rid in &rids {
        assert_eq!(
            recorded.iter().filter(|r| **r == rid.as_str()).count(),
            1,
            "record of {rid} missing or repeated after shutdown: {recorded:?}"
        );
    }
    assert_eq!(records.len(), rids.len());
    let text = reader.await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the in-flight stream was cut by the graceful shutdown: {text}"
    );
    let in_flight = records
        .iter()
        .find(|r| r["request_id"] == "it-usage-in-flight")
        .unwrap();
    assert_eq!(in_flight["outcome"], "ok", "{in_flight}");
}

/// A stream still running when the grace period ends is ended by the
/// gateway: shutdown returns soon after the grace period, the client's stream
/// ends whole with the gateway's error event (`gateway_shutdown`, which the
/// OpenAI SDK raises) and `[DONE]`, not cut mid-body, and the record (in the
/// file when shutdown returns) says the gateway ended it, not that the client
/// left.
#[tokio::test]
async fn a_stream_cut_at_the_end_of_the_grace_period_is_recorded_as_cut() {
    set_provider_key_env();
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let usage_path = dir.path().join("usage.jsonl");
    let mut config =
        livery::config::GatewayConfig::parse(&standard_config(&mock.base_url(), "")).unwrap();
    config.usage.jsonl_path = Some(usage_path.clone());
    let gateway = livery::Gateway::start(config).await.unwrap();
    let addr = gateway.local_addr();
    let mut slow = chat_body("gpt-4o-mini");
    slow["stream"] = json!(true);
    slow["mock"] = json!({"chunks": 50, "gap_ms": 100});
    let resp = post_to(addr, "/v1/chat/completions", &slow, Some("it-usage-cut")).await;
    assert_eq!(resp.status(), 200);
    // Shut down once the stream is mid-way: some of its content is out.
    let reader = read_past(resp, "\"content\":\"Hello\"").await;

    let started = Instant::now();
    gateway.shutdown(Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    let records = read_usage(&usage_path);
    let cut = records
        .iter()
        .find(|r| r["request_id"] == "it-usage-cut")
        .unwrap_or_else(|| panic!("no record of the cut stream when shutdown returned"));
    assert_eq!(cut["status"], 503, "{cut}");
    assert_eq!(cut["outcome"], "truncated", "{cut}");
    assert_eq!(cut["error_code"], "gateway_shutdown", "{cut}");
    assert_eq!(cut["client_disconnected"], false, "{cut}");
    let text = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .expect("the client's stream ends with the cut")
        .unwrap();
    let data = sse_data(&text);
    assert!(data.len() >= 4, "{text}");
    assert_eq!(data[data.len() - 1], "[DONE]", "{text}");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["error"]["code"], "gateway_shutdown", "{text}");
    assert_eq!(last["error"]["type"], "server_error", "{text}");
    assert!(
        !text.contains("finish_reason\":\"stop"),
        "the answer was not complete: {text}"
    );
}

/// A client's `model` is recorded on a refusal, so its length is bounded
/// before anything is recorded: a 60,000-byte name is a 400, and its record
/// holds none of it.
#[tokio::test]
async fn a_model_name_too_long_is_refused_without_being_recorded() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let resp = post_acme(&gw, "/v1/chat/completions", &chat_body(&"x".repeat(60_000))).await;
    let rid = request_id_of(&resp);
    assert_eq!(error_code(resp, 400).await, "invalid_field");
    let record = gw.usage_for(&rid).await;
    assert!(record["requested_model"].is_null(), "{record}");
    assert!(mock.requests().is_empty());
    gw.shutdown().await;
}

/// JSON nested deeper than the providers' parsers read is the client's 400,
/// whichever route would serve it (the built-in mock, like the Anthropic
/// translation, builds a tree of the body and failed as misconfigured: 500).
#[tokio::test]
async fn a_body_nested_too_deep_is_the_clients_error() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for model in ["demo", "gpt-4o-mini"] {
        let body = format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header("host", ACME_HOST)
            .bearer_auth(ACME_DENTAL.2)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(resp, 400).await, "invalid_json", "{model}");
    }
    assert!(mock.requests().is_empty());
    gw.shutdown().await;
}

/// A panic once a request's record exists (here in the built-in mock, asked
/// to by a test-only directive) is answered 500, and the record says so:
/// 500 internal_error, not a client that left.
#[tokio::test]
async fn a_panic_while_serving_is_recorded_as_the_gateways_failure() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let body = with_mock(chat_body("demo"), json!({"panic": true}));
    let resp = post_to(
        gw.addr,
        "/v1/chat/completions",
        &body,
        Some("it-usage-panic"),
    )
    .await;
    assert_eq!(error_code(resp, 500).await, "internal_error");
    let record = one_record_of(&gw, "it-usage-panic").await;
    assert_eq!(record["status"], 500, "{record}");
    assert_eq!(record["error_code"], "internal_error", "{record}");
    assert_eq!(record["client_disconnected"], false, "{record}");
    gw.shutdown().await;
}

/// `/metrics` counts what the records say: requests by endpoint and outcome,
/// their duration and time to first byte as histograms, tokens by kind, and
/// the requests in flight (a stream held open is one); and the refusals that
/// have no record, by code.
#[tokio::test]
async fn metrics_count_requests_durations_and_tokens_as_recorded() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let value = |text: &str, series: &str| -> u64 {
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .parse::<f64>()
            .unwrap() as u64
    };
    let mut rids = Vec::new();
    for _ in 0..2 {
        let resp = post_acme(&gw, "/v1/chat/completions", &chat_body("gpt-4o-mini")).await;
        assert_eq!(resp.status(), 200);
        rids.push(request_id_of(&resp));
    }
    let resp = post_acme(
        &gw,
        "/v1/chat/completions",
        &with_mock(chat_body("gpt-4o-mini"), json!({"status": 400})),
    )
    .await;
    assert_eq!(resp.status(), 400);
    rids.push(request_id_of(&resp));
    let mut tokens = (0, 0);
    for rid in &rids {
        let r = gw.usage_for(rid).await;
        tokens.0 += r["prompt_tokens"].as_u64().unwrap_or(0);
        tokens.1 += r["completion_tokens"].as_u64().unwrap_or(0);
    }
    // A stream held open.
    let mut slow = with_mock(
        chat_body("gpt-4o-mini"),
        json!({"chunks": 20, "gap_ms": 100}),
    );
    slow["stream"] = json!(true);
    let open = post_acme(&gw, "/v1/chat/completions", &slow).await;
    assert_eq!(open.status(), 200);

    // Refusals before a tenant: no record, counted by code.
    for (host, key, status) in [
        (ACME_HOST, "sk-not-a-key", 401),
        ("evil.example", ACME_DENTAL.2, 404),
        (ACME_HOST, "sk-not-a-key", 401),
    ] {
        let resp = post(
            &gw,
            "/v1/chat/completions",
            Some(host),
            Some(key),
            &chat_body("gpt-4o-mini"),
        )
        .await;
        assert_eq!(resp.status(), status);
    }

    let text = operator_metrics(&gw).await;
    assert_eq!(
        value(&text, "livery_refusals_total{code=\"invalid_api_key\"}"),
        2
    );
    assert_eq!(
        value(&text, "livery_refusals_total{code=\"unknown_host\"}"),
        1
    );
    let chat = "endpoint=\"chat.completions\"";
    assert_eq!(
        value(
            &text,
            &format!("livery_requests_total{{{chat},outcome=\"ok\"}}")
        ),
        2
    );
    assert_eq!(
        value(
            &text,
            &format!("livery_requests_total{{{chat},outcome=\"upstream_error\"}}")
        ),
        1
    );
    assert_eq!(
        value(
            &text,
            &format!("livery_request_duration_seconds_count{{{chat}}}")
        ),
        3
    );
    assert_eq!(
        value(
            &text,
            &format!("livery_request_duration_seconds_bucket{{{chat},le=\"+Inf\"}}")
        ),
        3
    );
    assert_eq!(
        value(
            &text,
            &format!("livery_time_to_first_byte_seconds_count{{{chat}}}")
        ),
        3
    );
    assert_eq!(
        value(
            &text,
            &format!("livery_tokens_total{{{chat},kind=\"prompt\"}}")
        ),
        tokens.0
    );
    assert_eq!(
        value(
            &text,
            &format!("livery_tokens_total{{{chat},kind=\"completion\"}}")
        ),
        tokens.1
    );
    assert!(tokens.0 > 0 && tokens.1 > 0);
    assert_eq!(value(&text, "livery_requests_in_flight"), 1);
    drop(open);
    gw.shutdown().await;
}

/// A cache-write price that cannot be what its author meant (an hour's write
/// set below five minutes') is refused when the configuration is loaded, as
/// check-config and a reload load it, naming the entry; a misspelt or
/// inexact one already fails to parse.
#[test]
fn cache_write_prices_are_checked_at_load() {
    use livery::config::GatewayConfig;
    set_provider_key_env();
    let config = |prices: &str| {
        format!(
            "{}\n[[prices.models]]\nmodel = \"gpt-4o-mini-2024-07-18\"\ninput_per_million = \"3\"\noutput_per_million = \"15\"\n{prices}",
            standard_config("http://127.0.0.1:9", "")
        )
    };
    let prepare = |prices: &str| {
        livery::Snapshot::prepare(&GatewayConfig::parse(&config(prices)).unwrap()).map(drop)
    };
    prepare("").unwrap();
    prepare("cache_write_input_per_million = \"3.75\"\ncache_write_1h_input_per_million = 6")
        .unwrap();
    // One price set alone, beyond the other's default (2 × 3 for the hour,
    // 1.25 × 3 for five minutes): a provider that sells that kind of write
    // only; the other's default follows it.
    prepare("cache_write_input_per_million = 7").unwrap();
    prepare("cache_write_1h_input_per_million = 3").unwrap();
    // Both set, swapped.
    let swapped = "cache_write_input_per_million = 6\ncache_write_1h_input_per_million = \"3.75\"";
    let err = prepare(swapped).unwrap_err().to_string();
    assert!(
        err.contains("[[prices.models]] `gpt-4o-mini-2024-07-18`")
            && err.contains("cache_write_1h_input_per_million"),
        "{err}"
    );
    for unreadable in [
        "cache_write_input_per_million = \"0.0000001\"",
        "cache_write_1h_input_per_million = -2",
        "cache_writes_input_per_million = 1",
    ] {
        assert!(
            GatewayConfig::parse(&config(unreadable)).is_err(),
            "{unreadable}"
        );
    }
}
