//! Point 4: the endpoints. `/v1/models` lists exactly the tenant's plan in
//! OpenAI's list shape; models outside the plan do not exist for the tenant;
//! unknown paths and wrong methods get OpenAI-shaped 404/405; oversized bodies
//! (declared or chunked) are 413; bad bodies are 400 saying what is wrong; every
//! response carries a sane `x-request-id`; health probes need no tenant; HTTP/2
//! cleartext is served on the same listener; connections without a request are
//! closed after `header_timeout_ms`.

use crate::support::*;
use serde_json::{json, Value};

const FORWARDED: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// A valid body for a forwarded endpoint, asking for `model`.
fn body_with_model(path: &str, model: &str) -> Value {
    match path {
        "/v1/chat/completions" => chat_body(model),
        "/v1/completions" => json!({"model": model, "prompt": "Say hello"}),
        "/v1/embeddings" => json!({"model": model, "input": "hello tests"}),
        other => panic!("not a forwarded endpoint: {other}"),
    }
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on a {} response", resp.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn assert_no_upstream(mock: &MockProvider, before: usize, what: &str) {
    assert_eq!(
        mock.requests().len(),
        before,
        "a refused request reached the provider: {what}"
    );
}

/// POSTs raw bytes as JSON to `path` as acme/dental.
async fn post_raw(
    gw: &TestGateway,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client()
        .post(gw.url(path))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The error JSON of `resp`, asserting status and OpenAI's error shape.
async fn error_json(resp: reqwest::Response, status: u16) -> Value {
    let got = resp.status().as_u16();
    assert!(resp.headers().contains_key("x-request-id"));
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some(), "{v}");
    assert!(e.get("code").is_some(), "{v}");
    v
}

#[tokio::test]
async fn models_lists_exactly_the_tenants_plan_in_openai_list_shape() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let pro = ["demo", "embed", "gpt-4o-mini", "premium"];
    let basic = ["demo", "embed", "gpt-4o-mini"];
    for (host, tenant, plan) in [
        (ACME_HOST, ACME_DENTAL, &pro[..]),
        (ACME_HOST, ACME_REALTY, &basic[..]),
        ("acme.livery.test", ACME_REALTY, &basic[..]),
        (GLOBEX_HOST, GLOBEX_CLINIC, &pro[..]),
        (GLOBEX_HOST, GLOBEX_OFFICE, &basic[..]),
    ] {
        let resp = get(&gw, "/v1/models", Some(host), Some(tenant.2)).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "list", "{v}");
        let data = v["data"].as_array().unwrap_or_else(|| panic!("{v}"));
        let mut ids = Vec::new();
        for m in data {
            let obj = m.as_object().unwrap();
            assert!(m["id"].is_string(), "{m}");
            assert_eq!(m["object"], "model", "{m}");
            assert!(
                m["created"].is_u64(),
                "created must be a unix timestamp: {m}"
            );
            let owner = m["owned_by"].as_str().unwrap_or_else(|| panic!("{m}"));
            // White label: the owner is not the provider or the upstream model.
            for leak in [
                "upstream",
                "builtin",
                "openai",
                "gpt-4o-mini-2024",
                "mock-1",
            ] {
                assert!(!owner.contains(leak), "owned_by leaks `{leak}`: {m}");
            }
            for k in obj.keys() {
                assert!(
                    matches!(k.as_str(), "id" | "object" | "created" | "owned_by"),
                    "unexpected field `{k}` in {m}"
                );
            }
            ids.push(m["id"].as_str().unwrap().to_owned());
        }
        let listed = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(listed, ids.len(), "duplicates in {v}");
        assert_eq!(ids, plan, "{}/{} at {host}", tenant.0, tenant.1);
        // Served model names never show through.
        let text = v.to_string();
        assert!(!text.contains("text-embedding-3-small") && !text.contains("gpt-4o\""));
    }
    assert!(mock.requests().is_empty(), "listing models called upstream");
}

#[tokio::test]
async fn unknown_models_are_404_and_models_outside_the_plan_are_403_naming_the_allowed_ones() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let before = mock.requests().len();
    for path in FORWARDED {
        for (host, key, model, tenant) in [
            (ACME_HOST, ACME_REALTY.2, "no-such-model", "realty"),
            (ACME_HOST, ACME_DENTAL.2, "no-such-model", "dental"),
            // Upstream model names are not tenant-facing names.
            (ACME_HOST, ACME_DENTAL.2, "gpt-4o-mini-2024-07-18", "dental"),
            (ACME_HOST, ACME_DENTAL.2, "gpt-4o", "dental"),
        ] {
            let resp = post(
                &gw,
                path,
                Some(host),
                Some(key),
                &body_with_model(path, model),
            )
            .await;
            let rid = request_id(&resp);
            let v = error_json(resp, 404).await;
            assert_eq!(v["error"]["code"], "model_not_found", "{path} {model}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            let record = gw.usage_for(&rid).await;
            assert_eq!(record["status"], 404, "{record}");
            assert_eq!(record["error_code"], "model_not_found", "{record}");
            assert_eq!(record["tenant"], tenant, "{record}");
        }
        // Plan `basic` (realty, office) lacks `premium`: 403 naming what is allowed.
        for (host, key, tenant) in [
            (ACME_HOST, ACME_REALTY.2, "realty"),
            (GLOBEX_HOST, GLOBEX_OFFICE.2, "office"),
        ] {
            let resp = post(
                &gw,
                path,
                Some(host),
                Some(key),
                &body_with_model(path, "premium"),
            )
            .await;
            let rid = request_id(&resp);
            let v = error_json(resp, 403).await;
            assert_eq!(v["error"]["code"], "model_not_allowed", "{v}");
            let msg = v["error"]["message"].as_str().unwrap();
            for allowed in ["gpt-4o-mini", "embed", "demo"] {
                assert!(msg.contains(allowed), "{msg}");
            }
            let record = gw.usage_for(&rid).await;
            assert_eq!(record["error_code"], "model_not_allowed", "{record}");
            assert_eq!(record["tenant"], tenant, "{record}");
        }
    }
    assert_no_upstream(&mock, before, "models outside the plan");
    // Control: the same tenants are served for models in their plan.
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_REALTY.2),
        &chat_body("gpt-4o-mini"),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

/// A refusal for a model is still a finished request of the tenant, and its
/// usage record says which model was asked for (point 7).
#[tokio::test]
async fn a_refused_model_is_recorded_with_the_model_it_asked_for() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for (key, model, status, code) in [
        (ACME_REALTY.2, "premium", 403, "model_not_allowed"),
        (ACME_DENTAL.2, "no-such-model", 404, "model_not_found"),
    ] {
        let resp = post(
            &gw,
            "/v1/chat/completions",
            Some(ACME_HOST),
            Some(key),
            &chat_body(model),
        )
        .await;
        let rid = request_id(&resp);
        assert_eq!(error_code(resp, status).await, code);
        let record = gw.usage_for(&rid).await;
        assert_eq!(record["requested_model"], model, "{record}");
        assert_eq!(record["outcome"], "rejected", "{record}");
    }
    assert!(mock.requests().is_empty());
}

/// `GET /v1/models/{id}` (the SDK's `models.retrieve`): a model of the
/// tenant's plan as the list gives it; one outside the plan, or unknown, 404
/// `model_not_found`; another reseller's key, 401.
#[tokio::test]
async fn a_model_of_the_plan_is_retrieved_by_id() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let get = |path: &'static str, key: &'static str| {
        client()
            .get(gw.url(path))
            .header("host", ACME_HOST)
            .bearer_auth(key)
            .send()
    };
    let resp = get("/v1/models/gpt-4o-mini", ACME_DENTAL.2).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["id"], "gpt-4o-mini");
    assert_eq!(v["object"], "model");
    assert_eq!(v["owned_by"], "acme");
    assert!(v["created"].as_u64().unwrap() > 0);
    // Percent-encoded as a client may send it.
    let resp = get("/v1/models/gpt%2D4o%2Dmini", ACME_DENTAL.2)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // `premium` is in dental's plan, not in realty's.
    assert_eq!(
        get("/v1/models/premium", ACME_DENTAL.2)
            .await
            .unwrap()
            .status(),
        200
    );
    for (path, key) in [
        ("/v1/models/premium", ACME_REALTY.2),
        ("/v1/models/extra", ACME_DENTAL.2),
    ] {
        let v = error_json(get(path, key).await.unwrap(), 404).await;
        assert_eq!(v["error"]["code"], "model_not_found", "{path}: {v}");
    }
    let resp = get("/v1/models/gpt-4o-mini", GLOBEX_CLINIC.2)
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// CORS, for browser clients: a preflight is answered 204 without a key, and
/// answers to an allowed `Origin` (errors too, so that the page can read them)
/// say so and expose the request id and rate-limit headers. `cors_origins`
/// narrows or turns it off; a request without `Origin` gets none of it.
#[tokio::test]
async fn browsers_get_cors_answers_from_allowed_origins() {
    let mock = MockProvider::start().await;
    let preflight = |gw: &TestGateway, origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
            .header("host", ACME_HOST)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-stainless-os",
            )
            .send()
    };
    let chat = |gw: &TestGateway, origin: Option<&'static str>, key: &'static str| {
        let mut rb = client()
            .post(gw.url("/v1/chat/completions"))
            .header("host", ACME_HOST)
            .bearer_auth(key)
            .json(&chat_body("gpt-4o-mini"));
        if let Some(o) = origin {
            rb = rb.header("origin", o);
        }
        rb.send()
    };
    let acao = |r: &reqwest::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // Default: any origin, as OpenAI answers.
    let gw = TestGateway::standard(&mock).await;
    let pre = preflight(&gw, "https://app.example.com").await.unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(acao(&pre).as_deref(), Some("*"));
    assert!(pre.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(
        pre.headers()["access-control-allow-headers"],
        "authorization,content-type,x-stainless-os"
    );
    let ok = chat(&gw, Some("https://app.example.com"), ACME_DENTAL.2)
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(acao(&ok).as_deref(), Some("*"));
    let exposed = ok.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("x-ratelimit-remaining-tokens"),
        "{exposed}"
    );
    let refused = chat(&gw, Some("https://app.example.com"), "sk-wrong")
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(acao(&refused).as_deref(), Some("*"));
    let server = chat(&gw, None, ACME_DENTAL.2).await.unwrap();
    assert_eq!(acao(&server), None);
    drop(gw);

    // A list: the listed origin echoed (with Vary), another refused.
    let listed = standard_config(&mock.base_url(), "").replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\ncors_origins = [\"https://app.example.com\"]",
    );
    let gw = TestGateway::start(&listed).await;
    let pre = preflight(&gw, "https://app.example.com").await.unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(acao(&pre).as_deref(), Some("https://app.example.com"));
    assert_eq!(pre.headers()["vary"], "origin");
    let other = preflight(&gw, "https://evil.example").await.unwrap();
    assert_eq!(other.status(), 405);
    assert_eq!(acao(&other), None);
    let ok = chat(&gw, Some("https://evil.example"), ACME_DENTAL.2)
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(acao(&ok), None);
    drop(gw);

    // Off.
    let off = standard_config(&mock.base_url(), "").replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\ncors_origins = []",
    );
    let gw = TestGateway::start(&off).await;
    assert_eq!(
        preflight(&gw, "https://app.example.com")
            .await
            .unwrap()
            .status(),
        405
    );
}

#[tokio::test]
async fn unknown_paths_are_404_unknown_url_in_openai_error_shape() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let before = mock.requests().len();
    let paths = [
        "/v1/foo",
        "/v2/chat/completions",
        "/",
        "/v1",
        "/v1/",
        "/v1/chat/completions/extra",
        "/v1/chat/completions/",
        "/v1//chat/completions",
        "/v1/chat",
        "/chat/completions",
        "/V1/chat/completions",
        "/v1/files",
        "/v1/audio/speech",
        "/healthz/x",
        "/admin",
    ];
    for path in paths {
        for method in ["GET", "POST"] {
            let resp = client()
                .request(method.parse().unwrap(), gw.url(path))
                .header("host", ACME_HOST)
                .bearer_auth(ACME_DENTAL.2)
                .json(&chat_body("gpt-4o-mini"))
                .send()
                .await
                .unwrap();
            let v = error_json(resp, 404).await;
            assert_eq!(v["error"]["code"], "unknown_url", "{method} {path}: {v}");
        }
    }
    assert_no_upstream(&mock, before, "unknown paths");
}

#[tokio::test]
async fn a_wrong_method_on_a_known_path_is_405_method_not_allowed() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let before = mock.requests().len();
    let cases = [
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/completions"),
        ("GET", "/v1/embeddings"),
        ("PUT", "/v1/chat/completions"),
        ("DELETE", "/v1/chat/completions"),
        ("PATCH", "/v1/embeddings"),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models"),
        ("POST", "/healthz"),
        ("POST", "/readyz"),
    ];
    for (method, path) in cases {
        let resp = client()
            .request(method.parse().unwrap(), gw.url(path))
            .header("host", ACME_HOST)
            .bearer_auth(ACME_DENTAL.2)
            .json(&chat_body("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let expected = match path {
            "/v1/models" => "GET",
            "/healthz" | "/readyz" => "GET, HEAD",
            _ => "POST",
        };
        assert_eq!(
            allow.as_deref(),
            Some(expected),
            "Allow header of {method} {path}"
        );
        let v = error_json(resp, 405).await;
        assert_eq!(
            v["error"]["code"], "method_not_allowed",
            "{method} {path}: {v}"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    assert_no_upstream(&mock, before, "wrong methods");
}

/// A chat body of exactly `total` bytes (a long user message), split in chunks.
fn sized_chat_body(total: usize) -> Vec<u8> {
    let head = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":""#;
    let tail = br#""}]}"#;
    let mut body = head.to_vec();
    body.resize(total - tail.len(), b'a');
    body.extend_from_slice(tail);
    assert_eq!(body.len(), total);
    serde_json::from_slice::<Value>(&body).expect("sized body is valid JSON");
    body
}

fn chunked(body: Vec<u8>, chunk: usize) -> reqwest::Body {
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = body
        .chunks(chunk)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

#[tokio::test]
async fn bodies_above_max_body_bytes_are_413_declared_or_chunked() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    const LIMIT: usize = 65536;

    // Under the limit, both ways: served (so the 413 below is about size).
    for body in [
        reqwest::Body::from(sized_chat_body(LIMIT - 1000)),
        chunked(sized_chat_body(LIMIT - 1000), 4096),
    ] {
        let resp = post_raw(&gw, "/v1/chat/completions", body).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(mock.requests().len(), 2);
    assert!(mock.last_request().raw_body.len() > LIMIT - 1000);

    let before = mock.requests().len();
    for (what, body) in [
        (
            "content-length, just over",
            reqwest::Body::from(sized_chat_body(LIMIT + 1)),
        ),
        (
            "content-length, far over",
            reqwest::Body::from(sized_chat_body(3 * LIMIT)),
        ),
        (
            "chunked, just over",
            chunked(sized_chat_body(LIMIT + 1), 4096),
        ),
        (
            "chunked, far over",
            chunked(sized_chat_body(3 * LIMIT), 8192),
        ),
        (
            "chunked, one big chunk",
            chunked(sized_chat_body(LIMIT + 100), LIMIT + 100),
        ),
    ] {
        let resp = post_raw(&gw, "/v1/chat/completions", body).await;
        let v = error_json(resp, 413).await;
        assert_eq!(v["error"]["code"], "request_too_large", "{what}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("65536"),
            "{what}: the message should state the limit: {v}"
        );
    }
    // Other endpoints too.
    for path in ["/v1/completions", "/v1/embeddings"] {
        let mut big = body_with_model(path, "embed");
        let filler = "b".repeat(LIMIT);
        big[if path == "/v1/embeddings" {
            "input"
        } else {
            "prompt"
        }] = json!(filler);
        let resp = post_raw(&gw, path, serde_json::to_vec(&big).unwrap()).await;
        assert_eq!(
            error_json(resp, 413).await["error"]["code"],
            "request_too_large"
        );
        let resp = post_raw(&gw, path, chunked(serde_json::to_vec(&big).unwrap(), 8192)).await;
        assert_eq!(
            error_json(resp, 413).await["error"]["code"],
            "request_too_large"
        );
    }
    assert_no_upstream(&mock, before, "oversized bodies");
}

#[tokio::test]
async fn malformed_bodies_are_400_saying_what_is_wrong() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let before = mock.requests().len();
    // (body, code, words the message must contain)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            r#"{"model": "gpt-4o-mini", "messages": ["#,
            "invalid_json",
            &["JSON", "EOF"],
        ),
        ("not json at all", "invalid_json", &["JSON", "line 1"]),
        ("", "invalid_json", &["JSON"]),
        (
            r#"{"model": "gpt-4o-mini",}"#,
            "invalid_json",
            &["JSON", "column"],
        ),
        (r#"{'model': 'gpt-4o-mini'}"#, "invalid_json", &["JSON"]),
        (r#"["model", "gpt-4o-mini"]"#, "invalid_body", &["object"]),
        (r#""gpt-4o-mini""#, "invalid_body", &["object"]),
        ("null", "invalid_body", &["object"]),
        ("42", "invalid_body", &["object"]),
        (r#"{"messages": []}"#, "missing_model", &["model"]),
        (r#"{"model": null}"#, "missing_model", &["model"]),
        (r#"{"model": ""}"#, "missing_model", &["model"]),
        (r#"{"model": 5}"#, "invalid_field", &["model", "string"]),
        (
            r#"{"model": ["gpt-4o-mini"]}"#,
            "invalid_field",
            &["model", "string"],
        ),
        (
            r#"{"model": {"name": "gpt-4o-mini"}}"#,
            "invalid_field",
            &["model"],
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}"#,
            "invalid_field",
            &["stream", "boolean"],
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [], "stream": 1}"#,
            "invalid_field",
            &["stream"],
        ),
    ];
    for path in FORWARDED {
        for (body, code, words) in cases {
            let resp = post_raw(&gw, path, body.to_string()).await;
            let v = error_json(resp, 400).await;
            let what = format!("{path} with `{body}`");
            assert_eq!(v["error"]["code"], *code, "{what}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{what}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            for w in *words {
                assert!(
                    msg.contains(w),
                    "{what}: message `{msg}` should mention `{w}`"
                );
            }
            if *code == "missing_model" {
                assert_eq!(v["error"]["param"], "model", "{what}: {v}");
            }
        }
    }
    assert_no_upstream(&mock, before, "malformed bodies");
}

#[tokio::test]
async fn every_response_carries_an_x_request_id() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let c = client();
    let dental = ACME_DENTAL.2;
    let mut stream_body = chat_body("gpt-4o-mini");
    stream_body["stream"] = json!(true);
    let requests: Vec<(u16, reqwest::RequestBuilder)> = vec![
        (200, c.get(gw.url("/healthz"))),
        (200, c.get(gw.url("/readyz"))),
        (200, c.head(gw.url("/healthz"))),
        (
            200,
            c.get(gw.url("/v1/models"))
                .header("host", ACME_HOST)
                .bearer_auth(dental),
        ),
        (
            200,
            c.post(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST)
                .bearer_auth(dental)
                .json(&chat_body("gpt-4o-mini")),
        ),
        (
            200,
            c.post(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST)
                .bearer_auth(dental)
                .json(&stream_body),
        ),
        (
            200,
            c.post(gw.url("/v1/embeddings"))
                .header("host", ACME_HOST)
                .bearer_auth(dental)
                .json(&json!({"model": "embed", "input": "x"})),
        ),
        (
            404,
            c.get(gw.url("/v1/models"))
                .header("host", "evil.example")
                .bearer_auth(dental),
        ),
        (404, c.get(gw.url("/nope"))),
        (
            405,
            c.get(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST),
        ),
        (401, c.get(gw.url("/v1/models")).header("host", ACME_HOST)),
        (
            401,
            c.get(gw.url("/v1/models"))
                .header("host", ACME_HOST)
                .bearer_auth("sk-wrong"),
        ),
        (
            403,
            c.get(gw.url("/v1/models"))
                .header("host", ACME_HOST)
                .bearer_auth(ACME_SUSPENDED_KEY),
        ),
        (
            400,
            c.post(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST)
                .bearer_auth(dental)
                .body("{"),
        ),
        (
            404,
            c.post(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST)
                .bearer_auth(dental)
                .json(&chat_body("nope")),
        ),
        (
            413,
            c.post(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST)
                .bearer_auth(dental)
                .body(sized_chat_body(70_000)),
        ),
        (
            429,
            c.post(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST)
                .bearer_auth(dental)
                .json(&json!({"model": "gpt-4o-mini", "messages": [], "mock": {"status": 429}})),
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    for (i, (status, rb)) in requests.into_iter().enumerate() {
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "request #{i}");
        let rid = request_id(&resp);
        assert!(
            is_uuid(&rid),
            "request #{i}: generated id `{rid}` is not a UUID"
        );
        assert!(seen.insert(rid.clone()), "request #{i}: id `{rid}` reused");
        let _ = resp.bytes().await.unwrap();
    }
    // Also over a raw HTTP/1.0 request without any Host.
    let r = raw_request(gw.addr, "GET /v1/models HTTP/1.0\r\n\r\n").await;
    assert!(r.status >= 400, "{}", r.head);
    assert!(
        r.head.to_ascii_lowercase().contains("\r\nx-request-id: "),
        "{}",
        r.head
    );
}

#[tokio::test]
async fn sane_client_request_ids_are_echoed_and_others_replaced() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let sane = "abc-123_x.y:z";
    // Echoed on success, on errors before and after tenant resolution, and on health.
    let cases: Vec<(u16, reqwest::RequestBuilder)> = vec![
        (
            200,
            client()
                .post(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST)
                .bearer_auth(ACME_DENTAL.2)
                .json(&chat_body("gpt-4o-mini")),
        ),
        (200, client().get(gw.url("/healthz"))),
        (
            404,
            client()
                .get(gw.url("/v1/models"))
                .header("host", "evil.example"),
        ),
        (
            401,
            client().get(gw.url("/v1/models")).header("host", ACME_HOST),
        ),
        (404, client().get(gw.url("/v9"))),
    ];
    for (i, (status, rb)) in cases.into_iter().enumerate() {
        let resp = rb.header("x-request-id", sane).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "case #{i}");
        assert_eq!(request_id(&resp), sane, "case #{i}");
    }
    // The echoed id is the one the provider and the usage record see.
    assert_eq!(mock.last_request().headers["x-request-id"], sane);
    let record = gw.usage_for(sane).await;
    assert_eq!(record["tenant"], "dental");

    let long = "a".repeat(200);
    for insane in [
        long.as_str(),
        "has space",
        "quote\"d",
        "'single'",
        "semi;colon",
        "slash/x",
        "<script>",
        "tab\there",
        "é-unicode",
    ] {
        let Ok(value) = reqwest::header::HeaderValue::from_bytes(insane.as_bytes()) else {
            panic!("cannot send `{insane}`");
        };
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header("host", ACME_HOST)
            .bearer_auth(ACME_DENTAL.2)
            .header("x-request-id", value)
            .json(&chat_body("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let rid = request_id(&resp);
        assert_ne!(rid, insane);
        assert_eq!(rid.len(), 36, "`{insane}` replaced by `{rid}`");
        assert!(is_uuid(&rid), "`{insane}` replaced by `{rid}`");
        assert_eq!(mock.last_request().headers["x-request-id"], rid.as_str());
    }

    // Two requests without an id get two different fresh ones.
    let a = get(&gw, "/v1/models", Some(ACME_HOST), Some(ACME_DENTAL.2)).await;
    let b = get(&gw, "/v1/models", Some(ACME_HOST), Some(ACME_DENTAL.2)).await;
    let (a, b) = (request_id(&a), request_id(&b));
    assert!(is_uuid(&a) && is_uuid(&b), "{a} {b}");
    assert_ne!(a, b);
}

#[tokio::test]
async fn health_probes_answer_without_host_or_key() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for path in ["/healthz", "/readyz"] {
        // reqwest's default Host is 127.0.0.1:PORT, which no reseller serves.
        let resp = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["status"], "ok", "{path}: {v}");
        for host in ["evil.example", ACME_HOST] {
            let resp = get(&gw, path, Some(host), None).await;
            assert_eq!(resp.status(), 200, "{path} at {host}");
        }
        let resp = get(&gw, path, Some(GLOBEX_HOST), Some("sk-garbage")).await;
        assert_eq!(resp.status(), 200, "{path} with a wrong key");
        for version in ["HTTP/1.0", "HTTP/1.1"] {
            let r = raw_request(
                gw.addr,
                &format!("GET {path} {version}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(r.status, 200, "{path} {version} without Host: {}", r.head);
            assert!(r.body.contains("ok"), "{}", r.body);
        }
    }
    assert!(mock.requests().is_empty());
    assert!(gw.usage().is_empty(), "health probes are not tenant usage");
}

#[tokio::test]
async fn h2c_with_prior_knowledge_is_served_on_the_same_listener() {
    let mock = MockProvider::start().await;
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

    // Non-streamed chat: the reseller comes from `:authority` (127.0.0.1).
    let resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ACME_DENTAL.2)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["reseller"], "acme");
    assert_eq!(record["tenant"], "dental");

    // Streamed chat over h2.
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    let resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ACME_REALTY.2)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let rid = request_id(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = sse_data(&text);
    assert!(events.len() >= 3, "{text}");
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk", "{e}");
    }
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["tenant"], "realty");
    assert_eq!(record["stream"], true);
    assert_eq!(record["status"], 200);

    // Models and embeddings over h2.
    let resp = h2
        .get(gw.url("/v1/models"))
        .bearer_auth(ACME_DENTAL.2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let resp = h2
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(ACME_DENTAL.2)
        .json(&json!({"model": "embed", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);

    // Isolation holds over h2: globex's key at acme's authority is unknown.
    let before = mock.requests().len();
    let resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(GLOBEX_CLINIC.2)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(error_code(resp, 401).await, "invalid_api_key");
    // An authority no reseller serves.
    let resp = h2
        .post(format!(
            "http://localhost:{}/v1/chat/completions",
            gw.addr.port()
        ))
        .bearer_auth(ACME_DENTAL.2)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(error_code(resp, 404).await, "unknown_host");
    assert_no_upstream(&mock, before, "h2 refusals");

    // HTTP/1.1 on the very same port.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ACME_DENTAL.2)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

/// Reads one HTTP/1.1 answer (head and `content-length` body) from `s`,
/// leaving the connection open; returns the head.
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.to_owned();
            }
        }
    }
}

/// Whether the server closes `s` within `within` (true) or leaves it open.
async fn closed_within(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, s.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("unexpected bytes from the gateway"),
        Err(_) => false,
    }
}

/// `[server] header_timeout_ms`: a connection with no request in flight is
/// closed when no complete request head arrives within the time: one that
/// never sends anything, one sending its head too slowly, and a kept-alive one
/// left idle after its answer. A kept-alive connection used again in time is
/// served, and an answer that takes longer than the timeout is not cut.
///
/// A timeout of 1 s, where the connection used again waits 150 ms between
/// requests: a test thread not run for a moment on a loaded host does not
/// make it idle for the timeout.
#[tokio::test]
async fn connections_without_a_request_are_closed_after_header_timeout_ms() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let mock = MockProvider::start().await;
    let base = standard_config(&mock.base_url(), "");
    let config = base.replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\nheader_timeout_ms = 1000",
    );
    assert_ne!(config, base);
    let gw = TestGateway::start(&config).await;
    let health = b"GET /healthz HTTP/1.1\r\nHost: ai.acme.test\r\n\r\n";

    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: ai.acme.test\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(health).await.unwrap();
    assert!(read_answer(&mut idle).await.starts_with("HTTP/1.1 200"));
    let wait = std::time::Duration::from_secs(5);
    assert!(
        closed_within(&mut silent, wait).await,
        "a silent connection stayed open"
    );
    assert!(
        closed_within(&mut slow, wait).await,
        "a half-sent head kept its connection"
    );
    assert!(
        closed_within(&mut idle, wait).await,
        "an idle kept-alive connection stayed open"
    );

    // Used again before the timeout, twice: served, and still open while the
    // requests keep coming.
    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..3 {
        kept.write_all(health).await.unwrap();
        assert!(read_answer(&mut kept).await.starts_with("HTTP/1.1 200"));
        assert!(!closed_within(&mut kept, std::time::Duration::from_millis(150)).await);
    }

    // A stream of more than 1.8 s (6 gaps of 300 ms, and more) on one
    // connection: whole.
    let text = dental_stream(&gw, json!({"chunks": 6, "gap_ms": 300})).await;
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("stream_interrupted"), "{text}");
}

/// `[server] send_timeout_ms`: a client that stops reading a long stream (its
/// socket full) has its connection closed, and with it the stream's record,
/// the upstream stream and everything else the request held, instead of
/// keeping them for as long as it keeps the socket. A stream that waits on a
/// slow upstream for longer than the timeout is not stalled.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_send_timeout_ms() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    let mock = MockProvider::start().await;
    let base = standard_config(&mock.base_url(), "");
    let config = base.replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\nsend_timeout_ms = 400",
    );
    assert_ne!(config, base);
    let gw = TestGateway::start(&config).await;

    // Events 200 ms apart for 1.2 s, read as they come: whole.
    let text = dental_stream(&gw, json!({"chunks": 6, "gap_ms": 200})).await;
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");

    // Ten megabytes asked for and none of it read: more than the sockets'
    // buffers, hyper's and the upstream stream's window hold.
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "hi"}], "mock": {"chunks": 60_000}})
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {ACME_HOST}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        ACME_DENTAL.2,
        body.len()
    );
    // A small receive buffer (no autotuning up to tens of megabytes).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(body.as_bytes()).await.unwrap();
    // Filling the buffers takes pushing megabytes through the mock and the
    // gateway (debug builds): seconds, and more than 10 s on a loaded host.
    // Without the timeout the stream is held until the socket is dropped,
    // after these waits.
    mock.wait_cancelled(1, Duration::from_secs(60)).await;
    let start = Instant::now();
    while gw.open_records() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stalled stream's record stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let record = gw.usage().into_iter().last().unwrap();
    assert_eq!(record["outcome"], "client_disconnected", "{record}");
    drop(stalled);
}

/// An unknown host is OpenAI's `invalid_request_error` on OpenAI's paths, and
/// every path under `/v1/messages` that the gateway does not serve
/// (Anthropic's `batches`, which only its SDK sends) is refused in
/// Anthropic's shape.
#[tokio::test]
async fn refusals_use_the_words_of_the_clients_dialect() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("host", "nobody.example")
        .bearer_auth(ACME_DENTAL.2)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let v = error_json(resp, 404).await;
    assert_eq!(v["error"]["code"], "unknown_host", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    for path in ["/v1/messages/batches", "/v1/messages/batches/msgbatch_01"] {
        let resp = client()
            .post(gw.url(path))
            .header("host", ACME_HOST)
            .header("x-api-key", ACME_DENTAL.2)
            .json(&json!({"model": "gpt-4o-mini", "max_tokens": 8, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.headers().contains_key("x-request-id"), "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error", "{path}: {v}");
        assert_eq!(v["error"]["type"], "not_found_error", "{path}: {v}");
        assert!(v["error"].get("code").is_none(), "{path}: {v}");
    }
    // A path that merely begins like it is not Anthropic's.
    let resp = post_raw(&gw, "/v1/messagesx", "{}").await;
    assert_eq!(error_json(resp, 404).await["error"]["code"], "unknown_url");
}

/// A panic in the handler (here the mock-server builds' test hook) is
/// answered 500 `internal_error` in the client's dialect with an
/// `x-request-id`, and the HTTP/1.1 connection it came on serves the next
/// request: it used to be dropped, with no answer at all.
#[tokio::test]
async fn a_panic_in_the_handler_is_answered_500_and_the_connection_kept() {
    use tokio::io::AsyncWriteExt;
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let body = chat_body("gpt-4o-mini").to_string();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {ACME_HOST}\r\nAuthorization: Bearer {}\r\n\
         x-livery-test-panic: 1\r\nx-request-id: panic-1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        ACME_DENTAL.2,
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(answer.contains("x-request-id: panic-1"), "{answer}");
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {ACME_HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("host", ACME_HOST)
        .header("x-livery-test-panic", "1")
        .bearer_auth(ACME_DENTAL.2)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert!(is_uuid(&request_id(&resp)));
    let v = error_json(resp, 500).await;
    assert_eq!(v["error"]["code"], "internal_error", "{v}");
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("host", ACME_HOST)
        .header("x-livery-test-panic", "1")
        .header("x-api-key", ACME_DENTAL.2)
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert!(is_uuid(&request_id(&resp)));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "api_error", "{v}");
}

/// A request body whose client stops sending it (slowloris on the body, not
/// the head) is refused after `header_timeout_ms` without any of it, over
/// HTTP/1.1 and on an HTTP/2 stream: it used to hold its connection or
/// stream, and its record, for as long as the client kept the socket open.
/// A body that keeps coming, more slowly than that in all, is served.
///
/// A timeout of 1 s, where the served body's pieces come 200 ms apart: a test
/// thread not run for a moment on a loaded host does not stall the body.
#[tokio::test]
async fn a_request_body_that_stalls_is_refused_after_header_timeout_ms() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    let mock = MockProvider::start().await;
    let base = standard_config(&mock.base_url(), "");
    let config = base
        .replace(
            "max_body_bytes = 65536",
            "max_body_bytes = 65536\nheader_timeout_ms = 1000",
        )
        .replace(
            r#"domains = ["ai.acme.test"]"#,
            r#"domains = ["ai.acme.test", "127.0.0.1"]"#,
        );
    let gw = TestGateway::start(&config).await;
    let body = chat_body("gpt-4o-mini").to_string();
    let head = |len: usize| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {ACME_HOST}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            ACME_DENTAL.2
        )
    };

    // Trickled in eight pieces 200 ms apart (1.6 s in all): served.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head(body.len()).as_bytes()).await.unwrap();
    let pieces = body.as_bytes().chunks(body.len().div_ceil(8));
    assert_eq!(pieces.len(), 8);
    for piece in pieces {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(piece).await.unwrap();
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut s))
        .await
        .expect("an answer to a trickled body");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A part of the body, then nothing.
    let before = mock.requests().len();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head(body.len() + 1000).as_bytes())
        .await
        .unwrap();
    s.write_all(&body.as_bytes()[..10]).await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        s.read_to_end(&mut buf).await
    })
    .await;
    assert!(
        read.is_ok(),
        "a stalled body held its connection: {}",
        String::from_utf8_lossy(&buf)
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("body_read_failed"), "{text}");
    assert!(start.elapsed() >= Duration::from_millis(900), "{text}");

    // The same on an HTTP/2 stream; the connection serves on.
    let send = h2c_connect(gw.addr).await;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/v1/chat/completions", gw.addr))
        .header("authorization", format!("Bearer {}", ACME_DENTAL.2))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (resp, mut stream) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(req, false)
        .unwrap();
    stream
        .send_data(bytes::Bytes::copy_from_slice(&body.as_bytes()[..10]), false)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("a stalled HTTP/2 body held its stream")
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = h2_request(
        &send,
        "POST",
        &format!("http://{}/v1/chat/completions", gw.addr),
        &[("authorization", &format!("Bearer {}", ACME_DENTAL.2))],
        Some(&chat_body("gpt-4o-mini")),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.body());
    assert_eq!(mock.requests().len(), before + 1);
    drop(stream);
    // Their records are closed, as refusals.
    let start = Instant::now();
    while gw.open_records() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a record stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/2 connection with no stream in flight for `header_timeout_ms` is
/// closed with a GOAWAY, as a kept-alive HTTP/1.1 one is closed: it used to be
/// kept for as long as its client held it, so that a client could hold any
/// number of idle connections. A stream longer than the timeout is not cut.
///
/// A timeout of 1 s: the stream opens at once after the handshake, well
/// within it even when the test thread is not run for a moment.
#[tokio::test]
async fn idle_http2_connections_get_a_goaway_after_header_timeout_ms() {
    use std::time::Duration;
    let mock = MockProvider::start().await;
    let base = standard_config(&mock.base_url(), "");
    let config = base
        .replace(
            "max_body_bytes = 65536",
            "max_body_bytes = 65536\nheader_timeout_ms = 1000",
        )
        .replace(
            r#"domains = ["ai.acme.test"]"#,
            r#"domains = ["ai.acme.test", "127.0.0.1"]"#,
        );
    let gw = TestGateway::start(&config).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(conn);

    // A stream of more than 1.8 s (6 gaps of 300 ms, and more): whole.
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    body["mock"] = json!({"chunks": 6, "gap_ms": 300});
    let uri = format!("http://{}/v1/chat/completions", gw.addr);
    let auth = format!("Bearer {}", ACME_DENTAL.2);
    let resp = h2_request(
        &send,
        "POST",
        &uri,
        &[("authorization", &auth)],
        Some(&body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let events = sse_data(resp.body());
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        resp.body()
    );

    // Then idle: a GOAWAY, and the connection ends without an error.
    let ended = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("an idle HTTP/2 connection stayed open");
    assert!(
        ended.as_ref().is_ok_and(Result::is_ok),
        "not closed with a GOAWAY: {ended:?}"
    );
    let Err(refused) = send.ready().await else {
        panic!("a request could be sent after the close");
    };
    assert!(
        refused.is_go_away() && refused.reason() == Some(h2::Reason::NO_ERROR),
        "not closed with a GOAWAY: {refused:?}"
    );
}

/// An HTTP/1.1 request head over 64 KiB is refused 431 and its connection
/// closed (hyper's default buffer let it grow to 400 KiB per connection); a
/// head of 32 KiB is served, as are 100 headers, and more are 431 too.
#[tokio::test]
async fn oversized_request_heads_are_431() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let with = |extra: String| {
        format!("GET /healthz HTTP/1.1\r\nHost: {ACME_HOST}\r\n{extra}Connection: close\r\n\r\n")
    };
    let served = raw_request(
        gw.addr,
        &with(format!("X-Big: {}\r\n", "a".repeat(32 * 1024))),
    )
    .await;
    assert_eq!(served.status, 200, "{}", served.head);
    let many: String = (0..90).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(raw_request(gw.addr, &with(many)).await.status, 200);
    let refused = raw_request(
        gw.addr,
        &with(format!("X-Big: {}\r\n", "a".repeat(100 * 1024))),
    )
    .await;
    assert_eq!(refused.status, 431, "{}", refused.head);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(raw_request(gw.addr, &with(many)).await.status, 431);
}

/// A panic once its request's usage record exists (here in the built-in mock,
/// asked to by a test-only directive) is answered with the request id that
/// the record, and the request's log lines, have: the answer had a fresh id
/// of its own when the client sent none, which matched nothing.
#[tokio::test]
async fn the_answer_to_a_panic_carries_its_records_request_id() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut body = chat_body("demo");
    body["mock"] = json!({"panic": true});
    let resp = post(
        &gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &body,
    )
    .await;
    let rid = request_id(&resp);
    assert!(is_uuid(&rid), "{rid}");
    assert_eq!(error_code(resp, 500).await, "internal_error");
    let start = std::time::Instant::now();
    let records = loop {
        let records = gw.usage();
        if !records.is_empty() {
            break records;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the panicked request was not recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["error_code"], "internal_error", "{record}");
    assert_eq!(
        record["request_id"],
        rid.as_str(),
        "the answer's x-request-id is not its record's: {record}"
    );
}

/// The usage record of `rid` in the file at `path`, if written within `within`.
async fn record_within(
    path: &std::path::Path,
    rid: &str,
    within: std::time::Duration,
) -> Option<Value> {
    let start = std::time::Instant::now();
    loop {
        if let Some(r) = read_usage(path)
            .into_iter()
            .find(|r| r["request_id"] == rid)
        {
            return Some(r);
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The client PINGs' timers of [`pinging_gateway`]: a silent client is cut
/// within their sum (the gateway's own are 10 s and 20 s). A second for the
/// pong: a client that answers (driven on the test's thread, which a loaded
/// host may leave unrun for a few hundred milliseconds) is not taken for a
/// silent one.
const PING_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
const PONG_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The standard gateway in front of `mock`, PINGing its HTTP/2 clients every
/// [`PING_EVERY`]; its usage file's path (in the returned directory).
async fn pinging_gateway(
    mock: &MockProvider,
) -> (livery::Gateway, std::path::PathBuf, tempfile::TempDir) {
    set_provider_key_env();
    let dir = tempfile::tempdir().unwrap();
    let usage_path = dir.path().join("usage.jsonl");
    let mut config =
        livery::config::GatewayConfig::parse(&standard_config(&mock.base_url(), "")).unwrap();
    config.usage.jsonl_path = Some(usage_path.clone());
    let gateway = livery::Gateway::start_with_client_pings(config, PING_EVERY, PONG_WITHIN)
        .await
        .unwrap();
    // A stream cut short has its completion tokens counted, by a tokenizer
    // that takes a second to load in a debug build: loaded now, so that the
    // cut's timing does not include it.
    livery::usage::estimate::estimate_text_tokens("gpt-4o-mini-2024-07-18", "warm up");
    (gateway, usage_path, dir)
}

/// A streamed chat as acme's dental tenant, the mock told `mock`.
fn dental_stream_body(mock: Value) -> Value {
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    body["mock"] = mock;
    body
}

/// Sends `body` on a new HTTP/2 connection made by `builder` on `tcp` and
/// drives the connection until the answer's head has come; then the client
/// falls silent: its connection is returned unpolled, socket open, so that
/// nothing more is read from it and no PING is answered. Returns the
/// request's id and the connection (polled again, it reads what came since).
async fn fall_silent_after_the_head(
    tcp: tokio::net::TcpStream,
    builder: &h2::client::Builder,
    body: &Value,
) -> (
    String,
    h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>,
) {
    let (send, mut conn) = builder.handshake(tcp).await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{ACME_HOST}/v1/chat/completions"))
        .header("authorization", format!("Bearer {}", ACME_DENTAL.2))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (resp, mut tx) = send.send_request(req, false).unwrap();
    tx.send_data(bytes::Bytes::from(body.to_string()), true)
        .unwrap();
    let resp = tokio::select! {
        resp = resp => resp.unwrap(),
        ended = &mut conn => panic!("the connection ended before an answer: {ended:?}"),
    };
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    (rid, conn)
}

/// Asserts that the silent client's stream `rid` is ended within the PINGs'
/// period and timeout (with 3 s more for the record's write on a loaded host:
/// without the PINGs, the silent streams here end after 10 s, or never),
/// recorded as its client's disconnection, and its upstream stream let go;
/// and that its connection is closed, not only the stream.
async fn assert_cut_within_a_ping(
    usage_path: &std::path::Path,
    mock: &MockProvider,
    rid: &str,
    conn: h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>,
) {
    use std::time::{Duration, Instant};
    let silent = Instant::now();
    let record = record_within(
        usage_path,
        rid,
        PING_EVERY + PONG_WITHIN + Duration::from_secs(3),
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "a silent client's stream was not ended {:?} after it fell silent",
            silent.elapsed()
        )
    });
    assert_eq!(record["outcome"], "client_disconnected", "{record}");
    assert_eq!(record["status"], 499, "{record}");
    mock.wait_cancelled(1, Duration::from_secs(10)).await;
    // Polled again, the client reads what was sent before the close, then
    // the end of the connection.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the silent client's connection stayed open");
}

/// An HTTP/2 client that falls silent with a stream open (its connection
/// neither read nor answered any more, its socket left open: a NAT that
/// dropped its state, a laptop whose lid closed) is cut once it answers no
/// PING, with its stream: the record says `client_disconnected` and the
/// upstream stream is let go. They were held until the stream's own timers
/// fired, minutes into a slow generation. A client that answers PINGs keeps
/// a stream that sends it nothing for longer than a PING's period and
/// timeout together.
#[tokio::test]
async fn an_http2_client_that_answers_no_ping_is_cut_with_its_stream() {
    use std::time::Duration;
    let mock = MockProvider::start().await;
    let (gateway, usage_path, _dir) = pinging_gateway(&mock).await;
    let addr = gateway.local_addr();

    // A client that answers: 1.6 s without an event (longer than a PING's
    // period and timeout together, shorter than the upstream's idle timeout
    // of 3 s), and nothing from it but pongs for the whole stream. Served
    // whole.
    let send = h2c_connect(addr).await;
    let body = dental_stream_body(json!({"chunks": 2, "stall_after": 2, "stall_ms": 1600}));
    let uri = format!("http://{ACME_HOST}/v1/chat/completions");
    let auth = format!("Bearer {}", ACME_DENTAL.2);
    let resp = h2_request(
        &send,
        "POST",
        &uri,
        &[("authorization", &auth)],
        Some(&body),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.body().ends_with("data: [DONE]\n\n"), "{}", resp.body());
    let rid = resp.headers()["x-request-id"].to_str().unwrap();
    let record = record_within(&usage_path, rid, Duration::from_secs(5))
        .await
        .expect("the answered stream was recorded");
    assert_eq!(record["outcome"], "ok", "{record}");

    // A client that falls silent in a stream of 10 s.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = dental_stream_body(json!({"chunks": 100, "gap_ms": 100}));
    let (rid, conn) = fall_silent_after_the_head(tcp, &h2::client::Builder::new(), &body).await;
    assert_cut_within_a_ping(&usage_path, &mock, &rid, conn).await;
    gateway.shutdown(Duration::from_secs(5)).await;
}

/// The same with the silent client's socket full (its receive buffer and the
/// gateway's send buffer, as when the peer vanished and nothing is
/// acknowledged any more): the cut does not wait on writing to it. HTTP/1.1
/// has `send_timeout_ms` for a client that stops reading; an HTTP/2 stream,
/// paced by flow control, had nothing.
#[tokio::test]
async fn an_http2_client_gone_with_its_socket_full_is_cut_all_the_same() {
    let mock = MockProvider::start().await;
    let (gateway, usage_path, _dir) = pinging_gateway(&mock).await;
    let addr = gateway.local_addr();
    // Windows of 8 MiB and a small receive buffer: the gateway writes until
    // the sockets' buffers are full, not until flow control stops it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(8 << 20)
        .initial_connection_window_size(8 << 20);
    // Ten megabytes.
    let body = dental_stream_body(json!({"chunks": 60_000}));
    let (rid, conn) = fall_silent_after_the_head(tcp, &builder, &body).await;
    assert_cut_within_a_ping(&usage_path, &mock, &rid, conn).await;
    gateway.shutdown(std::time::Duration::from_secs(5)).await;
}
