//! `livery-mock`: the fast standalone mock provider of the load benchmarks
//! (`benches/load/`). It speaks OpenAI's wire format, streamed and not, through the
//! same deterministic generator as the built-in `mock` provider and the test mock
//! (`livery::providers::mock::MockReply`), so every `"mock"` directive of a request
//! body works here too (`status`, `retry_after`, `delay_ms`, `gap_ms`, `chunks`,
//! `drop_after`, `omit_done`, `no_usage`).
//!
//! The command-line flags `--delay-ms`, `--chunks` and `--gap-ms` are the defaults
//! for a request that carries no `"mock"` object, and for each of those fields a
//! `"mock"` object leaves out. One benchmark-only directive is added:
//! `"stamp": true` appends `"rx_us": <when the request reached the handler>` and
//! `"t_us": <send time>` (µs since the Unix epoch) to every streamed chunk just as
//! it is handed to hyper, so a client on the same machine can measure what each
//! hop adds to every event.
//!
//! It must never be the bottleneck: a reply is rendered once per distinct
//! (endpoint, request body) and cached (bounded), so the usual benchmark request
//! costs a hash, a map probe and a copy of pre-rendered bytes. `GET /stats` returns
//! its counters; `GET /healthz` answers `ok`.
//!
//! ```sh
//! cargo build --release --features mock-server --bin livery-mock
//! target/release/livery-mock --listen 127.0.0.1:9000 --delay-ms 0 --chunks 12 --gap-ms 0
//! ```

use bytes::{Bytes, BytesMut};
use clap::Parser;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use livery::providers::mock::MockReply;
use livery::providers::Endpoint;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

mod h2_server;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "livery-mock",
    about = "Fast mock OpenAI-compatible provider for Livery's load benchmarks"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Default wait before the response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Default number of content chunks (words) of an answer.
    #[arg(long, default_value_t = 12)]
    chunks: u64,
    /// Default pause between two streamed events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Rendered replies kept in the cache (cleared when full).
    #[arg(long, default_value_t = 4096)]
    cache_entries: usize,
    /// Largest request body accepted.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
}

/// A reply rendered once and served many times.
struct Rendered {
    endpoint: Endpoint,
    request: Bytes,
    status: StatusCode,
    headers: HeaderMap,
    /// The events (streams) or the single JSON body.
    pieces: Vec<Bytes>,
    /// All pieces concatenated, for replies sent in one go.
    joined: Bytes,
    delay: Duration,
    gap: Duration,
    drop_after: Option<usize>,
    stamp: bool,
}

impl Rendered {
    /// True if the reply can go out as one buffer (no pacing, stamping or fault).
    fn in_one_piece(&self) -> bool {
        self.pieces.len() <= 1 || (self.gap.is_zero() && self.drop_after.is_none() && !self.stamp)
    }
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    streams: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    bad_requests: AtomicU64,
}

struct Mock {
    args: Args,
    cache: RwLock<HashMap<u64, Vec<Arc<Rendered>>>>,
    cached: AtomicU64,
    stats: Stats,
}

impl Mock {
    fn new(args: Args) -> Self {
        Self {
            args,
            cache: RwLock::new(HashMap::new()),
            cached: AtomicU64::new(0),
            stats: Stats::default(),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>>;
type MockBody = Either<Full<Bytes>, StreamBody<EventStream>>;

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread (asked for, or one CPU to run on, as the load harness pins
    // it): a single-threaded scheduler, as Livery uses on one CPU; work
    // stealing there has no one to steal from and only costs atomics and
    // wake-ups (HTTP/2 spawns a task per stream).
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("livery-mock: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("livery-mock: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("livery-mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mock = Arc::new(Mock::new(args));
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "livery-mock listening on http://{addr}");
        let _ = out.flush();
    }
    tokio::select! {
        () = accept_loop(listener, mock.clone()) => {}
        () = shutdown_signal() => {}
    }
    let s = &mock.stats;
    eprintln!(
        "livery-mock: served {} requests ({} streams, {} cache hits, {} misses, {} bad)",
        s.requests.load(Ordering::Relaxed),
        s.streams.load(Ordering::Relaxed),
        s.cache_hits.load(Ordering::Relaxed),
        s.cache_misses.load(Ordering::Relaxed),
        s.bad_requests.load(Ordering::Relaxed),
    );
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn accept_loop(listener: TcpListener, mock: Arc<Mock>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off, do not spin.
                eprintln!("livery-mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mock = mock.clone();
        tokio::spawn(async move {
            if speaks_h2(&stream).await {
                h2_server::serve_connection(stream, mock).await;
                return;
            }
            let svc = service_fn(move |req| {
                let mock = mock.clone();
                async move { Ok::<_, std::convert::Infallible>(serve(&mock, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A gateway multiplexing every stream over one HTTP/2 connection
            // must not be held to hyper's default of 200 concurrent streams.
            builder.http2().max_concurrent_streams(100_000);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Whether a new connection opens with HTTP/2's preface (prior knowledge):
/// its first bytes are looked at, not taken.
async fn speaks_h2(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; h2_server::PREFACE.len()];
    // The preface comes in one segment; a client that sends it in pieces
    // gets a few milliseconds to finish it.
    for _ in 0..100 {
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if !h2_server::may_be_preface(&first[..n]) => return false,
            Ok(n) if n == first.len() => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    false
}

async fn serve(mock: &Mock, req: Request<Incoming>) -> Response<MockBody> {
    let received = now_us();
    let endpoint = match route(mock, req.method(), req.uri().path()) {
        Ok(e) => e,
        Err(resp) => return *resp,
    };
    let body = match Limited::new(req.into_body(), mock.args.max_body_bytes)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => return unreadable_body(mock, &e.to_string()),
    };
    answer(mock, endpoint, body, received).await
}

/// The answer to a request's whole body: its reply, or the 400.
async fn answer(
    mock: &Mock,
    endpoint: Endpoint,
    body: Bytes,
    received: u128,
) -> Response<MockBody> {
    match rendered_for(mock, endpoint, body) {
        Ok(rendered) => reply(mock, rendered, received).await,
        Err(resp) => *resp,
    }
}

/// An answer other than the reply to a request (boxed: it is the rare case).
type Answer = Box<Response<MockBody>>;

/// The endpoint a request names, or the answer to a request that names none
/// (health, stats, 404, 405). Counts the request.
fn route(mock: &Mock, method: &Method, path: &str) -> Result<Endpoint, Answer> {
    mock.stats.requests.fetch_add(1, Ordering::Relaxed);
    let endpoint = path
        .strip_prefix("/v1")
        .and_then(Endpoint::from_path)
        .or_else(|| Endpoint::from_path(path));
    match (method, path, endpoint) {
        (&Method::POST, _, Some(e)) => Ok(e),
        (&Method::GET, "/healthz", _) => Err(Box::new(plain(StatusCode::OK, "ok\n"))),
        (&Method::GET, "/stats", _) => Err(Box::new(stats(mock))),
        (_, _, Some(_)) => Err(Box::new(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Only POST is supported here.",
        ))),
        _ => Err(Box::new(error(StatusCode::NOT_FOUND, "Invalid URL"))),
    }
}

fn unreadable_body(mock: &Mock, why: &str) -> Response<MockBody> {
    mock.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
    error(
        StatusCode::BAD_REQUEST,
        &format!("Could not read the body: {why}"),
    )
}

/// The cached reply to `body`, rendered first if it is new; the 400 for a body
/// that is not a JSON object.
fn rendered_for(mock: &Mock, endpoint: Endpoint, body: Bytes) -> Result<Arc<Rendered>, Answer> {
    if let Some(r) = lookup(mock, endpoint, &body) {
        mock.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        return Ok(r);
    }
    mock.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
    render(mock, endpoint, body).map_err(|message| {
        mock.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        Box::new(error(StatusCode::BAD_REQUEST, &message))
    })
}

/// The reply, after its delay.
async fn reply(mock: &Mock, rendered: Arc<Rendered>, received: u128) -> Response<MockBody> {
    if !rendered.delay.is_zero() {
        tokio::time::sleep(rendered.delay).await;
    }
    response(mock, rendered, received)
}

/// The reply as it goes out: one buffer, or its events paced.
fn response(mock: &Mock, rendered: Arc<Rendered>, received: u128) -> Response<MockBody> {
    let status = rendered.status;
    let headers = rendered.headers.clone();
    let body = if rendered.in_one_piece() {
        Either::Left(Full::new(rendered.joined.clone()))
    } else {
        mock.stats.streams.fetch_add(1, Ordering::Relaxed);
        Either::Right(StreamBody::new(paced(rendered, received)))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn key_of(endpoint: Endpoint, body: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    endpoint.path().hash(&mut h);
    body.hash(&mut h);
    h.finish()
}

fn lookup(mock: &Mock, endpoint: Endpoint, body: &Bytes) -> Option<Arc<Rendered>> {
    let key = key_of(endpoint, body);
    let cache = mock.cache.read().unwrap_or_else(|p| p.into_inner());
    cache
        .get(&key)?
        .iter()
        .find(|r| r.endpoint == endpoint && r.request == *body)
        .cloned()
}

/// Renders the reply for a body not seen before and caches it. Fails with the
/// message of a 400 if the body is not a JSON object.
fn render(mock: &Mock, endpoint: Endpoint, body: Bytes) -> Result<Arc<Rendered>, String> {
    let mut value: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("We could not parse the JSON body of your request: {e}"))?;
    let obj = value
        .as_object_mut()
        .ok_or("The request body must be a JSON object.")?;
    // The command line's defaults, for what the request's "mock" object leaves out.
    let m = obj.entry("mock").or_insert_with(|| json!({}));
    let mut stamp = false;
    if let Some(m) = m.as_object_mut() {
        let a = &mock.args;
        for (k, v) in [
            ("delay_ms", a.delay_ms),
            ("chunks", a.chunks),
            ("gap_ms", a.gap_ms),
        ] {
            m.entry(k).or_insert_with(|| json!(v));
        }
        stamp = m.get("stamp").and_then(Value::as_bool).unwrap_or(false);
    }
    let reply = MockReply::for_request(endpoint, &value);
    let d = &reply.directives;
    let mut joined = BytesMut::with_capacity(reply.pieces.iter().map(Bytes::len).sum());
    for p in &reply.pieces {
        joined.extend_from_slice(p);
    }
    let rendered = Arc::new(Rendered {
        endpoint,
        request: body,
        status: reply.status,
        delay: Duration::from_millis(d.delay_ms),
        gap: Duration::from_millis(d.gap_ms),
        drop_after: d.drop_after,
        stamp,
        headers: reply.headers,
        pieces: reply.pieces,
        joined: joined.freeze(),
    });
    let key = key_of(endpoint, &rendered.request);
    let mut cache = mock.cache.write().unwrap_or_else(|p| p.into_inner());
    if mock.cached.load(Ordering::Relaxed) >= mock.args.cache_entries as u64 {
        cache.clear();
        mock.cached.store(0, Ordering::Relaxed);
    }
    cache.entry(key).or_default().push(rendered.clone());
    mock.cached.fetch_add(1, Ordering::Relaxed);
    Ok(rendered)
}

/// The reply's events, one frame each, `gap` apart; stamped and cut as directed.
fn paced(r: Arc<Rendered>, received: u128) -> EventStream {
    let n = r.pieces.len();
    let stream = futures_util::stream::iter(0..n).then(move |i| {
        let r = r.clone();
        async move {
            if i > 0 && !r.gap.is_zero() {
                tokio::time::sleep(r.gap).await;
            }
            if r.drop_after.is_some_and(|k| i >= k) {
                // Let hyper flush what it holds, so the drop happens mid-body.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock drop",
                ));
            }
            let piece = r.pieces.get(i).cloned().unwrap_or_default();
            Ok(Frame::data(if r.stamp {
                stamped(&piece, received)
            } else {
                piece
            }))
        }
    });
    // Stop at the first error: hyper aborts the connection on it.
    let mut failed = false;
    Box::pin(stream.take_while(move |item| {
        let go = !failed;
        failed |= item.is_err();
        futures_util::future::ready(go)
    }))
}

/// `data: {…}\n\n` → `data: {…,"rx_us":RECEIVED,"t_us":NOW}\n\n`; anything else
/// unchanged. `rx_us` is when the request reached the mock's handler, so that a
/// client can tell a proxy's request path from the mock's own time.
fn stamped(piece: &Bytes, received: u128) -> Bytes {
    if !piece.starts_with(b"data: {") {
        return piece.clone();
    }
    let Some(end) = piece.iter().rposition(|&b| b == b'}') else {
        return piece.clone();
    };
    let stamp = format!(",\"rx_us\":{received},\"t_us\":{}", now_us());
    let mut out = BytesMut::with_capacity(piece.len() + stamp.len());
    out.extend_from_slice(&piece[..end]);
    out.extend_from_slice(stamp.as_bytes());
    out.extend_from_slice(&piece[end..]);
    out.freeze()
}

/// µs since the Unix epoch: the clock a client on the same machine reads too.
fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn plain(status: StatusCode, text: &'static str) -> Response<MockBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(text.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

fn stats(mock: &Mock) -> Response<MockBody> {
    let s = &mock.stats;
    let v = json!({
        "requests": s.requests.load(Ordering::Relaxed),
        "streams": s.streams.load(Ordering::Relaxed),
        "cache_hits": s.cache_hits.load(Ordering::Relaxed),
        "cache_misses": s.cache_misses.load(Ordering::Relaxed),
        "bad_requests": s.bad_requests.load(Ordering::Relaxed),
    });
    json_response(StatusCode::OK, &v)
}

/// An error in OpenAI's shape.
fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let v = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    json_response(status, &v)
}

fn json_response(status: StatusCode, v: &Value) -> Response<MockBody> {
    let bytes = Bytes::from(serde_json::to_vec(v).unwrap_or_default());
    let mut r = Response::new(Either::Left(Full::new(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
