//! [`Ledger`]: the spool plus one shipping thread per sink and the fsync thread.
//!
//! ```text
//! request path ──append (write(2), no fsync)──▶ spool segments ──▶ shipper[sqlite]  ──▶ usage.db
//!                                                 │   ▲            shipper[webhook] ──▶ HTTPS
//!                                  fsync thread ──┘   └── trim below every sink's cursor
//! ```
//!
//! Each shipper reads complete events after its cursor, delivers them, and only
//! then saves its cursor; on failure it retries the same batch with exponential
//! backoff (50 ms doubling to 5 s). At start each shipper resumes from its saved
//! cursor, so events spooled but not acknowledged before a crash are delivered
//! then (and deduplicated by `event_id` if they had been). On close, shippers
//! drain what is spooled for up to `drain` before giving up; what is left stays
//! in the spool for the next start.

use super::sinks::Sink;
use super::spool::{AppendError, Position, Spool, SpoolStats};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BATCH_EVENTS: usize = 1000;
const BATCH_BYTES: usize = 4 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Shipping state of one sink, for metrics.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStats {
    pub name: String,
    pub cursor: Position,
    /// Spooled bytes this sink has not acknowledged yet.
    pub lag_bytes: u64,
    pub delivered_events: u64,
    pub failed_deliveries: u64,
    /// The last delivery error, while the sink is failing.
    pub last_error: Option<String>,
    /// Seconds since the sink started failing (0 when healthy).
    pub failing_for_secs: f64,
}

/// The ledger's state, for metrics: the spool's counters and every sink's lag.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerStats {
    pub spool: SpoolStats,
    pub sinks: Vec<SinkStats>,
}

impl LedgerStats {
    /// The largest lag of any sink, in bytes.
    pub fn max_lag_bytes(&self) -> u64 {
        self.sinks.iter().map(|s| s.lag_bytes).max().unwrap_or(0)
    }
}

struct SinkState {
    name: String,
    cursor: Mutex<Position>,
    delivered: AtomicU64,
    failed: AtomicU64,
    error: Mutex<Option<(String, Instant)>>,
}

struct Shared {
    spool: Arc<Spool>,
    sinks: Vec<Arc<SinkState>>,
    stop: Arc<AtomicBool>,
    /// Set when stopping: shippers give up retrying after this instant.
    drain_until: Mutex<Option<Instant>>,
}

impl Shared {
    fn trim(&self) {
        let min = self
            .sinks
            .iter()
            .map(|s| *s.cursor.lock().unwrap_or_else(|p| p.into_inner()))
            .min();
        if let Some(min) = min {
            self.spool.trim(min);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn past_drain(&self) -> bool {
        self.drain_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|d| Instant::now() >= d)
    }
}

pub struct Ledger {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Ledger {
    /// Starts the fsync thread and one shipper per sink.
    pub fn start(spool: Arc<Spool>, sinks: Vec<Box<dyn Sink>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let states: Vec<Arc<SinkState>> = sinks
            .iter()
            .map(|s| {
                let cursor = spool.load_cursor(s.name()).unwrap_or_else(|| spool.start());
                Arc::new(SinkState {
                    name: s.name().to_owned(),
                    cursor: Mutex::new(cursor),
                    delivered: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    error: Mutex::new(None),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            spool: spool.clone(),
            sinks: states.clone(),
            stop: stop.clone(),
            drain_until: Mutex::new(None),
        });
        let mut threads = Vec::new();
        let syncer = spool.clone();
        let syncer_stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("livery-spool-fsync".into())
                .spawn(move || syncer.run_syncer(syncer_stop))?,
        );
        for (sink, state) in sinks.into_iter().zip(states) {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("livery-ship-{}", state.name))
                    .spawn(move || ship(shared, state, sink))?,
            );
        }
        Ok(Self {
            shared,
            threads: Mutex::new(threads),
            closed: AtomicBool::new(false),
        })
    }

    /// Appends one event line to the spool (see [`Spool::append`]). After
    /// [`Ledger::close`] the append is also fsynced at once (nothing is latency
    /// sensitive then, and no fsync thread runs).
    pub fn append(&self, line: &[u8]) -> Result<(), AppendError> {
        self.shared.spool.append(line)?;
        if self.closed.load(Ordering::Acquire) {
            self.shared.spool.sync_now();
        }
        Ok(())
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.shared.spool
    }

    pub fn stats(&self) -> LedgerStats {
        let spool = &self.shared.spool;
        LedgerStats {
            spool: spool.stats(),
            sinks: self
                .shared
                .sinks
                .iter()
                .map(|s| {
                    let cursor = *s.cursor.lock().unwrap_or_else(|p| p.into_inner());
                    let err = s.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    SinkStats {
                        name: s.name.clone(),
                        cursor,
                        lag_bytes: spool.lag_bytes(cursor),
                        delivered_events: s.delivered.load(Ordering::Relaxed),
                        failed_deliveries: s.failed.load(Ordering::Relaxed),
                        failing_for_secs: err
                            .as_ref()
                            .map_or(0.0, |(_, since)| since.elapsed().as_secs_f64()),
                        last_error: err.map(|(e, _)| e),
                    }
                })
                .collect(),
        }
    }

    /// Waits until every sink has acknowledged everything spooled so far, up
    /// to `timeout`; returns whether it did.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stats().max_lag_bytes() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the threads: shippers first deliver what is spooled, retrying for
    /// up to `drain`; then the spool is fsynced.
    pub fn close(&self, drain: Duration) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        *self
            .shared
            .drain_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + drain);
        self.shared.stop.store(true, Ordering::Release);
        self.shared.spool.wake_readers();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        self.shared.spool.sync_now();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Without `close`, the threads stop at once (the spool keeps the rest).
        *self
            .shared
            .drain_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.shared.stop.store(true, Ordering::Release);
        self.shared.spool.wake_readers();
    }
}

/// One sink's shipping loop.
fn ship(shared: Arc<Shared>, state: Arc<SinkState>, mut sink: Box<dyn Sink>) {
    let spool = shared.spool.clone();
    let mut pos = *state.cursor.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let seen = spool.generation();
        let (events, next) = match spool.read_batch(pos, BATCH_EVENTS, BATCH_BYTES) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sink = %state.name, error = %e, "usage spool read failed");
                if shared.stopping() {
                    return;
                }
                std::thread::sleep(BACKOFF_MAX);
                continue;
            }
        };
        if events.is_empty() {
            if next != pos {
                // Only skipped lines: move past them.
                pos = next;
                advance(&shared, &state, pos);
                continue;
            }
            if shared.stopping() {
                return;
            }
            spool.wait_for_append(seen, Duration::from_millis(200));
            continue;
        }
        let mut backoff = BACKOFF_MIN;
        loop {
            match sink.deliver(&events) {
                Ok(()) => {
                    state
                        .delivered
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    let mut err = state.error.lock().unwrap_or_else(|p| p.into_inner());
                    if err.take().is_some() {
                        tracing::info!(sink = %state.name, "usage sink recovered");
                    }
                    break;
                }
                Err(e) => {
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut err = state.error.lock().unwrap_or_else(|p| p.into_inner());
                        if err.is_none() {
                            tracing::warn!(sink = %state.name, error = %e, "usage sink delivery failed; retrying with backoff");
                        }
                        let since = err.as_ref().map_or_else(Instant::now, |(_, s)| *s);
                        *err = Some((e, since));
                    }
                    if shared.stopping() && shared.past_drain() {
                        return;
                    }
                    sleep_unless_stopping(&shared, backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        pos = next;
        advance(&shared, &state, pos);
    }
}

fn advance(shared: &Shared, state: &SinkState, pos: Position) {
    *state.cursor.lock().unwrap_or_else(|p| p.into_inner()) = pos;
    if let Err(e) = shared.spool.save_cursor(&state.name, pos) {
        tracing::warn!(sink = %state.name, error = %e, "cannot save the usage sink's cursor (events will be replayed and deduplicated)");
    }
    shared.trim();
}

fn sleep_unless_stopping(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shared.stopping() && shared.past_drain() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
}
