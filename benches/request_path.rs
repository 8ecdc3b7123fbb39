//! Micro-benchmarks of the pieces of Livery's request path (issue 7), through the
//! public API where it exists and as faithful mirrors where the code is private:
//!
//! - `tenancy/*`: Host + key resolution (`normalize_host`, `Tenancy::resolve_host`,
//!   `presented_key`, `Tenancy::authenticate`) over 10, 1,000 and 100,000 tenants,
//!   built through `GatewayConfig` and `Snapshot::prepare` exactly as at start-up;
//!   the keys looked up are spread over the whole tenant set, so large tables pay
//!   their cache misses.
//! - `sse/*`: `providers::sse` (sse-core) over a recorded 20-chunk mock stream,
//!   next to `eventsource-stream`, the parser it replaced, plus the per-event work
//!   of `src/proxy/relay.rs` (peek at `choices[].finish_reason`, the delta's
//!   text, `usage`, `model`, `error`; re-frame the event with `sse::frame`),
//!   mirrored here because the relay is private.
//! - `body/*`: what `prepare_body` in `src/proxy/handler.rs` does to a realistic
//!   2 KB chat body with `RequestBody` (locate the members, read `model` and
//!   `stream`, force `stream_options.include_usage`, estimate the tokens, splice
//!   the upstream body), next to the `serde_json::Value` tree it replaced (parse,
//!   replace `model`, serialise), measured in the same run.
//!
//! Vault unseal has its own bench (`benches/vault.rs`); limit admission does not
//! exist yet (issue 4). Run with `cargo bench --bench request_path`.

// Benchmark set-up fails loudly: a bench that cannot build its fixture has nothing
// to measure, and a panic here never reaches the request path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eventsource_stream::Eventsource;
use futures_util::{FutureExt, StreamExt};
use http::{HeaderMap, HeaderValue};
use livery::config::GatewayConfig;
use livery::limits::{estimate_request_tokens, EffectiveLimits};
use livery::providers::mock::MockReply;
use livery::providers::{sse, ByteStream, Endpoint, ProviderError};
use livery::proxy::RequestBody;
use livery::tenancy::{normalize_host, presented_key, KeyDigest, PresentedKey};
use livery::usage::event::opt_text;
use livery::Snapshot;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::hint::black_box;
use std::time::Duration;

const TENANTS_PER_RESELLER: usize = 100;
/// How many distinct (host, key) pairs a benchmark cycles through.
const PROBES: usize = 4096;

fn group_timing(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(50);
}

// ----------------------------------------------------------------- tenancy

const BASE: &str = r#"
[server]
platform_domain = "gw.example"

[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "demo"
provider = "mock"
upstream_model = "mock-1"

[[plans]]
name = "basic"
models = ["demo"]

[[resellers]]
id = "r0"
domains = ["api.r0.example.com"]

[[resellers.tenants]]
id = "t0"
plan = "basic"
key_hashes = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
"#;

fn tenant_key(i: usize) -> String {
    format!("sk-bench-{i:08}-0123456789abcdefghijklmnopqrstuv")
}

/// A snapshot with `n` tenants (one key each), 100 to a reseller, and `PROBES`
/// (Host header, Authorization header) pairs of random tenants.
fn fixture(n: usize) -> (Snapshot, Vec<(String, HeaderMap)>) {
    let mut config = GatewayConfig::parse(BASE).unwrap();
    let reseller_template = config.resellers.pop().unwrap();
    let mut tenant_template = reseller_template.tenants[0].clone();
    let resellers = n.div_ceil(TENANTS_PER_RESELLER);
    for r in 0..resellers {
        let mut rc = reseller_template.clone();
        rc.id = format!("r{r}");
        rc.domains = vec![format!("api.r{r}.example.com")];
        rc.tenants = (r * TENANTS_PER_RESELLER..((r + 1) * TENANTS_PER_RESELLER).min(n))
            .map(|i| {
                tenant_template.id = format!("t{i}");
                tenant_template.key_hashes = vec![livery::config::KeyEntry::digest(
                    KeyDigest::of(&tenant_key(i)).to_config_string(),
                )];
                tenant_template.clone()
            })
            .collect();
        config.resellers.push(rc);
    }
    let snapshot = Snapshot::prepare(&config).unwrap();
    // xorshift: a fixed, spread-out choice of tenants.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let probes = (0..PROBES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % n as u64) as usize;
            let host = format!("API.r{}.example.com:8443", i / TENANTS_PER_RESELLER);
            let mut headers = HeaderMap::new();
            let auth = format!("Bearer {}", tenant_key(i));
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&auth).unwrap(),
            );
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static("OpenAI/Python 1.55.0"),
            );
            (host, headers)
        })
        .collect();
    (snapshot, probes)
}

fn tenancy(c: &mut Criterion) {
    let mut g = c.benchmark_group("tenancy");
    group_timing(&mut g);
    for n in [10usize, 1_000, 100_000] {
        let (snap, probes) = fixture(n);
        let t = &snap.tenancy;
        let hosts: Vec<String> = probes
            .iter()
            .map(|(h, _)| normalize_host(h).unwrap().into_owned())
            .collect();
        let resolved: Vec<_> = hosts.iter().map(|h| t.resolve_host(h).unwrap()).collect();
        let keys: Vec<&str> = probes
            .iter()
            .map(|(_, hm)| match presented_key(hm) {
                PresentedKey::Key(k) => k,
                _ => panic!("fixture key missing"),
            })
            .collect();
        // Every probe must succeed, or the numbers would time the error path.
        for (r, k) in resolved.iter().zip(&keys) {
            t.authenticate(*r, k, std::time::UNIX_EPOCH).unwrap();
        }

        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("resolve_host", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % PROBES;
                black_box(t.resolve_host(black_box(&hosts[i])).is_ok())
            })
        });
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("authenticate", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % PROBES;
                black_box(
                    t.authenticate(resolved[i], black_box(keys[i]), std::time::UNIX_EPOCH)
                        .is_ok(),
                )
            })
        });
        let mut i = 0usize;
        g.bench_with_input(
            BenchmarkId::new("authenticate_unknown_key", n),
            &n,
            |b, _| {
                b.iter(|| {
                    i = (i + 1) % PROBES;
                    black_box(
                        t.authenticate(
                            resolved[i],
                            black_box("sk-FAKE-not-a-tenant-key"),
                            std::time::UNIX_EPOCH,
                        )
                        .is_err(),
                    )
                })
            },
        );
        // What the handler does per request: raw Host → reseller, headers → key → tenant.
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("host_and_key", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % PROBES;
                let (raw, headers) = &probes[i];
                let host = normalize_host(black_box(raw)).unwrap_or_default();
                let Ok(r) = t.resolve_host(&host) else {
                    return false;
                };
                match presented_key(black_box(headers)) {
                    PresentedKey::Key(k) => t.authenticate(r, k, std::time::UNIX_EPOCH).is_ok(),
                    _ => false,
                }
            })
        });
    }
    g.finish();
}

// --------------------------------------------------------------------- SSE

/// The fields of a streamed chunk the relay reads (mirror of `relay::ChunkPeek`).
#[derive(Deserialize)]
struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoicePeek<'a>>>,
    #[serde(default)]
    usage: Option<UsageMirror>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoicePeek<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaPeek<'a>>,
}

#[derive(Deserialize)]
struct DeltaPeek<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    content: Option<Cow<'a, str>>,
}

/// Mirror of `record::UsageField` (read straight into counts, no JSON tree;
/// the real one also reads any non-object `usage` as absent).
#[derive(Deserialize)]
struct UsageMirror {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<DetailsMirror>,
}

#[derive(Deserialize)]
struct DetailsMirror {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

fn token_usage(u: &UsageMirror) -> Option<(Option<u64>, Option<u64>, Option<u64>)> {
    let _cached = u.prompt_tokens_details.as_ref().map(|d| d.cached_tokens);
    Some((u.prompt_tokens, u.completion_tokens, u.total_tokens))
}

#[derive(Default)]
struct RelayState {
    saw_finish: bool,
    model: Option<String>,
    text: String,
    tokens: Option<(Option<u64>, Option<u64>, Option<u64>)>,
    errored: bool,
    done: bool,
}

/// Mirror of `SseRelay::on_event`: what the relay does with one upstream event.
fn on_event(
    st: &mut RelayState,
    event: &str,
    data: &str,
    client_wants_usage: bool,
) -> Option<Bytes> {
    if data.trim() == "[DONE]" {
        st.done = true;
        return Some(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    let mut forward = true;
    if let Ok(peek) = serde_json::from_str::<ChunkPeek>(data) {
        if let (Some(model), None) = (peek.model, &st.model) {
            st.model = Some(model.into_owned());
        }
        let choices = peek.choices.unwrap_or_default();
        for c in &choices {
            st.saw_finish |= c.finish_reason.is_some();
            if let Some(text) = c.delta.as_ref().and_then(|d| d.content.as_ref()) {
                st.text.push_str(text);
            }
        }
        if let Some(u) = peek.usage.as_ref().and_then(token_usage) {
            st.tokens = Some(u);
            if choices.is_empty() && !client_wants_usage {
                forward = false;
            }
        }
        st.errored |= peek.error.is_some();
    }
    if !forward {
        return None;
    }
    Some(sse::frame(event, data, b""))
}

/// The data bytes of every event of a ready `events` stream, whichever parser made it.
fn data_bytes<S, T, E>(events: S, len: fn(&T) -> usize) -> Option<usize>
where
    S: futures_util::Stream<Item = Result<T, E>>,
{
    events
        .fold(0usize, |n, ev| async move { n + ev.map_or(0, |e| len(&e)) })
        .now_or_never()
}

/// `pieces` as an upstream body.
fn byte_stream(pieces: &[Bytes]) -> ByteStream {
    let items: Vec<Result<Bytes, ProviderError>> = pieces.iter().cloned().map(Ok).collect();
    Box::pin(futures_util::stream::iter(items))
}

fn recorded_stream(chunks: u64) -> Vec<Bytes> {
    let body = json!({
        "model": "mock-1",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Hello"}],
        "mock": {"chunks": chunks}
    });
    MockReply::for_request(Endpoint::ChatCompletions, &body).pieces
}

fn sse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse");
    group_timing(&mut g);
    let pieces = recorded_stream(20);
    let events = pieces.len() as u64;
    let bytes: usize = pieces.iter().map(Bytes::len).sum();

    g.throughput(Throughput::Elements(events));
    g.bench_function("parse_stream_20_chunks", |b| {
        b.iter(|| {
            black_box(data_bytes(sse::events(byte_stream(&pieces)), |e| {
                e.data.len()
            }))
        })
    });
    g.bench_function("parse_stream_20_chunks_eventsource_stream", |b| {
        b.iter(|| {
            let upstream = futures_util::stream::iter(
                pieces
                    .iter()
                    .cloned()
                    .map(Ok::<_, std::convert::Infallible>),
            );
            black_box(data_bytes(upstream.eventsource(), |e| e.data.len()))
        })
    });
    g.bench_function("relay_stream_20_chunks", |b| {
        b.iter(|| {
            let mut st = RelayState::default();
            let sent = sse::events(byte_stream(&pieces))
                .fold(0usize, |n, ev| {
                    let out = ev
                        .ok()
                        .and_then(|e| on_event(&mut st, &e.event, &e.data, false));
                    async move { n + out.map_or(0, |b| b.len()) }
                })
                .now_or_never();
            assert!(st.saw_finish && st.done && st.tokens.is_some());
            black_box(sent)
        })
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("relay_stream_20_chunks_one_buffer", |b| {
        // The whole stream in one TCP read, as on a fast loopback upstream.
        let joined = [Bytes::from(pieces.concat())];
        b.iter(|| {
            let mut st = RelayState::default();
            let sent = sse::events(byte_stream(&joined))
                .fold(0usize, |n, ev| {
                    let out = ev
                        .ok()
                        .and_then(|e| on_event(&mut st, &e.event, &e.data, false));
                    async move { n + out.map_or(0, |b| b.len()) }
                })
                .now_or_never();
            black_box(sent)
        })
    });

    // One event's JSON peek, content chunk and usage chunk.
    let data_of = |p: &Bytes| {
        String::from_utf8_lossy(p)
            .trim_start_matches("data: ")
            .trim_end()
            .to_owned()
    };
    let content = data_of(&pieces[2]);
    let usage = data_of(&pieces[pieces.len() - 2]);
    assert!(usage.contains("\"usage\":{"), "{usage}");
    g.throughput(Throughput::Elements(1));
    g.bench_function("peek_content_chunk", |b| {
        b.iter(|| black_box(serde_json::from_str::<ChunkPeek>(black_box(&content)).is_ok()))
    });
    g.bench_function("peek_usage_chunk", |b| {
        b.iter(|| {
            let p: ChunkPeek = serde_json::from_str(black_box(&usage)).unwrap();
            black_box(p.usage.as_ref().and_then(token_usage))
        })
    });
    g.finish();
}

// -------------------------------------------------------------------- body

/// A realistic ~2 KB chat request: system prompt, a short conversation, tools.
fn chat_body(stream: bool) -> Vec<u8> {
    let body = json!({
        "model": "demo",
        "messages": [
            {"role": "system", "content": "You are Dentabot, the scheduling assistant of a dental practice. Answer briefly and politely. Never give medical advice; refer clinical questions to the dentist. Opening hours are Monday to Friday 8:00-18:00 and Saturday 9:00-13:00. Appointments can be booked, moved or cancelled up to 24 hours in advance."},
            {"role": "user", "content": "Hi, I would like to move my appointment from Tuesday afternoon to later in the week, ideally Thursday morning. Is that possible?"},
            {"role": "assistant", "content": "Of course. Thursday morning we have openings at 8:30, 9:15 and 11:00. Which one suits you best, and could you confirm the name the appointment is booked under?"},
            {"role": "user", "content": "9:15 works. The booking is under Alex Morgan. Also, do I need to bring anything for a routine check-up?"},
            {"role": "assistant", "content": "Done: Alex Morgan, Thursday 9:15. For a routine check-up please bring your insurance card and a list of any medication you take. Anything else?"},
            {"role": "user", "content": "One more thing: my daughter also needs a check-up, she is eight. Could she come right after me, and is there anything special for children?"},
            {"role": "assistant", "content": "Certainly. I have booked her for Thursday at 9:45 with the same dentist, so you can come together. For children we recommend a short visit first so they get used to the chair; no special preparation is needed."},
            {"role": "user", "content": "Can you send me a reminder the day before, by text message rather than email?"}
        ],
        "tools": [{
            "type": "function",
            "function": {
                "name": "send_reminder",
                "description": "Schedule a reminder for an appointment.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "channel": {"type": "string", "enum": ["sms", "email"]},
                        "when": {"type": "string", "description": "ISO 8601 timestamp"}
                    },
                    "required": ["channel", "when"]
                }
            }
        }],
        "temperature": 0.2,
        "max_tokens": 256,
        "user": "tenant-dental-42",
        "stream": stream
    });
    serde_json::to_vec(&body).unwrap()
}

/// The tree rewrite `prepare_body` did before `RequestBody`, as the baseline.
fn tree_rewrite(body: &[u8], upstream_model: &str) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let obj = value.as_object_mut()?;
    let _requested = obj.get("model")?.as_str()?.to_owned();
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    obj.insert("model".into(), Value::String(upstream_model.to_owned()));
    if stream {
        let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
        if opts.is_null() {
            *opts = json!({});
        }
        opts.as_object_mut()?
            .insert("include_usage".into(), Value::Bool(true));
    }
    serde_json::to_vec(&value).ok()
}

/// What `prepare_body` and the admission's estimate do now.
fn splice(body: &Bytes, upstream_model: &str, limits: &EffectiveLimits) -> Option<(Bytes, u64)> {
    let mut parsed = RequestBody::parse(body.clone()).ok()?;
    let _requested = parsed.model().ok()?;
    if parsed.stream().ok()? {
        parsed.require_stream_usage().ok()?;
    }
    let estimate = estimate_request_tokens(&parsed, limits);
    Some((parsed.upstream(upstream_model), estimate))
}

fn body(c: &mut Criterion) {
    let mut g = c.benchmark_group("body");
    group_timing(&mut g);
    for stream in [false, true] {
        let raw = chat_body(stream);
        assert!((1800..2600).contains(&raw.len()), "{} bytes", raw.len());
        g.throughput(Throughput::Bytes(raw.len() as u64));
        let suffix = if stream { "_stream" } else { "" };
        g.bench_function(format!("tree_rewrite_2kb{suffix}"), |b| {
            b.iter(|| black_box(tree_rewrite(black_box(&raw), "gpt-4o-mini-2024-07-18")))
        });
        let bytes = Bytes::from(raw.clone());
        let limits = EffectiveLimits::default();
        let (spliced, _) = splice(&bytes, "gpt-4o-mini-2024-07-18", &limits).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&spliced).unwrap(),
            serde_json::from_slice::<Value>(&tree_rewrite(&raw, "gpt-4o-mini-2024-07-18").unwrap())
                .unwrap()
        );
        g.bench_function(format!("splice_and_estimate_2kb{suffix}"), |b| {
            b.iter(|| black_box(splice(black_box(&bytes), "gpt-4o-mini-2024-07-18", &limits)))
        });
    }
    g.finish();
}

criterion_group!(benches, tenancy, sse, body);
criterion_main!(benches);
