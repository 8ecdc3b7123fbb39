//! Usage: one event per finished tenant request, made durable and shipped.
//!
//! * [`event`]: the versioned event (schema v1) and the view sinks read back.
//! * [`spool`]: the write-ahead spool the event is appended to, synchronously,
//!   before the request's last byte is released (see its docs for guarantees).
//! * `line`: the event lines this gateway writes, read back without serde.
//! * [`ledger`]: group-commit fsync thread and one shipping thread per sink.
//! * [`sinks`]: `sqlite` (the embedded ledger with daily/monthly rollups),
//!   `redis` (a stream plus daily rollup hashes, shared by several instances)
//!   and `webhook` (batched, HMAC-signed POSTs).
//! * [`metrics`]: spool lag and sink counters in Prometheus text.
//! * [`price`]: integer micro-unit money and the platform's price table.
//! * [`report`]: `livery usage report` and invoices under each billing model.
//! * [`estimate`]: token counts with OpenAI's tokenizer when upstreams report none.
//!
//! [`UsageSink`] is the request path's handle: [`UsageSink::record`] takes
//! the event (priced by the request's record, with its snapshot's prices),
//! appends it to the spool (a `write(2)`, no fsync), mirrors it to
//! the optional JSONL file through a bounded channel and a writer thread
//! (appended synchronously if the channel is full, never dropped), and emits a
//! `debug` `tracing` event (target `livery::usage`; the spool and the JSONL
//! mirror are the record, so the per-request log line is off at `info`).

pub mod estimate;
pub mod event;
pub mod lanes;
pub mod ledger;
mod line;
pub mod metrics;
pub mod price;
pub mod report;
pub mod sinks;
pub mod spool;
mod timestamp;

pub use event::{AttemptRecord, LedgerEvent, Outcome, UsageRecord, SCHEMA_VERSION};
pub use ledger::{LedgerStats, SinkStats};
pub use timestamp::rfc3339;

use crate::config::GatewayConfig;
use arc_swap::ArcSwapOption;
use ledger::Ledger;
use spool::{Spool, SpoolOptions};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The mirror's write buffer: a linger's batch (~700 bytes per event) goes out
/// in one `write(2)` instead of one per 8 KiB (5.7k -> 0.9k calls per 60,000
/// events at maximum throughput).
const MIRROR_BUFFER: usize = 64 << 10;
/// How long the JSONL mirror's writer waits between batches.
const MIRROR_LINGER: Duration = Duration::from_millis(10);
/// How long the mirror's writer keeps looking every linger after its last
/// batch before it sleeps until a record wakes it: as long as the spool's
/// syncer, for the same reason (a wake-up is a `futex` call on the request
/// path, after which the woken thread may run on a shared core before the
/// answer leaves; for the mirror, one request in twenty at 2,000 req/s).
const MIRROR_STAY_AWAKE: Duration = spool::STAY_AWAKE;

const CHANNEL_CAPACITY: usize = 8192;

/// The shortest webhook signing secret accepted (bytes).
const MIN_WEBHOOK_SECRET: usize = 16;

/// A typical event line is 600-900 bytes: one allocation instead of a doubling
/// series while serialising. Just under 1 KiB: glibc serves up to 1,032-byte
/// chunks from its per-thread cache.
const LINE_CAPACITY: usize = 1008;

/// How many line buffers wait for reuse at most (see [`SpareLines`]).
const SPARE_LINES: usize = 256;
/// A buffer that grew past this (an unusually long event) is freed, not kept.
const SPARE_MAX_CAPACITY: usize = 16 * 1024;

/// Line buffers handed back for reuse. Each line is written on a request's
/// thread and freed on the mirror's; glibc then never refills the request
/// thread's cache for that size, and every new line cost about 1,300
/// instructions in `malloc` (callgrind). Lock-free, as the request path is.
type SpareLines = Arc<crossbeam_queue::ArrayQueue<Vec<u8>>>;

fn recycle(spare: &SpareLines, mut line: Vec<u8>) {
    if line.capacity() <= SPARE_MAX_CAPACITY {
        line.clear();
        // A full pool drops the buffer; the next line allocates anew.
        let _ = spare.push(line);
    }
}

/// How long `close` lets shippers deliver what is spooled.
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot open usage file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("cannot open the usage ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("usage sink: {0}")]
    Sink(String),
}

/// Where the ledger's files are, resolved from `[usage]`.
#[derive(Debug, Clone)]
pub struct LedgerPaths {
    pub spool_dir: PathBuf,
    /// `None` when the `sqlite` sink is not configured.
    pub sqlite: Option<PathBuf>,
}

impl LedgerPaths {
    /// The ledger's paths, or `None` when the ledger is off (see
    /// `UsageConfig::ledger`). Relative paths are relative to the working
    /// directory; the defaults (`usage-spool/`, `usage.db`) sit beside
    /// `jsonl_path` when it is set (where the operator already keeps usage
    /// data), else in the working directory.
    pub fn of(config: &GatewayConfig) -> Option<Self> {
        let u = &config.usage;
        let on = u.ledger.unwrap_or(u.spool_dir.is_some());
        if !on {
            return None;
        }
        let base = u
            .jsonl_path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Some(Self {
            spool_dir: u
                .spool_dir
                .clone()
                .unwrap_or_else(|| base.join("usage-spool")),
            sqlite: u.sinks.iter().any(|s| s == "sqlite").then(|| {
                u.sqlite_path
                    .clone()
                    .unwrap_or_else(|| base.join("usage.db"))
            }),
        })
    }
}

/// The JSONL mirror's writer thread: batches what the request path queued and
/// hands the line buffers back.
struct Mirror {
    file: std::io::BufWriter<File>,
    returns: SpareLines,
    sleeps: Arc<AtomicU64>,
}

impl Mirror {
    fn run(mut self, mut rx: mpsc::Receiver<Vec<u8>>) {
        let mut batch = Vec::new();
        let mut last_batch = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty)
                    if last_batch.elapsed() < MIRROR_STAY_AWAKE =>
                {
                    std::thread::sleep(MIRROR_LINGER);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.sleeps.fetch_add(1, Ordering::Relaxed);
                    match rx.blocking_recv() {
                        Some(line) => batch.push(line),
                        None => return,
                    }
                }
            }
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            self.write(&mut batch);
            last_batch = Instant::now();
            // Linger: what arrives meanwhile is written as one batch.
            std::thread::sleep(MIRROR_LINGER);
        }
    }

    fn write(&mut self, batch: &mut Vec<Vec<u8>>) {
        for line in batch.iter() {
            if let Err(e) = self.file.write_all(line) {
                tracing::error!(error = %e, "usage file write failed");
            }
        }
        if let Err(e) = self.file.flush() {
            tracing::error!(error = %e, "usage file write failed");
        }
        for line in batch.drain(..) {
            recycle(&self.returns, line);
        }
    }
}

/// Where usage records go. Cheap to clone.
#[derive(Clone)]
pub struct UsageSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    /// Taken away by `close`; read without a lock on the request path.
    tx: ArcSwapOption<mpsc::Sender<Vec<u8>>>,
    /// Buffers for the next lines, returned by the mirror's thread.
    spare: SpareLines,
    /// Used when the channel is full or closed, so that no record is dropped.
    overflow: Option<Mutex<File>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// How often the mirror's thread went to sleep until a record wakes it.
    #[cfg(test)]
    mirror_sleeps: Arc<AtomicU64>,
    ledger: Option<Ledger>,
    /// Records of requests in flight not yet written (see
    /// [`UsageSink::open_record`]): while none is, no other request can stage
    /// a line for a staged one to wait for.
    open_records: AtomicUsize,
    /// Shutdown's grace period is over: the records still open end because
    /// the gateway cut their requests.
    cut: AtomicBool,
    /// Requests, durations and tokens as the records say, for `/metrics`.
    stats: metrics::RecordStats,
    /// Read connection for quotas (`monthly_tokens`), opened on first use.
    sqlite_path: Option<PathBuf>,
    reader: Mutex<Option<rusqlite::Connection>>,
}

impl UsageSink {
    /// The JSONL mirror only, without ledger or prices (what the gateway used
    /// before the ledger; kept for embedders).
    pub fn open(path: Option<&Path>) -> Result<Self, UsageError> {
        Self::build(path, None, None)
    }

    /// Everything `[usage]`, `[prices]` configure: the JSONL mirror, and the
    /// durable ledger (spool + sinks) unless it is off. Unacknowledged events
    /// left in the spool by a previous run are shipped from here on.
    pub fn start(config: &GatewayConfig) -> Result<Self, UsageError> {
        let u = &config.usage;
        let (ledger, sqlite_path) = match LedgerPaths::of(config) {
            None => (None, None),
            Some(paths) => {
                let spool = Spool::open(SpoolOptions {
                    dir: paths.spool_dir.clone(),
                    segment_bytes: u.segment_bytes.max(4096),
                    max_bytes: u.spool_max_bytes,
                    fsync_interval: Duration::from_millis(u.fsync_interval_ms.max(1)),
                })?;
                // Names and sections first: a sink built and then dropped here
                // (inside the async runtime) must not own a runtime of its own.
                check_config(config)?;
                let mut sinks: Vec<Box<dyn sinks::Sink>> = Vec::new();
                for name in &u.sinks {
                    match name.as_str() {
                        "sqlite" => {
                            let path = paths.sqlite.clone().unwrap_or_default();
                            let sink = sinks::sqlite::SqliteSink::open(&path)
                                .map_err(|source| UsageError::Sqlite { path, source })?;
                            sinks.push(Box::new(sink));
                        }
                        "webhook" => {
                            let (w, secret) = webhook_secret(u)?;
                            let sink = sinks::webhook::WebhookSink::new(
                                &w.url,
                                secret.as_bytes(),
                                Duration::from_millis(w.timeout_ms),
                                w.batch_max_events,
                            )
                            .map_err(UsageError::Sink)?;
                            sinks.push(Box::new(sink));
                        }
                        "redis" => sinks.push(Box::new(redis_sink(u)?)),
                        other => {
                            return Err(UsageError::Sink(format!(
                                "unknown sink `{other}` (sqlite, redis, webhook)"
                            )))
                        }
                    }
                }
                if sinks.is_empty() {
                    tracing::warn!("usage ledger without sinks: events stay in the spool (up to spool_max_bytes)");
                }
                let ledger = Ledger::start(spool, sinks).map_err(|e| {
                    UsageError::Sink(format!("cannot start the usage ledger threads: {e}"))
                })?;
                (Some(ledger), paths.sqlite)
            }
        };
        Self::build(u.jsonl_path.as_deref(), ledger, sqlite_path)
    }

    fn build(
        path: Option<&Path>,
        ledger: Option<Ledger>,
        sqlite_path: Option<PathBuf>,
    ) -> Result<Self, UsageError> {
        let spare: SpareLines = Arc::new(crossbeam_queue::ArrayQueue::new(SPARE_LINES));
        let sleeps = Arc::new(AtomicU64::new(0));
        #[cfg(test)]
        let mirror_sleeps = Arc::clone(&sleeps);
        // With a mirror file: its writer thread and channel, and the file
        // opened a second time for the request path when the channel is full.
        let (tx, handle, overflow) = match path {
            Some(p) => {
                let open = || {
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|source| UsageError::Open {
                            path: p.to_path_buf(),
                            source,
                        })
                };
                let (tx, rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CAPACITY);
                let mirror = Mirror {
                    file: std::io::BufWriter::with_capacity(MIRROR_BUFFER, open()?),
                    returns: Arc::clone(&spare),
                    sleeps,
                };
                let overflow = Mutex::new(open()?);
                let handle = std::thread::Builder::new()
                    .name("livery-usage".into())
                    // Normal priority, unlike the shippers: under `SCHED_IDLE` a
                    // saturated core starved it, its channel filled, and the request
                    // path wrote each record itself (0.94 -> 1.40 `write(2)` per
                    // request at maximum throughput). Its batches are short (35-80 us
                    // every 10 ms).
                    .spawn(move || mirror.run(rx))
                    .ok();
                (Some(Arc::new(tx)), handle, Some(overflow))
            }
            None => (None, None, None),
        };
        Ok(Self {
            inner: Arc::new(SinkInner {
                tx: ArcSwapOption::new(tx),
                spare,
                overflow,
                writer: Mutex::new(handle),
                #[cfg(test)]
                mirror_sleeps,
                ledger,
                open_records: AtomicUsize::new(0),
                cut: AtomicBool::new(false),
                stats: metrics::RecordStats::default(),
                sqlite_path,
                reader: Mutex::new(None),
            }),
        })
    }

    /// Records one finished request: prices it, appends it to the spool
    /// (synchronously: the event is in the kernel when this returns), mirrors
    /// it to the JSONL file. Never blocks on a sink; never fsyncs.
    pub fn record(&self, rec: UsageRecord) {
        self.write(rec, false);
    }

    /// Records like [`UsageSink::record`], but only stages the spool line: the
    /// caller must await [`UsageSink::spooled`] with the ticket before its
    /// answer leaves (no ticket: nothing to wait for).
    pub fn record_staged(&self, rec: UsageRecord) -> Option<spool::Ticket> {
        self.write(rec, true)
    }

    /// A request's record is open: it will be written (staged or not) and
    /// then [`UsageSink::close_record`]d, once.
    pub fn open_record(&self) {
        self.inner.open_records.fetch_add(1, Ordering::Relaxed);
    }

    /// The record opened by [`UsageSink::open_record`] is complete.
    pub fn close_record(&self) {
        self.inner.open_records.fetch_sub(1, Ordering::Relaxed);
    }

    /// Shutdown is about to cut the requests still in flight.
    pub fn mark_cut(&self) {
        self.inner.cut.store(true, Ordering::Relaxed);
    }

    /// Whether [`UsageSink::mark_cut`] was called.
    pub fn is_cut(&self) -> bool {
        self.inner.cut.load(Ordering::Relaxed)
    }

    /// Records opened and not yet complete (requests in flight).
    pub fn open_records(&self) -> usize {
        self.inner.open_records.load(Ordering::Relaxed)
    }

    /// Waits until a staged record is in the kernel. While another request's
    /// record is open, it first lets the requests that finish in this pass of
    /// the event loop stage theirs, so that one `write(2)` carries them all
    /// (about 30 per write at maximum throughput, instead of one each). Alone,
    /// it writes at once: the yield would cost a turn of the event loop (an
    /// `epoll_wait` and a poll of the request's whole task again) with
    /// nobody to share the write with.
    pub async fn spooled(&self, ticket: spool::Ticket) {
        let Some(ledger) = &self.inner.ledger else {
            return;
        };
        if self.open_records() > 0 {
            tokio::task::yield_now().await;
        }
        if let Err(e) = ledger.flush_staged(ticket) {
            // The request's span names it.
            tracing::error!(error = %e, "usage event NOT spooled");
        }
    }

    fn write(&self, rec: UsageRecord, stage: bool) -> Option<spool::Ticket> {
        tracing::debug!(
            target: "livery::usage",
            event_id = %rec.event_id,
            request_id = %rec.request_id,
            reseller = %rec.reseller,
            tenant = %rec.tenant,
            endpoint = rec.endpoint,
            model = rec.requested_model.as_deref().unwrap_or(""),
            provider = rec.provider.as_deref().unwrap_or(""),
            status = rec.status,
            outcome = ?rec.outcome,
            prompt_tokens = rec.prompt_tokens,
            completion_tokens = rec.completion_tokens,
            estimated = rec.estimated,
            cost_micros = rec.cost_micros,
            stream = rec.stream,
            latency_ms = rec.latency_ms,
            "usage"
        );
        self.inner.stats.observe(&rec);
        if self.inner.ledger.is_none() && self.inner.overflow.is_none() {
            // Neither a ledger nor a mirror file: the line would be written
            // for nobody (about 5k instructions per request).
            return None;
        }
        let mut line = self
            .inner
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LINE_CAPACITY));
        rec.write_json(&mut line);
        line.push(b'\n');
        let mut ticket = None;
        if let Some(ledger) = &self.inner.ledger {
            let spooled = if stage {
                ledger.stage(&line).map(Some)
            } else {
                ledger.append(&line).map(|()| None)
            };
            match spooled {
                Ok(t) => ticket = t,
                Err(e) => {
                    tracing::error!(error = %e, event_id = %rec.event_id, request_id = %rec.request_id, "usage event NOT spooled");
                }
            }
        }
        let line = {
            let tx = self.inner.tx.load();
            match tx.as_deref() {
                // A channel exists only with a mirror file (see `build`).
                Some(tx) => match tx.try_send(line) {
                    Ok(()) => return ticket,
                    Err(
                        mpsc::error::TrySendError::Full(l) | mpsc::error::TrySendError::Closed(l),
                    ) => l,
                },
                None => line,
            }
        };
        if let Some(f) = &self.inner.overflow {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(&line) {
                tracing::error!(error = %e, request_id = %rec.request_id, "usage record write failed");
            }
        }
        recycle(&self.inner.spare, line);
        ticket
    }

    /// The ledger's counters and every sink's lag (`None` without a ledger).
    pub fn stats(&self) -> Option<LedgerStats> {
        self.inner.ledger.as_ref().map(Ledger::stats)
    }

    /// Requests as recorded, spool lag and sink counters (these only with a
    /// ledger) in Prometheus text format, for `/metrics`. See [`metrics`] for
    /// the series.
    pub fn render_prometheus(&self, out: &mut String) {
        self.inner.stats.render(self.open_records(), out);
        if let Some(stats) = self.stats() {
            metrics::render(&stats, out);
        }
    }

    /// Waits until every sink acknowledged what is spooled (tests, shutdown).
    pub fn flush(&self, timeout: Duration) -> bool {
        self.inner.ledger.as_ref().is_none_or(|l| l.flush(timeout))
    }

    /// Tokens of `tenant` at `reseller` in `month` (`YYYY-MM`, UTC, by request
    /// start) as acknowledged by the SQLite ledger: events still in the spool
    /// (at most ~50 ms worth, the shipper's linger, while the sink is up) are
    /// not counted yet. 0 without a SQLite ledger or on a read error (logged).
    pub fn monthly_tokens(&self, reseller: &str, tenant: Option<&str>, month: &str) -> u64 {
        let Some(path) = &self.inner.sqlite_path else {
            return 0;
        };
        let mut reader = self.inner.reader.lock().unwrap_or_else(|p| p.into_inner());
        if reader.is_none() {
            match sinks::sqlite::open_read(path) {
                Ok(c) => *reader = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the usage ledger for reading");
                    return 0;
                }
            }
        }
        let Some(conn) = reader.as_ref() else {
            return 0;
        };
        sinks::sqlite::monthly_tokens(conn, reseller, tenant, month).unwrap_or_else(|e| {
            tracing::error!(error = %e, "usage ledger read failed");
            0
        })
    }

    /// Stops accepting records through the channel and waits for the writer to
    /// flush what it holds; lets the ledger's sinks catch up (up to 5 s) and
    /// fsyncs the spool. Records arriving later are still spooled (and fsynced
    /// at once) and appended to the JSONL file synchronously.
    pub fn close(&self) {
        self.inner.tx.store(None);
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        if let Some(l) = &self.inner.ledger {
            l.close(CLOSE_DRAIN);
        }
    }
}

/// What [`UsageSink::start`] refuses of `[usage]` before it opens anything:
/// unknown sink names, a sink without its section, secrets missing from the
/// environment. Nothing to check when the ledger is off.
pub fn check_config(config: &GatewayConfig) -> Result<(), UsageError> {
    if LedgerPaths::of(config).is_none() {
        return Ok(());
    }
    let u = &config.usage;
    for name in &u.sinks {
        match name.as_str() {
            "sqlite" => {}
            "webhook" => drop(webhook_secret(u)?),
            "redis" => drop(redis_url(u)?),
            other => {
                return Err(UsageError::Sink(format!(
                    "unknown sink `{other}` (sqlite, redis, webhook)"
                )))
            }
        }
    }
    Ok(())
}

/// `[usage.webhook]` and its secret, read from the environment.
fn webhook_secret(
    u: &crate::config::UsageConfig,
) -> Result<
    (
        &crate::config::WebhookSinkConfig,
        zeroize::Zeroizing<String>,
    ),
    UsageError,
> {
    let w = u
        .webhook
        .as_ref()
        .ok_or_else(|| UsageError::Sink("sink `webhook` needs [usage.webhook]".into()))?;
    let secret = zeroize::Zeroizing::new(std::env::var(&w.secret_env).map_err(|_| {
        UsageError::Sink(format!(
            "webhook secret: environment variable {} is not set",
            w.secret_env
        ))
    })?);
    // An empty (or short) key makes the signature one anybody can compute: a
    // blank Kubernetes secret would have signed forged usage events.
    if secret.len() < MIN_WEBHOOK_SECRET {
        return Err(UsageError::Sink(format!(
            "webhook secret: {} holds {} bytes; at least {MIN_WEBHOOK_SECRET} are needed",
            w.secret_env,
            secret.len()
        )));
    }
    Ok((w, secret))
}

/// `[usage.redis]` and its URL, given or read from the environment.
fn redis_url(
    u: &crate::config::UsageConfig,
) -> Result<(&crate::config::RedisSinkConfig, String), UsageError> {
    let r = u
        .redis
        .as_ref()
        .ok_or_else(|| UsageError::Sink("sink `redis` needs [usage.redis]".into()))?;
    let url = match (&r.url, &r.url_env) {
        (Some(url), None) => url.clone(),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            UsageError::Sink(format!("redis sink: environment variable {var} is not set"))
        })?,
        _ => {
            return Err(UsageError::Sink(
                "[usage.redis] needs exactly one of `url` and `url_env`".into(),
            ))
        }
    };
    Ok((r, url))
}

/// The `redis` sink from `[usage.redis]`.
fn redis_sink(u: &crate::config::UsageConfig) -> Result<sinks::redis::RedisSink, UsageError> {
    let (r, url) = redis_url(u)?;
    sinks::redis::RedisSink::new(sinks::redis::RedisSinkOptions {
        url,
        key_prefix: r.key_prefix.clone(),
        dedup_ttl: Duration::from_secs(r.dedup_ttl_secs),
        stream_maxlen: r.stream_maxlen,
        timeout: Duration::from_millis(r.timeout_ms.max(1)),
        batch_max: r.batch_max_events,
    })
    .map_err(UsageError::Sink)
}

/// `YYYY-MM` of now (UTC), for [`UsageSink::monthly_tokens`].
pub fn current_month() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line buffers go round (request thread → mirror thread → back) and a
    /// reused one carries nothing of the line it held before.
    #[test]
    fn the_mirror_hands_line_buffers_back_and_reused_ones_hold_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        let sink = UsageSink::open(Some(&path)).unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            let mut rec = event::tests::record();
            rec.event_id = format!("event-{i}");
            ids.push(rec.event_id.clone());
            sink.record(rec);
            // Until the mirror has written the line and returned its buffer.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while sink.inner.spare.is_empty() {
                assert!(std::time::Instant::now() < deadline, "no buffer came back");
                std::thread::sleep(Duration::from_millis(1));
            }
            // The next record takes this buffer instead of a new one.
            assert_eq!(sink.inner.spare.len(), 1);
        }
        sink.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        for (line, id) in lines.iter().zip(&ids) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["event_id"], id.as_str(), "{line}");
        }
    }

    /// A staged line waits a turn of the event loop, so that the lines of
    /// the other requests finishing in it share its `write(2)`, only while
    /// another request's record is open; alone, it is written at once.
    #[test]
    fn a_staged_line_waits_for_company_only_while_another_record_is_open() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let dir = tempfile::tempdir().unwrap();
        // A long group-commit window: only the flushes below write. No
        // mirror (it would default to `usage.jsonl` in the working directory).
        let config = GatewayConfig::parse(&format!(
            "[usage]\njsonl_path = \"\"\nledger = true\nsinks = []\nfsync_interval_ms = 60000\nspool_dir = {:?}\n",
            dir.path().join("spool")
        ))
        .unwrap();
        let sink = UsageSink::start(&config).unwrap();
        let writes = || sink.stats().unwrap().spool.writes;
        let mut cx = Context::from_waker(Waker::noop());

        // Alone: written on the first poll.
        let ticket = sink.record_staged(event::tests::record()).unwrap();
        let mut alone = std::pin::pin!(sink.spooled(ticket));
        assert_eq!(alone.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(writes(), 1);

        // Another request's record is open: the first poll yields, a line
        // staged meanwhile goes out in the same write.
        sink.open_record();
        let first = sink.record_staged(event::tests::record()).unwrap();
        let mut waiting = std::pin::pin!(sink.spooled(first));
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(writes(), 1);
        sink.close_record();
        let second = sink.record_staged(event::tests::record()).unwrap();
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(writes(), 2, "both lines in one write");
        let mut done = std::pin::pin!(sink.spooled(second));
        assert_eq!(done.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(writes(), 2);
        sink.close();
    }

    /// `jsonl_path = ""` turns the mirror off (leaving the key out keeps the
    /// default file): events go to the ledger alone. With neither a ledger
    /// nor a mirror no line is written at all.
    #[test]
    fn an_empty_jsonl_path_means_no_mirror_and_no_line_for_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let default = GatewayConfig::parse("[usage]\n").unwrap();
        assert_eq!(
            default.usage.jsonl_path.as_deref(),
            Some(Path::new("usage.jsonl"))
        );
        let config = GatewayConfig::parse(&format!(
            "[usage]\njsonl_path = \"\"\nledger = true\nsinks = []\nspool_dir = {:?}\n",
            dir.path().join("spool")
        ))
        .unwrap();
        assert_eq!(config.usage.jsonl_path, None);
        let sink = UsageSink::start(&config).unwrap();
        assert!(sink.inner.overflow.is_none(), "no mirror file opened");
        let writer_thread = sink.inner.writer.lock().unwrap().is_some();
        assert!(!writer_thread, "no mirror thread without a mirror");
        sink.record(event::tests::record());
        assert_eq!(sink.stats().unwrap().spool.writes, 1);
        sink.close();

        let nowhere = UsageSink::open(None).unwrap();
        nowhere.record(event::tests::record());
        // A written line's buffer would be back in the spare pool.
        assert_eq!(
            nowhere.inner.spare.len(),
            0,
            "a line was written for nobody"
        );
        nowhere.close();
    }

    /// While records keep coming the mirror's writer looks for them itself,
    /// so the request path never wakes it; it sleeps once they stop, and the
    /// next record wakes it again.
    #[test]
    fn steady_records_never_wake_the_mirror_and_it_sleeps_when_they_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.jsonl");
        let sink = UsageSink::open(Some(&path)).unwrap();
        let sleeps = || sink.inner.mirror_sleeps.load(Ordering::Relaxed);
        let wait_for_sleeps = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while sleeps() < n {
                assert!(Instant::now() < deadline, "the mirror never went to sleep");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_for_sleeps(1);
        let lines_in_file = || std::fs::read_to_string(&path).unwrap().lines().count();
        // 40 records 20 ms apart (well inside MIRROR_STAY_AWAKE): the first
        // wakes the writer, the rest find it awake. Only a gap of 200 ms or
        // more (this thread descheduled on a loaded machine) may let it sleep
        // once more.
        let mut long_gaps = 0;
        let mut last = Instant::now();
        for i in 0..40 {
            let mut rec = event::tests::record();
            rec.event_id = format!("event-{i}");
            sink.record(rec);
            std::thread::sleep(Duration::from_millis(20));
            if i > 0 && last.elapsed() >= Duration::from_millis(200) {
                long_gaps += 1;
            }
            last = Instant::now();
        }
        assert!(
            (1..=1 + long_gaps).contains(&sleeps()),
            "a record woke the mirror while records kept coming"
        );
        // Asleep again once the records stop, with every one written.
        wait_for_sleeps(sleeps() + 1);
        assert_eq!(lines_in_file(), 40);
        sink.record(event::tests::record());
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines_in_file() < 41 {
            assert!(
                Instant::now() < deadline,
                "the sleeping mirror was not woken"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        sink.close();
    }
}
