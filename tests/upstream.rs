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

/// Every header an answer to a forwarded request may carry (README: only
/// `content-type`, `retry-after` and the gateway's own headers reach the
/// client): framing and date (hyper's), the request id, the limiter's
/// refusal headers and its six rate-limit headers, a stream's cache control
/// and `x-accel-buffering`, the served and downgraded-from model
/// (src/proxy/fallback.rs), and `vary`.
const ALLOWED: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "date",
    "x-request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "vary",
    "cache-control",
    "x-accel-buffering",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-livery-model",
    "x-livery-downgraded-from",
];

/// The CORS headers the gateway adds to an answer for an allowed `Origin`
/// (src/proxy/cors.rs); none without one.
const CORS: &[&str] = &[
    "access-control-allow-origin",
    "access-control-expose-headers",
];

/// Asserts the answer's headers are all on the allowlist (plus the CORS
/// ones if the request sent an `Origin`), that none of the names a provider
/// identifies itself by is there, and that the request id is the gateway's.
fn assert_white_label_for(headers: &reqwest::header::HeaderMap, origin_sent: bool) {
    for name in headers.keys() {
        let name = name.as_str();
        assert!(
            ALLOWED.contains(&name) || (origin_sent && CORS.contains(&name)),
            "header `{name}: {:?}` is not one the gateway sends: {headers:?}",
            headers[name]
        );
    }
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

fn assert_white_label(headers: &reqwest::header::HeaderMap) {
    assert_white_label_for(headers, false);
}

/// What OpenAI's API (behind Cloudflare) answers with besides its content
/// type, `x-request-id` and `retry-after`: names and values of recorded
/// answers, the values made distinctive.
const PROVIDER_HEADERS: &[(&str, &str)] = &[
    ("server", "cloudflare"),
    ("cf-ray", "8f3b2c1d0e9a7b6c-FRA"),
    ("cf-cache-status", "DYNAMIC"),
    (
        "set-cookie",
        "__cf_bm=providerCookie123; path=/; domain=.api.openai.com; HttpOnly; Secure",
    ),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains; preload",
    ),
    ("alt-svc", "h3=\":443\"; ma=86400"),
    ("x-content-type-options", "nosniff"),
    ("access-control-expose-headers", "X-Request-ID-provider"),
    ("access-control-allow-origin", "https://provider.example"),
    ("openai-organization", "org-provider-Z9"),
    ("openai-project", "proj_provider_Z9"),
    ("openai-processing-ms", "4321"),
    ("openai-version", "2020-10-01"),
    ("openai-model", "gpt-4o-mini-2024-07-18"),
    ("x-envoy-upstream-service-time", "4310"),
    ("x-ratelimit-limit-requests", "987651"),
    ("x-ratelimit-limit-tokens", "987652"),
    ("x-ratelimit-remaining-requests", "987653"),
    ("x-ratelimit-remaining-tokens", "987654"),
    ("x-ratelimit-reset-requests", "6ms-provider"),
    ("x-ratelimit-reset-tokens", "7ms-provider"),
    ("retry-after-ms", "31337"),
    ("x-should-retry", "provider-says-true"),
    ("vary", "Accept-Encoding-provider"),
    ("cache-control", "provider-no-store"),
    ("via", "1.1 provider-proxy"),
    ("x-powered-by", "provider"),
    ("request-id", "req_provider_anthropic_style"),
    ("anthropic-ratelimit-requests-limit", "987655"),
];

/// An HTTP provider (HTTP/1.1) that answers every chat with all of
/// [`PROVIDER_HEADERS`], its own request id and `retry-after`: a chat (SSE
/// when asked for an event stream), or a 429 when the body says
/// `"mock": {"status": 429}`.
async fn chatty_headers_upstream() -> String {
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let stream = req
                        .headers()
                        .get("accept")
                        .is_some_and(|v| v.to_str().unwrap_or("").contains("event-stream"));
                    let body = req.into_body().collect().await?.to_bytes();
                    let failing = String::from_utf8_lossy(&body).contains("\"status\":429");
                    let mut resp = if failing {
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(
                                br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
                            ),
                        ));
                        *r.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                        r.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        r
                    } else {
                        h2c_answer(stream, "many headers")
                    };
                    let h = resp.headers_mut();
                    for (name, value) in PROVIDER_HEADERS {
                        h.append(*name, http::HeaderValue::from_static(value));
                    }
                    h.insert(
                        "x-request-id",
                        http::HeaderValue::from_static("req_provider_0123456789"),
                    );
                    h.insert("retry-after", http::HeaderValue::from_static("2"));
                    Ok::<_, hyper::Error>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/v1")
}

/// Against a provider that sends every header a real one does, an answer
/// carries only the allowlisted headers, and none of the provider's values
/// but its content type and `retry-after`: not under a name the gateway
/// uses too (rate-limit, `vary`, `cache-control`, CORS headers), whether
/// plain, streamed or a provider error, with and without CORS.
#[tokio::test]
async fn only_allowlisted_headers_reach_the_client_whatever_the_provider_sends() {
    let gw = TestGateway::start(&standard_config(&chatty_headers_upstream().await, "")).await;
    let mut stream = chat_body("gpt-4o-mini");
    stream["stream"] = json!(true);
    let mut failing = chat_body("gpt-4o-mini");
    failing["mock"] = json!({"status": 429});
    for origin in [None, Some("https://app.example")] {
        for (body, status) in [
            (chat_body("gpt-4o-mini"), 200),
            (stream.clone(), 200),
            (failing.clone(), 429),
        ] {
            let mut rb = client()
                .post(gw.url("/v1/chat/completions"))
                .header("host", ACME_HOST)
                .bearer_auth(ACME_DENTAL.2)
                .json(&body);
            if let Some(o) = origin {
                rb = rb.header("origin", o);
            }
            let resp = rb.send().await.unwrap();
            assert_eq!(resp.status(), status, "{body}");
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap();
            assert!(status != 200 || text.contains("many headers"), "{text}");
            assert_white_label_for(&headers, origin.is_some());
            if origin.is_some() {
                assert_eq!(headers["access-control-allow-origin"], "*", "{headers:?}");
            }
            for (name, value) in headers.iter() {
                let value = value.to_str().unwrap();
                for (pname, pvalue) in PROVIDER_HEADERS {
                    assert_ne!(
                        value, *pvalue,
                        "`{name}` carries the provider's `{pname}` value: {headers:?}"
                    );
                }
            }
            assert_eq!(
                headers.get("retry-after").map(|v| v.to_str().unwrap()),
                (status == 429).then_some("2"),
                "{headers:?}"
            );
        }
    }
}

#[tokio::test]
async fn provider_identifying_headers_never_reach_the_client() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let resp = dental_post(&gw, &chat_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200);
    assert_white_label(resp.headers());
    // The gateway's request id is the one the provider was sent, for correlation.
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(mock.last_request().headers["x-request-id"], rid.as_str());

    let mut stream = chat_body("gpt-4o-mini");
    stream["stream"] = json!(true);
    let resp = dental_post(&gw, &stream).await;
    assert_eq!(resp.status(), 200);
    assert_white_label(resp.headers());
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let _ = resp.text().await.unwrap();

    let mut failing = chat_body("gpt-4o-mini");
    failing["mock"] = json!({"status": 429});
    let resp = dental_post(&gw, &failing).await;
    assert_eq!(resp.status(), 429);
    assert_white_label(resp.headers());
}

#[tokio::test]
async fn upstream_errors_keep_their_status_in_openai_shape_without_provider_details() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    // A 404 under the gateway's key is the route's fault: 502 (see
    // routing.rs); the others keep their status.
    for (status, retry_after) in [
        (429u16, Some("3")),
        (400, None),
        (404, None),
        (500, Some("1")),
        (503, Some("1")),
    ] {
        let mut body = chat_body("gpt-4o-mini");
        body["mock"] = json!({"status": status, "retry_after": 3});
        let resp = dental_post(&gw, &body).await;
        let answered = if status == 404 { 502 } else { status };
        assert_eq!(resp.status().as_u16(), answered);
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
            assert_eq!(err["code"], "upstream_model_unavailable");
        }
    }
}

/// A non-streamed answer above `max_upstream_body_bytes` is not relayed
/// (nor any part of it): 502 `upstream_response_too_large`, recorded so,
/// and not sent again. One under the limit passes.
#[tokio::test]
async fn an_upstream_answer_above_max_upstream_body_bytes_is_a_502() {
    let mock = MockProvider::start().await;
    let toml = standard_config(&mock.base_url(), "").replace(
        "max_body_bytes = 65536\n",
        "max_body_bytes = 65536\nmax_upstream_body_bytes = 64\n",
    );
    assert!(toml.contains("max_upstream_body_bytes = 64"));
    let gw = TestGateway::start(&toml).await;
    let resp = dental_post(&gw, &chat_body("gpt-4o-mini")).await;
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "upstream_response_too_large", "{text}");
    assert_eq!(v["error"]["type"], "upstream_error", "{text}");
    assert!(
        !text.contains("chatcmpl") && !text.contains("gpt-4o-mini-2024-07-18"),
        "part of the answer was relayed: {text}"
    );
    assert_eq!(mock.requests().len(), 1, "not sent again");
    let record = gw.usage_for(&rid).await;
    assert_eq!(record["status"], 502, "{record}");
    assert_eq!(
        record["error_code"], "upstream_response_too_large",
        "{record}"
    );
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{record}");
    assert_eq!(attempts[0]["outcome"], "response_too_large", "{record}");
    gw.shutdown().await;

    // The same answer under a limit it fits is relayed whole.
    let gw = TestGateway::start(&toml.replace(
        "max_upstream_body_bytes = 64\n",
        "max_upstream_body_bytes = 65536\n",
    ))
    .await;
    let resp = dental_post(&gw, &chat_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200);
    gw.shutdown().await;
}

/// The demo tenant's key is public: a reload may not bring it in while a
/// listener is reachable from other hosts, as start-up refuses it
/// (`tests/cli.rs`). On loopback the same reload is taken.
#[tokio::test]
async fn a_reload_refuses_the_demo_tenant_while_a_listener_is_public() {
    let mock = MockProvider::start().await;
    let demo_tenant = format!(
        "\n[[resellers.tenants]]\nid = \"demo\"\nplan = \"basic\"\nkey_hashes = [\"{}\"]\n",
        hash(livery::DEMO_KEY)
    );
    for (listen, public) in [("127.0.0.1:0", false), ("0.0.0.0:0", true)] {
        let base = standard_config(&mock.base_url(), "").replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"{listen}\"]"),
        );
        let gw = TestGateway::start(&base).await;
        let mut config =
            livery::config::GatewayConfig::parse(&format!("{base}{demo_tenant}")).unwrap();
        config.usage.jsonl_path = Some(gw.usage_path.clone());
        let reloaded = gw.gateway.as_ref().unwrap().reload(&config);
        let resp = post(
            &gw,
            "/v1/chat/completions",
            Some(GLOBEX_HOST),
            Some(livery::DEMO_KEY),
            &chat_body("gpt-4o-mini"),
        )
        .await;
        if public {
            let e = reloaded.unwrap_err().to_string();
            assert!(e.contains("demo tenant"), "{e}");
            assert_eq!(resp.status(), 401, "the demo key works on {listen}");
        } else {
            reloaded.unwrap();
            assert_eq!(resp.status(), 200);
        }
    }
}

/// Prices are part of the snapshot: a request is priced with the table it
/// started under, even if a reload lands before it ends, and the requests
/// after a reload (`Gateway::reload`, as the library's users call it) with
/// the new one.
#[tokio::test]
async fn prices_swap_with_the_snapshot() {
    let mock = MockProvider::start().await;
    let priced = |per_token: u64| {
        format!(
            "{}\n[prices]\ncurrency = \"USD\"\n\n[[prices.models]]\nmodel = \"gpt-4o-mini-2024-07-18\"\ninput_per_million = \"{}\"\noutput_per_million = \"0\"\n",
            standard_config(&mock.base_url(), ""),
            per_token * 1_000_000
        )
    };
    let gw = TestGateway::start(&priced(1)).await;
    let mut slow = chat_body("gpt-4o-mini");
    slow["stream"] = json!(true);
    slow["stream_options"] = json!({"include_usage": true});
    slow["mock"] = json!({"chunks": 10, "gap_ms": 60});
    let in_flight = dental_post(&gw, &slow).await;
    assert_eq!(in_flight.status(), 200);
    let old_id = in_flight.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let mut next = livery::config::GatewayConfig::parse(&priced(2)).unwrap();
    next.usage.jsonl_path = Some(gw.usage_path.clone());
    gw.gateway.as_ref().unwrap().reload(&next).unwrap();
    let _ = in_flight.text().await.unwrap();
    let old = gw.usage_for(&old_id).await;
    let tokens = old["prompt_tokens"].as_u64().unwrap();
    assert_eq!(old["cost_micros"], tokens * 1_000_000, "{old}");

    let after = dental_post(&gw, &chat_body("gpt-4o-mini")).await;
    let new_id = after.headers()["x-request-id"].to_str().unwrap().to_owned();
    let _ = after.text().await;
    let new = gw.usage_for(&new_id).await;
    let tokens = new["prompt_tokens"].as_u64().unwrap();
    assert_eq!(new["cost_micros"], tokens * 2_000_000, "{new}");
}

#[tokio::test]
async fn reload_swaps_the_whole_snapshot_and_in_flight_streams_finish_on_the_old_one() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut slow = chat_body("gpt-4o-mini");
    slow["stream"] = json!(true);
    slow["mock"] = json!({"chunks": 6, "gap_ms": 100});
    let in_flight = dental_post(&gw, &slow).await;
    assert_eq!(in_flight.status(), 200);

    // The new configuration drops tenant `dental` and adds a new key to `realty`.
    let base = standard_config(&mock.base_url(), "");
    let next = base
        .replace(&hash(ACME_DENTAL.2), &hash("sk-acme-new-key"))
        .replace("id = \"dental\"", "id = \"dental-2\"");
    let mut config = livery::config::GatewayConfig::parse(&next).unwrap();
    config.usage.jsonl_path = Some(gw.usage_path.clone());
    gw.gateway.as_ref().unwrap().reload(&config).unwrap();

    let old = dental_post(&gw, &chat_body("gpt-4o-mini")).await;
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
    let resp = dental_post(&gw, &body).await;
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

/// An `https` upstream is verified against the webpki roots before anything is
/// sent: a server with a self-signed certificate gets a TLS handshake and then
/// the client's refusal, never the request (and so never the provider key),
/// and the client gets a 502 `upstream_unreachable`.
#[tokio::test]
async fn an_https_upstream_whose_certificate_does_not_verify_is_sent_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let acceptor = tls_acceptor(vec![cert.der().clone()], key_der);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let request_bytes = Arc::new(AtomicUsize::new(0));
    {
        let (connections, handshakes, request_bytes) = (
            connections.clone(),
            handshakes.clone(),
            request_bytes.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let (handshakes, request_bytes) = (handshakes.clone(), request_bytes.clone());
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = tls.read(&mut buf).await {
                            request_bytes.fetch_add(n, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
    }

    let gw = TestGateway::start(&standard_config(
        &format!("https://localhost:{port}/v1"),
        "",
    ))
    .await;
    let resp = dental_post(&gw, &chat_body("gpt-4o-mini")).await;
    assert_eq!(error_code(resp, 502).await, "upstream_unreachable");
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "the gateway dialled the https upstream"
    );
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        0,
        "the gateway refused the certificate before the handshake completed"
    );
    assert_eq!(request_bytes.load(Ordering::SeqCst), 0);
    gw.shutdown().await;
}

/// A provider behind a private CA: with `ca_file` the gateway trusts it, agrees
/// HTTP/2 by ALPN over TLS, and sends the provider key in the request.
#[tokio::test]
async fn an_https_upstream_behind_a_private_ca_is_trusted_with_ca_file_over_h2() {
    let up = TlsUpstream::start(&[b"h2", b"http/1.1"]).await;
    let gw = TestGateway::start(&up.config()).await;
    chat_over_tls(&gw, 2).await;
    let seen = up.seen.lock().unwrap().clone();
    let expected = (http::Version::HTTP_2, format!("Bearer {PROVIDER_KEY}"));
    assert_eq!(seen, vec![expected.clone(), expected]);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "both requests on one HTTP/2 connection"
    );
    gw.shutdown().await;
}

/// A TLS provider that does not offer HTTP/2 by ALPN is spoken to in
/// HTTP/1.1, on every request (the gateway remembers).
#[tokio::test]
async fn an_https_upstream_without_h2_by_alpn_is_spoken_to_in_http1() {
    let up = TlsUpstream::start(&[b"http/1.1"]).await;
    let gw = TestGateway::start(&up.config()).await;
    chat_over_tls(&gw, 3).await;
    let seen = up.seen.lock().unwrap().clone();
    let expected = (http::Version::HTTP_11, format!("Bearer {PROVIDER_KEY}"));
    assert_eq!(seen, vec![expected.clone(), expected.clone(), expected]);
    gw.shutdown().await;
}

/// Sends `n` chat completions through `gw`, one after the other, and checks
/// each got [`TlsUpstream`]'s answer.
async fn chat_over_tls(gw: &TestGateway, n: usize) {
    for _ in 0..n {
        let resp = post(
            gw,
            "/v1/chat/completions",
            Some(ACME_HOST),
            Some(ACME_DENTAL.2),
            &chat_body("gpt-4o-mini"),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "over TLS");
    }
}

/// An HTTP/2 provider that closes its connection after every request, with
/// GOAWAY or by dropping it: each next request dials a new connection and
/// succeeds, none is failed for the closed one.
#[tokio::test]
async fn an_http2_upstream_that_closes_its_connections_is_dialled_again() {
    for graceful in [true, false] {
        let up = OneRequestH2Upstream::start(graceful).await;
        let gw = TestGateway::start(&h2c_config(up.port)).await;
        for i in 0..4 {
            let text = chat_numbered(&gw, i).await;
            assert!(text.contains("over h2c"), "graceful={graceful}: {text}");
            // The answer in, the provider ends the connection. The next
            // request comes once the end has reached the gateway, as an
            // idle connection's would: the provider's side is closed, and
            // the gateway has had a moment to read that.
            up.end_connection(i + 1).await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            up.connections.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "graceful={graceful}: one connection per request"
        );
        gw.shutdown().await;
    }
}

/// An h2c server whose connections serve until the test ends them
/// ([`end_connection`](Self::end_connection), once a request was answered):
/// with a GOAWAY (`graceful`) or by dropping the socket.
struct OneRequestH2Upstream {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Connections ended: closed after their GOAWAY, or dropped.
    ended: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Tells the connection being served to end.
    end: std::sync::Arc<tokio::sync::Notify>,
}

impl OneRequestH2Upstream {
    async fn start(graceful: bool) -> Self {
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let end = Arc::new(tokio::sync::Notify::new());
        let (counter, ends, ended_count) = (connections.clone(), end.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (end, ended) = (ends.clone(), ended_count.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let stream = req
                            .headers()
                            .get("accept")
                            .is_some_and(|v| v.to_str().unwrap_or("").contains("event-stream"));
                        async move { Ok::<_, std::convert::Infallible>(h2c_answer(stream, "over h2c")) }
                    });
                    let mut conn = Box::pin(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tcp), svc),
                    );
                    // Served (the connection polled) until the test, which
                    // has its answer, says to end it.
                    let told = tokio::select! {
                        _ = conn.as_mut() => false,
                        () = end.notified() => true,
                    };
                    if told && graceful {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.as_mut().await;
                    }
                    // Not graceful: the connection (and its socket) is dropped.
                    drop(conn);
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            connections,
            ended,
            end,
        }
    }

    /// Ends the connection being served, and waits (20 s at most) until it
    /// has ended, the `n`th to.
    async fn end_connection(&self, n: usize) {
        use std::sync::atomic::Ordering;
        use std::time::{Duration, Instant};
        self.end.notify_one();
        let start = Instant::now();
        while self.ended.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "connection {n} to the provider did not end"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A chat completion saying `content`, as JSON or (`stream`) as SSE events.
fn h2c_answer(stream: bool, content: &str) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (body, ct) = if stream {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk",
            "created": 1, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "delta": {"content": content}}]});
        let usage = json!({"id": "c", "object": "chat.completion.chunk",
            "created": 1, "model": "gpt-4o-mini-2024-07-18", "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        (
            format!("data: {chunk}\n\ndata: {usage}\n\ndata: [DONE]\n\n"),
            "text/event-stream",
        )
    } else {
        let body = json!({
            "id": "chatcmpl-h2c", "object": "chat.completion", "created": 1,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        });
        (body.to_string(), "application/json")
    };
    let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    resp.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(ct));
    resp
}

/// An HTTP/2 provider that refuses every other stream (`REFUSED_STREAM`: by
/// RFC 9113 section 8.7 the request was not processed). Each refused request
/// is sent again at once and answered, although the suite allows no retries,
/// and the refusals do not open the route's breaker, which one failure would.
#[tokio::test]
async fn a_refused_http2_stream_is_sent_again_and_not_held_against_the_route() {
    let up = RefusingH2Upstream::start(|n| n % 2 == 0).await;
    let toml = h2c_config(up.port).replacen("[routing]\n", "[routing]\nbreaker_failures = 1\n", 1);
    let gw = TestGateway::start(&toml).await;
    for i in 0..4 {
        let text = chat_numbered(&gw, i).await;
        assert!(text.contains("after a refusal"), "request {i}: {text}");
    }
    assert_eq!(up.refused.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(up.answered.load(std::sync::atomic::Ordering::SeqCst), 4);
    gw.shutdown().await;
}

/// A provider that refuses every stream: the request is sent three times in
/// all (two refusals are sent again), then fails as unreachable, in OpenAI's
/// error shape.
#[tokio::test]
async fn a_provider_that_keeps_refusing_streams_answers_502_after_three_sends() {
    let up = RefusingH2Upstream::start(|_| true).await;
    let gw = TestGateway::start(&h2c_config(up.port)).await;
    let resp = dental_post(&gw, &chat_body("gpt-4o-mini")).await;
    assert_eq!(error_code(resp, 502).await, "upstream_unreachable");
    assert_eq!(up.refused.load(std::sync::atomic::Ordering::SeqCst), 3);
    gw.shutdown().await;

    // The third refusal of one request is an ordinary failure: with a breaker
    // that opens on one, the next request is not sent three times more.
    let toml = h2c_config(up.port).replacen("[routing]\n", "[routing]\nbreaker_failures = 1\n", 1);
    let gw = TestGateway::start(&toml).await;
    let before = up.refused.load(std::sync::atomic::Ordering::SeqCst);
    // The first request is sent three times (the third refusal spends the
    // route and opens its breaker); the second is not sent at all: 503
    // routes_unavailable, its one attempt the open breaker.
    let refused = ["upstream_refused"; 3];
    for (code, status, outcomes) in [
        ("upstream_unreachable", 502, &refused[..]),
        ("routes_unavailable", 503, &["breaker_open"][..]),
    ] {
        let resp = dental_post(&gw, &chat_body("gpt-4o-mini")).await;
        let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(
            error_code(resp, status).await,
            code,
            "the second finds the breaker open"
        );
        let record = gw.usage_for(&rid).await;
        let attempts: Vec<(&str, &str)> = record["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                assert!(a["status"].is_null(), "no HTTP answer: {record}");
                (
                    a["provider"].as_str().unwrap(),
                    a["outcome"].as_str().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(&str, &str)> = outcomes.iter().map(|o| ("upstream", *o)).collect();
        assert_eq!(attempts, expected, "{record}");
        assert_eq!(
            (record["status"].as_u64(), &record["error_code"]),
            (Some(u64::from(status)), &json!(code)),
            "{record}"
        );
    }
    assert_eq!(
        up.refused.load(std::sync::atomic::Ordering::SeqCst),
        before + 3,
        "the open breaker let the second request through"
    );
    gw.shutdown().await;
}

/// POSTs `body` to the chat endpoint as acme's dental tenant.
async fn dental_post(gw: &TestGateway, body: &Value) -> reqwest::Response {
    post(
        gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        body,
    )
    .await
}

/// Chat request `i` of a series (streamed when `i` is odd) as acme's dental
/// tenant; asserts a 200 and returns the body.
async fn chat_numbered(gw: &TestGateway, i: usize) -> String {
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(i % 2 == 1);
    dental_chat(gw, &body).await
}

/// The suite's configuration with the upstream an h2c server on `port`.
fn h2c_config(port: u16) -> String {
    standard_config(&format!("http://127.0.0.1:{port}/v1"), "").replace(
        "first_byte_timeout_ms = 1500",
        "first_byte_timeout_ms = 1500\nhttp2_prior_knowledge = true",
    )
}

/// An h2c server that refuses the `n`th stream it receives (from 0) when
/// `refuse(n)`, and answers the others "after a refusal".
struct RefusingH2Upstream {
    port: u16,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RefusingH2Upstream {
    async fn start(refuse: fn(usize) -> bool) -> Self {
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (refused, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let seen = Arc::new(AtomicUsize::new(0));
        let (r, a) = (refused.clone(), answered.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (r, a, seen) = (r.clone(), a.clone(), seen.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let stream = req
                            .headers()
                            .get("accept")
                            .is_some_and(|v| v.to_str().unwrap_or("").contains("event-stream"));
                        let refusing = refuse(seen.fetch_add(1, Ordering::SeqCst));
                        let (r, a) = (r.clone(), a.clone());
                        async move {
                            if refusing {
                                r.fetch_add(1, Ordering::SeqCst);
                                // hyper resets the stream with the h2 reason it finds.
                                return Err(h2::Error::from(h2::Reason::REFUSED_STREAM));
                            }
                            a.fetch_add(1, Ordering::SeqCst);
                            Ok(h2c_answer(stream, "after a refusal"))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            port,
            refused,
            answered,
        }
    }
}

/// A TLS provider behind a private CA offering `alpn`, recording the HTTP
/// version and `Authorization` of every request it serves.
struct TlsUpstream {
    _dir: tempfile::TempDir,
    ca_path: std::path::PathBuf,
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(http::Version, String)>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsUpstream {
    async fn start(alpn: &[&[u8]]) -> Self {
        use http_body_util::Full;
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::TestCa::new();
        let ca_path = ca.write(dir.path());
        let (cert_path, key_path) = ca.leaf(dir.path(), "upstream", &["localhost"]);
        let certs = rustls_pki_types::pem::PemObject::pem_file_iter(&cert_path)
            .unwrap()
            .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
            .unwrap();
        let key: rustls_pki_types::PrivateKeyDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_file(&key_path).unwrap();
        let acceptor = tls_acceptor_offering(certs, key, alpn);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<(http::Version, String)>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        {
            let seen = seen.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            seen.lock().unwrap().push((req.version(), auth));
                            let body = json!({
                                "id": "chatcmpl-tls", "object": "chat.completion", "created": 1,
                                "model": "gpt-4o-mini-2024-07-18",
                                "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "over TLS"}}],
                                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
                            });
                            async move {
                                let mut resp = http::Response::new(Full::new(bytes::Bytes::from(
                                    serde_json::to_vec(&body).unwrap(),
                                )));
                                resp.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        }
        Self {
            _dir: dir,
            ca_path,
            port,
            seen,
            connections,
        }
    }

    /// The standard configuration with this server as the HTTP provider.
    fn config(&self) -> String {
        let toml = standard_config(&format!("https://localhost:{}/v1", self.port), "").replace(
            "first_byte_timeout_ms = 1500",
            &format!(
                "first_byte_timeout_ms = 1500\nca_file = \"{}\"",
                self.ca_path.display()
            ),
        );
        assert!(toml.contains("ca_file"));
        toml
    }
}

/// A TLS server side with `certs` and `key`, offering HTTP/2 and HTTP/1.1 by ALPN.
fn tls_acceptor(
    certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> tokio_rustls::TlsAcceptor {
    tls_acceptor_offering(certs, key, &[b"h2", b"http/1.1"])
}

/// A TLS server side with `certs` and `key`, offering `alpn`.
fn tls_acceptor_offering(
    certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}
