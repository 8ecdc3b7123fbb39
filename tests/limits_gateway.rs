//! Limits through the gateway itself: what a tenant's client sees (429s in
//! OpenAI's shape with `type` naming the limit, `Retry-After`, the
//! `x-ratelimit-*` headers on every answer), neighbours unaffected, the
//! reseller's cap, token settlement against real usage, concurrency slots
//! returned after clients vanish mid-stream, the monthly quota across a restart
//! (read back from the SQLite ledger), a month held by a request in flight
//! answered as retryable (local and Redis), and two gateways sharing one Redis.

use crate::limits::RedisServer;
use crate::support::*;
use livery::limits::LimitKey;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const HOST: &str = "ai.limits.test";
const KEYS: [&str; 3] = ["sk-limits-one", "sk-limits-two", "sk-limits-three"];

/// One reseller (`r`, capped by `reseller_plan` if given) with tenants `one`
/// and `two` on plan `small` and `three` on plan `roomy`, all on the
/// in-process mock provider. `extra` is appended (e.g. `[limits]`, `[usage]`).
fn config(small: &str, reseller_plan: Option<&str>, extra: &str) -> String {
    let reseller_plan = reseller_plan
        .map(|p| format!("[[plans]]\nname = \"cap\"\nmodels = []\n{p}\n"))
        .unwrap_or_default();
    let cap = if reseller_plan.is_empty() {
        ""
    } else {
        "plan = \"cap\""
    };
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
platform_domain = "livery.test"
operator_key_hashes = ["{op}"]

[[providers]]
name = "builtin"
kind = "mock"

[[models]]
name = "demo"
provider = "builtin"
upstream_model = "mock-1"

[[plans]]
name = "small"
models = ["demo"]
{small}

[[plans]]
name = "roomy"
models = ["demo"]
requests_per_minute = 1000

{reseller_plan}

[[resellers]]
id = "r"
domains = ["{HOST}"]
{cap}

[[resellers.tenants]]
id = "one"
plan = "small"
key_hashes = ["{h1}"]

[[resellers.tenants]]
id = "two"
plan = "small"
key_hashes = ["{h2}"]

[[resellers.tenants]]
id = "three"
plan = "roomy"
key_hashes = ["{h3}"]

{extra}
"#,
        h1 = hash(KEYS[0]),
        h2 = hash(KEYS[1]),
        h3 = hash(KEYS[2]),
        op = hash(OPERATOR_TOKEN),
    )
}

fn body() -> Value {
    json!({"model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]})
}

async fn send(gw: &TestGateway, key: &str, body: &Value) -> reqwest::Response {
    post(gw, "/v1/chat/completions", Some(HOST), Some(key), body).await
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn error_of(resp: reqwest::Response) -> Value {
    let v: Value = resp.json().await.unwrap();
    v["error"].clone()
}

#[tokio::test]
async fn a_tenant_at_60_rpm_gets_exactly_60_of_100_and_its_neighbour_is_unaffected() {
    let gw = TestGateway::start(&config("requests_per_minute = 60", None, "")).await;
    let mut ok = 0;
    let mut refused = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let resp = send(&gw, KEYS[0], &body()).await;
        match resp.status().as_u16() {
            200 => {
                assert_eq!(
                    header(&resp, "x-ratelimit-limit-requests").as_deref(),
                    Some("60")
                );
                assert!(header(&resp, "x-ratelimit-remaining-requests").is_some());
                assert!(header(&resp, "x-ratelimit-reset-requests").is_some());
                ok += 1;
            }
            429 => refused.push(resp),
            s => panic!("unexpected status {s}"),
        }
    }
    // The bucket refills one request per second: on a slow machine the loop
    // may outlast a second, and the refill is then rightly admitted. Anything
    // beyond the burst plus the refill is an excess.
    let refill = started.elapsed().as_secs() as usize;
    assert!(
        (60..=60 + refill).contains(&ok),
        "{ok} admitted (refill {refill})"
    );
    assert_eq!(ok + refused.len(), 100);
    let resp = refused.pop().unwrap();
    let retry_after: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let err = error_of(resp).await;
    assert_eq!(err["type"], "requests");
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(err["message"].as_str().unwrap().contains("requests"));

    // The neighbour on the same plan has its own bucket.
    let resp = send(&gw, KEYS[1], &body()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("59")
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_resellers_plan_caps_the_sum_of_its_tenants() {
    let gw = TestGateway::start(&config(
        "requests_per_minute = 100",
        Some("requests_per_minute = 30"),
        "",
    ))
    .await;
    let mut ok = [0, 0];
    for i in 0..40 {
        let t = i % 2;
        let resp = send(&gw, KEYS[t], &body()).await;
        match resp.status().as_u16() {
            200 => ok[t] += 1,
            429 => {
                let err = error_of(resp).await;
                assert_eq!(err["type"], "requests");
                // The tenant is told the cap is shared, never with whom.
                assert!(err["message"].as_str().unwrap().contains("shared"));
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok[0] + ok[1], 30, "{ok:?}");
    assert_eq!(ok, [15, 15]);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_token_bucket_is_settled_with_real_usage() {
    // Each request is estimated at its prompt plus max_tokens = 1000: without
    // settlement the 5,000-token bucket would admit five of them.
    let gw = TestGateway::start(&config("tokens_per_minute = 5000", None, "")).await;
    let big = json!({"model": "demo", "max_tokens": 1000, "messages": [{"role": "user", "content": "Say hello."}]});
    let mut real = 0;
    let mut last_remaining = 0;
    for i in 0..20 {
        let resp = send(&gw, KEYS[0], &big).await;
        assert_eq!(resp.status(), 200, "request {i} refused");
        assert_eq!(
            header(&resp, "x-ratelimit-limit-tokens").as_deref(),
            Some("5000")
        );
        last_remaining = header(&resp, "x-ratelimit-remaining-tokens")
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        real += v["usage"]["total_tokens"].as_u64().unwrap();
    }
    // The header was read at admission of the last request (its estimate
    // charged, not yet settled); refill in between only adds.
    assert!(real < 5000, "mock usage too large for this test: {real}");
    assert!(last_remaining <= 5000 - 1000);
    assert!(
        last_remaining + 1000 + 16 >= 5000 - real,
        "remaining {last_remaining}, real usage {real}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn concurrency_slots_come_back_after_clients_vanish_mid_stream() {
    let gw = TestGateway::start(&config("max_concurrent = 2", None, "")).await;
    let app = gw.gateway.as_ref().unwrap().app().clone();
    let key = LimitKey::new("r", "one");
    let slow = json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": "Hi"}],
                      "mock": {"chunks": 50, "gap_ms": 20}});

    // Two streams fill the slots; a third request is refused.
    let a = send(&gw, KEYS[0], &slow).await;
    let b = send(&gw, KEYS[0], &slow).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let c = send(&gw, KEYS[0], &body()).await;
    assert_eq!(c.status(), 429);
    assert_eq!(error_of(c).await["type"], "concurrent_requests");
    drop((a, b));

    // 1,000 clients that read the first event and vanish.
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let gw_url = gw.url("/v1/chat/completions");
            let slow = slow.clone();
            tokio::spawn(async move {
                let client = client();
                let mut admitted = 0;
                for _ in 0..500 {
                    let mut resp = loop {
                        let resp = client
                            .post(&gw_url)
                            .header("host", HOST)
                            .bearer_auth(KEYS[0])
                            .json(&slow)
                            .send()
                            .await
                            .unwrap();
                        if resp.status() == 200 {
                            break resp;
                        }
                        // The previous slot is released as soon as the gateway
                        // notices the disconnect.
                        assert_eq!(resp.status(), 429);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    };
                    assert!(resp.chunk().await.unwrap().is_some());
                    admitted += 1;
                    drop(resp);
                }
                admitted
            })
        })
        .collect();
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert_eq!(total, 1000);
    let start = Instant::now();
    while app.limiter.local_in_flight(&key) != [0, 0] {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slots still held: {:?}",
            app.limiter.local_in_flight(&key)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.shutdown().await;
}

fn ledger(dir: &Path) -> String {
    format!(
        "[usage]\nspool_dir = \"{}\"\nsqlite_path = \"{}\"\n",
        dir.join("spool").display(),
        dir.join("usage.db").display()
    )
}

#[tokio::test]
async fn the_monthly_quota_answers_insufficient_quota_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let toml = config("tokens_per_month = 400", None, &ledger(dir.path()));
    let gw = TestGateway::start(&toml).await;
    let mut served = 0;
    let err = loop {
        let resp = send(&gw, KEYS[0], &body()).await;
        if resp.status() == 429 {
            assert_eq!(header(&resp, "x-should-retry").as_deref(), Some("false"));
            assert!(header(&resp, "retry-after").is_some());
            break error_of(resp).await;
        }
        assert_eq!(resp.status(), 200);
        served += 1;
        assert!(served < 100, "the quota never bound");
    };
    // OpenAI's words for a quota that waiting does not renew.
    assert_eq!(err["code"], "insufficient_quota");
    assert_eq!(err["type"], "insufficient_quota");
    assert!(served >= 2, "served {served}");
    // The neighbour's month is its own.
    assert_eq!(send(&gw, KEYS[1], &body()).await.status(), 200);
    // Operators see refusals and the ledger's lag in /metrics.
    let metrics = get(&gw, "/metrics", Some(HOST), Some(OPERATOR_TOKEN))
        .await
        .text()
        .await
        .unwrap();
    for series in [
        "livery_limits_rejected_total{limit=\"monthly_quota\"} 1",
        "livery_usage_spool_bytes",
        "livery_usage_sink_lag_events{sink=\"sqlite\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    let app = gw.gateway.as_ref().unwrap().app().clone();
    assert!(app.usage.flush(Duration::from_secs(5)));
    drop(app);
    gw.shutdown().await;

    // A new process: the month's total comes back from the ledger.
    let gw = TestGateway::start(&toml).await;
    let resp = send(&gw, KEYS[0], &body()).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(error_of(resp).await["code"], "insufficient_quota");
    assert_eq!(send(&gw, KEYS[1], &body()).await.status(), 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_one_redis_admit_the_limit_together_and_not_more() {
    let Some(redis) = RedisServer::start("two_gateway_processes_on_one_redis") else {
        return;
    };
    let limits = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 500\non_redis_error = \"fail_closed\"\n",
        redis.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config("requests_per_minute = 50", None, &limits)).unwrap();
    let a = crate::cli::ServeProcess::start(&path, "127.0.0.1:0");
    let b = crate::cli::ServeProcess::start(&path, "127.0.0.1:0");
    let mut handles = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..100 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        handles.push(tokio::spawn(async move {
            client()
                .post(format!("http://{addr}/v1/chat/completions"))
                .header("host", HOST)
                .bearer_auth(KEYS[0])
                .json(&body())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    // Measured excess over the shared limit (the burst plus what refilled at
    // 50 a minute while the requests ran): must be 0.
    let refill = (started.elapsed().as_secs_f64() * 50.0 / 60.0).floor() as usize;
    assert!(
        (50..=50 + refill).contains(&ok),
        "{ok} admitted (refill {refill}): {statuses:?}"
    );
    assert_eq!(ok + refused, 100, "{statuses:?}");
}

/// Sends `n` requests one after the other; returns their statuses and the
/// error codes of the refusals.
async fn statuses(gw: &TestGateway, n: usize) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = send(gw, KEYS[2], &body()).await;
        let status = resp.status().as_u16();
        let code = if status == 200 {
            String::new()
        } else {
            error_of(resp).await["code"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        out.push((status, code));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_under_a_gateway_fails_open_or_closed_as_configured_and_recovers() {
    let Some(mut redis) = RedisServer::start("redis_dying_under_a_gateway") else {
        return;
    };
    let limits = |mode: &str| {
        format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 200\non_redis_error = \"{mode}\"\n",
            redis.url()
        )
    };
    let open = TestGateway::start(&config("", None, &limits("fail_open"))).await;
    let closed = TestGateway::start(&config("", None, &limits("fail_closed"))).await;
    assert!(statuses(&open, 3).await.iter().all(|(s, _)| *s == 200));
    assert!(statuses(&closed, 3).await.iter().all(|(s, _)| *s == 200));

    redis.kill();
    // fail_open: not one failed request; fail_closed: clean 503s.
    let during = statuses(&open, 10).await;
    assert!(during.iter().all(|(s, _)| *s == 200), "{during:?}");
    let during = statuses(&closed, 10).await;
    assert!(
        during
            .iter()
            .all(|(s, c)| *s == 503 && c == "rate_limiter_unavailable"),
        "{during:?}"
    );
    let app = open.gateway.as_ref().unwrap().app().clone();
    assert!(app.limiter.stats().fallbacks_total >= 1);

    redis.restart();
    // Both go back to Redis once it answers (probed every few hundred ms).
    let start = Instant::now();
    loop {
        let now = statuses(&closed, 1).await;
        if now[0].0 == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = Instant::now();
    while app.limiter.stats().recoveries_total == 0 {
        let _ = statuses(&open, 1).await;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "fail_open never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(app);
    open.shutdown().await;
    closed.shutdown().await;
}

/// Sends `body` as tenant `key` until it is served, for as long as it is
/// refused only because the month is held by requests in flight (their
/// settles may still be on their way to Redis); returns the answer's usage.
async fn served_once_released(gw: &TestGateway, key: &str, body: &Value) -> u64 {
    let start = Instant::now();
    loop {
        let resp = send(gw, key, body).await;
        if resp.status() == 200 {
            let v: Value = resp.json().await.unwrap();
            return v["usage"]["total_tokens"].as_u64().unwrap();
        }
        assert_eq!(resp.status(), 429);
        let err = error_of(resp).await;
        assert_eq!(err["code"], "rate_limit_exceeded", "{err}");
        assert!(start.elapsed() < Duration::from_secs(5), "still {err}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tenant `one` sends a request with a huge `max_tokens` that stays in
/// flight: its reservation holds the whole of the reseller's month. Tenant
/// `two` was answered `insufficient_quota` ("monthly quota exhausted", retry
/// when the month ends), which OpenAI's SDKs do not retry, though almost
/// nothing was used; it gets a retryable 429 `rate_limit_exceeded` with a
/// wait of seconds, and is served once the request settles at its real
/// usage. The month really used up is still `insufficient_quota`.
async fn a_month_held_in_flight_is_retried_not_final(gw: &TestGateway) {
    let app = gw.gateway.as_ref().unwrap().app().clone();
    let before = app.limiter.stats().admitted_total;
    let huge = json!({"model": "demo", "max_tokens": 5000, "mock": {"delay_ms": 1500},
                      "messages": [{"role": "user", "content": "Say hello."}]});
    let (first, ()) = tokio::join!(send(gw, KEYS[0], &huge), async {
        let start = Instant::now();
        while app.limiter.stats().admitted_total == before {
            assert!(start.elapsed() < Duration::from_secs(5), "never admitted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let resp = send(gw, KEYS[1], &body()).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(header(&resp, "retry-after").as_deref(), Some("5"));
        assert_eq!(header(&resp, "retry-after-ms").as_deref(), Some("5000"));
        assert_eq!(header(&resp, "x-should-retry"), None);
        // The per-minute headers as on any refusal.
        assert_eq!(
            header(&resp, "x-ratelimit-limit-tokens").as_deref(),
            Some("100000")
        );
        let err = error_of(resp).await;
        assert_eq!(err["code"], "rate_limit_exceeded", "{err}");
        assert_eq!(err["type"], "tokens_per_month", "{err}");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains("reserved by requests in flight")
                && message.contains("shared by this service's accounts"),
            "{message}"
        );
    });
    assert_eq!(first.status(), 200);
    let v: Value = first.json().await.unwrap();
    let mut used = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < 100, "{used}");
    used += served_once_released(gw, KEYS[1], &body()).await;

    // What the month has left, all of it used for real.
    let rest = 1000 - used;
    let fill = json!({"model": "demo", "max_tokens": rest, "mock": {"chunks": rest},
                      "messages": [{"role": "user", "content": "Say hello."}]});
    used += served_once_released(gw, KEYS[0], &fill).await;
    assert!(used >= 1000, "{used}");
    let start = Instant::now();
    let err = loop {
        let resp = send(gw, KEYS[1], &body()).await;
        assert_eq!(resp.status(), 429);
        let final_answer = header(&resp, "x-should-retry").as_deref() == Some("false");
        let err = error_of(resp).await;
        if final_answer {
            break err;
        }
        // The fill's settle on its way to Redis.
        assert_eq!(err["code"], "rate_limit_exceeded", "{err}");
        assert!(start.elapsed() < Duration::from_secs(5), "still {err}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(err["code"], "insufficient_quota", "{err}");
    assert_eq!(err["type"], "insufficient_quota", "{err}");
}

const HELD_PLANS: (&str, &str) = (
    "tokens_per_minute = 100000",
    "tokens_per_month = 1000\ntokens_per_minute = 1000000",
);

#[tokio::test]
async fn a_month_held_by_a_request_in_flight_is_retried_not_final() {
    let (small, cap) = HELD_PLANS;
    let gw = TestGateway::start(&config(small, Some(cap), "")).await;
    a_month_held_in_flight_is_retried_not_final(&gw).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_held_in_redis_by_a_request_in_flight_is_retried_not_final() {
    let Some(redis) = RedisServer::start("month_held_in_redis") else {
        return;
    };
    let limits = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 500\non_redis_error = \"fail_closed\"\n",
        redis.url()
    );
    let (small, cap) = HELD_PLANS;
    let gw = TestGateway::start(&config(small, Some(cap), &limits)).await;
    a_month_held_in_flight_is_retried_not_final(&gw).await;
    let app = gw.gateway.as_ref().unwrap().app().clone();
    assert_eq!(app.limiter.stats().backend, "redis");
    drop(app);
    gw.shutdown().await;
}
