//! [`Ledger`]: the spool plus one shipper per sink and the fsync thread.
//!
//! A shipper runs under `SCHED_IDLE` while it keeps up, so that its batches
//! never hold up a request, and on a normal-priority thread while it is a full
//! batch behind (a backlog at start, a saturated core): see [`super::lanes`].
//!
//! ```text
//! request path ──append (write(2), no fsync)──▶ spool segments ──▶ shipper[sqlite]  ──▶ usage.db
//!                                                 │   ▲            shipper[redis]   ──▶ XADD + HINCRBY
//!                                  fsync thread ──┘   │            shipper[webhook] ──▶ HTTPS
//!                                                     └── trim below every sink's durable cursor
//! ```
//!
//! Each shipper reads complete events after its cursor and delivers them in
//! batches: when it has caught up it waits for the next append, then lingers
//! up to [`LINGER`] (or until [`SHIP_EVENTS`] more events are spooled) so that
//! one delivery (one SQLite transaction) carries many events; behind, it ships
//! full batches back to back. On failure it retries the same batch with
//! exponential backoff (50 ms doubling to 5 s). Only after the sink
//! acknowledged does the cursor move: inside the sink's own transaction when it
//! stores cursors (SQLite), else in a `cursor-<sink>` file rewritten at most
//! every [`CURSOR_FILE_EVERY`]. At start each shipper resumes from the later
//! of the two, so events spooled but not acknowledged before a crash are
//! delivered then (and deduplicated by `event_id` if they had been). Segments
//! are trimmed only below what every sink acknowledged *durably* (see
//! [`super::sinks::Ack`]); a sink whose acks are not durable is synced at
//! least every [`SYNC_EVERY`] while it has some. On close, shippers drain what
//! is spooled for up to `drain` before giving up; what is left stays in the
//! spool for the next start.

use super::lanes::{self, Lane, Shift, Step};
use super::sinks::{Ack, Sink};
use super::spool::{AppendError, Position, Spool, SpoolStats, Ticket};
use super::LedgerEvent;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BATCH_EVENTS: usize = 1000;
/// The largest batch shipped on the idle lane, and the backlog at which a
/// shipper moves to its catch-up lane and back. A full idle batch is about
/// 1 ms of the SQLite sink's CPU, which a saturated core gives a `SCHED_IDLE`
/// thread over about a second; so under saturation the shipper moves within
/// a batch and stays at normal priority until the load eases, its backlog
/// bounded by that (a larger cap, 1,000, left 0.3 s of CPU to ship after a
/// 6 s burst at maximum throughput). 256 covers the 50 ms linger up to about
/// 5,000 events a second.
const IDLE_BATCH_EVENTS: usize = 256;
const BATCH_BYTES: usize = 4 << 20;
/// A read buffer larger than this after a batch is not kept. A catch-up
/// batch reads about 1 KiB per event (1 MiB for [`BATCH_EVENTS`]); let go
/// after each batch, that megabyte was mapped and faulted in anew every
/// 1,000 events while the shipper was behind. A larger one (longer lines)
/// is let go.
const KEEP_READ_BUFFER: usize = BATCH_EVENTS << 10;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a caught-up shipper waits for more events before delivering.
pub const LINGER: Duration = Duration::from_millis(50);
/// Spooled events that end the linger early.
pub const SHIP_EVENTS: u64 = 500;
/// Longest time acknowledged events stay non-durable in a sink.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Least time between two rewrites of a `cursor-<sink>` file.
pub const CURSOR_FILE_EVERY: Duration = Duration::from_secs(1);
/// Longest idle wait (shutdown is also signalled, this bounds a missed one).
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Shipping state of one sink, for metrics.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStats {
    pub name: String,
    pub cursor: Position,
    /// Spooled bytes this sink has not acknowledged yet.
    pub lag_bytes: u64,
    /// Spooled events this sink has not acknowledged yet (lines skipped as
    /// torn are counted until the shipper passes them).
    pub lag_events: u64,
    pub delivered_events: u64,
    /// Deliveries that failed (each retried).
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
    /// Everything before it is acknowledged.
    cursor: Mutex<Position>,
    /// Everything before it is acknowledged durably (trimming stops here).
    durable: Mutex<Position>,
    /// Events after the cursor in segments of earlier processes, at start.
    backlog: AtomicU64,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn trim(&self) {
        let min = self.sinks.iter().map(|s| *lock(&s.durable)).min();
        if let Some(min) = min {
            self.spool.trim(min);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn past_drain(&self) -> bool {
        lock(&self.drain_until).is_some_and(|d| Instant::now() >= d)
    }
}

pub struct Ledger {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Ledger {
    /// Resumes every sink's cursor, then starts the fsync thread and one
    /// shipper per sink.
    pub fn start(spool: Arc<Spool>, mut sinks: Vec<Box<dyn Sink>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let key = spool.key();
        let mut states = Vec::new();
        for s in &mut sinks {
            let stored = s.resume(&key).unwrap_or_else(|e| {
                tracing::warn!(sink = s.name(), error = %e, "cannot read the usage sink's stored cursor; using the spool's");
                None
            });
            let cursor = stored
                .into_iter()
                .chain(spool.load_cursor(s.name()))
                .max()
                .unwrap_or_else(|| spool.start());
            spool.reserve_after(cursor);
            // The last run's final batches may have been acknowledged without
            // reaching the disk (a sink that syncs lazily, then a crash):
            // synced now, before a segment holding them can be trimmed. Until
            // a sync succeeds, nothing counts as durable.
            let durable = match s.sync(cursor) {
                Ok(()) => cursor,
                Err(e) => {
                    tracing::warn!(sink = s.name(), error = %e, "cannot sync the usage sink at start; the spool is kept until it can");
                    spool.start()
                }
            };
            states.push(Arc::new(SinkState {
                name: s.name().to_owned(),
                cursor: Mutex::new(cursor),
                durable: Mutex::new(durable),
                backlog: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                error: Mutex::new(None),
            }));
        }
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
            // Shipping runs under SCHED_IDLE while it keeps up, so that a
            // batch never delays a request; behind, on a normal thread.
            threads.extend(lanes::spawn(
                format!("livery-ship-{}", state.name),
                format!("livery-lag-{}", state.name),
                Shipper::new(shared.clone(), state, sink),
            )?);
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

    /// Stages one event line (see [`Spool::stage`]); [`Ledger::flush_staged`]
    /// writes it. After [`Ledger::close`] it is written and fsynced at once.
    pub fn stage(&self, line: &[u8]) -> Result<Ticket, AppendError> {
        let ticket = self.shared.spool.stage(line)?;
        if self.closed.load(Ordering::Acquire) {
            self.shared.spool.flush(ticket)?;
            self.shared.spool.sync_now();
        }
        Ok(ticket)
    }

    /// Makes sure a staged line is in the kernel (see [`Spool::flush`]).
    pub fn flush_staged(&self, ticket: Ticket) -> Result<(), AppendError> {
        self.shared.spool.flush(ticket)
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.shared.spool
    }

    pub fn stats(&self) -> LedgerStats {
        let spool = &self.shared.spool;
        let appended = spool.generation();
        LedgerStats {
            spool: spool.stats(),
            sinks: self
                .shared
                .sinks
                .iter()
                .map(|s| {
                    let cursor = *lock(&s.cursor);
                    let err = lock(&s.error).clone();
                    let lag_bytes = spool.lag_bytes(cursor);
                    let delivered = s.delivered.load(Ordering::Relaxed);
                    let lag_events = if lag_bytes == 0 {
                        0
                    } else {
                        (s.backlog.load(Ordering::Relaxed) + appended)
                            .saturating_sub(delivered)
                            .max(1)
                    };
                    SinkStats {
                        name: s.name.clone(),
                        cursor,
                        lag_bytes,
                        lag_events,
                        delivered_events: delivered,
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
            let head = self.shared.spool.head();
            if self.shared.sinks.iter().all(|s| *lock(&s.cursor) >= head)
                || self.stats().max_lag_bytes() == 0
            {
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
        *lock(&self.shared.drain_until) = Some(Instant::now() + drain);
        self.shared.stop.store(true, Ordering::Release);
        self.shared.spool.wake_readers();
        self.shared.spool.stop_syncer();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        self.shared.spool.sync_now();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Without `close`, the threads stop at once (the spool keeps the rest).
        *lock(&self.shared.drain_until) = Some(Instant::now());
        self.shared.stop.store(true, Ordering::Release);
        self.shared.spool.wake_readers();
        self.shared.spool.stop_syncer();
    }
}

/// One sink's shipping loop and what it remembers between batches.
struct Shipper {
    shared: Arc<Shared>,
    state: Arc<SinkState>,
    sink: Box<dyn Sink>,
    spool: Arc<Spool>,
    /// Acknowledged through here.
    pos: Position,
    /// Acknowledged durably through here.
    durable: Position,
    /// When `durable` last caught up with `pos` (or the shipper started).
    durable_at: Instant,
    /// What the cursor file says, and when it was written.
    file_pos: Position,
    file_at: Instant,
    /// Whether the last ack stored the cursor in the sink.
    cursor_in_sink: bool,
    /// Read buffer: the events of a batch borrow it, the next batch reuses it.
    buf: Vec<u8>,
    /// Whether the backlog left by earlier processes has been counted.
    counted: bool,
}

impl Shipper {
    fn new(shared: Arc<Shared>, state: Arc<SinkState>, sink: Box<dyn Sink>) -> Self {
        let spool = shared.spool.clone();
        let pos = *lock(&state.cursor);
        let durable = *lock(&state.durable);
        Self {
            shared,
            state,
            sink,
            spool,
            pos,
            durable,
            durable_at: Instant::now(),
            file_pos: pos,
            file_at: Instant::now(),
            cursor_in_sink: false,
            buf: Vec::new(),
            counted: false,
        }
    }

    /// Reads and delivers one batch, or waits for one (see [`Shift`]).
    fn ship(&mut self, lane: Lane) -> Step {
        if !self.counted {
            self.counted = true;
            self.state
                .backlog
                .store(self.spool.count_backlog(self.pos), Ordering::Relaxed);
        }
        let mut buf = std::mem::take(&mut self.buf);
        let step = self.step(lane, &mut buf);
        // A buffer that grew for a backlog is let go.
        if buf.capacity() <= KEEP_READ_BUFFER {
            self.buf = buf;
        }
        step
    }

    fn step(&mut self, lane: Lane, buf: &mut Vec<u8>) -> Step {
        // Closing and past the drain time: what is left stays in the spool
        // for the next start (a sink working through a backlog, every batch
        // succeeding, kept the process alive well past its grace period).
        if self.shared.stopping() && self.shared.past_drain() {
            return Step::Finished;
        }
        let max_events = match lane {
            Lane::Idle => IDLE_BATCH_EVENTS,
            Lane::CatchUp => BATCH_EVENTS,
        };
        let seen = self.spool.generation();
        let (events, next) = match self
            .spool
            .read_batch(self.pos, max_events, BATCH_BYTES, buf)
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sink = %self.state.name, error = %e, "usage spool read failed");
                if self.shared.stopping() {
                    return Step::Finished;
                }
                std::thread::sleep(BACKOFF_MAX);
                return Step::KeepingUp;
            }
        };
        if events.is_empty() {
            if next != self.pos {
                // Only skipped lines: move past them (nothing to deliver,
                // so nothing to make durable either).
                self.acked(
                    next,
                    Ack {
                        durable: self.durable == self.pos,
                        cursor_stored: false,
                    },
                );
                return Step::KeepingUp;
            }
            self.idle();
            if self.shared.stopping() {
                return Step::Finished;
            }
            self.spool.wait_for_append(seen, self.idle_wait());
            return if self.linger(seen) {
                Step::Behind
            } else {
                Step::KeepingUp
            };
        }
        let caught_up = events.len() < max_events;
        let Some(ack) = self.deliver(&events, next) else {
            return Step::Finished;
        };
        self.acked(next, ack);
        // Under steady load something has always arrived during the
        // delivery; shipping it at once would cost a sink transaction per
        // handful of events. Linger as an idle shipper would.
        // Behind: a batch as large as the idle lane takes, or a linger cut
        // short by [`SHIP_EVENTS`] arriving (more than 10,000 a second). A
        // batch ends at its segment's end too, so one cut short there says
        // nothing about what the next segment holds.
        let mut behind = events.len() >= IDLE_BATCH_EVENTS;
        if caught_up && !self.shared.stopping() {
            behind |= self.linger(seen);
        }
        if behind || next.segment < self.spool.head().segment {
            Step::Behind
        } else {
            Step::KeepingUp
        }
    }

    /// Delivers with backoff until acknowledged; `None` when giving up on close.
    fn deliver(&mut self, events: &[LedgerEvent], through: Position) -> Option<Ack> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.sink.deliver(events, through) {
                Ok(ack) => {
                    self.state
                        .delivered
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    if lock(&self.state.error).take().is_some() {
                        tracing::info!(sink = %self.state.name, "usage sink recovered");
                    }
                    return Some(ack);
                }
                Err(e) => {
                    self.failed(e);
                    if self.shared.stopping() && self.shared.past_drain() {
                        return None;
                    }
                    sleep_unless_stopping(&self.shared, backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn failed(&self, e: String) {
        self.state.failed.fetch_add(1, Ordering::Relaxed);
        let mut err = lock(&self.state.error);
        if err.is_none() {
            tracing::warn!(sink = %self.state.name, error = %e, "usage sink delivery failed; retrying with backoff");
        }
        let since = err.as_ref().map_or_else(Instant::now, |(_, s)| *s);
        *err = Some((e, since));
    }

    /// Moves the cursor after an acknowledgement.
    fn acked(&mut self, next: Position, ack: Ack) {
        self.pos = next;
        self.cursor_in_sink = ack.cursor_stored;
        *lock(&self.state.cursor) = next;
        if ack.durable {
            self.made_durable();
        } else if self.durable_at.elapsed() >= SYNC_EVERY {
            self.sync();
        }
        if !ack.cursor_stored && self.file_at.elapsed() >= CURSOR_FILE_EVERY {
            self.save_file();
        }
    }

    fn made_durable(&mut self) {
        let moved_segment = self.pos.segment > self.durable.segment;
        self.durable = self.pos;
        self.durable_at = Instant::now();
        *lock(&self.state.durable) = self.pos;
        if moved_segment {
            self.shared.trim();
        }
    }

    fn sync(&mut self) {
        match self.sink.sync(self.pos) {
            Ok(()) => self.made_durable(),
            Err(e) => self.failed(e),
        }
    }

    /// Caught up: make what was acknowledged durable and the cursor file
    /// current, each at most at its own pace.
    fn idle(&mut self) {
        if self.durable != self.pos && self.durable_at.elapsed() >= SYNC_EVERY {
            self.sync();
        }
        if !self.cursor_in_sink
            && self.file_pos != self.pos
            && self.file_at.elapsed() >= CURSOR_FILE_EVERY
        {
            self.save_file();
        }
    }

    /// How long to sleep when idle: until the next sync or cursor write is due.
    fn idle_wait(&self) -> Duration {
        let mut wait = IDLE_WAIT;
        if self.durable != self.pos {
            wait = wait.min(SYNC_EVERY.saturating_sub(self.durable_at.elapsed()));
        }
        if !self.cursor_in_sink && self.file_pos != self.pos {
            wait = wait.min(CURSOR_FILE_EVERY.saturating_sub(self.file_at.elapsed()));
        }
        wait.max(Duration::from_millis(1))
    }

    /// After the first append following `seen`: wait for more, up to [`LINGER`]
    /// or [`SHIP_EVENTS`] events, unless stopping. `true` when the events
    /// ended it.
    fn linger(&self, seen: u64) -> bool {
        if self.spool.generation() == seen {
            return false;
        }
        let deadline = Instant::now() + LINGER;
        let target = seen.saturating_add(SHIP_EVENTS);
        while !self.shared.stopping() && self.spool.generation() < target {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.spool.wait_for_generation(target, deadline - now);
        }
        self.spool.generation() >= target
    }

    /// Saves the durable cursor (never past it: resuming takes the larger of
    /// this file and the sink's own cursor, and a sink that lost its last
    /// unsynced batches must be sent them again).
    fn save_file(&mut self) {
        if let Err(e) = self.spool.save_cursor(&self.state.name, self.durable) {
            tracing::warn!(sink = %self.state.name, error = %e, "cannot save the usage sink's cursor (events will be replayed and deduplicated)");
        }
        self.file_pos = self.durable;
        self.file_at = Instant::now();
    }
}

impl Shift for Shipper {
    fn step(&mut self, lane: Lane) -> Step {
        self.ship(lane)
    }

    /// On the way out: make everything acknowledged durable and saved.
    fn finish(mut self) {
        if self.durable != self.pos {
            self.sync();
        }
        if self.file_pos != self.pos {
            self.save_file();
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::spool::SpoolOptions;
    use std::sync::mpsc;

    /// Reports, per delivery, its size, its thread's name and whether that
    /// thread ran under `SCHED_IDLE`.
    struct Recorder(mpsc::Sender<(usize, String, bool)>);

    impl Sink for Recorder {
        fn name(&self) -> &str {
            "rec"
        }
        fn deliver(&mut self, events: &[LedgerEvent], _: Position) -> Result<Ack, String> {
            use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
            let idle = thread_priority::thread_schedule_policy().unwrap()
                == ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            let _ = self.0.send((events.len(), thread, idle));
            Ok(Ack {
                durable: true,
                cursor_stored: false,
            })
        }
    }

    /// A sink that syncs lazily (its acks are not durable), resumed where
    /// the last run left it.
    struct Lazy {
        resume_at: Position,
        syncs: Arc<AtomicU64>,
    }

    impl Sink for Lazy {
        fn name(&self) -> &str {
            "lazy"
        }
        fn resume(&mut self, _: &str) -> Result<Option<Position>, String> {
            Ok(Some(self.resume_at))
        }
        fn deliver(&mut self, _: &[LedgerEvent], _: Position) -> Result<Ack, String> {
            Ok(Ack {
                durable: false,
                cursor_stored: true,
            })
        }
        fn sync(&mut self, _: Position) -> Result<(), String> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// The last run's final batches may have been acknowledged and not yet
    /// synced when it died: the ledger syncs the sink before anything can trim
    /// the segments that hold them (it trimmed them at once, unsynced).
    #[test]
    fn a_resumed_sink_is_synced_before_its_segments_can_be_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || spool_opts(dir.path());
        let last_run = Spool::open(opts()).unwrap();
        for i in 0..3 {
            last_run.append(&line(i)).unwrap();
        }
        let shipped = last_run.head();
        drop(last_run);
        let spool = Spool::open(opts()).unwrap();
        let syncs = Arc::new(AtomicU64::new(0));
        let sink = Lazy {
            resume_at: shipped,
            syncs: syncs.clone(),
        };
        let ledger = Ledger::start(spool.clone(), vec![Box::new(sink)]).unwrap();
        assert!(
            syncs.load(Ordering::SeqCst) >= 1,
            "started on an unsynced cursor"
        );
        ledger.close(Duration::from_secs(5));
    }

    /// A sink that takes 50 ms per batch.
    struct Slow;

    impl Sink for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn deliver(&mut self, _: &[LedgerEvent], _: Position) -> Result<Ack, String> {
            std::thread::sleep(Duration::from_millis(50));
            Ok(Ack {
                durable: true,
                cursor_stored: false,
            })
        }
    }

    /// Closing stops shipping once the drain time is over, even while every
    /// batch succeeds: a backlog is left in the spool for the next start
    /// (only a failing delivery looked at the drain time, and a sink working
    /// through a backlog kept the process past its grace period).
    #[test]
    fn closing_stops_shipping_a_backlog_at_the_drain_time() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(spool_opts(dir.path())).unwrap();
        // 40 catch-up batches: about 2 s of deliveries.
        for i in 0..BATCH_EVENTS * 40 {
            spool.append(&line(i)).unwrap();
        }
        let ledger = Ledger::start(spool.clone(), vec![Box::new(Slow)]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        ledger.close(Duration::from_millis(200));
        assert!(
            started.elapsed() < Duration::from_millis(1_000),
            "close took {:?}",
            started.elapsed()
        );
    }

    /// A spool in `dir` with large segments and a 5 ms group commit.
    fn spool_opts(dir: &std::path::Path) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            fsync_interval: Duration::from_millis(5),
        }
    }

    fn line(i: usize) -> Vec<u8> {
        format!(r#"{{"event_id":"e{i}","ts":"2025-01-01T00:00:00Z","request_id":"r{i}","reseller":"a","tenant":"t"}}"#).into_bytes()
    }

    /// Collects deliveries until `n` events arrived in all.
    fn deliveries(
        rx: &mpsc::Receiver<(usize, String, bool)>,
        n: usize,
    ) -> Vec<(usize, String, bool)> {
        let mut got = Vec::new();
        while got
            .iter()
            .map(|d: &(usize, String, bool)| d.0)
            .sum::<usize>()
            < n
        {
            got.push(
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("a delivery"),
            );
        }
        got
    }

    #[test]
    fn a_backlog_ships_at_normal_priority_and_a_trickle_under_sched_idle() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(spool_opts(dir.path())).unwrap();
        // A backlog left by an earlier process: more than the idle lane takes.
        let backlog = IDLE_BATCH_EVENTS * 3;
        for i in 0..backlog {
            spool.append(&line(i)).unwrap();
        }
        let (tx, rx) = mpsc::channel();
        let ledger = Ledger::start(spool.clone(), vec![Box::new(Recorder(tx))]).unwrap();
        let first = deliveries(&rx, backlog);
        // One idle batch finds the backlog; the catch-up lane ships the rest.
        assert_eq!(
            first[0],
            (IDLE_BATCH_EVENTS, "livery-ship-rec".to_owned(), true),
            "{first:?}"
        );
        assert!(
            first[1..]
                .iter()
                .all(|(_, t, idle)| t == "livery-lag-rec" && !*idle),
            "{first:?}"
        );
        // Then a trickle, well under the idle lane's batch and SHIP_EVENTS. The
        // catch-up lane may still be waiting when its first events arrive (its
        // last batch was a full one), so the first wave may ship from either
        // lane; a batch that keeps up hands over to the idle lane, which then
        // ships the second wave.
        for i in backlog..backlog + 10 {
            spool.append(&line(i)).unwrap();
        }
        deliveries(&rx, 10);
        for i in backlog + 10..backlog + 20 {
            spool.append(&line(i)).unwrap();
        }
        let trickle = deliveries(&rx, 10);
        assert!(
            trickle
                .iter()
                .all(|(_, t, idle)| t == "livery-ship-rec" && *idle),
            "{trickle:?}"
        );
        ledger.close(Duration::from_secs(5));
    }
}
