//! Point 3: adversarial tenant isolation across the two resellers of the standard
//! configuration. Every tenant endpoint is tried with the tenant's own key, with
//! the other tenant's key, with the other reseller's keys and Host, with spoofed,
//! missing, repeated and conflicting Hosts, without a key, with a malformed
//! one and with a credential header sent twice. A refused request never reaches the provider, and a key that belongs to
//! another reseller is indistinguishable from a key that does not exist.

use crate::support::*;
use serde_json::{json, Value};

/// Every tenant endpoint: (method, path). `/v1/messages` is Anthropic's API:
/// its errors come in Anthropic's shape (see [`code_in`]).
const ENDPOINTS: [(&str, &str); 7] = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/messages"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/gpt-4o-mini"),
];

const MESSAGES: &str = "/v1/messages";

/// A key no tenant holds.
const UNKNOWN_KEY: &str = "sk-nobody-holds-this-key-0000";

const ACME_HOSTS: [&str; 2] = [ACME_HOST, "acme.livery.test"];
const GLOBEX_HOSTS: [&str; 2] = [GLOBEX_HOST, "globex.livery.test"];

/// A valid request body for a forwarded endpoint (`None` for `GET /v1/models`).
fn body_for(path: &str) -> Option<Value> {
    match path {
        "/v1/chat/completions" => Some(chat_body("gpt-4o-mini")),
        "/v1/completions" => Some(json!({"model": "gpt-4o-mini", "prompt": "Say hello"})),
        "/v1/embeddings" => Some(json!({"model": "embed", "input": "hello tests"})),
        "/v1/responses" => Some(json!({"model": "gpt-4o-mini", "input": "Say hello"})),
        MESSAGES => Some(json!({"model": "gpt-4o-mini", "max_tokens": 16,
                                "messages": [{"role": "user", "content": "Say hello"}]})),
        "/v1/models" | "/v1/models/gpt-4o-mini" => None,
        other => panic!("not a tenant endpoint: {other}"),
    }
}

/// How the client presents its credential.
#[derive(Clone, Copy, Debug)]
enum Cred<'a> {
    None,
    Bearer(&'a str),
    /// An arbitrary header: `api-key`, `x-api-key`, or a raw `authorization`.
    Header(&'static str, &'a str),
}

impl<'a> Cred<'a> {
    /// The same presentation style carrying another key.
    fn with_key(self, key: &'a str) -> Cred<'a> {
        match self {
            Cred::None => Cred::None,
            Cred::Bearer(_) => Cred::Bearer(key),
            Cred::Header(name, _) => Cred::Header(name, key),
        }
    }
}

async fn call(
    gw: &TestGateway,
    path: &str,
    host: Option<&str>,
    cred: Cred<'_>,
) -> reqwest::Response {
    call_with(gw, path, host, cred, &[]).await
}

/// [`call`] with `extra` headers.
async fn call_with(
    gw: &TestGateway,
    path: &str,
    host: Option<&str>,
    cred: Cred<'_>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let c = client();
    let mut rb = match body_for(path) {
        Some(b) => c.post(gw.url(path)).json(&b),
        None => c.get(gw.url(path)),
    };
    if path == MESSAGES {
        rb = rb.header("anthropic-version", "2023-06-01");
    }
    if let Some(h) = host {
        rb = rb.header("host", h);
    }
    for (name, value) in extra {
        rb = rb.header(*name, *value);
    }
    rb = match cred {
        Cred::None => rb,
        Cred::Bearer(k) => rb.bearer_auth(k),
        Cred::Header(name, value) => rb.header(name, value),
    };
    rb.send().await.unwrap()
}

/// What a client can observe of a response, minus what differs per request.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

async fn observe(resp: reqwest::Response) -> Observed {
    assert!(
        resp.headers().contains_key("x-request-id"),
        "no x-request-id"
    );
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "x-request-id" | "date"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    headers.sort();
    let body = resp.text().await.unwrap();
    Observed {
        status,
        headers,
        body,
    }
}

/// The gateway's error code of an answer to `path`, asserting the endpoint's
/// error shape. OpenAI's carries it as `error.code`. Anthropic's
/// (`/v1/messages`: `{"type":"error","error":{"type","message"}}`) has no code:
/// its `error.type` follows the status (`anthropic_error_type` in
/// src/proxy/error.rs) and its message is the gateway's for that error, so
/// the code is told by status, type and message; an answer that fits none of
/// the codes these tests expect is returned as `anthropic:STATUS:TYPE`.
fn code_in(path: &str, status: u16, body: &str) -> String {
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let e = &v["error"];
    let message = e["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{v}");
    if path != MESSAGES {
        assert!(e["type"].is_string(), "{v}");
        return e["code"].as_str().unwrap_or_default().to_owned();
    }
    assert_eq!(v["type"], "error", "not Anthropic's error shape: {v}");
    assert!(e.get("code").is_none(), "not Anthropic's error shape: {v}");
    let ty = e["type"].as_str().unwrap_or_default();
    let expected_type = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        s if s < 500 => "invalid_request_error",
        _ => "api_error",
    };
    assert_eq!(ty, expected_type, "status {status}: {v}");
    let code = match (status, message) {
        (401, "x-api-key header is required") => "missing_api_key",
        (401, "Incorrect API key provided.") => "invalid_api_key",
        (403, "this account is suspended") => "tenant_suspended",
        (404, "No API is served at this address.") => "unknown_host",
        (400, "the Host header is missing, repeated or inconsistent") => "invalid_host",
        (421, m) if m.starts_with("This connection is for another host") => "misdirected_request",
        _ => return format!("anthropic:{status}:{ty}"),
    };
    code.to_owned()
}

/// [`code_in`] of an observed answer to `path`.
fn code_of(path: &str, o: &Observed) -> String {
    code_in(path, o.status, &o.body)
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

fn assert_no_upstream(mock: &MockProvider, before: usize, what: &str) {
    let after = mock.requests().len();
    assert_eq!(
        after,
        before,
        "a refused request reached the provider: {what} ({} new upstream requests)",
        after - before
    );
}

/// Sends one request that must succeed as `tenant`, and checks it was attributed
/// to exactly that tenant: by its usage record for forwarded endpoints, by its
/// plan's model list for `/v1/models`.
async fn assert_served_as(
    gw: &TestGateway,
    mock: &MockProvider,
    path: &str,
    host: &str,
    cred: Cred<'_>,
    tenant: (&str, &str, &str),
) {
    assert_served_with(gw, mock, path, host, cred, &[], tenant).await;
}

/// [`assert_served_as`] with `extra` headers.
async fn assert_served_with(
    gw: &TestGateway,
    mock: &MockProvider,
    path: &str,
    host: &str,
    cred: Cred<'_>,
    extra: &[(&str, &str)],
    tenant: (&str, &str, &str),
) {
    let before = mock.requests().len();
    let resp = call_with(gw, path, Some(host), cred, extra).await;
    let what = format!("{path} at {host} with {cred:?} and {extra:?}");
    assert_eq!(resp.status(), 200, "{what}");
    let rid = request_id(&resp);
    let v: Value = resp.json().await.unwrap();
    if path == "/v1/models/gpt-4o-mini" {
        assert_no_upstream(mock, before, &what);
        assert_eq!(v["id"], "gpt-4o-mini", "{what}: {v}");
        assert_eq!(v["owned_by"], tenant.0, "{what}: {v}");
    } else if path == "/v1/models" {
        assert_no_upstream(mock, before, &what);
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {v}"))
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        // `dental` and `clinic` are on plan pro; `realty` and `office` on basic.
        let pro = matches!(tenant.1, "dental" | "clinic");
        assert_eq!(ids.contains(&"premium"), pro, "{what}: models {ids:?}");
        assert!(ids.contains(&"gpt-4o-mini"), "{what}: models {ids:?}");
    } else {
        assert_eq!(mock.requests().len(), before + 1, "{what}: not forwarded");
        if path == MESSAGES {
            assert_eq!(v["type"], "message", "{what}: {v}");
        }
        let record = gw.usage_for(&rid).await;
        assert_eq!(record["reseller"], tenant.0, "{what}: {record}");
        assert_eq!(record["tenant"], tenant.1, "{what}: {record}");
        assert_eq!(record["status"], 200, "{what}: {record}");
    }
}

#[tokio::test]
async fn every_tenant_reaches_every_endpoint_at_its_resellers_hosts_as_itself() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let tenants = [
        (ACME_DENTAL, ACME_HOSTS),
        (ACME_REALTY, ACME_HOSTS),
        (GLOBEX_CLINIC, GLOBEX_HOSTS),
        (GLOBEX_OFFICE, GLOBEX_HOSTS),
    ];
    for (tenant, hosts) in tenants {
        for host in hosts {
            for (_, path) in ENDPOINTS {
                assert_served_as(&gw, &mock, path, host, Cred::Bearer(tenant.2), tenant).await;
            }
        }
    }
}

#[tokio::test]
async fn a_key_identifies_exactly_its_tenant_within_the_same_reseller() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    // The other tenant's key at the same Host works, but only as that other tenant:
    // with its identity (usage record) and with its plan (no `premium` on basic).
    for (own, other, host) in [
        (ACME_DENTAL, ACME_REALTY, ACME_HOST),
        (ACME_REALTY, ACME_DENTAL, ACME_HOST),
        (GLOBEX_CLINIC, GLOBEX_OFFICE, GLOBEX_HOST),
        (GLOBEX_OFFICE, GLOBEX_CLINIC, GLOBEX_HOST),
    ] {
        for (_, path) in ENDPOINTS {
            assert_served_as(&gw, &mock, path, host, Cred::Bearer(other.2), other).await;
            assert_served_as(&gw, &mock, path, host, Cred::Bearer(own.2), own).await;
        }
    }
    // The plan follows the key, not the Host: basic tenants cannot use `premium`.
    for (basic, pro, host) in [
        (ACME_REALTY, ACME_DENTAL, ACME_HOST),
        (GLOBEX_OFFICE, GLOBEX_CLINIC, GLOBEX_HOST),
    ] {
        let before = mock.requests().len();
        let resp = post(
            &gw,
            "/v1/chat/completions",
            Some(host),
            Some(basic.2),
            &chat_body("premium"),
        )
        .await;
        let rid = request_id(&resp);
        assert_eq!(error_code(resp, 403).await, "model_not_allowed");
        assert_no_upstream(&mock, before, "premium on plan basic");
        let record = gw.usage_for(&rid).await;
        assert_eq!(record["tenant"], basic.1, "{record}");

        let resp = post(
            &gw,
            "/v1/chat/completions",
            Some(host),
            Some(pro.2),
            &chat_body("premium"),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let record = gw.usage_for(&request_id(&resp)).await;
        assert_eq!(record["tenant"], pro.1, "{record}");
    }
}

#[tokio::test]
async fn keys_of_the_other_reseller_get_exactly_the_unknown_key_401_at_every_host() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    // (host, keys of tenants of the *other* reseller)
    let cases: Vec<(&str, Vec<&str>)> = ACME_HOSTS
        .iter()
        .map(|h| (*h, vec![GLOBEX_CLINIC.2, GLOBEX_OFFICE.2]))
        .chain(
            GLOBEX_HOSTS
                .iter()
                .map(|h| (*h, vec![ACME_DENTAL.2, ACME_REALTY.2, ACME_SUSPENDED_KEY])),
        )
        .collect();
    let styles = [
        Cred::Bearer(""),
        Cred::Header("api-key", ""),
        Cred::Header("x-api-key", ""),
    ];
    let before = mock.requests().len();
    // One reference answer per dialect (OpenAI's endpoints, `/v1/messages`).
    let mut reference: [Option<Observed>; 2] = [None, None];
    for (host, foreign_keys) in &cases {
        for (_, path) in ENDPOINTS {
            for style in styles {
                let unknown =
                    observe(call(&gw, path, Some(host), style.with_key(UNKNOWN_KEY)).await).await;
                assert_eq!(unknown.status, 401, "unknown key at {host} {path}");
                assert_eq!(code_of(path, &unknown), "invalid_api_key");
                for key in foreign_keys {
                    let foreign =
                        observe(call(&gw, path, Some(host), style.with_key(key)).await).await;
                    assert_eq!(
                        foreign, unknown,
                        "{key} at {host} {path} via {style:?} is distinguishable from an unknown key"
                    );
                }
                // The 401 is the same everywhere: it says nothing about the Host either.
                match &reference[usize::from(path == MESSAGES)] {
                    None => reference[usize::from(path == MESSAGES)] = Some(unknown),
                    Some(r) => assert_eq!(&unknown, r, "401 differs at {host} {path}"),
                }
            }
        }
    }
    assert!(reference.iter().all(Option::is_some));
    assert_no_upstream(&mock, before, "foreign keys");
    // Nothing was attributed to any tenant.
    assert_only_sentinel_recorded(&gw, 0, "foreign keys").await;
}

#[tokio::test]
async fn spoofed_and_lookalike_hosts_are_404_unknown_host_whatever_the_key() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let spoofed = [
        "evil.example",
        "acme.livery.test.evil.example",
        "ai.acme.test.evil.example",
        "evil-ai.acme.test",
        "x.ai.acme.test",
        "livery.test",
        "x.acme.livery.test",
        "dental.acme.livery.test",
        "ai.globex.test.acme.livery.test",
        "acmelivery.test",
        "acme",
        "acme.livery.test.livery.test",
        "evil.example:443",
        "ai.acme.test:notaport",
        "ai.acme.test@evil.example",
        "evil.example@ai.acme.test",
        "ai.acme.test..",
        ".ai.acme.test",
        "ai.acme..test",
        "127.0.0.1",
        "localhost",
        "[::1]:8080",
    ];
    let before = mock.requests().len();
    // One reference answer per dialect (OpenAI's endpoints, `/v1/messages`).
    let mut reference: [Option<Observed>; 2] = [None, None];
    for host in spoofed {
        for (_, path) in ENDPOINTS {
            for cred in [
                Cred::Bearer(ACME_DENTAL.2),
                Cred::Bearer(GLOBEX_CLINIC.2),
                Cred::Bearer(UNKNOWN_KEY),
                Cred::None,
            ] {
                let o = observe(call(&gw, path, Some(host), cred).await).await;
                assert_eq!(o.status, 404, "Host `{host}` {path} {cred:?}: {}", o.body);
                assert_eq!(code_of(path, &o), "unknown_host", "Host `{host}` {path}");
                assert!(
                    !o.body.contains("acme") && !o.body.contains("globex"),
                    "the unknown-host error names a reseller: {}",
                    o.body
                );
                // Neutral: identical whatever the Host, path or key.
                match &reference[usize::from(path == MESSAGES)] {
                    None => reference[usize::from(path == MESSAGES)] = Some(o),
                    Some(r) => assert_eq!(&o, r, "Host `{host}` {path} {cred:?}"),
                }
            }
        }
    }
    assert!(reference.iter().all(Option::is_some));
    assert_no_upstream(&mock, before, "spoofed hosts");
    assert_only_sentinel_recorded(&gw, 0, "spoofed hosts").await;
}

#[tokio::test]
async fn host_case_port_and_trailing_dot_are_normalised_but_never_cross_resellers() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for host in [
        "AI.ACME.TEST:443",
        "ai.acme.test.",
        "Ai.Acme.Test.:8080",
        "ACME.LIVERY.TEST",
        "acme.livery.test.:443",
    ] {
        for (_, path) in ENDPOINTS {
            assert_served_as(
                &gw,
                &mock,
                path,
                host,
                Cred::Bearer(ACME_DENTAL.2),
                ACME_DENTAL,
            )
            .await;
            // Normalisation resolves to acme, so globex's key stays foreign there.
            let before = mock.requests().len();
            let o = observe(call(&gw, path, Some(host), Cred::Bearer(GLOBEX_CLINIC.2)).await).await;
            assert_eq!(o.status, 401, "globex key at {host} {path}");
            assert_eq!(code_of(path, &o), "invalid_api_key");
            assert_no_upstream(&mock, before, host);
        }
    }
    for host in ["AI.GLOBEX.TEST.", "Globex.Livery.Test:80"] {
        assert_served_as(
            &gw,
            &mock,
            "/v1/chat/completions",
            host,
            Cred::Bearer(GLOBEX_OFFICE.2),
            GLOBEX_OFFICE,
        )
        .await;
    }
}

/// A raw HTTP/1.x request to `path` with the given head lines (after the request
/// line) and the endpoint's body.
fn raw(request_line: &str, head_lines: &[String], path: &str) -> String {
    let body = body_for(path).map(|b| b.to_string()).unwrap_or_default();
    let mut s = format!("{request_line}\r\n");
    for l in head_lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    if path == MESSAGES {
        s.push_str("anthropic-version: 2023-06-01\r\n");
    }
    if !body.is_empty() {
        s.push_str("Content-Type: application/json\r\n");
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("Connection: close\r\n\r\n");
    s.push_str(&body);
    s
}

fn raw_code(path: &str, r: &RawResponse) -> String {
    code_in(path, r.status, &r.body)
}

#[tokio::test]
async fn requests_without_a_host_are_refused_before_any_upstream_call() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let before = mock.requests().len();
    for (method, path) in ENDPOINTS {
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            for key in [ACME_DENTAL.2, GLOBEX_CLINIC.2] {
                let req = raw(
                    &format!("{method} {path} {version}"),
                    &[format!("Authorization: Bearer {key}")],
                    path,
                );
                let r = raw_request(gw.addr, &req).await;
                let what = format!("{method} {path} {version} without Host, key {key}");
                // Not attributable to a reseller: the same answer as an unknown Host.
                assert_eq!(r.status, 404, "{what}: {}", r.head);
                assert_eq!(raw_code(path, &r), "unknown_host", "{what}");
                assert!(
                    r.head.to_ascii_lowercase().contains("x-request-id:"),
                    "{what}: {}",
                    r.head
                );
            }
        }
    }
    assert_no_upstream(&mock, before, "requests without Host");
    assert_only_sentinel_recorded(&gw, 0, "requests without Host").await;
}

#[tokio::test]
async fn repeated_or_conflicting_hosts_are_400_invalid_host() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let auth = format!("Authorization: Bearer {}", ACME_DENTAL.2);
    let before = mock.requests().len();
    for (method, path) in ENDPOINTS {
        let origin_form = format!("{method} {path} HTTP/1.1");
        let absolute_acme = format!("{method} http://ai.acme.test{path} HTTP/1.1");
        let cases = [
            // Repeated, same value.
            (
                origin_form.clone(),
                vec![
                    "Host: ai.acme.test".to_owned(),
                    "Host: ai.acme.test".to_owned(),
                ],
            ),
            // Repeated, both resellers, in either order.
            (
                origin_form.clone(),
                vec![
                    "Host: ai.acme.test".to_owned(),
                    "Host: ai.globex.test".to_owned(),
                ],
            ),
            (
                origin_form.clone(),
                vec![
                    "Host: ai.globex.test".to_owned(),
                    "Host: ai.acme.test".to_owned(),
                ],
            ),
            // Repeated, one of them spoofed.
            (
                origin_form.clone(),
                vec![
                    "Host: evil.example".to_owned(),
                    "Host: ai.acme.test".to_owned(),
                ],
            ),
            // The request target names one reseller, the Host header another.
            (
                absolute_acme.clone(),
                vec!["Host: ai.globex.test".to_owned()],
            ),
            (absolute_acme.clone(), vec!["Host: evil.example".to_owned()]),
        ];
        for (line, mut head) in cases {
            head.push(auth.clone());
            let r = raw_request(gw.addr, &raw(&line, &head, path)).await;
            let what = format!("{line} with {head:?}");
            assert_eq!(r.status, 400, "{what}: {}\n{}", r.head, r.body);
            assert_eq!(raw_code(path, &r), "invalid_host", "{what}");
        }
    }
    assert_no_upstream(&mock, before, "repeated or conflicting Host");
    assert_only_sentinel_recorded(&gw, 0, "repeated or conflicting Host").await;

    // Control: an absolute-form target that agrees with the Host header is served.
    let path = "/v1/chat/completions";
    let req = raw(
        &format!("POST http://ai.acme.test{path} HTTP/1.1"),
        &["Host: ai.acme.test".to_owned(), auth.clone()],
        path,
    );
    let r = raw_request(gw.addr, &req).await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    assert_eq!(mock.requests().len(), before + 1);
}

#[tokio::test]
async fn missing_or_malformed_credentials_are_401_and_never_forwarded() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let before = mock.requests().len();
    for host in [ACME_HOST, GLOBEX_HOST] {
        for (_, path) in ENDPOINTS {
            let o = observe(call(&gw, path, Some(host), Cred::None).await).await;
            assert_eq!(o.status, 401, "no key at {host} {path}");
            assert_eq!(code_of(path, &o), "missing_api_key", "{host} {path}");

            for malformed in [
                // The dental key itself, base64'd in the wrong scheme.
                Cred::Header("authorization", "Basic c2stYWNtZS1kZW50YWwta2V5"),
                Cred::Header("authorization", "Basic sk-acme-dental-key"),
                Cred::Header("authorization", "Token sk-acme-dental-key"),
                Cred::Header("authorization", "sk-acme-dental-key"),
                Cred::Header("authorization", "Bearer"),
                Cred::Header("authorization", "Bearer sk-acme-dental-key extra"),
                Cred::Header("authorization", "Bearer sk-acme-dental-keyX"),
                Cred::Header("authorization", "Bearer SK-ACME-DENTAL-KEY"),
                Cred::Header("api-key", ""),
                Cred::Header("x-api-key", ""),
                Cred::Header("api-key", "Bearer sk-acme-dental-key"),
            ] {
                let o = observe(call(&gw, path, Some(host), malformed).await).await;
                assert_eq!(o.status, 401, "{malformed:?} at {host} {path}: {}", o.body);
                assert_eq!(
                    code_of(path, &o),
                    "invalid_api_key",
                    "{malformed:?} at {host}"
                );
                assert!(
                    !o.body.contains("sk-acme-dental-key"),
                    "the key is echoed: {}",
                    o.body
                );
            }
        }
    }
    assert_no_upstream(&mock, before, "missing or malformed credentials");
    assert_only_sentinel_recorded(&gw, 0, "missing or malformed credentials").await;
}

/// A credential header sent twice is refused as a malformed key and never
/// forwarded, even with the same key twice or with a valid key first: which
/// one counts is not the client's to know, and a proxy in front that adds its
/// own `Authorization` must not decide whose tenant is billed.
#[tokio::test]
async fn a_credential_header_sent_twice_is_401_and_never_forwarded() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let realty = format!("Bearer {}", ACME_REALTY.2);
    let dental = format!("Bearer {}", ACME_DENTAL.2);
    let before = mock.requests().len();
    for (_, path) in ENDPOINTS {
        for twice in [
            [
                ("authorization", dental.as_str()),
                ("authorization", realty.as_str()),
            ],
            [
                ("authorization", dental.as_str()),
                ("authorization", dental.as_str()),
            ],
            [("api-key", ACME_DENTAL.2), ("api-key", UNKNOWN_KEY)],
            [("x-api-key", ACME_DENTAL.2), ("x-api-key", GLOBEX_CLINIC.2)],
        ] {
            let resp = call_with(&gw, path, Some(ACME_HOST), Cred::None, &twice).await;
            let o = observe(resp).await;
            assert_eq!(o.status, 401, "{twice:?} at {path}: {}", o.body);
            assert_eq!(code_of(path, &o), "invalid_api_key", "{twice:?} at {path}");
        }
    }
    assert_no_upstream(&mock, before, "a credential header twice");
    assert_only_sentinel_recorded(&gw, 0, "a credential header twice").await;
}

#[tokio::test]
async fn api_key_and_x_api_key_headers_authenticate_like_bearer() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for (_, path) in ENDPOINTS {
        for (host, tenant) in [
            (ACME_HOST, ACME_DENTAL),
            (ACME_HOST, ACME_REALTY),
            (GLOBEX_HOST, GLOBEX_CLINIC),
            (GLOBEX_HOST, GLOBEX_OFFICE),
        ] {
            for cred in [
                Cred::Header("api-key", tenant.2),
                Cred::Header("x-api-key", tenant.2),
            ] {
                assert_served_as(&gw, &mock, path, host, cred, tenant).await;
            }
        }
        // The auth scheme is case-insensitive.
        let lower = format!("bearer {}", ACME_REALTY.2);
        assert_served_as(
            &gw,
            &mock,
            path,
            ACME_HOST,
            Cred::Header("authorization", &lower),
            ACME_REALTY,
        )
        .await;
    }
}

#[tokio::test]
async fn suspended_tenant_is_403_at_home_and_an_unknown_key_elsewhere() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let before = mock.requests().len();
    for (_, path) in ENDPOINTS {
        for cred in [
            Cred::Bearer(ACME_SUSPENDED_KEY),
            Cred::Header("api-key", ACME_SUSPENDED_KEY),
            Cred::Header("x-api-key", ACME_SUSPENDED_KEY),
        ] {
            for host in ACME_HOSTS {
                let o = observe(call(&gw, path, Some(host), cred).await).await;
                assert_eq!(o.status, 403, "suspended at {host} {path}: {}", o.body);
                assert_eq!(code_of(path, &o), "tenant_suspended");
            }
            for host in GLOBEX_HOSTS {
                let suspended = observe(call(&gw, path, Some(host), cred).await).await;
                let unknown =
                    observe(call(&gw, path, Some(host), cred.with_key(UNKNOWN_KEY)).await).await;
                assert_eq!(unknown.status, 401);
                assert_eq!(
                    suspended, unknown,
                    "the suspended acme key at {host} {path} is an oracle"
                );
            }
        }
    }
    assert_no_upstream(&mock, before, "suspended tenant");
    assert_only_sentinel_recorded(&gw, 0, "suspended tenant").await;
}

/// `POST /v1/messages` (Anthropic's API, keys in `x-api-key` as its SDK sends
/// them) is held to the same isolation as the OpenAI endpoints; its errors come
/// in Anthropic's shape.
#[tokio::test]
async fn the_messages_endpoint_is_isolated_like_the_others() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "Say hello"}]});
    let send = |host: Option<&'static str>, key: Option<&'static str>| {
        let mut rb = client()
            .post(gw.url("/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        if let Some(h) = host {
            rb = rb.header("host", h);
        }
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        rb.send()
    };
    let anthropic_error = |o: &Observed| -> String {
        let v: Value = serde_json::from_str(&o.body).unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        v["error"]["type"].as_str().unwrap().to_owned()
    };

    // Each tenant at its own reseller's Host, attributed to itself.
    for (tenant, host) in [
        (ACME_DENTAL, ACME_HOST),
        (ACME_REALTY, ACME_HOST),
        (GLOBEX_CLINIC, GLOBEX_HOST),
        (GLOBEX_OFFICE, GLOBEX_HOST),
    ] {
        let resp = send(Some(host), Some(tenant.2)).await.unwrap();
        assert_eq!(resp.status(), 200, "{tenant:?}");
        let rid = request_id(&resp);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "message", "{v}");
        let record = gw.usage_for(&rid).await;
        assert_eq!(
            (record["reseller"].as_str(), record["tenant"].as_str()),
            (Some(tenant.0), Some(tenant.1))
        );
    }

    let before = mock.requests().len();
    // Another reseller's key: exactly the answer an unknown key gets.
    let unknown = observe(send(Some(ACME_HOST), Some(UNKNOWN_KEY)).await.unwrap()).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(anthropic_error(&unknown), "authentication_error");
    for (host, key) in [(ACME_HOST, GLOBEX_CLINIC.2), (GLOBEX_HOST, ACME_DENTAL.2)] {
        let o = observe(send(Some(host), Some(key)).await.unwrap()).await;
        assert_eq!(o, unknown, "{key} at {host}");
    }
    // No key at all.
    let o = observe(send(Some(ACME_HOST), None).await.unwrap()).await;
    assert_eq!(o.status, 401);
    assert_eq!(anthropic_error(&o), "authentication_error");
    // A spoofed Host, whatever the key: a neutral 404.
    for key in [Some(ACME_DENTAL.2), Some(UNKNOWN_KEY), None] {
        let o = observe(send(Some("evil.example"), key).await.unwrap()).await;
        assert_eq!(o.status, 404, "{key:?}: {}", o.body);
        anthropic_error(&o);
        assert!(
            !o.body.contains("acme") && !o.body.contains("globex"),
            "{}",
            o.body
        );
    }
    assert_no_upstream(&mock, before, "a refused /v1/messages request");
}

/// What a client can observe of an HTTP/2 answer, as [`observe`].
fn observe_h2(resp: http::Response<String>) -> Observed {
    assert!(
        resp.headers().contains_key("x-request-id"),
        "no x-request-id"
    );
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "x-request-id" | "date"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    headers.sort();
    Observed {
        status: resp.status().as_u16(),
        headers,
        body: resp.into_body(),
    }
}

/// One request to `path` over HTTP/2 on `send`, the reseller named by
/// `:authority` (`None`: a relative target, no `:authority`), with `headers`
/// (credentials, or a `host`) and the endpoint's body.
async fn call_h2(
    send: &h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    authority: Option<&str>,
    headers: &[(&str, &str)],
) -> http::Response<String> {
    let body = body_for(path);
    let method = if body.is_some() { "POST" } else { "GET" };
    let uri = match authority {
        Some(a) => format!("http://{a}{path}"),
        None => path.to_owned(),
    };
    let mut all = headers.to_vec();
    if path == MESSAGES {
        all.push(("anthropic-version", "2023-06-01"));
    }
    h2_request(send, method, &uri, &all, body.as_ref()).await
}

/// HTTP/2 (h2c, as the OpenAI SDK's httpx client can speak it) names the host in
/// `:authority`, not in a Host header: the reseller comes from it, with the same
/// isolation as over HTTP/1.1, and one connection may carry requests for both
/// resellers, each attributed to its own.
#[tokio::test]
async fn over_http2_the_reseller_comes_from_the_authority_with_the_same_isolation() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let send = h2c_connect(gw.addr).await;
    let bearer = |k: &str| format!("Bearer {k}");
    let before = mock.requests().len();
    for (_, path) in ENDPOINTS {
        // Another reseller's authority: its keys are exactly unknown keys there.
        for (authorities, foreign) in [
            (GLOBEX_HOSTS, [ACME_DENTAL.2, ACME_REALTY.2]),
            (ACME_HOSTS, [GLOBEX_CLINIC.2, GLOBEX_OFFICE.2]),
        ] {
            for authority in authorities {
                let a = bearer(UNKNOWN_KEY);
                let unknown = observe_h2(
                    call_h2(&send, path, Some(authority), &[("authorization", &a)]).await,
                );
                assert_eq!(unknown.status, 401, "{authority} {path}: {}", unknown.body);
                assert_eq!(code_of(path, &unknown), "invalid_api_key");
                for key in foreign {
                    for (name, value) in [("authorization", bearer(key)), ("x-api-key", key.into())]
                    {
                        let o = observe_h2(
                            call_h2(&send, path, Some(authority), &[(name, &value)]).await,
                        );
                        let what = format!("{key} in {name} at :authority {authority} {path}");
                        if name == "authorization" {
                            assert_eq!(o, unknown, "{what} differs from an unknown key");
                        } else {
                            assert_eq!(o.status, 401, "{what}: {}", o.body);
                            assert_eq!(code_of(path, &o), "invalid_api_key", "{what}");
                        }
                    }
                }
            }
        }
        // An authority no reseller has, whatever the key, and none at all.
        for authority in [
            Some("evil.example"),
            Some("ai.acme.test.evil.example"),
            Some("x.acme.livery.test"),
            None,
        ] {
            for key in [ACME_DENTAL.2, GLOBEX_CLINIC.2] {
                let a = bearer(key);
                let o = observe_h2(call_h2(&send, path, authority, &[("authorization", &a)]).await);
                assert_eq!(o.status, 404, ":authority {authority:?} {path}: {}", o.body);
                assert_eq!(code_of(path, &o), "unknown_host", "{authority:?} {path}");
            }
        }
        // `:authority` and a Host header that disagree: refused, not guessed,
        // whichever of the two the key belongs to.
        for (authority, host) in [
            (ACME_HOST, GLOBEX_HOST),
            (GLOBEX_HOST, ACME_HOST),
            (ACME_HOST, "evil.example"),
            ("evil.example", ACME_HOST),
        ] {
            for key in [ACME_DENTAL.2, GLOBEX_CLINIC.2] {
                let a = bearer(key);
                let o = observe_h2(
                    call_h2(
                        &send,
                        path,
                        Some(authority),
                        &[("host", host), ("authorization", &a)],
                    )
                    .await,
                );
                let what = format!(":authority {authority} host {host} {path} key {key}");
                assert_eq!(o.status, 400, "{what}: {}", o.body);
                assert_eq!(code_of(path, &o), "invalid_host", "{what}");
            }
        }
    }
    assert_no_upstream(&mock, before, "refused HTTP/2 requests");
    assert_only_sentinel_recorded(&gw, 0, "refused HTTP/2 requests").await;

    // One connection, both resellers, requests interleaved on concurrent
    // streams: each is served as the tenant of its own `:authority`.
    let cases = [
        (ACME_DENTAL, ACME_HOST),
        (GLOBEX_CLINIC, GLOBEX_HOST),
        (ACME_REALTY, "acme.livery.test"),
        (GLOBEX_OFFICE, "globex.livery.test"),
    ];
    for (_, path) in ENDPOINTS {
        let auths: Vec<String> = cases.iter().map(|(t, _)| bearer(t.2)).collect();
        let headers: Vec<[(&str, &str); 1]> = auths
            .iter()
            .map(|a| [("authorization", a.as_str())])
            .collect();
        let answers = futures_util::future::join_all(
            cases
                .iter()
                .zip(&headers)
                .map(|((_, authority), h)| call_h2(&send, path, Some(authority), h)),
        )
        .await;
        for ((tenant, authority), resp) in cases.iter().zip(answers) {
            let what = format!("{path} at :authority {authority} as {tenant:?}");
            assert_eq!(resp.status(), 200, "{what}: {}", resp.body());
            let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
            let v: Value = serde_json::from_str(resp.body()).unwrap();
            match path {
                "/v1/models" => assert!(
                    v["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|m| m["owned_by"] == tenant.0),
                    "{what}: {v}"
                ),
                "/v1/models/gpt-4o-mini" => assert_eq!(v["owned_by"], tenant.0, "{what}: {v}"),
                _ => {
                    let record = gw.usage_for(&rid).await;
                    assert_eq!(record["reseller"], tenant.0, "{what}: {record}");
                    assert_eq!(record["tenant"], tenant.1, "{what}: {record}");
                }
            }
        }
    }
}

/// Headers a proxy in front may set to name the client's host: all of them
/// naming globex.
const FORWARDED_GLOBEX: [(&str, &str); 6] = [
    ("x-forwarded-host", "ai.globex.test"),
    ("x-forwarded-host", "globex.livery.test"),
    ("forwarded", "for=192.0.2.1;host=ai.globex.test;proto=https"),
    ("x-original-host", "ai.globex.test"),
    ("x-host", "ai.globex.test"),
    ("x-forwarded-server", "ai.globex.test"),
];

/// The reseller is the Host's (or `:authority`'s), never what a forwarded
/// header says: whoever can send a request can send those, and a gateway
/// that believed them would serve globex's tenants at acme's address. Also
/// from a trusted proxy (`[tls] trusted_proxies`), which is believed about the
/// scheme only.
#[tokio::test]
async fn forwarded_host_headers_are_ignored_even_from_a_trusted_proxy() {
    let mock = MockProvider::start().await;
    let standard = TestGateway::standard(&mock).await;
    // Loopback is a trusted proxy here, and plain HTTP is redirected unless it
    // says `x-forwarded-proto: https` (sent on every request below).
    let tls =
        crate::tls::static_gateway("plain = \"redirect\"\ntrusted_proxies = [\"127.0.0.0/8\"]")
            .await;
    for (gw, mock, setup) in [
        (&standard, &mock, "plain listener"),
        (&tls.gw, &tls.mock, "trusted proxy"),
    ] {
        let records_before = gw.usage().len();
        let upstream_before = mock.requests().len();
        for (_, path) in ENDPOINTS {
            for forwarded in FORWARDED_GLOBEX {
                let extra = [("x-forwarded-proto", "https"), forwarded];
                let what = format!("{setup}: {path} at Host {ACME_HOST} with {forwarded:?}");
                // globex's key at acme's Host: exactly an unknown key.
                let unknown = observe(
                    call_with(gw, path, Some(ACME_HOST), Cred::Bearer(UNKNOWN_KEY), &extra).await,
                )
                .await;
                assert_eq!(unknown.status, 401, "{what}: {}", unknown.body);
                assert_eq!(code_of(path, &unknown), "invalid_api_key", "{what}");
                for key in [GLOBEX_CLINIC.2, GLOBEX_OFFICE.2] {
                    let o = observe(
                        call_with(gw, path, Some(ACME_HOST), Cred::Bearer(key), &extra).await,
                    )
                    .await;
                    assert_eq!(o, unknown, "{what}: {key} differs from an unknown key");
                }
                // An unknown Host stays unknown, whatever it forwards.
                let o = observe(
                    call_with(
                        gw,
                        path,
                        Some("evil.example"),
                        Cred::Bearer(GLOBEX_CLINIC.2),
                        &extra,
                    )
                    .await,
                )
                .await;
                assert_eq!(o.status, 404, "{what}: {}", o.body);
                assert_eq!(code_of(path, &o), "unknown_host", "{what}");
            }
            // Without a Host, a forwarded host names no reseller either.
            for (name, _) in FORWARDED_GLOBEX {
                for (value, key) in [
                    ("ai.acme.test", ACME_DENTAL.2),
                    ("ai.globex.test", GLOBEX_CLINIC.2),
                ] {
                    let value = if name == "forwarded" {
                        format!("host={value};proto=https")
                    } else {
                        value.to_owned()
                    };
                    let head = [
                        format!("{name}: {value}"),
                        "X-Forwarded-Proto: https".to_owned(),
                        format!("Authorization: Bearer {key}"),
                    ];
                    let method = if body_for(path).is_some() {
                        "POST"
                    } else {
                        "GET"
                    };
                    let r = raw_request(
                        gw.addr,
                        &raw(&format!("{method} {path} HTTP/1.1"), &head, path),
                    )
                    .await;
                    let what = format!("{setup}: {path} without Host, {name}: {value}");
                    assert_eq!(r.status, 404, "{what}: {}\n{}", r.head, r.body);
                    assert_eq!(raw_code(path, &r), "unknown_host", "{what}");
                }
            }
        }
        assert_no_upstream(mock, upstream_before, "forwarded host headers");
        // As `assert_only_sentinel_recorded`, the sentinel saying HTTPS.
        let resp = call_with(
            gw,
            "/v1/chat/completions",
            Some(ACME_HOST),
            Cred::Bearer(ACME_DENTAL.2),
            &[("x-forwarded-proto", "https")],
        )
        .await;
        assert_eq!(resp.status(), 200, "{setup}: the sentinel");
        let rid = request_id(&resp);
        gw.usage_for(&rid).await;
        let usage = gw.usage();
        let new: Vec<&Value> = usage.iter().skip(records_before).collect();
        assert!(
            new.len() == 1 && new[0]["request_id"] == rid.as_str(),
            "{setup}: refused requests were recorded: {new:?}"
        );

        // acme's tenant at acme's Host is served as itself, forwarded headers or not.
        for (_, path) in ENDPOINTS {
            for forwarded in FORWARDED_GLOBEX {
                let extra = [("x-forwarded-proto", "https"), forwarded];
                let what = format!("{setup}: dental at {path} with {forwarded:?}");
                let before = mock.requests().len();
                let resp = call_with(
                    gw,
                    path,
                    Some(ACME_HOST),
                    Cred::Bearer(ACME_DENTAL.2),
                    &extra,
                )
                .await;
                assert_eq!(resp.status(), 200, "{what}");
                let rid = request_id(&resp);
                let v: Value = resp.json().await.unwrap();
                match path {
                    "/v1/models" => assert!(
                        v["data"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .all(|m| m["owned_by"] == "acme"),
                        "{what}: {v}"
                    ),
                    "/v1/models/gpt-4o-mini" => assert_eq!(v["owned_by"], "acme", "{what}: {v}"),
                    _ => {
                        assert_eq!(mock.requests().len(), before + 1, "{what}");
                        let record = gw.usage_for(&rid).await;
                        assert_eq!(record["reseller"], "acme", "{what}: {record}");
                        assert_eq!(record["tenant"], "dental", "{what}: {record}");
                    }
                }
            }
        }
    }
    tls.gw.shutdown().await;
}

/// More than one credential in a request. The key is read from
/// `Authorization`, else `api-key`, else `x-api-key` (`presented_key`,
/// src/tenancy/key.rs): an unusable or foreign `Authorization` is not rescued
/// by a valid key elsewhere, and two `Authorization` headers are refused
/// (see `a_credential_header_sent_twice_is_401_and_never_forwarded`). Each
/// refusal is exactly what an unknown key alone gets.
#[tokio::test]
async fn mixed_credential_headers_use_the_first_by_precedence_and_never_fall_back() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let unknown_bearer = format!("Bearer {UNKNOWN_KEY}");
    let globex_bearer = format!("Bearer {}", GLOBEX_CLINIC.2);
    let dental_bearer = format!("Bearer {}", ACME_DENTAL.2);
    let realty_bearer = format!("Bearer {}", ACME_REALTY.2);
    let before = mock.requests().len();
    for (_, path) in ENDPOINTS {
        let unknown =
            observe(call(&gw, path, Some(ACME_HOST), Cred::Bearer(UNKNOWN_KEY)).await).await;
        assert_eq!(unknown.status, 401);
        assert_eq!(code_of(path, &unknown), "invalid_api_key");
        let refused: [(&str, Vec<(&str, &str)>); 6] = [
            (
                ACME_HOST,
                vec![
                    ("authorization", &unknown_bearer),
                    ("x-api-key", ACME_DENTAL.2),
                ],
            ),
            (
                ACME_HOST,
                vec![
                    ("authorization", &unknown_bearer),
                    ("api-key", ACME_DENTAL.2),
                ],
            ),
            (
                ACME_HOST,
                // The dental key itself, base64'd, in the wrong scheme.
                vec![
                    ("authorization", "Basic c2stYWNtZS1kZW50YWwta2V5"),
                    ("api-key", ACME_DENTAL.2),
                ],
            ),
            (
                ACME_HOST,
                vec![("api-key", UNKNOWN_KEY), ("x-api-key", ACME_DENTAL.2)],
            ),
            // Two Authorization headers: refused, whichever is valid here.
            (
                ACME_HOST,
                vec![
                    ("authorization", &globex_bearer),
                    ("authorization", &dental_bearer),
                ],
            ),
            (
                GLOBEX_HOST,
                vec![
                    ("authorization", &dental_bearer),
                    ("authorization", &globex_bearer),
                ],
            ),
        ];
        for (host, headers) in &refused {
            let what = format!("{path} at {host} with {headers:?}");
            let o = observe(call_with(&gw, path, Some(host), Cred::None, headers).await).await;
            assert_eq!(o.status, 401, "{what}: {}", o.body);
            assert_eq!(code_of(path, &o), "invalid_api_key", "{what}");
            assert!(
                !o.body.contains("sk-"),
                "{what}: a key is echoed: {}",
                o.body
            );
            if headers[0].1 == unknown_bearer || headers[0].1 == globex_bearer {
                // Not distinguishable from the first credential alone.
                assert_eq!(o, unknown, "{what}");
            }
        }
    }
    assert_no_upstream(&mock, before, "mixed credentials");
    assert_only_sentinel_recorded(&gw, 0, "mixed credentials").await;

    // Two valid keys of the same reseller: the one that takes precedence is served.
    for (_, path) in ENDPOINTS {
        for headers in [
            [
                ("authorization", realty_bearer.as_str()),
                ("x-api-key", ACME_DENTAL.2),
            ],
            [
                ("authorization", realty_bearer.as_str()),
                ("api-key", ACME_DENTAL.2),
            ],
            [("api-key", ACME_REALTY.2), ("x-api-key", ACME_DENTAL.2)],
            [
                ("x-api-key", ACME_DENTAL.2),
                ("authorization", realty_bearer.as_str()),
            ],
        ] {
            assert_served_with(
                &gw,
                &mock,
                path,
                ACME_HOST,
                Cred::None,
                &headers,
                ACME_REALTY,
            )
            .await;
        }
    }
}

/// A CORS preflight is answered before any reseller or tenant is resolved:
/// the same 204 at every Host (a reseller's, the other's, a spoofed one, none),
/// with or without a key, naming no reseller, reaching no provider and
/// recording nothing. It must not tell a browser script which hosts exist.
#[tokio::test]
async fn cors_preflights_are_identical_at_every_host_and_name_no_reseller() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let before = mock.requests().len();
    let preflight = |path: &str, host: &str, key: Option<&str>| {
        let mut rb = client()
            .request(reqwest::Method::OPTIONS, gw.url(path))
            .header("host", host)
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            );
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        rb.send()
    };
    let mut reference: Option<Observed> = None;
    for (_, path) in ENDPOINTS {
        for host in [
            ACME_HOST,
            GLOBEX_HOST,
            "acme.livery.test",
            "evil.example",
            "ai.acme.test.evil.example",
        ] {
            for key in [
                None,
                Some(ACME_DENTAL.2),
                Some(GLOBEX_CLINIC.2),
                Some(UNKNOWN_KEY),
            ] {
                let what = format!("preflight {path} at {host} with {key:?}");
                let o = observe(preflight(path, host, key).await.unwrap()).await;
                assert_eq!(o.status, 204, "{what}: {o:?}");
                assert!(
                    o.headers
                        .iter()
                        .any(|(n, v)| n == "access-control-allow-origin" && v == "*"),
                    "{what}: {o:?}"
                );
                let text = format!("{o:?}").to_ascii_lowercase();
                assert!(
                    !text.contains("acme") && !text.contains("globex"),
                    "{what} names a reseller: {o:?}"
                );
                match &reference {
                    None => reference = Some(o),
                    Some(r) => assert_eq!(&o, r, "{what}"),
                }
            }
        }
        // No Host at all.
        let r = raw_request(
            gw.addr,
            &format!(
                "OPTIONS {path} HTTP/1.1\r\nOrigin: https://app.example\r\n\
                 Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(r.status, 204, "preflight {path} without Host: {}", r.head);
        let head = r.head.to_ascii_lowercase();
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        assert!(!head.contains("acme") && !head.contains("globex"), "{head}");
    }
    assert_no_upstream(&mock, before, "CORS preflights");
    assert_only_sentinel_recorded(&gw, 0, "CORS preflights").await;
}

/// The standard configuration with acme/dental's key followed by `entries`
/// (TOML key entries) in its `key_hashes`.
fn with_dental_keys(mock: &MockProvider, entries: &[String]) -> String {
    let dental = format!("key_hashes = [\"{}\"]", hash(ACME_DENTAL.2));
    let config = standard_config(&mock.base_url(), "");
    assert!(config.contains(&dental));
    let keys = format!(
        "key_hashes = [\"{}\", {}]",
        hash(ACME_DENTAL.2),
        entries.join(", ")
    );
    config.replacen(&dental, &keys, 1)
}

/// A key limited to some of its plan's models uses only those, at every
/// endpoint: another model of the plan is 403 `model_not_allowed` saying the
/// key (in either dialect, nothing sent), `/v1/models` lists only the key's,
/// and the tenant's other key keeps the whole plan. At the other reseller the
/// key is any unknown key.
#[tokio::test]
async fn a_key_limited_to_models_uses_only_those_and_the_tenants_other_keys_keep_the_plan() {
    let mock = MockProvider::start().await;
    let limited = "sk-FAKE-dental-indexer-key";
    let config = with_dental_keys(
        &mock,
        &[format!(
            "{{ hash = \"{}\", name = \"indexer\", models = [\"embed\"] }}",
            hash(limited)
        )],
    );
    let gw = TestGateway::start(&config).await;
    let holder = (ACME_DENTAL.0, ACME_DENTAL.1, limited);
    for (_, path) in ENDPOINTS {
        let before = mock.requests().len();
        match path {
            "/v1/embeddings" => {
                assert_served_as(&gw, &mock, path, ACME_HOST, Cred::Bearer(limited), holder).await
            }
            "/v1/models" => {
                let resp = call(&gw, path, Some(ACME_HOST), Cred::Bearer(limited)).await;
                assert_eq!(resp.status(), 200);
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
                assert_eq!(v["data"][0]["id"], "embed", "{v}");
            }
            "/v1/models/gpt-4o-mini" => {
                let o =
                    observe(call(&gw, path, Some(ACME_HOST), Cred::Bearer(limited)).await).await;
                assert_eq!(
                    (o.status, code_of(path, &o).as_str()),
                    (404, "model_not_found")
                );
            }
            _ => {
                let o =
                    observe(call(&gw, path, Some(ACME_HOST), Cred::Bearer(limited)).await).await;
                assert_eq!(o.status, 403, "{path}: {o:?}");
                if path != MESSAGES {
                    assert_eq!(code_of(path, &o), "model_not_allowed", "{path}: {o:?}");
                }
                let v: Value = serde_json::from_str(&o.body).unwrap();
                assert_eq!(
                    v["error"]["message"],
                    "The model `gpt-4o-mini` is not allowed for this API key. Allowed models: embed.",
                    "{path}: {v}"
                );
            }
        }
        if path != "/v1/embeddings" {
            assert_no_upstream(&mock, before, path);
        }
        let o = observe(call(&gw, path, Some(GLOBEX_HOST), Cred::Bearer(limited)).await).await;
        assert_eq!(code_of(path, &o), "invalid_api_key", "{path}: {o:?}");
        assert_served_as(
            &gw,
            &mock,
            path,
            ACME_HOST,
            Cred::Bearer(ACME_DENTAL.2),
            ACME_DENTAL,
        )
        .await;
    }
    gw.shutdown().await;
}

/// A key declared with `expires_at` serves until then and is refused from
/// then on, at every endpoint, as 401 `expired_api_key` (told only to the
/// key's holder at its own reseller: at the other reseller it is any unknown
/// key), while the tenant's other keys serve on; nothing refused reaches the
/// provider.
#[tokio::test]
async fn an_expired_key_is_refused_and_the_tenants_other_keys_serve_on() {
    let mock = MockProvider::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (expired, current) = ("sk-FAKE-dental-expired-key", "sk-FAKE-dental-current-key");
    let config = with_dental_keys(
        &mock,
        &[
            format!(
                "{{ hash = \"{}\", name = \"old laptop\", expires_at = {} }}",
                hash(expired),
                now - 1
            ),
            format!(
                "{{ hash = \"{}\", expires_at = {} }}",
                hash(current),
                now + 3600
            ),
        ],
    );
    let gw = TestGateway::start(&config).await;
    for (_, path) in ENDPOINTS {
        let before = mock.requests().len();
        let resp = call(&gw, path, Some(ACME_HOST), Cred::Bearer(expired)).await;
        let o = observe(resp).await;
        assert_eq!(o.status, 401, "{path}: {o:?}");
        let v: Value = serde_json::from_str(&o.body).unwrap();
        assert_eq!(
            v["error"]["message"], "This API key has expired.",
            "{path}: {v}"
        );
        if path != MESSAGES {
            assert_eq!(v["error"]["code"], "expired_api_key", "{path}: {v}");
        }
        let resp = call(&gw, path, Some(GLOBEX_HOST), Cred::Bearer(expired)).await;
        let o = observe(resp).await;
        assert_eq!(code_of(path, &o), "invalid_api_key", "{path}: {o:?}");
        assert_no_upstream(&mock, before, path);
        for key in [current, ACME_DENTAL.2] {
            let tenant = (ACME_DENTAL.0, ACME_DENTAL.1, key);
            assert_served_as(&gw, &mock, path, ACME_HOST, Cred::Bearer(key), tenant).await;
        }
    }
    gw.shutdown().await;
}
