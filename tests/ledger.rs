//! Issue 6, the usage ledger: counts in the SQLite ledger equal the upstream's
//! reported usage (streamed and not); a replayed spool adds nothing; `kill -9`
//! under load loses no completed request's event and duplicates none; a webhook
//! sink down under load receives every event once back; a fixture month gives
//! the expected invoice lines under each billing model, to the micro-unit.

use crate::support::*;
use livery::config::GatewayConfig;
use livery::usage::ledger::Ledger;
use livery::usage::sinks::sqlite::{self, SqliteSink};
use livery::usage::sinks::Sink;
use livery::usage::spool::{Spool, SpoolOptions};
use livery::usage::{report, LedgerEvent};
use rusqlite::Connection;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[usage]` with the ledger in `dir`, plus a price for the mock's model.
fn ledger_usage_toml(dir: &Path, extra: &str) -> String {
    format!(
        r#"
[usage]
spool_dir = "{spool}"
sqlite_path = "{db}"
fsync_interval_ms = 2
{extra}

[prices]
currency = "USD"

[[prices.models]]
model = "gpt-4o-mini-2024-07-18"
input_per_million = "0.15"
output_per_million = 0.6
"#,
        spool = dir.join("spool").display(),
        db = dir.join("usage.db").display(),
    )
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("usage.db")).unwrap()
}

/// Rows of the events table by request id: (prompt, completion, total,
/// estimated, cost, count of rows with that request id).
fn event_row(conn: &Connection, rid: &str) -> (i64, i64, i64, bool, Option<i64>, i64) {
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM events WHERE request_id = ?1",
            [rid],
            |r| r.get(0),
        )
        .unwrap();
    let (p, c, t, e, cost) = conn
        .query_row(
            "SELECT prompt_tokens, completion_tokens, total_tokens, estimated, cost_micros FROM events WHERE request_id = ?1",
            [rid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    (p, c, t, e, cost, n)
}

async fn post_acme(gw: &TestGateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_in_the_ledger_equal_the_upstreams_usage_streamed_or_not() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}",
        ledger_usage_toml(dir.path(), ""),
        standard_config(&mock.base_url(), "")
    );
    let gw = TestGateway::start(&toml).await;

    // Non-streamed.
    let mut body = chat_body("gpt-4o-mini");
    body["mock"] = json!({"chunks": 7});
    let resp = post_acme(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let plain_id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    let plain_usage = v["usage"].clone();

    // Streamed, with the usage chunk shown to the client.
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body["mock"] = json!({"chunks": 12});
    let resp = post_acme(&gw, &body).await;
    let stream_id = rid(&resp);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let stream_usage = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .expect("a usage chunk");

    // Streamed, the client not asking for usage (the gateway still counts it).
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    body["mock"] = json!({"chunks": 5});
    let resp = post_acme(&gw, &body).await;
    let hidden_id = rid(&resp);
    let _ = resp.text().await.unwrap();

    let usage = gw.gateway.as_ref().unwrap().app().usage.clone();
    assert!(usage.flush(Duration::from_secs(5)), "{:?}", usage.stats());

    let conn = db(dir.path());
    for (id, u) in [(&plain_id, &plain_usage), (&stream_id, &stream_usage)] {
        let (p, c, t, estimated, cost, n) = event_row(&conn, id);
        assert_eq!(n, 1, "{id}");
        assert_eq!(p, u["prompt_tokens"].as_i64().unwrap(), "{id}");
        assert_eq!(c, u["completion_tokens"].as_i64().unwrap(), "{id}");
        assert_eq!(t, u["total_tokens"].as_i64().unwrap(), "{id}");
        assert!(!estimated);
        // 0.15 / 0.60 per million, rounded half up once.
        let want = (p * 150_000 + c * 600_000 + 500_000) / 1_000_000;
        assert_eq!(cost, Some(want), "{id}");
    }
    let (_, c, _, _, _, n) = event_row(&conn, &hidden_id);
    assert_eq!((n, c), (1, 5));

    // Rollups agree with the events, and the quota function reads them.
    let (sum_total, sum_cost): (i64, i64) = conn
        .query_row(
            "SELECT SUM(total_tokens), SUM(cost_micros) FROM events WHERE reseller='acme' AND tenant='dental'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let month: String = conn
        .query_row("SELECT month FROM events LIMIT 1", [], |r| r.get(0))
        .unwrap();
    let (m_total, m_cost, m_requests): (i64, i64, i64) = conn
        .query_row(
            "SELECT total_tokens, cost_micros, requests FROM rollup_monthly WHERE period=?1 AND reseller='acme' AND tenant='dental'",
            [&month],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((m_total, m_cost, m_requests), (sum_total, sum_cost, 3));
    let reseller_total: i64 = conn
        .query_row(
            "SELECT total_tokens FROM rollup_daily WHERE reseller='acme' AND tenant=''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reseller_total, sum_total);
    assert_eq!(
        usage.monthly_tokens("acme", Some("dental"), &month),
        sum_total as u64
    );
    assert_eq!(usage.monthly_tokens("acme", Some("realty"), &month), 0);

    // The JSONL mirror carries the same event (schema v1, event id, cost).
    let rec = gw.usage_for(&plain_id).await;
    assert_eq!(rec["v"], 1);
    assert!(rec["event_id"].as_str().is_some_and(|e| e.len() == 36));
    assert_eq!(rec["estimated"], false);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_less_upstream_is_marked_estimated() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}",
        ledger_usage_toml(dir.path(), ""),
        standard_config(&mock.base_url(), "")
    );
    let gw = TestGateway::start(&toml).await;
    let mut body = chat_body("gpt-4o-mini");
    body["mock"] = json!({"no_usage": true});
    let resp = post_acme(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let id = rid(&resp);
    let _ = resp.text().await.unwrap();
    let usage = gw.gateway.as_ref().unwrap().app().usage.clone();
    assert!(usage.flush(Duration::from_secs(5)));
    let (_, _, _, estimated, _, n) = event_row(&db(dir.path()), &id);
    assert_eq!(n, 1);
    assert!(estimated, "no upstream usage: the event is estimated");
    gw.shutdown().await;
}

/// Request ids in the spool's segment files right now (what a `kill -9`
/// would leave).
fn spooled_request_ids(spool: &Path) -> HashSet<String> {
    let mut ids = HashSet::new();
    for e in std::fs::read_dir(spool).unwrap() {
        let path = e.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seg-")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                ids.insert(v["request_id"].as_str().unwrap().to_owned());
            }
        }
    }
    ids
}

/// The ordering guarantee, without the timing luck of `kill -9`: with an
/// hour-long group commit, only the request path itself writes the spool, and
/// a plain answer's event (staged, so that the requests finishing together
/// share one `write(2)`) is in the segment file before the answer arrives,
/// requests in parallel or one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_answers_event_is_in_the_spool_before_the_answer_arrives() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let usage = ledger_usage_toml(dir.path(), "")
        .replace("fsync_interval_ms = 2", "fsync_interval_ms = 3600000");
    let toml = format!("{usage}{}", standard_config(&mock.base_url(), ""));
    let gw = TestGateway::start(&toml).await;
    let spool = dir.path().join("spool");
    for round in 0..3 {
        let answers = futures_util::future::join_all((0..12).map(|_| async {
            let resp = post_acme(&gw, &chat_body("gpt-4o-mini")).await;
            assert_eq!(resp.status(), 200);
            let id = rid(&resp);
            let _ = resp.bytes().await.unwrap();
            // Read as soon as this answer is complete, others still in flight.
            (spooled_request_ids(&spool).contains(&id), id)
        }))
        .await;
        let late: Vec<_> = answers.iter().filter(|(found, _)| !found).collect();
        assert!(
            late.is_empty(),
            "round {round}: answered before spooled: {late:?}"
        );
    }
    let resp = post_acme(&gw, &chat_body("gpt-4o-mini")).await;
    let id = rid(&resp);
    let _ = resp.bytes().await.unwrap();
    assert!(spooled_request_ids(&spool).contains(&id), "a lone request");
    gw.shutdown().await;
}

// ------------------------------------------------------------------ dedup

fn fixture_event(i: u32, reseller: &str, tenant: &str, ts: &str, p: u64, c: u64) -> String {
    json!({
        "v": 1, "event_id": format!("00000000-0000-7000-8000-{i:012}"),
        "ts": ts, "ended_at": ts, "request_id": format!("req-{i}"),
        "reseller": reseller, "tenant": tenant, "endpoint": "chat.completions",
        "requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini-2024-07-18",
        "provider": "upstream", "key_owner": "platform", "status": 200, "outcome": "ok",
        "error_code": null, "prompt_tokens": p, "completion_tokens": c, "cached_tokens": null,
        "total_tokens": p + c, "estimated": false, "stream": false,
        "client_disconnected": false, "latency_ms": 1.5, "ttfb_ms": 1.0, "attempts": [],
        "cost_micros": (p * 150_000 + c * 600_000 + 500_000) / 1_000_000,
    })
    .to_string()
}

fn spool_opts(dir: &Path) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 4096,
        max_bytes: 1 << 30,
        fsync_interval: Duration::from_millis(2),
    }
}

fn snapshot_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().starts_with("seg-") {
            std::fs::copy(e.path(), to.join(name)).unwrap();
        }
    }
}

#[test]
fn a_spool_replayed_twice_stores_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let db_path = dir.path().join("usage.db");
    let saved = dir.path().join("saved");
    {
        let spool = Spool::open(spool_opts(&spool_dir)).unwrap();
        for i in 0..300 {
            let line = fixture_event(i, "acme", "dental", "2025-03-04T10:00:00Z", 100, 20);
            spool.append(line.as_bytes()).unwrap();
        }
        spool.sync_now();
    }
    snapshot_dir(&spool_dir, &saved);
    for round in 0..2 {
        if round == 1 {
            // The same segments again, and no cursor (neither the spool's file
            // nor the one SQLite keeps): everything is replayed.
            snapshot_dir(&saved, &spool_dir);
            let _ = std::fs::remove_file(spool_dir.join("cursor-sqlite"));
            let conn = Connection::open(&db_path).unwrap();
            assert_eq!(
                conn.execute("DELETE FROM spool_cursor", []).unwrap(),
                1,
                "the SQLite sink keeps the spool's cursor"
            );
        }
        let spool = Spool::open(spool_opts(&spool_dir)).unwrap();
        let sink: Box<dyn Sink> = Box::new(SqliteSink::open(&db_path).unwrap());
        let ledger = Ledger::start(spool, vec![sink]).unwrap();
        assert!(
            ledger.flush(Duration::from_secs(10)),
            "{:?}",
            ledger.stats()
        );
        let stats = ledger.stats();
        assert_eq!(stats.sinks[0].delivered_events, 300, "round {round}");
        ledger.close(Duration::from_secs(1));
        drop(ledger);
        let conn = Connection::open(&db_path).unwrap();
        assert_eq!(sqlite::count_events(&conn).unwrap(), 300, "round {round}");
        let (requests, total): (i64, i64) = conn
            .query_row(
                "SELECT requests, total_tokens FROM rollup_monthly WHERE period='2025-03' AND reseller='acme' AND tenant='dental'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((requests, total), (300, 300 * 120), "round {round}");
    }
    // Shipped segments were trimmed.
    let left = std::fs::read_dir(&spool_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("seg-")
        })
        .count();
    assert!(left <= 1, "{left} segments left");
}

// ------------------------------------------------------------- crash safety

const LISTENING: &str = "livery listening on http://";

/// `livery serve` as a real process in `dir` (its working directory).
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(dir: &Path, config: &Path) -> Self {
        let stderr = std::fs::File::create(dir.join("livery.stderr")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_livery"))
            .env_remove("LIVERY_CONFIG")
            .env("RUST_LOG", "warn")
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        // Owned (and so killed and reaped on drop) before anything can fail.
        let mut me = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut lines = BufReader::new(me.child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "serve did not start");
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.trim().strip_prefix(LISTENING) {
                        me.addr = a.parse().unwrap();
                        // Keep draining stdout.
                        std::thread::spawn(move || for _ in lines {});
                        return me;
                    }
                }
                _ => panic!(
                    "serve exited: {}",
                    std::fs::read_to_string(dir.join("livery.stderr")).unwrap_or_default()
                ),
            }
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn terminate(mut self) {
        let pid = self.child.id();
        Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary_config(dir: &Path) -> PathBuf {
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[usage]
jsonl_path = "usage.jsonl"
spool_dir = "spool"
sqlite_path = "usage.db"

[[providers]]
name = "builtin"
kind = "mock"

[[models]]
name = "demo"
provider = "builtin"
upstream_model = "mock-1"

[[plans]]
name = "pro"
models = ["demo"]

[[resellers]]
id = "acme"
domains = ["{ACME_HOST}"]

[[resellers.tenants]]
id = "dental"
plan = "pro"
key_hashes = ["{key}"]
"#,
        key = hash(ACME_DENTAL.2)
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Sends requests from `workers` tasks until `stop`; returns the request ids
/// whose response the client received complete.
async fn load(
    addr: SocketAddr,
    workers: usize,
    stop: Arc<AtomicBool>,
    tag: String,
    done: Arc<Mutex<Vec<String>>>,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (stop, done, tag) = (stop.clone(), done.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = format!("{tag}-{w}-{i}");
                let stream = i % 2 == 0;
                let body = json!({
                    "model": "demo", "stream": stream,
                    "messages": [{"role": "user", "content": "hello"}],
                    "mock": {"chunks": 4, "gap_ms": 3, "delay_ms": 2},
                });
                let sent = c
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .header("host", ACME_HOST)
                    .header("x-request-id", &id)
                    .bearer_auth(ACME_DENTAL.2)
                    .json(&body)
                    .send()
                    .await;
                let Ok(resp) = sent else { continue };
                if resp.status() != 200 {
                    continue;
                }
                let Ok(text) = resp.text().await else {
                    continue;
                };
                let complete = if stream {
                    text.ends_with("data: [DONE]\n\n") && !text.contains("\"error\"")
                } else {
                    serde_json::from_str::<Value>(&text).is_ok_and(|v| v["usage"].is_object())
                };
                if complete {
                    done.lock().unwrap().push(id);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let v = done.lock().unwrap().clone();
    v
}

fn request_counts(db: &Path) -> HashMap<String, i64> {
    let Ok(conn) = Connection::open(db) else {
        return HashMap::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT request_id, COUNT(*) FROM events GROUP BY request_id")
    else {
        return HashMap::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_completed_request_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path());
    let mut completed = Vec::new();
    for round in 0..2 {
        let d = dir.path().to_path_buf();
        let c = config.clone();
        let serve = tokio::task::spawn_blocking(move || Serve::start(&d, &c))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let loader = tokio::spawn(load(
            serve.addr,
            6,
            stop.clone(),
            format!("r{round}"),
            done.clone(),
        ));
        // Under way: some requests completed (a fixed 1.2 s was not enough
        // for 20 on a loaded host), more in flight.
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.lock().unwrap().len() < 40 {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} requests completed",
                done.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Killed while requests are in flight.
        serve.kill9();
        stop.store(true, Ordering::Relaxed);
        let ids = loader.await.unwrap();
        assert!(ids.len() > 20, "round {round}: only {} requests", ids.len());
        // The ordering guarantee itself: right after the kill, before any
        // restart, every completed request's event is already on disk (in
        // the spool, or already shipped to the ledger).
        let mut on_disk: HashSet<String> = request_counts(&dir.path().join("usage.db"))
            .into_keys()
            .collect();
        let spooled = spooled_request_ids(&dir.path().join("spool"));
        let in_spool = spooled.len();
        on_disk.extend(spooled);
        let lost: Vec<_> = ids.iter().filter(|id| !on_disk.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: not on disk after kill -9: {lost:?}"
        );
        eprintln!(
            "round {round}: {} completed, {in_spool} events in the spool at the kill",
            ids.len()
        );
        completed.extend(ids);
    }
    // A third start ships whatever the killed processes left in the spool.
    let d = dir.path().to_path_buf();
    let c = config.clone();
    let serve = tokio::task::spawn_blocking(move || Serve::start(&d, &c))
        .await
        .unwrap();
    let db_path = dir.path().join("usage.db");
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let counts = request_counts(&db_path);
        if completed.iter().all(|id| counts.contains_key(id)) || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let missing: Vec<_> = completed
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} completed requests have no event: {missing:?}",
        missing.len(),
        completed.len()
    );
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated events: {dups:?}");
    tokio::task::spawn_blocking(move || serve.terminate())
        .await
        .unwrap();
}

// ------------------------------------------------------------ webhook outage

struct Receiver {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<String>>>,
    bad_signatures: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn webhook_receiver(secret: &'static [u8]) -> Receiver {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let events = Arc::new(Mutex::new(Vec::new()));
    let bad = Arc::new(Mutex::new(0));
    let (u, e, b) = (up.clone(), events.clone(), bad.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (u, e, b) = (u.clone(), e.clone(), b.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (u, e, b) = (u.clone(), e.clone(), b.clone());
                    async move {
                        let ts = req.headers()["x-livery-timestamp"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        let sig = req.headers()["x-livery-signature"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if !u.load(Ordering::SeqCst) {
                            let mut r = http::Response::new(Full::new(bytes::Bytes::new()));
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            return Ok::<_, std::convert::Infallible>(r);
                        }
                        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
                        let mut msg = ts.into_bytes();
                        msg.push(b'.');
                        msg.extend_from_slice(&body);
                        let want = format!("sha256={}", hex::encode(ring::hmac::sign(&key, &msg)));
                        if want != sig {
                            *b.lock().unwrap() += 1;
                        }
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        for ev in v["events"].as_array().unwrap() {
                            e.lock()
                                .unwrap()
                                .push(ev["event_id"].as_str().unwrap().to_owned());
                        }
                        Ok(http::Response::new(Full::new(bytes::Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver {
        addr,
        up,
        events,
        bad_signatures: bad,
        task,
    }
}

/// A webhook signing secret that is empty or short (a blank Kubernetes
/// secret) is refused at start: anybody could compute its signatures.
#[test]
fn a_short_webhook_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("LIVERY_TEST_EMPTY_WEBHOOK_SECRET", ""),
        ("LIVERY_TEST_SHORT_WEBHOOK_SECRET", "short"),
    ] {
        std::env::set_var(var, value);
        let extra = format!(
            "sinks = [\"webhook\"]\n\n[usage.webhook]\nurl = \"http://127.0.0.1:9/hook\"\nsecret_env = \"{var}\"\n"
        );
        let toml = format!(
            "{}{}",
            ledger_usage_toml(dir.path(), &extra),
            standard_config("http://127.0.0.1:9/v1", "")
        );
        let config = livery::config::GatewayConfig::parse(&toml).unwrap();
        let e = livery::usage::UsageSink::start(&config)
            .err()
            .expect("refused");
        assert!(e.to_string().contains(var), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_under_load_gets_every_event_once_back() {
    const SECRET: &[u8] = b"ledger-webhook-test-secret";
    std::env::set_var("LIVERY_TEST_WEBHOOK_SECRET", "ledger-webhook-test-secret");
    let receiver = webhook_receiver(SECRET).await;
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "sinks = [\"sqlite\", \"webhook\"]\n\n[usage.webhook]\nurl = \"http://{}/hook\"\nsecret_env = \"LIVERY_TEST_WEBHOOK_SECRET\"\nbatch_max_events = 50\ntimeout_ms = 2000\n",
        receiver.addr
    );
    let toml = format!(
        "{}{}",
        ledger_usage_toml(dir.path(), &extra),
        standard_config(&mock.base_url(), "")
    );
    let gw = TestGateway::start(&toml).await;
    let usage = gw.gateway.as_ref().unwrap().app().usage.clone();

    let mut sent = Vec::new();
    for phase in 0..3 {
        // Down in the middle phase.
        receiver.up.store(phase != 1, Ordering::SeqCst);
        let mut tasks = Vec::new();
        for w in 0..4 {
            let url = gw.url("/v1/chat/completions");
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut ids = Vec::new();
                for i in 0..15 {
                    let id = format!("p{phase}-{w}-{i}");
                    let resp = c
                        .post(&url)
                        .header("host", ACME_HOST)
                        .header("x-request-id", &id)
                        .bearer_auth(ACME_DENTAL.2)
                        .json(&chat_body("gpt-4o-mini"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    let _ = resp.bytes().await.unwrap();
                    ids.push(id);
                }
                ids
            }));
        }
        for t in tasks {
            sent.extend(t.await.unwrap());
        }
        if phase == 1 {
            // The webhook is down: its lag is visible, requests were not slowed
            // into failure, and SQLite kept up. Once the sink has tried (and
            // failed) to deliver, however long a loaded host takes to get to it.
            let deadline = Instant::now() + Duration::from_secs(20);
            let stats = loop {
                let stats = usage.stats().unwrap();
                let hook = stats.sinks.iter().find(|s| s.name == "webhook").unwrap();
                if hook.last_error.is_some() || Instant::now() > deadline {
                    break stats;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let hook = stats.sinks.iter().find(|s| s.name == "webhook").unwrap();
            assert!(hook.lag_bytes > 0, "{stats:?}");
            assert!(hook.last_error.is_some(), "{stats:?}");
        }
    }
    // Generous: a sink backs off up to 5 s between tries, and a loaded host
    // took more than 15 s to ship the rest.
    assert!(usage.flush(Duration::from_secs(60)), "{:?}", usage.stats());

    let events = receiver.events.lock().unwrap().clone();
    let unique: HashSet<&String> = events.iter().collect();
    let conn = db(dir.path());
    let ledger_ids: HashSet<String> = conn
        .prepare("SELECT event_id FROM events")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ledger_ids.len(), sent.len());
    assert_eq!(
        unique.len(),
        sent.len(),
        "webhook events after dedup ({} deliveries)",
        events.len()
    );
    assert!(unique.iter().all(|id| ledger_ids.contains(*id)));
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    gw.shutdown().await;
}

// ------------------------------------------------------------------ billing

/// A fixture month at acme: dental 3 calls, realty 2; plus noise that must
/// not count (another month, another reseller).
fn fixture_db(dir: &Path) -> PathBuf {
    let path = dir.join("usage.db");
    let mut sink = SqliteSink::open(&path).unwrap();
    let rows = [
        (
            1,
            "acme",
            "dental",
            "2025-02-01T00:00:00Z",
            1_000_000,
            250_000,
        ),
        (2, "acme", "dental", "2025-02-14T12:00:00Z", 333_333, 1),
        (3, "acme", "dental", "2025-02-28T23:59:59Z", 7, 3),
        (
            4,
            "acme",
            "realty",
            "2025-02-10T08:00:00Z",
            2_500_000,
            1_000_000,
        ),
        (5, "acme", "realty", "2025-02-11T08:00:00Z", 0, 0),
        (6, "acme", "dental", "2025-03-01T00:00:00Z", 9_999, 9_999),
        (7, "globex", "clinic", "2025-02-05T00:00:00Z", 5_000, 5_000),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|(i, r, t, ts, p, c)| {
            let line = fixture_event(*i, r, t, ts, *p, *c);
            if *i == 5 {
                // A failed call: a request, not billable.
                return line.replace("\"outcome\":\"ok\"", "\"outcome\":\"upstream_error\"");
            }
            line
        })
        .collect();
    let events: Vec<LedgerEvent> = lines
        .iter()
        .map(|line| LedgerEvent::from_line(line.as_bytes()).unwrap())
        .collect();
    assert_eq!(sink.insert(&events).unwrap(), 7);
    // A replay of the same month changes nothing.
    assert_eq!(sink.insert(&events).unwrap(), 0);
    path
}

fn billing_config(billing: &str) -> GatewayConfig {
    GatewayConfig::parse(&format!("[billing.acme]\n{billing}")).unwrap()
}

fn lines(db: &Path, billing: &str) -> Vec<(Option<String>, u64)> {
    let r = report::build(db, &billing_config(billing), "acme", None, "2025-02").unwrap();
    assert_eq!(
        r.invoice_total_micros,
        r.lines.iter().map(|l| l.amount_micros).sum::<u64>()
    );
    r.lines
        .into_iter()
        .map(|l| (l.tenant, l.amount_micros))
        .collect()
}

#[test]
fn a_fixture_month_gives_the_expected_invoice_under_each_billing_model() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture_db(dir.path());
    // dental: prompt 1_333_340, completion 250_004, 3 billable requests.
    // realty: prompt 2_500_000, completion 1_000_000, 1 billable of 2 requests.
    let r = report::build(
        &db,
        &billing_config("model = \"wholesale\"\ninput_per_million = 1"),
        "acme",
        None,
        "2025-02",
    )
    .unwrap();
    let dental = &r.tenants[0];
    assert_eq!(dental.tenant, "dental");
    assert_eq!(
        (
            dental.requests,
            dental.prompt_tokens,
            dental.completion_tokens
        ),
        (3, 1_333_340, 250_004)
    );
    let realty = &r.tenants[1];
    assert_eq!((realty.requests, realty.billable_requests), (2, 1));
    assert_eq!(r.tenants.len(), 2);
    // Platform cost: the per-event costs at 0.15/0.60, summed.
    assert_eq!(dental.cost_micros, 300_000 + 50_001 + 3);
    assert_eq!(realty.cost_micros, 975_000);

    // wholesale: 0.50 in / 1.50 out per million, 0.0001 per billable request.
    // dental: 1_333_340×0.5 = 666_670; 250_004×1.5 = 375_006; 3×100 = 300.
    // realty: 1_250_000 + 1_500_000 + 100.
    assert_eq!(
        lines(
            &db,
            "model = \"wholesale\"\ninput_per_million = \"0.50\"\noutput_per_million = \"1.50\"\nper_request = \"0.0001\""
        ),
        vec![
            (Some("dental".into()), 666_670 + 375_006 + 300),
            (Some("realty".into()), 1_250_000 + 1_500_000 + 100)
        ]
    );
    // revenue_share: the reseller charges 2.00 in / 6.00 out; 12.5% of it.
    // dental revenue: 2_666_680 + 1_500_024 = 4_166_704 → 520_838 (520_838.0).
    // realty revenue: 5_000_000 + 6_000_000 = 11_000_000 → 1_375_000.
    assert_eq!(
        lines(
            &db,
            "model = \"revenue_share\"\nshare = \"12.5%\"\nretail_input_per_million = 2\nretail_output_per_million = \"6\""
        ),
        vec![
            (Some("dental".into()), 520_838),
            (Some("realty".into()), 1_375_000)
        ]
    );
    // platform_fee: 5_083_344 tokens in the month → the second tier.
    let tiers = "model = \"platform_fee\"\n\
        [[billing.acme.tiers]]\nup_to_tokens = 1000000\nfee = 49\n\
        [[billing.acme.tiers]]\nup_to_tokens = 10000000\nfee = \"199.99\"\n\
        [[billing.acme.tiers]]\nfee = 999";
    assert_eq!(lines(&db, tiers), vec![(None, 199_990_000)]);
    // Filtered to one tenant (1_583_344 tokens), the tier is still the
    // reseller's month's (5_083_344).
    let split = "model = \"platform_fee\"\n\
        [[billing.acme.tiers]]\nup_to_tokens = 2000000\nfee = 49\n\
        [[billing.acme.tiers]]\nfee = \"199.99\"";
    let r = report::build(
        &db,
        &billing_config(split),
        "acme",
        Some("dental"),
        "2025-02",
    )
    .unwrap();
    assert_eq!(r.tenants.len(), 1);
    assert_eq!(r.invoice_total_micros, 199_990_000);

    // The CLI prints the same invoice.
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[usage]\nsqlite_path = \"{}\"\n[billing.acme]\n{tiers}",
            db.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_livery"))
        .env_remove("LIVERY_CONFIG")
        .args([
            "usage",
            "report",
            "--reseller",
            "acme",
            "--month",
            "2025-02",
            "--format",
            "json",
            "--config",
        ])
        .arg(&cfg)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["invoice_total_micros"], 199_990_000);
    assert_eq!(v["tenants"].as_array().unwrap().len(), 2);
    for format in ["table", "csv"] {
        let out = Command::new(env!("CARGO_BIN_EXE_livery"))
            .env_remove("LIVERY_CONFIG")
            .args([
                "usage",
                "report",
                "--reseller",
                "acme",
                "--tenant",
                "dental",
                "--month",
                "2025-02",
                "--format",
                format,
                "--config",
            ])
            .arg(&cfg)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{format}");
        assert!(
            text.contains("dental") && !text.contains("realty"),
            "{text}"
        );
    }
}

/// `livery usage report --group-by api_key_id` reads a month per tenant and
/// gateway key from the events' own ids (UUIDv7s of each request's end):
/// a request that began on the month's last second and ended in the next
/// month counts in its start's month, events recorded before records named
/// their key are one row of their own, and keys are named as the
/// configuration names them.
#[test]
fn the_cli_reads_a_month_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let mut sink = SqliteSink::open(&db).unwrap();
    let till = livery::tenancy::KeyDigest::of("sk-FAKE-till");
    let till_id = livery::tenancy::KeyId::of(&till).to_string();
    let web_id =
        livery::tenancy::KeyId::of(&livery::tenancy::KeyDigest::of("sk-FAKE-web")).to_string();
    let at = |ts: &str| {
        let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap();
        std::time::SystemTime::from(t)
    };
    let rows = [
        (
            1,
            "dental",
            Some(&till_id),
            "2025-02-01T00:00:00Z",
            "2025-02-01T00:00:01Z",
            100,
        ),
        (
            2,
            "dental",
            Some(&till_id),
            "2025-02-28T23:59:59Z",
            "2025-03-01T00:00:30Z",
            10,
        ),
        (
            3,
            "dental",
            Some(&web_id),
            "2025-02-14T12:00:00Z",
            "2025-02-14T12:00:01Z",
            1_000,
        ),
        (
            4,
            "dental",
            None,
            "2025-02-03T00:00:00Z",
            "2025-02-03T00:00:01Z",
            7,
        ),
        (
            5,
            "realty",
            Some(&web_id),
            "2025-02-05T00:00:00Z",
            "2025-02-05T00:00:01Z",
            5,
        ),
        (
            6,
            "dental",
            Some(&till_id),
            "2025-03-01T00:00:01Z",
            "2025-03-01T00:00:02Z",
            9_999,
        ),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|(i, t, key, ts, ended, tokens)| {
            let mut v: Value =
                serde_json::from_str(&fixture_event(*i, "acme", t, ts, *tokens, 0)).unwrap();
            v["event_id"] = json!(livery::telemetry::ids::uuid_v7_text_at(at(ended)));
            if let Some(key) = key {
                v["key_id"] = json!(key);
            }
            v.to_string()
        })
        .collect();
    let events: Vec<LedgerEvent> = lines
        .iter()
        .map(|line| LedgerEvent::from_line(line.as_bytes()).unwrap())
        .collect();
    assert_eq!(sink.insert(&events).unwrap(), 6);
    drop(sink);
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[usage]\nsqlite_path = \"{}\"\n\
             [[models]]\nname = \"m\"\nprovider = \"p\"\n[[providers]]\nname = \"p\"\nkind = \"mock\"\n\
             [[plans]]\nname = \"p\"\nmodels = [\"m\"]\n\
             [[resellers]]\nid = \"acme\"\n[[resellers.tenants]]\nid = \"dental\"\nplan = \"p\"\n\
             key_hashes = [{{ hash = \"{}\", name = \"till\" }}]\n",
            db.display(),
            till.to_config_string()
        ),
    )
    .unwrap();
    let report = |format: &str, tenant: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_livery"));
        cmd.env_remove("LIVERY_CONFIG").args([
            "usage",
            "report",
            "--reseller",
            "acme",
            "--month",
            "2025-02",
            "--group-by",
            "api_key_id",
            "--format",
            format,
            "--config",
        ]);
        cmd.arg(&cfg);
        if let Some(t) = tenant {
            cmd.args(["--tenant", t]);
        }
        let out = cmd.current_dir(dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value = serde_json::from_str(&report("json", None)).unwrap();
    let got: Vec<(String, Value, Value, u64, u64)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tenant"].as_str().unwrap().to_owned(),
                r["key_id"].clone(),
                r["name"].clone(),
                r["requests"].as_u64().unwrap(),
                r["prompt_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = vec![
        ("dental".to_owned(), json!(till_id), json!("till"), 2, 110),
        ("dental".to_owned(), json!(web_id), Value::Null, 1, 1_000),
        ("dental".to_owned(), Value::Null, Value::Null, 1, 7),
        ("realty".to_owned(), json!(web_id), Value::Null, 1, 5),
    ];
    want.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
    assert_eq!(got, want, "{v}");
    let csv = report("csv", Some("realty"));
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("acme,2025-02,realty,{web_id},,1,1,5,")),
        "{csv}"
    );
    let table = report("table", Some("dental"));
    assert!(
        table.contains("till") && table.contains("(unrecorded)") && !table.contains("realty"),
        "{table}"
    );
}

// -------------------------------------------------------------- redis outage

/// Sends `per_worker` requests from each of 4 tasks; returns their request ids.
async fn burst(gw: &TestGateway, tag: &str, per_worker: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let url = gw.url("/v1/chat/completions");
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut ids = Vec::new();
            for i in 0..per_worker {
                let id = format!("{tag}-{w}-{i}");
                let mut body = chat_body("gpt-4o-mini");
                body["stream"] = json!(i % 2 == 0);
                let resp = c
                    .post(&url)
                    .header("host", ACME_HOST)
                    .header("x-request-id", &id)
                    .bearer_auth(ACME_DENTAL.2)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.bytes().await.unwrap();
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_under_load_gets_every_event_once_back() {
    use crate::support::redis_server::RedisServer;
    use livery::usage::sinks::redis::{RedisSink, RedisSinkOptions};
    let Some(mut server) = RedisServer::start("redis_down_under_load") else {
        return;
    };
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = "{test}:usage";
    let extra = format!(
        "sinks = [\"sqlite\", \"redis\"]\n\n[usage.redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\ntimeout_ms = 300\nbatch_max_events = 40\n",
        server.url()
    );
    let toml = format!(
        "{}{}",
        ledger_usage_toml(dir.path(), &extra),
        standard_config(&mock.base_url(), "")
    );
    let gw = TestGateway::start(&toml).await;
    let usage = gw.gateway.as_ref().unwrap().app().usage.clone();

    let mut sent = burst(&gw, "up", 10).await;
    // Down (kill -9) under load: requests are not slowed into failure, SQLite
    // keeps up, the Redis sink's lag and failure show in the metrics.
    let loader = {
        let (addr, stop) = (gw.addr, Arc::new(AtomicBool::new(false)));
        let s = stop.clone();
        (
            stop,
            tokio::spawn(async move { load_mock_model(addr, s).await }),
        )
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();
    sent.extend(burst(&gw, "down", 10).await);
    // Once the sink has tried (and failed) to deliver to the dead Redis,
    // however long a loaded host takes to get to it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = usage.stats().unwrap();
        let r = stats.sinks.iter().find(|s| s.name == "redis").unwrap();
        if r.last_error.is_some() || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r = stats.sinks.iter().find(|s| s.name == "redis").unwrap();
    assert!(r.lag_bytes > 0 && r.lag_events > 0, "{stats:?}");
    assert!(r.last_error.is_some(), "{stats:?}");
    let sq = stats.sinks.iter().find(|s| s.name == "sqlite").unwrap();
    assert!(sq.last_error.is_none(), "{stats:?}");
    let mut metrics = String::new();
    usage.render_prometheus(&mut metrics);
    assert!(
        metrics.contains("livery_usage_sink_up{sink=\"redis\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("livery_usage_sink_up{sink=\"sqlite\"} 1\n"));
    // Back, still under load.
    server.restart();
    sent.extend(burst(&gw, "back", 10).await);
    loader.0.store(true, Ordering::Relaxed);
    sent.extend(loader.1.await.unwrap());
    // Generous, as above: backoff up to 5 s, and a loaded host.
    assert!(usage.flush(Duration::from_secs(60)), "{:?}", usage.stats());

    let conn = db(dir.path());
    let ledger: HashMap<String, String> = conn
        .prepare("SELECT event_id, request_id FROM events")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rids: HashSet<&String> = ledger.values().collect();
    assert!(sent.iter().all(|id| rids.contains(id)));
    assert_eq!(ledger.len(), sent.len());

    let mut con = server.client();
    let stream_key = format!("{prefix}:events");
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&stream_key)
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let ids: Vec<String> = entries
        .iter()
        .map(|(_, f)| {
            let ev: Value = serde_json::from_str(&f["event"]).unwrap();
            assert_eq!(ev["event_id"].as_str(), Some(f["event_id"].as_str()));
            f["event_id"].clone()
        })
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "duplicates in the stream");
    assert_eq!(ids.len(), ledger.len(), "every event exactly once in Redis");
    assert!(ids.iter().all(|id| ledger.contains_key(id)));

    // Daily rollups agree with the SQLite ledger, per tenant and per reseller.
    let (day, requests, total, cost): (String, i64, i64, i64) = conn
        .query_row(
            "SELECT period, requests, total_tokens, cost_micros FROM rollup_daily WHERE reseller='acme' AND tenant='dental'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let hash = hgetall(&mut con, &format!("{prefix}:daily:{day}:acme:dental"));
    assert_eq!(hash["requests"], requests);
    assert_eq!(hash["total_tokens"], total);
    assert_eq!(hash["cost_micros"], cost);
    let reseller = hgetall(&mut con, &format!("{prefix}:daily:{day}:acme"));
    assert_eq!(reseller["requests"], requests);

    // A replay (the spool's cursor lost) adds nothing: dedup by event_id.
    let raws: Vec<String> = conn
        .prepare("SELECT raw FROM events")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let url = server.url();
    let prefix_owned = prefix.to_owned();
    tokio::task::spawn_blocking(move || {
        let events: Vec<LedgerEvent> = raws
            .iter()
            .map(|r| LedgerEvent::from_line(r.as_bytes()).unwrap())
            .collect();
        let mut sink = RedisSink::new(RedisSinkOptions {
            url,
            key_prefix: prefix_owned,
            dedup_ttl: Duration::from_secs(3600),
            stream_maxlen: 0,
            timeout: Duration::from_secs(2),
            batch_max: 100,
        })
        .unwrap();
        sink.deliver(&events, Default::default()).unwrap();
    })
    .await
    .unwrap();
    let len: usize = redis::cmd("XLEN").arg(&stream_key).query(&mut con).unwrap();
    assert_eq!(len, ledger.len(), "a replay adds nothing");
    let hash = hgetall(&mut con, &format!("{prefix}:daily:{day}:acme:dental"));
    assert_eq!(hash["requests"], requests);
    gw.shutdown().await;
}

/// Background load on the mock model until `stop`; returns the request ids
/// that got a complete 200.
async fn load_mock_model(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<String> {
    let c = client();
    let mut ids = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let id = format!("bg-{i}");
        let resp = c
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("host", ACME_HOST)
            .header("x-request-id", &id)
            .bearer_auth(ACME_DENTAL.2)
            .json(&chat_body("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await.unwrap();
        ids.push(id);
    }
    ids
}

fn hgetall(con: &mut redis::Connection, key: &str) -> HashMap<String, i64> {
    redis::cmd("HGETALL").arg(key).query(con).unwrap()
}

// -------------------------------------------------------------- estimates

/// tiktoken's own count (o200k_base, gpt-4o-mini's encoding) of a chat
/// request's prompt, framed as OpenAI's cookbook counts it, and of a text.
fn tiktoken_prompt(body: &Value) -> u64 {
    let bpe = tiktoken_rs::o200k_base_singleton();
    let mut n = 3;
    for m in body["messages"].as_array().unwrap() {
        n += 3;
        n += bpe.count_ordinary(m["role"].as_str().unwrap()) as u64;
        n += bpe.count_ordinary(m["content"].as_str().unwrap()) as u64;
    }
    n
}

fn within_2_percent(got: i64, want: u64) -> bool {
    got.unsigned_abs().abs_diff(want) * 50 <= want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_for_a_usage_less_upstream_are_within_2_percent_of_tiktoken() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}",
        ledger_usage_toml(dir.path(), ""),
        standard_config(&mock.base_url(), "")
    );
    let gw = TestGateway::start(&toml).await;
    let bpe = tiktoken_rs::o200k_base_singleton();

    // Non-streamed.
    let mut body = chat_body("gpt-4o-mini");
    body["mock"] = json!({"no_usage": true, "chunks": 40});
    let resp = post_acme(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let plain_id = rid(&resp);
    let v: Value = resp.json().await.unwrap();
    assert!(v.get("usage").is_none_or(Value::is_null), "{v}");
    let plain_text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    // Streamed.
    let mut sbody = chat_body("gpt-4o-mini");
    sbody["stream"] = json!(true);
    sbody["mock"] = json!({"no_usage": true, "chunks": 40});
    let resp = post_acme(&gw, &sbody).await;
    let stream_id = rid(&resp);
    let text = resp.text().await.unwrap();
    let stream_text: String = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(!stream_text.is_empty());

    let usage = gw.gateway.as_ref().unwrap().app().usage.clone();
    assert!(usage.flush(Duration::from_secs(5)));
    let conn = db(dir.path());
    for (id, req, completion) in [
        (&plain_id, &body, &plain_text),
        (&stream_id, &sbody, &stream_text),
    ] {
        let (p, c, t, estimated, _, n) = event_row(&conn, id);
        assert_eq!(n, 1);
        assert!(estimated, "{id}");
        let want_p = tiktoken_prompt(req);
        let want_c = bpe.count_ordinary(completion) as u64;
        assert!(
            within_2_percent(p, want_p),
            "{id}: prompt {p} vs tiktoken {want_p}"
        );
        assert!(
            within_2_percent(c, want_c),
            "{id}: completion {c} vs tiktoken {want_c}"
        );
        assert_eq!(t, p + c);
    }
    gw.shutdown().await;
}

// ------------------------------------------------------------ money checks

/// An event with tokens but no price (`cost_micros` null) is not silently a
/// cost of 0: the report counts it per tenant, and every format says so.
#[test]
fn unpriced_events_are_flagged_in_the_report_not_costed_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let mut sink = SqliteSink::open(&path).unwrap();
    let priced = fixture_event(1, "acme", "dental", "2025-02-01T00:00:00Z", 1_000, 10);
    let unpriced = fixture_event(2, "acme", "dental", "2025-02-02T00:00:00Z", 2_000, 20)
        .replace("\"cost_micros\":312", "\"cost_micros\":null");
    assert!(unpriced.contains("\"cost_micros\":null"), "{unpriced}");
    // A refused request: no tokens, no price, nothing to flag.
    let refused = fixture_event(3, "acme", "dental", "2025-02-03T00:00:00Z", 0, 0)
        .replace("\"cost_micros\":0", "\"cost_micros\":null")
        .replace("\"outcome\":\"ok\"", "\"outcome\":\"rejected\"");
    let lines = [priced, unpriced, refused];
    let events: Vec<LedgerEvent> = lines
        .iter()
        .map(|l| LedgerEvent::from_line(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(sink.insert(&events).unwrap(), 3);
    assert_eq!(sink.insert(&events).unwrap(), 0, "a replay adds nothing");

    let config = billing_config("model = \"wholesale\"\ninput_per_million = 1");
    let r = report::build(&path, &config, "acme", None, "2025-02").unwrap();
    let dental = &r.tenants[0];
    assert_eq!((dental.requests, dental.cost_micros), (3, 156));
    assert_eq!(dental.unpriced_events, 1);
    let json: Value = serde_json::from_str(&report::render(&r, "json").unwrap()).unwrap();
    assert_eq!(json["tenants"][0]["unpriced_events"], 1);
    let table = report::render(&r, "table").unwrap();
    assert!(
        table.contains("1 events with tokens matched no [prices] entry"),
        "{table}"
    );
    let csv = report::render(&r, "csv").unwrap();
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let usage: Vec<&str> = rows.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "unpriced_events").unwrap();
    assert_eq!(usage[col], "1");
    assert_eq!(usage.len(), header.len());
    let total = csv.lines().last().unwrap();
    assert_eq!(total.split(',').count(), header.len(), "{total}");
}

/// Cache writes (billed above the input price) are summed per tenant and
/// shown in every format: JSON, the table, and CSV, where their columns come
/// after all the others so that every earlier column keeps its position.
#[test]
fn the_report_shows_cache_writes_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let mut sink = SqliteSink::open(&path).unwrap();
    let with_writes = |line: String, all: u64, hour: u64| {
        let mut v: Value = serde_json::from_str(&line).unwrap();
        v["cache_write_tokens"] = json!(all);
        v["cache_write_1h_tokens"] = json!(hour);
        v.to_string()
    };
    let lines = [
        with_writes(
            fixture_event(1, "acme", "dental", "2025-02-01T00:00:00Z", 1_000, 10),
            400,
            100,
        ),
        with_writes(
            fixture_event(2, "acme", "dental", "2025-02-02T00:00:00Z", 2_000, 20),
            18,
            0,
        ),
        // An event of a gateway that did not record cache writes.
        fixture_event(3, "acme", "realty", "2025-02-03T00:00:00Z", 500, 5),
    ];
    let events: Vec<LedgerEvent> = lines
        .iter()
        .map(|l| LedgerEvent::from_line(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(sink.insert(&events).unwrap(), 3);

    let config = billing_config("model = \"wholesale\"\ninput_per_million = 1");
    let r = report::build(&path, &config, "acme", None, "2025-02").unwrap();
    let writes: Vec<_> = r
        .tenants
        .iter()
        .map(|t| {
            (
                t.tenant.as_str(),
                t.cache_write_tokens,
                t.cache_write_1h_tokens,
            )
        })
        .collect();
    assert_eq!(writes, [("dental", 418, 100), ("realty", 0, 0)]);
    let json: Value = serde_json::from_str(&report::render(&r, "json").unwrap()).unwrap();
    assert_eq!(json["tenants"][0]["cache_write_tokens"], 418);
    assert_eq!(json["tenants"][0]["cache_write_1h_tokens"], 100);
    let table = report::render(&r, "table").unwrap();
    let mut rows = table.lines().skip(1);
    let header = rows.next().unwrap();
    let dental = rows.next().unwrap();
    let col = |row: &str, i: usize| row.split_whitespace().nth(i).unwrap().to_owned();
    assert!(header.contains("cache writes"), "{table}");
    // tenant, requests, prompt, cache writes.
    assert_eq!(col(dental, 3), "418", "{table}");

    let csv = report::render(&r, "csv").unwrap();
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert_eq!(
        header[..15],
        [
            "kind",
            "reseller",
            "month",
            "tenant",
            "requests",
            "billable_requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "total_tokens",
            "estimated_events",
            "unpriced_events",
            "platform_cost",
            "description",
            "amount"
        ],
        "the columns before keep their places"
    );
    assert_eq!(
        header[15..],
        ["cache_write_tokens", "cache_write_1h_tokens"]
    );
    let dental: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert_eq!(
        (dental[3], dental[15], dental[16]),
        ("dental", "418", "100")
    );
    // (Invoice descriptions hold commas, quoted.)
    for row in csv.lines().filter(|r| !r.starts_with("invoice")) {
        assert_eq!(row.split(',').count(), header.len(), "{row}");
    }
}
