//! The shared backend: every gateway instance counts in one Redis.
//!
//! - **Admission** is one Lua script (`lua/admit.lua`, `EVALSHA`), one round
//!   trip: it reads, checks and charges the tenant's and the reseller's request
//!   and token buckets, concurrency slots and month counters atomically, using
//!   Redis's clock so instances with skewed clocks agree. Nothing is read first
//!   and written later from the gateway, so there is no check-then-consume race.
//! - **Settle** is a second script (`lua/settle.lua`), idempotent: admission
//!   stores its estimate under the admission's unique id and the first settle
//!   consumes it. Settles and slot releases are sent by a background worker
//!   (the request path only queues them), batched on the multiplexed connection.
//! - **Concurrency** is counted in Redis, not per instance (a per-instance count
//!   multiplies the limit by the replicas): a sorted set of admission ids
//!   scored by lease expiry. The worker renews the leases of this instance's
//!   live admissions every third of a lease; a crashed instance's slots expire
//!   after one lease (30 s) instead of leaking.
//! - **Months** live in Redis too: per level and month one hash field holds
//!   the settled tokens, seeded (raised, never lowered) from each instance's
//!   view of the durable ledger, and apart from them the estimates reserved
//!   by requests in flight, in two generations of
//!   [`LimiterSettings::reservation_hold`](super::LimiterSettings) each: a
//!   settle moves its estimate out (once: the reservation it takes says which
//!   generation holds it), and a generation two old is dropped, so a crashed
//!   instance's requests stop holding the month after one to two generations
//!   (their usage is unknown, as the local backend's is after a crash: the
//!   month is then what the ledger recorded).
//!
//! The connection is one `MultiplexedConnection` shared by all requests (it
//! pipelines concurrent commands), re-created after an error. A pool would add
//! nothing but a health-check round trip per checkout. It is dialled in a task
//! of its own, which no admission's timeout cancels.

use super::headers::{BucketView, LevelView, RateHeaders};
use super::local::UnsentCorrection;
use super::month::Month;
use super::plan::{EffectiveLimits, Level, PlanLimits};
use super::{Check, LimitKey};
use crate::limits::error::LimitRejection;
use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const ADMIT: &str = include_str!("lua/admit.lua");
const SETTLE: &str = include_str!("lua/settle.lua");
const RENEW: &str = include_str!("lua/renew.lua");

/// Queued settle and release jobs; beyond this they are dropped (counted): a
/// lost settle leaves the estimate charged, a lost release expires with its lease.
const QUEUE: usize = 16_384;
/// A reservation outlives any request (the request deadline is 10 minutes).
const RESERVATION_TTL_MS: u64 = 3_600_000;
/// Month counters are kept a little over a month.
const MONTH_TTL_S: u64 = 40 * 24 * 3600;

/// The keys of one admission. All share the reseller's hash tag, so one script
/// touches one cluster slot. They sit one after the other in one string: an
/// admission holds its keys for the request's life (settle, release and lease
/// renewal name them), and seven strings were seven allocations and some
/// 0.15-0.25 KiB more per request in flight.
#[derive(Debug)]
pub(crate) struct Keys {
    buf: String,
    /// Where each key ends in `buf`, in the order of the constants below.
    ends: [u32; 7],
}

const T_HASH: usize = 0;
const T_SLOTS: usize = 1;
const T_MONTH: usize = 2;
const R_HASH: usize = 3;
const R_SLOTS: usize = 4;
const R_MONTH: usize = 5;
const RESERVATION: usize = 6;

impl Keys {
    fn new(prefix: &str, key: &LimitKey, month: Month, id: &str) -> Self {
        let month = month.to_string();
        let mut buf: Vec<u8> = Vec::with_capacity(
            7 * (prefix.len() + key.reseller.len() + 4)
                + 3 * key.tenant.len()
                + 2 * month.len()
                + id.len()
                + 40,
        );
        let mut ends = [0u32; 7];
        let mut end = |buf: &Vec<u8>, i: usize| {
            ends[i] = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        };
        // The reseller's part (`r`) starts every key, the tenant's (`t`)
        // three of them; both are copied from the first key.
        buf.extend_from_slice(prefix.as_bytes());
        buf.push(b'{');
        escape_into(&mut buf, &key.reseller);
        buf.push(b'}');
        let r = 0..buf.len();
        buf.extend_from_slice(b":t:");
        escape_into(&mut buf, &key.tenant);
        let t = 0..buf.len();
        end(&buf, T_HASH);
        buf.extend_from_within(t.clone());
        buf.extend_from_slice(b":c");
        end(&buf, T_SLOTS);
        buf.extend_from_within(t);
        // `:q` after the name of the month counter before 2026-12-07, which
        // admit.lua reads once when it creates the hash.
        buf.extend_from_slice(b":m:");
        buf.extend_from_slice(month.as_bytes());
        buf.extend_from_slice(b":q");
        end(&buf, T_MONTH);
        buf.extend_from_within(r.clone());
        buf.extend_from_slice(b":r");
        end(&buf, R_HASH);
        buf.extend_from_within(r.clone());
        buf.extend_from_slice(b":r:c");
        end(&buf, R_SLOTS);
        buf.extend_from_within(r.clone());
        buf.extend_from_slice(b":r:m:");
        buf.extend_from_slice(month.as_bytes());
        buf.extend_from_slice(b":q");
        end(&buf, R_MONTH);
        buf.extend_from_within(r);
        buf.extend_from_slice(b":a:");
        buf.extend_from_slice(id.as_bytes());
        end(&buf, RESERVATION);
        // Only whole `&str`s and ASCII went in: always UTF-8.
        let buf = String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Self { buf, ends }
    }

    fn key(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.buf
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }

    /// The seven names in the order the admission script takes them.
    fn all(&self) -> impl Iterator<Item = &str> {
        (0..self.ends.len()).map(|i| self.key(i))
    }

    /// The slot sets of the levels whose slots are `held` (tenant, reseller).
    fn slots(&self, held: [bool; 2]) -> impl Iterator<Item = &str> {
        [(self.key(T_SLOTS), held[0]), (self.key(R_SLOTS), held[1])]
            .into_iter()
            .filter_map(|(k, h)| h.then_some(k))
    }
}

/// Ids are escaped so that no tenant id can forge another key (`:`, `{`...).
fn escape_into(out: &mut Vec<u8>, id: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Runs `EVALSHA` as built in `cmd`, loading `script` first if this Redis does
/// not know it yet (`NOSCRIPT`: a new or flushed server), as the crate's
/// `ScriptInvocation` does. Built straight into a `Cmd` (one buffer for all
/// arguments) because `ScriptInvocation` allocates a vector per key and
/// argument and copies them into a `Cmd` again: about 15k instructions per
/// admission (callgrind).
async fn evalsha<T: redis::FromRedisValue>(
    c: &mut MultiplexedConnection,
    script: &redis::Script,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    match cmd.query_async(c).await {
        Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
            script.load_async(c).await?;
            cmd.query_async(c).await
        }
        r => r,
    }
}

/// Live admissions holding slots (id → keys, which levels), for lease renewal.
type Held = DashMap<Arc<str>, (Arc<Keys>, [bool; 2])>;

enum Job {
    Settle {
        keys: Arc<Keys>,
        actual: u64,
        window_ms: u64,
        tpm: [u64; 2],
        quota: [bool; 2],
        /// The same admission's slot release, folded in by [`coalesce`].
        release: Option<(Arc<str>, [bool; 2])>,
        /// Left out of this instance's seeds until the job is done.
        _unsent: UnsentCorrection,
    },
    Release {
        keys: Arc<Keys>,
        id: Arc<str>,
        slots: [bool; 2],
    },
}

/// Folds each release into the settle of the same admission queued in the same
/// batch (a request that ends settles and releases at once): one script call
/// instead of a script call and a pipelined ZREM, so one command less to encode,
/// send and read back. Order between the two does not matter: they touch
/// different keys.
fn coalesce(jobs: Vec<Job>) -> Vec<Job> {
    let mut out: Vec<Job> = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Job::Release { keys, id, slots } = &job {
            let settle = out.iter_mut().find_map(|j| match j {
                Job::Settle {
                    keys: k,
                    release: r @ None,
                    ..
                } if Arc::ptr_eq(k, keys) => Some(r),
                _ => None,
            });
            if let Some(r) = settle {
                *r = Some((id.clone(), *slots));
                continue;
            }
        }
        out.push(job);
    }
    out
}

/// What a Redis admission holds.
pub(crate) struct RedisGrant {
    pub keys: Arc<Keys>,
    pub id: Arc<str>,
    pub slots: [bool; 2],
    pub headers: RateHeaders,
    pub month_used: [u64; 2],
}

/// The result of one admission script.
pub(crate) type Verdict = Result<RedisGrant, LimitRejection>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisFailure {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("unexpected script reply: {0}")]
    Reply(String),
}

/// How long one dial (TCP, `AUTH`, the client's `CLIENT SETINFO`) may take
/// before it is given up; the next use of Redis dials again.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    client: redis::Client,
    current: ArcSwapOption<MultiplexedConnection>,
    /// A dial is running (one at a time).
    dialing: AtomicBool,
    /// Woken when a dial ends, made or not.
    dialled: tokio::sync::Notify,
    /// Why the last dial failed, for those that waited on it.
    last_failure: ArcSwapOption<String>,
}

impl Conn {
    fn new(client: redis::Client) -> Self {
        Self {
            client,
            current: ArcSwapOption::empty(),
            dialing: AtomicBool::new(false),
            dialled: tokio::sync::Notify::new(),
            last_failure: ArcSwapOption::empty(),
        }
    }

    /// The connection made, if any: a clone of the handle, read through the
    /// swap's guard (no reference count taken on the shared one).
    fn connected(&self) -> Option<MultiplexedConnection> {
        self.current.load().as_deref().cloned()
    }

    /// The shared connection, dialled if there is none. The dial runs in its
    /// own task: an admission that stops waiting for it (its timeout) leaves
    /// it running, so a connection slower to set up than an admission may wait
    /// is still made, for the admissions after it. Cancelled with each
    /// admission, such a dial never finished, and Redis was never used again.
    async fn get(self: &Arc<Self>) -> Result<MultiplexedConnection, redis::RedisError> {
        if let Some(c) = self.connected() {
            return Ok(c);
        }
        let dialled = self.dialled.notified();
        tokio::pin!(dialled);
        dialled.as_mut().enable();
        // Again, now that a dial ending meanwhile would wake this one.
        if let Some(c) = self.connected() {
            return Ok(c);
        }
        if !self.dialing.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().dial());
        }
        dialled.await;
        match self.connected() {
            Some(c) => Ok(c),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "could not connect to redis",
                self.last_failure
                    .load_full()
                    .map_or_else(String::new, |e| (*e).clone()),
            ))),
        }
    }

    async fn dial(self: Arc<Self>) {
        // A dial that ended between a caller's check and its start.
        if self.current.load().is_none() {
            match tokio::time::timeout(DIAL_TIMEOUT, self.client.get_multiplexed_async_connection())
                .await
            {
                Ok(Ok(c)) => self.current.store(Some(Arc::new(c))),
                Ok(Err(e)) => self.last_failure.store(Some(Arc::new(e.to_string()))),
                Err(_) => self.last_failure.store(Some(Arc::new(format!(
                    "connecting took longer than {DIAL_TIMEOUT:?}"
                )))),
            }
        }
        self.dialing.store(false, Ordering::Release);
        self.dialled.notify_waiters();
    }

    fn reset(&self) {
        self.current.store(None);
    }
}

/// Health of the shared backend: the switch to the fallback is logged once
/// and counted; while down, one admission per probe interval tries Redis again.
#[derive(Debug, Default)]
pub(crate) struct Health {
    down: AtomicBool,
    next_probe_ms: AtomicU64,
    pub fallbacks_total: AtomicU64,
    pub recoveries_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub dropped_jobs_total: AtomicU64,
}

pub(crate) struct RedisBackend {
    conn: Arc<Conn>,
    admit: redis::Script,
    prefix: String,
    timeout: Duration,
    lease: Duration,
    probe_interval: Duration,
    /// The generation length of reservations in the month hashes, ms.
    hold_ms: u64,
    base: Instant,
    pub health: Arc<Health>,
    jobs: mpsc::Sender<Job>,
    /// Live admissions holding slots, for lease renewal.
    held: Arc<Held>,
}

impl RedisBackend {
    /// Builds the backend and starts its worker (needs a Tokio runtime).
    pub fn new(
        url: &str,
        prefix: String,
        timeout: Duration,
        lease: Duration,
        probe_interval: Duration,
        reservation_hold: Duration,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "the redis backend must be built inside a Tokio runtime".to_owned())?;
        let conn = Arc::new(Conn::new(client));
        // Dialled now, so that the first requests find the connection made
        // instead of each waiting for it up to the timeout and falling back.
        conn.dialing.store(true, Ordering::Release);
        handle.spawn(conn.clone().dial());
        let health = Arc::new(Health::default());
        let held = Arc::new(DashMap::new());
        let (jobs, rx) = mpsc::channel(QUEUE);
        let hold_ms = window_ms(reservation_hold);
        handle.spawn(worker(
            rx,
            conn.clone(),
            held.clone(),
            health.clone(),
            timeout.max(Duration::from_millis(250)),
            lease,
            hold_ms,
        ));
        Ok(Self {
            conn,
            admit: redis::Script::new(ADMIT),
            prefix,
            timeout,
            lease,
            probe_interval,
            hold_ms,
            base: Instant::now(),
            health,
            jobs,
            held,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_down(&self) -> bool {
        self.health.down.load(Ordering::Relaxed)
    }

    /// True if this admission should go to Redis: always while it is up; while
    /// it is down, for one admission per probe interval.
    pub fn should_try(&self) -> bool {
        if !self.is_down() {
            return true;
        }
        let now = self.now_ms();
        let due = self.health.next_probe_ms.load(Ordering::Relaxed);
        now >= due
            && self
                .health
                .next_probe_ms
                .compare_exchange(
                    due,
                    now + self.probe_ms(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn probe_ms(&self) -> u64 {
        u64::try_from(self.probe_interval.as_millis()).unwrap_or(1000)
    }

    pub fn on_success(&self) {
        if self.health.down.swap(false, Ordering::AcqRel) {
            self.health.recoveries_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("rate limiter: redis answers again; shared limiting resumed");
        }
    }

    pub fn on_failure(&self, e: &RedisFailure, fail_open: bool) {
        self.health.errors_total.fetch_add(1, Ordering::Relaxed);
        self.conn.reset();
        self.health
            .next_probe_ms
            .store(self.now_ms() + self.probe_ms(), Ordering::Relaxed);
        if !self.health.down.swap(true, Ordering::AcqRel) {
            self.health.fallbacks_total.fetch_add(1, Ordering::Relaxed);
            if fail_open {
                tracing::error!(error = %e, "rate limiter: redis unavailable; counting locally, each instance taking its share of every limit (fail_open)");
            } else {
                tracing::error!(error = %e, "rate limiter: redis unavailable; refusing requests with 503 until it answers (fail_closed)");
            }
        }
    }

    /// Runs the admission script within the timeout.
    pub async fn admit(
        &self,
        key: &LimitKey,
        limits: &EffectiveLimits,
        estimate: u64,
        month: Month,
        seeds: [u64; 2],
        window: Duration,
    ) -> Result<Verdict, RedisFailure> {
        let id: Arc<str> = crate::telemetry::ids::uuid_v7().simple().to_string().into();
        let keys = Arc::new(Keys::new(&self.prefix, key, month, &id));
        let window_ms = window_ms(window);
        let lease_ms = window_ms_of(self.lease);
        let mut numbers = Packed::new();
        numbers.push(window_ms).push(lease_ms).push(estimate);
        for (level, seed) in Level::BOTH.into_iter().zip(seeds) {
            let p = limits.level(level);
            numbers
                .push(p.requests_per_minute.unwrap_or(0))
                .push(p.tokens_per_minute.unwrap_or(0))
                .push(p.max_concurrent.unwrap_or(0))
                .push(p.tokens_per_month.unwrap_or(0))
                .push(seed);
        }
        numbers
            .push(self.hold_ms)
            .push(super::local::MONTH_HELD_RETRY_MS as u64);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.admit.get_hash()).arg(7);
        for k in keys.all() {
            cmd.arg(k);
        }
        cmd.arg(&*id)
            .arg(if settles(limits) {
                // A settle must find its reservation while it is held.
                RESERVATION_TTL_MS.max(self.hold_ms.saturating_mul(2))
            } else {
                0
            })
            .arg(MONTH_TTL_S)
            .arg(lease_ms.saturating_mul(2))
            .arg(numbers.bytes());
        // The script may run even if its answer never comes back (the
        // timeout, or the request cancelled meanwhile): until it does, a
        // compensating settle and release is due.
        let mut unanswered = Unanswered {
            backend: self,
            keys: Some(keys.clone()),
            id: id.clone(),
            limits,
            window,
        };
        // Packed doubles, not text: Redis's Lua would format each number with
        // sprintf, and reading an array through the client's RESP parser
        // (`combine`) costs about 1.2k instructions per element (callgrind).
        let reply: Vec<u8> = tokio::time::timeout(self.timeout, async {
            let mut c = self.conn.get().await?;
            evalsha(&mut c, &self.admit, &cmd).await
        })
        .await
        .map_err(|_| RedisFailure::Timeout(self.timeout))??;
        let verdict = reply_fields(&reply)
            .and_then(|fields| parse_reply(&fields, limits, estimate, month))
            .ok_or_else(|| RedisFailure::Reply(format!("{reply:02x?}")))?;
        unanswered.keys = None;
        Ok(match verdict {
            Ok((slots, headers, month_used)) => {
                if slots.iter().any(|s| *s) {
                    self.held.insert(id.clone(), (keys.clone(), slots));
                }
                Ok(RedisGrant {
                    keys,
                    id,
                    slots,
                    headers,
                    month_used,
                })
            }
            Err(rejection) => Err(rejection),
        })
    }

    pub fn settle(
        &self,
        keys: &Arc<Keys>,
        limits: &EffectiveLimits,
        actual: u64,
        window: Duration,
        unsent: UnsentCorrection,
    ) {
        if !settles(limits) {
            return;
        }
        self.send(settle_job(
            keys.clone(),
            limits,
            actual,
            window,
            None,
            unsent,
        ));
    }

    pub fn release(&self, keys: &Arc<Keys>, id: &Arc<str>, slots: [bool; 2]) {
        if !slots.iter().any(|s| *s) {
            return;
        }
        self.held.remove(id);
        self.send(Job::Release {
            keys: keys.clone(),
            id: id.clone(),
            slots,
        });
    }

    fn send(&self, job: Job) {
        if self.jobs.try_send(job).is_err() {
            self.health
                .dropped_jobs_total
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An admission script sent whose answer has not been read. Dropped before
/// it is (a timeout, the request cancelled, an unreadable reply), it queues
/// what undoes the script if it ran anyway: a settle with no usage (which
/// refunds the reservation's estimate to the buckets and the month, once:
/// `GETDEL`) and the release of any slot it took; both do nothing if the
/// script never ran. Without it Redis kept the estimate charged for the month
/// and the slot held for its lease, while the request went on to the fallback
/// (counted twice) or was refused (charged for nothing).
struct Unanswered<'a> {
    backend: &'a RedisBackend,
    /// `None` once the answer was read.
    keys: Option<Arc<Keys>>,
    id: Arc<str>,
    limits: &'a EffectiveLimits,
    window: Duration,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let Some(keys) = self.keys.take() else { return };
        let l = self.limits;
        let slots = [
            l.tenant.max_concurrent.is_some(),
            l.reseller.max_concurrent.is_some(),
        ];
        self.backend.send(settle_job(
            keys,
            l,
            0,
            self.window,
            Some((self.id.clone(), slots)),
            UnsentCorrection::new([None, None], 0),
        ));
    }
}

/// The settle of an admission with `actual` tokens, and the release of its
/// slots if `release` names them.
fn settle_job(
    keys: Arc<Keys>,
    limits: &EffectiveLimits,
    actual: u64,
    window: Duration,
    release: Option<(Arc<str>, [bool; 2])>,
    unsent: UnsentCorrection,
) -> Job {
    Job::Settle {
        keys,
        actual,
        window_ms: window_ms(window),
        tpm: [
            limits.tenant.tokens_per_minute.unwrap_or(0),
            limits.reseller.tokens_per_minute.unwrap_or(0),
        ],
        quota: [
            limits.tenant.tokens_per_month.is_some(),
            limits.reseller.tokens_per_month.is_some(),
        ],
        release,
        _unsent: unsent,
    }
}

/// True if some token limit needs the real usage: without one there is no
/// reservation to write and no settle to send.
fn settles(limits: &EffectiveLimits) -> bool {
    [limits.tenant, limits.reseller]
        .iter()
        .any(|p| p.tokens_per_minute.is_some() || p.tokens_per_month.is_some())
}

fn window_ms(window: Duration) -> u64 {
    window_ms_of(window).max(1)
}

fn window_ms_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

type Parsed = Result<([bool; 2], RateHeaders, [u64; 2]), LimitRejection>;

/// Fields in admit.lua's reply.
const REPLY_FIELDS: usize = 14;

/// Numbers for a script, packed as little-endian doubles (what `struct.unpack`
/// reads with `'<d'`): exact for integers below 2^53, which every limit,
/// count and duration here is.
struct Packed {
    buf: [u8; 8 * PACKED_MAX],
    len: usize,
}

/// The most numbers a script takes packed (admit.lua's 15).
const PACKED_MAX: usize = 15;

impl Packed {
    fn new() -> Self {
        Self {
            buf: [0; 8 * PACKED_MAX],
            len: 0,
        }
    }

    fn push(&mut self, n: u64) -> &mut Self {
        if let Some(slot) = self.buf.get_mut(self.len..self.len + 8) {
            slot.copy_from_slice(&(n as f64).to_le_bytes());
            self.len += 8;
        }
        self
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The reply's packed doubles; `None` unless there are exactly [`REPLY_FIELDS`].
fn reply_fields(reply: &[u8]) -> Option<[f64; REPLY_FIELDS]> {
    if reply.len() != 8 * REPLY_FIELDS {
        return None;
    }
    let mut out = [0f64; REPLY_FIELDS];
    for (f, b) in out.iter_mut().zip(reply.chunks_exact(8)) {
        *f = f64::from_le_bytes(b.try_into().ok()?);
    }
    Some(out)
}

fn parse_reply(
    r: &[f64; REPLY_FIELDS],
    limits: &EffectiveLimits,
    estimate: u64,
    month: Month,
) -> Option<Parsed> {
    let f = |i: usize| Some(r[i]).filter(|x| x.is_finite());
    let mut views = [LevelView::default(); 2];
    let mut used = [0u64; 2];
    for (n, level) in Level::BOTH.into_iter().enumerate() {
        let b = 4 + n * 5;
        let p = limits.level(level);
        views[n] = LevelView {
            requests: match p.requests_per_minute {
                Some(cap) => Some(BucketView {
                    limit: cap,
                    level: f(b)?,
                    reset_ms: f(b + 1)?,
                }),
                None => None,
            },
            tokens: match p.tokens_per_minute {
                Some(cap) => Some(BucketView {
                    limit: cap,
                    level: f(b + 2)?,
                    reset_ms: f(b + 3)?,
                }),
                None => None,
            },
        };
        // A count: integral and non-negative (the cast saturates otherwise).
        used[n] = f(b + 4)? as u64;
    }
    let headers = RateHeaders::combine(&views[0], &views[1]);
    if r[0] == 1.0 {
        let slots = [
            limits.tenant.max_concurrent.is_some(),
            limits.reseller.max_concurrent.is_some(),
        ];
        return Some(Ok((slots, headers, used)));
    }
    let check = match r[1] as u8 {
        1 => Check::Month,
        2 => Check::Requests,
        3 => Check::Tokens,
        4 => Check::Concurrency,
        5 => Check::MonthHeld,
        _ => return None,
    };
    let level = if r[2] == 2.0 {
        Level::Reseller
    } else {
        Level::Tenant
    };
    let p: &PlanLimits = limits.level(level);
    let limit = match check {
        Check::Month | Check::MonthHeld => p.tokens_per_month,
        Check::Requests => p.requests_per_minute,
        Check::Tokens => p.tokens_per_minute,
        Check::Concurrency => p.max_concurrent,
    }?;
    let n = usize::from(level == Level::Reseller);
    Some(Err(check.rejection(
        level,
        limit,
        estimate,
        used[n],
        f(3)?,
        month,
        headers,
    )))
}

/// Jobs kept for another try after their batch failed, at most; beyond, the
/// oldest are dropped (and counted).
const RETRY_BACKLOG: usize = 8192;

/// Runs queued settles and releases (batched, concurrently on the multiplexed
/// connection) and renews the leases of live slots. A batch that fails (Redis
/// down or slow) is tried again with the next batch or tick: every job is
/// idempotent (a settle takes its reservation with `GETDEL`, a release is a
/// `ZREM`), so a job that had run is harmless to run again, and one that had
/// not is not lost with a passing hiccup. Ends when the limiter and every
/// admission are gone.
async fn worker(
    mut rx: mpsc::Receiver<Job>,
    conn: Arc<Conn>,
    held: Arc<Held>,
    health: Arc<Health>,
    timeout: Duration,
    lease: Duration,
    hold_ms: u64,
) {
    let settle = redis::Script::new(SETTLE);
    let renew = redis::Script::new(RENEW);
    let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(256);
    let mut backlog: Vec<Job> = Vec::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                let mut jobs = std::mem::take(&mut backlog);
                jobs.append(&mut batch);
                backlog = run_or_keep(&conn, &settle, &health, timeout, hold_ms, jobs).await;
            }
            _ = tick.tick() => {
                if !backlog.is_empty() {
                    let jobs = std::mem::take(&mut backlog);
                    backlog = run_or_keep(&conn, &settle, &health, timeout, hold_ms, jobs).await;
                }
                let live: Vec<(Arc<str>, Arc<Keys>, [bool; 2])> = held
                    .iter()
                    .map(|e| (e.key().clone(), e.value().0.clone(), e.value().1))
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let ok = tokio::time::timeout(timeout, renew_all(&conn, &renew, live, lease)).await;
                if !matches!(ok, Ok(Ok(()))) {
                    health.errors_total.fetch_add(1, Ordering::Relaxed);
                    conn.reset();
                }
            }
        }
    }
}

/// Runs `jobs`; returns them if they failed, for another try (at most
/// [`RETRY_BACKLOG`], the newest).
async fn run_or_keep(
    conn: &Arc<Conn>,
    settle: &redis::Script,
    health: &Health,
    timeout: Duration,
    hold_ms: u64,
    jobs: Vec<Job>,
) -> Vec<Job> {
    let mut jobs = coalesce(jobs);
    let ok = tokio::time::timeout(timeout, run_jobs(conn, settle, hold_ms, &jobs)).await;
    if matches!(ok, Ok(Ok(()))) {
        return Vec::new();
    }
    health.errors_total.fetch_add(1, Ordering::Relaxed);
    conn.reset();
    if jobs.len() > RETRY_BACKLOG {
        let dropped = jobs.len() - RETRY_BACKLOG;
        jobs.drain(..dropped);
        health
            .dropped_jobs_total
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }
    jobs
}

async fn run_jobs(
    conn: &Arc<Conn>,
    settle: &redis::Script,
    hold_ms: u64,
    jobs: &[Job],
) -> Result<(), redis::RedisError> {
    let c = conn.get().await?;
    let calls = jobs.iter().map(|job| {
        let mut c = c.clone();
        async move {
            match job {
                Job::Settle {
                    keys,
                    actual,
                    window_ms,
                    tpm,
                    quota,
                    release,
                    ..
                } => {
                    let released = release.as_ref().map_or([false; 2], |(_, held)| *held);
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(settle.get_hash())
                        .arg(5 + keys.slots(released).count())
                        .arg(keys.key(T_HASH))
                        .arg(keys.key(T_MONTH))
                        .arg(keys.key(R_HASH))
                        .arg(keys.key(R_MONTH))
                        .arg(keys.key(RESERVATION));
                    for k in keys.slots(released) {
                        cmd.arg(k);
                    }
                    let mut numbers = Packed::new();
                    numbers
                        .push(*actual)
                        .push(*window_ms)
                        .push(tpm[0])
                        .push(tpm[1])
                        .push(u64::from(quota[0]))
                        .push(u64::from(quota[1]))
                        .push(hold_ms);
                    cmd.arg(MONTH_TTL_S).arg(numbers.bytes());
                    if let Some((id, _)) = release {
                        cmd.arg(&**id);
                    }
                    evalsha::<i64>(&mut c, settle, &cmd).await.map(|_| ())
                }
                Job::Release { keys, id, slots } => {
                    let mut p = redis::pipe();
                    for k in keys.slots(*slots) {
                        p.zrem(k, &**id).ignore();
                    }
                    p.query_async::<()>(&mut c).await
                }
            }
        }
    });
    let results = futures_util::future::join_all(calls).await;
    results.into_iter().collect()
}

async fn renew_all(
    conn: &Arc<Conn>,
    renew: &redis::Script,
    live: Vec<(Arc<str>, Arc<Keys>, [bool; 2])>,
    lease: Duration,
) -> Result<(), redis::RedisError> {
    let c = conn.get().await?;
    let lease_ms = window_ms_of(lease);
    let calls = live.into_iter().map(|(id, keys, slots)| {
        let mut c = c.clone();
        async move {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(renew.get_hash()).arg(keys.slots(slots).count());
            for k in keys.slots(slots) {
                cmd.arg(k);
            }
            cmd.arg(lease_ms).arg(&*id);
            evalsha::<i64>(&mut c, renew, &cmd).await.map(|_| ())
        }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(tenant: &str, id: &str) -> Arc<Keys> {
        Arc::new(Keys::new(
            "livery:rl:",
            &LimitKey::new("acme", tenant),
            Month::current(),
            id,
        ))
    }

    fn settle(keys: &Arc<Keys>) -> Job {
        Job::Settle {
            keys: keys.clone(),
            actual: 10,
            window_ms: 60_000,
            tpm: [1_000, 0],
            quota: [false, false],
            release: None,
            _unsent: UnsentCorrection::new([None, None], 0),
        }
    }

    fn release(keys: &Arc<Keys>, id: &str) -> Job {
        Job::Release {
            keys: keys.clone(),
            id: id.into(),
            slots: [true, false],
        }
    }

    #[test]
    fn a_release_rides_on_the_settle_of_its_own_admission_only() {
        let (a, b, c) = (
            keys("dental", "a"),
            keys("dental", "b"),
            keys("realty", "c"),
        );
        let out = coalesce(vec![
            settle(&a),
            settle(&b),
            release(&b, "b"),
            release(&a, "a"),
            release(&c, "c"),
            release(&a, "a-again"),
        ]);
        let shape: Vec<String> = out
            .iter()
            .map(|j| match j {
                Job::Settle { keys, release, .. } => format!(
                    "settle {} {:?}",
                    keys.key(RESERVATION),
                    release.as_ref().map(|(id, s)| (id.to_string(), *s))
                ),
                Job::Release { keys, id, .. } => format!("release {} {id}", keys.key(T_SLOTS)),
            })
            .collect();
        let r = |id: &str| format!("livery:rl:{{acme}}:a:{id}");
        assert_eq!(
            shape,
            [
                format!("settle {} Some((\"a\", [true, false]))", r("a")),
                format!("settle {} Some((\"b\", [true, false]))", r("b")),
                "release livery:rl:{acme}:t:realty:c c".to_string(),
                // A settle carries one release; a second one goes on its own.
                "release livery:rl:{acme}:t:dental:c a-again".to_string(),
            ]
        );
    }

    #[test]
    fn an_admissions_keys_are_its_seven_names_escaped() {
        let k = Keys::new(
            "livery:rl:",
            &LimitKey::new("ac{me}", "den:tal"),
            Month::current(),
            "id1",
        );
        let m = Month::current().to_string();
        let r = "livery:rl:{ac%7Bme%7D}";
        let t = format!("{r}:t:den%3Atal");
        assert_eq!(
            k.all().collect::<Vec<_>>(),
            [
                t.clone(),
                format!("{t}:c"),
                format!("{t}:m:{m}:q"),
                format!("{r}:r"),
                format!("{r}:r:c"),
                format!("{r}:r:m:{m}:q"),
                format!("{r}:a:id1"),
            ]
        );
        assert_eq!(
            k.slots([false, true]).collect::<Vec<_>>(),
            [format!("{r}:r:c")]
        );
    }

    #[test]
    fn the_reply_has_exactly_its_fourteen_fields() {
        let fields: [f64; REPLY_FIELDS] = [
            1., 0., 0., 0., 99.5, 600., 970., 1800., 30., 0., 0., 0., 0., 7.,
        ];
        let mut packed = Packed::new();
        let ok: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!(reply_fields(&ok), Some(fields));
        assert!(reply_fields(&ok[..8 * 13]).is_none());
        assert!(reply_fields(&[ok.as_slice(), &[0; 8]].concat()).is_none());
        // What the scripts read: 8 little-endian bytes a number, in order.
        packed.push(3).push(1 << 40);
        assert_eq!(packed.bytes().len(), 16);
        assert_eq!(packed.bytes()[..8], 3f64.to_le_bytes());
        assert_eq!(packed.bytes()[8..], ((1u64 << 40) as f64).to_le_bytes());
    }
}
