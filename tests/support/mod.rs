//! Test support: the mock provider, gateways started in-process on port 0 against
//! it, the standard two-reseller tenancy, a raw HTTP/1.1 client for requests that
//! well-behaved clients cannot send, and usage-file readers.
#![allow(dead_code)]

pub mod anthropic_mock;
pub mod mock;
pub mod redis_server;

pub use mock::MockProvider;

use livery::config::GatewayConfig;
use livery::Gateway;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The platform key the gateway sends to the mock upstream (read from this env var).
pub const PROVIDER_KEY_ENV: &str = "LIVERY_TEST_PROVIDER_KEY";
pub const PROVIDER_KEY: &str = "sk-platform-upstream-secret-0123456789";

/// Tenants of the standard configuration: (reseller, tenant, key).
pub const ACME_DENTAL: (&str, &str, &str) = ("acme", "dental", "sk-acme-dental-key");
pub const ACME_REALTY: (&str, &str, &str) = ("acme", "realty", "sk-acme-realty-key");
pub const GLOBEX_CLINIC: (&str, &str, &str) = ("globex", "clinic", "sk-globex-clinic-key");
pub const GLOBEX_OFFICE: (&str, &str, &str) = ("globex", "office", "sk-globex-office-key");
pub const ACME_SUSPENDED_KEY: &str = "sk-acme-suspended-key";
pub const ACME_HOST: &str = "ai.acme.test";
pub const GLOBEX_HOST: &str = "ai.globex.test";
pub const PLATFORM_DOMAIN: &str = "livery.test";
/// Operator key of the standard configuration (readyz detail).
pub const OPERATOR_TOKEN: &str = "op-livery-test-operator-token";

pub fn hash(key: &str) -> String {
    livery::tenancy::KeyDigest::of(key).to_config_string()
}

/// Two resellers with two active tenants each (plus one suspended tenant at acme).
/// Models: `gpt-4o-mini` (served by the HTTP mock as `gpt-4o-mini-2024-07-18`),
/// `embed` (HTTP mock, `text-embedding-3-small`), `demo` (built-in mock) and
/// `premium` (HTTP mock, only in plan `pro`). Tenant `realty` is on plan `basic`
/// which lacks `premium`.
pub fn standard_config(mock_base_url: &str, extra_provider: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
platform_domain = "{PLATFORM_DOMAIN}"
max_body_bytes = 65536
operator_key_hashes = ["{operator}"]

# The suite's single-route tests see each upstream failure as it is; the
# fallback tests (tests/routing.rs) set their own retry policy.
[routing]
retries_per_route = 0
backoff_base_ms = 10

[[providers]]
name = "upstream"
kind = "openai"
base_url = "{mock_base_url}"
api_key_env = "{PROVIDER_KEY_ENV}"
connect_timeout_ms = 1000
stream_idle_timeout_ms = 3000
first_byte_timeout_ms = 1500

[[providers]]
name = "builtin"
kind = "mock"

{extra_provider}

[[models]]
name = "gpt-4o-mini"
provider = "upstream"
upstream_model = "gpt-4o-mini-2024-07-18"

[[models]]
name = "embed"
provider = "upstream"
upstream_model = "text-embedding-3-small"

[[models]]
name = "premium"
provider = "upstream"
upstream_model = "gpt-4o"

[[models]]
name = "demo"
provider = "builtin"
upstream_model = "mock-1"

[[plans]]
name = "pro"
models = ["gpt-4o-mini", "embed", "premium", "demo"]

[[plans]]
name = "basic"
models = ["gpt-4o-mini", "embed", "demo"]

[[resellers]]
id = "acme"
domains = ["{ACME_HOST}"]

[[resellers.tenants]]
id = "dental"
plan = "pro"
key_hashes = ["{dental}"]

[[resellers.tenants]]
id = "realty"
plan = "basic"
key_hashes = ["{realty}"]

[[resellers.tenants]]
id = "suspended"
plan = "pro"
status = "suspended"
key_hashes = ["{suspended}"]

[[resellers]]
id = "globex"
domains = ["{GLOBEX_HOST}"]

[[resellers.tenants]]
id = "clinic"
plan = "pro"
key_hashes = ["{clinic}"]

[[resellers.tenants]]
id = "office"
plan = "basic"
key_hashes = ["{office}"]
"#,
        operator = hash(OPERATOR_TOKEN),
        dental = hash(ACME_DENTAL.2),
        realty = hash(ACME_REALTY.2),
        suspended = hash(ACME_SUSPENDED_KEY),
        clinic = hash(GLOBEX_CLINIC.2),
        office = hash(GLOBEX_OFFICE.2),
    )
}

pub fn set_provider_key_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(PROVIDER_KEY_ENV, PROVIDER_KEY));
}

/// A gateway running in-process on an ephemeral port, with its own usage file.
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub usage_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway on `toml` (its `[usage]` table is set by this helper).
    pub async fn start(toml: &str) -> Self {
        set_provider_key_env();
        let dir = tempfile::tempdir().unwrap();
        let usage_path = dir.path().join("usage.jsonl");
        let mut config = GatewayConfig::parse(toml).expect("test config parses");
        config.usage.jsonl_path = Some(usage_path.clone());
        let gateway = Gateway::start(config).await.expect("gateway starts");
        let addr = gateway.local_addr();
        Self {
            gateway: Some(gateway),
            addr,
            usage_path,
            _dir: dir,
        }
    }

    /// The standard two-reseller gateway in front of `mock`.
    pub async fn standard(mock: &MockProvider) -> Self {
        Self::start(&standard_config(&mock.base_url(), "")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Usage records of requests still in flight (each request's record is
    /// opened once and completed once, whichever way it ends).
    pub fn open_records(&self) -> usize {
        self.gateway
            .as_ref()
            .expect("the gateway is running")
            .app()
            .usage
            .open_records()
    }

    /// Usage records written so far.
    pub fn usage(&self) -> Vec<Value> {
        read_usage(&self.usage_path)
    }

    /// Waits for the usage record of `request_id` (records are written by a
    /// background thread).
    pub async fn usage_for(&self, request_id: &str) -> Value {
        let start = Instant::now();
        loop {
            if let Some(r) = self
                .usage()
                .into_iter()
                .find(|r| r["request_id"] == request_id)
            {
                return r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no usage record for {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown(Duration::from_secs(5)).await;
        }
    }
}

pub fn read_usage(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // The file is being appended to: a read can end inside a line whose write
    // has reached only some of its pages. That line is not a record yet.
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("usage lines are JSON"))
        .collect()
}

/// A reqwest client that never follows redirects or retries.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A chat request body for `model`.
pub fn chat_body(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the tests."}]})
}

/// POSTs JSON with a Host and a bearer key (either may be omitted).
pub async fn post(
    gw: &TestGateway,
    path: &str,
    host: Option<&str>,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut rb = client().post(gw.url(path)).json(body);
    if let Some(h) = host {
        rb = rb.header("host", h);
    }
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    rb.send().await.unwrap()
}

/// POSTs `body` to `/v1/chat/completions` as acme's dental tenant; asserts a
/// 200 and returns the body's text.
pub async fn dental_chat(gw: &TestGateway, body: &Value) -> String {
    let resp = post(
        gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        body,
    )
    .await;
    assert_eq!(resp.status(), 200, "{body}");
    resp.text().await.unwrap()
}

/// A streamed `gpt-4o-mini` chat as acme's dental tenant, the mock told
/// `mock` (chunks, gaps, faults); returns the body's text.
pub async fn dental_stream(gw: &TestGateway, mock: Value) -> String {
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = serde_json::json!(true);
    body["mock"] = mock;
    dental_chat(gw, &body).await
}

pub async fn get(
    gw: &TestGateway,
    path: &str,
    host: Option<&str>,
    key: Option<&str>,
) -> reqwest::Response {
    let mut rb = client().get(gw.url(path));
    if let Some(h) = host {
        rb = rb.header("host", h);
    }
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    rb.send().await.unwrap()
}

/// Asserts OpenAI's error shape and returns `error.code`.
pub async fn error_code(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.expect("error body is JSON");
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {v}"
    );
    assert!(e["type"].is_string(), "error.type: {v}");
    assert!(e.get("code").is_some(), "error.code: {v}");
    e["code"].as_str().unwrap_or_default().to_owned()
}

/// Parsed HTTP/1.1 response from [`raw_request`].
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` verbatim over a fresh TCP connection (it should say
/// `Connection: close`) and reads the whole response.
pub async fn raw_request(addr: SocketAddr, request: &str) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// The events of an SSE body whose every event is named (Anthropic's
/// streams, the Responses API's): `(event name, data)`, checking the framing.
pub fn named_events(body: &str) -> Vec<(String, Value)> {
    assert!(body.ends_with("\n\n"), "unterminated stream: {body:?}");
    body.split_inclusive("\n\n")
        .map(|ev| {
            let mut lines = ev.trim_end().lines();
            let name = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .unwrap_or_else(|| panic!("no event line: {ev:?}"));
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("no data line: {ev:?}"));
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// Reads `resp`'s body until it holds `needle`, then the rest to its end in
/// a task of its own, which fails if the body is cut (a transport error)
/// rather than ended. Returns that task, whose output is the whole body.
pub async fn read_past(resp: reqwest::Response, needle: &str) -> tokio::task::JoinHandle<String> {
    use futures_util::StreamExt;
    let mut text = Vec::new();
    let mut body = resp.bytes_stream();
    while !String::from_utf8_lossy(&text).contains(needle) {
        let chunk = body.next().await;
        let chunk = chunk.unwrap_or_else(|| panic!("the body ended before {needle:?}"));
        text.extend_from_slice(&chunk.expect("the body is not cut"));
    }
    tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            text.extend_from_slice(&chunk.expect("the body ends whole, not cut"));
        }
        String::from_utf8(text).unwrap()
    })
}

/// Proves that no usage record was written for the requests sent since the
/// file held `before` records: sends one request that is recorded (acme's
/// dental tenant, on the plain listener), waits for its record, and asserts it
/// is the only new one. Records reach the mirror through one queue and one
/// writer thread, in order, so a record of an earlier request would be in the
/// file by the time the sentinel's is.
pub async fn assert_only_sentinel_recorded(gw: &TestGateway, before: usize, what: &str) {
    let resp = post(
        gw,
        "/v1/chat/completions",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
        &chat_body("demo"),
    )
    .await;
    assert_eq!(resp.status(), 200, "{what}: the sentinel request failed");
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let _ = resp.bytes().await;
    gw.usage_for(&rid).await;
    let usage = gw.usage();
    let new: Vec<&Value> = usage.iter().skip(before).collect();
    assert!(
        new.len() == 1 && new[0]["request_id"] == rid.as_str(),
        "{what}: refused requests were recorded: {new:?}"
    );
}

/// An HTTP/2 client connection (h2c, prior knowledge) to `addr`.
pub async fn h2c_connect(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2_handshake(tcp).await
}

/// The HTTP/2 handshake on `io`; the connection is driven by a spawned task.
pub async fn h2_handshake<T>(io: T) -> h2::client::SendRequest<bytes::Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One HTTP/2 request on `send` exactly as given: `uri` sets `:scheme` and
/// `:authority` and no `host` header is added (pass one in `headers` to send
/// it). A JSON `body` goes with `content-type: application/json`. Returns the
/// whole answer, its body as text.
pub async fn h2_request(
    send: &h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> http::Response<String> {
    let mut rb = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        rb = rb.header(*name, *value);
    }
    if body.is_some() {
        rb = rb.header("content-type", "application/json");
    }
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut stream) = send
        .send_request(rb.body(()).unwrap(), body.is_none())
        .unwrap();
    if let Some(b) = body {
        stream
            .send_data(bytes::Bytes::from(b.to_string()), true)
            .unwrap();
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an HTTP/2 answer within 10 s")
        .unwrap();
    let (parts, mut recv) = resp.into_parts();
    let mut buf = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    http::Response::from_parts(parts, String::from_utf8_lossy(&buf).into_owned())
}

/// `/metrics` as the operator sees it.
pub async fn operator_metrics(gw: &TestGateway) -> String {
    client()
        .get(gw.url("/metrics"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The request id an answer carries.
pub fn rid(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// A streamed answer's request id and text, checking that it is a 200
/// event stream.
pub async fn streamed(resp: reqwest::Response) -> (String, String) {
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let id = rid(&resp);
    (id, resp.text().await.unwrap())
}
