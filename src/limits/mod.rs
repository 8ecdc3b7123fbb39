//! Rate limits and quotas per tenant and per reseller.
//!
//! Every admitted request is held to two levels at once: its tenant's plan (with
//! the tenant's overrides) and its reseller's plan, which caps the sum of all the
//! reseller's tenants. [`Limiter::admit`] checks and charges, all or nothing:
//!
//! - a **request bucket** (requests per minute);
//! - a **token bucket** (tokens per minute), charged with an estimate before the
//!   call ([`estimate_request_tokens`]) and corrected with the real usage after
//!   it ([`Admission::settle`]: the difference is charged or refunded, so the
//!   bucket converges on real consumption);
//! - a **concurrency slot**, held by the [`Admission`] until it is dropped (so
//!   it comes back on every exit path: finish, error, client gone, panic);
//! - the **monthly quota** (real tokens per calendar month, UTC), seeded from the
//!   durable usage ledger through [`MonthlyUsageSource`] so it survives restarts.
//!   The month's settled tokens and the estimates still reserved by requests
//!   in flight are counted apart: settled tokens at the quota are a final
//!   answer (`insufficient_quota`), a quota held only by reservations a
//!   retryable one ([`LimitRejection::MonthlyQuotaHeld`]), since those
//!   requests settle at their real usage.
//!
//! Counting is local ([`local`], the default) or shared by every gateway
//! instance through Redis ([`redis`], one Lua script per admission). When Redis
//! is slow or down, `fail_open` counts locally with each instance taking
//! `1 / instances` of each limit, `fail_closed` refuses with 503; the switch is
//! logged once and counted ([`Limiter::stats`]), and Redis is probed until it
//! answers again.

mod error;
mod estimate;
mod headers;
mod local;
mod month;
mod plan;
mod redis;
#[cfg(test)]
mod tests;

pub use error::{LimitRejection, LimitsError};
pub use estimate::{
    estimate_prompt_tokens, estimate_request_tokens, estimate_response_tokens, RequestFields,
};
pub use headers::{go_duration, RateHeaders, RateWindow};
pub use month::{MemoryMonthlyUsage, Month, MonthlyUsageSource, NoMonthlyUsage};
pub use plan::{EffectiveLimits, Level, PlanLimits, DEFAULT_COMPLETION_TOKENS};

use crate::config::{LimitsBackend, LimitsConfig, OnRedisError};
use local::{Entry, LocalBackend};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Who is counted: a tenant of a reseller (the reseller's own counters are
/// keyed by `reseller` alone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    pub reseller: Arc<str>,
    pub tenant: Arc<str>,
}

impl LimitKey {
    pub fn new(reseller: impl Into<Arc<str>>, tenant: impl Into<Arc<str>>) -> Self {
        Self {
            reseller: reseller.into(),
            tenant: tenant.into(),
        }
    }
}

/// Where the counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Local,
    Redis { url: String },
}

/// How a [`Limiter`] counts. [`LimiterSettings::from_config`] reads `[limits]`;
/// the fields that are not in the configuration have production defaults that
/// tests shorten.
#[derive(Debug, Clone)]
pub struct LimiterSettings {
    pub backend: Backend,
    /// The "minute" of the per-minute limits (60 s; tests use shorter windows).
    pub window: Duration,
    pub redis_timeout: Duration,
    pub on_redis_error: OnRedisError,
    /// Instances sharing the limits; each takes `1 / instances` under `fail_open`.
    pub instances: u32,
    /// How long a concurrency slot outlives a gateway that died holding it.
    pub concurrency_lease: Duration,
    /// While Redis is down, how often one admission tries it again.
    pub probe_interval: Duration,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// With Redis, how long a reservation holds its month at least (and at
    /// most twice that): reservations are counted in two generations of
    /// this length, and one two generations old is dropped, so a gateway
    /// that died with requests in flight does not hold its tenants' months
    /// for good. Longer than any request (the default request deadline is
    /// 10 minutes); every instance on one Redis must use the same.
    pub reservation_hold: Duration,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            window: Duration::from_secs(60),
            redis_timeout: Duration::from_millis(25),
            on_redis_error: OnRedisError::FailOpen,
            instances: 1,
            concurrency_lease: Duration::from_secs(30),
            probe_interval: Duration::from_secs(1),
            key_prefix: "livery:rl:".into(),
            reservation_hold: Duration::from_secs(600),
        }
    }
}

impl LimiterSettings {
    pub fn from_config(c: &LimitsConfig) -> Result<Self, LimitsError> {
        let backend = match c.backend {
            LimitsBackend::Local => Backend::Local,
            LimitsBackend::Redis => Backend::Redis {
                url: c.resolved_redis_url().map_err(LimitsError::Invalid)?,
            },
        };
        if c.redis_timeout_ms == 0 {
            return Err(LimitsError::Invalid(
                "redis_timeout_ms must be positive".into(),
            ));
        }
        if c.instances == 0 {
            return Err(LimitsError::Invalid("instances must be at least 1".into()));
        }
        Ok(Self {
            backend,
            redis_timeout: Duration::from_millis(c.redis_timeout_ms),
            on_redis_error: c.on_redis_error,
            instances: c.instances,
            ..Self::default()
        })
    }
}

/// The order in which limits are checked; the first one hit is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The month's settled tokens reached the quota: final.
    Month,
    /// What the month has left is held by requests in flight: retryable.
    /// After [`Check::Month`] at both levels, so a level used up is told
    /// even if the other is only held.
    MonthHeld,
    Requests,
    Tokens,
    Concurrency,
}

impl Check {
    pub(crate) const ORDER: [Check; 5] = [
        Check::Month,
        Check::MonthHeld,
        Check::Requests,
        Check::Tokens,
        Check::Concurrency,
    ];

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rejection(
        self,
        level: Level,
        limit: u64,
        requested: u64,
        used: u64,
        wait_ms: f64,
        month: Month,
        headers: RateHeaders,
    ) -> LimitRejection {
        let retry_after = Duration::from_secs_f64((wait_ms.max(1.0) / 1000.0).min(1e9));
        match self {
            Check::Month => LimitRejection::MonthlyQuota {
                level,
                limit,
                used,
                retry_after: month.remaining(),
                headers,
            },
            Check::MonthHeld => LimitRejection::MonthlyQuotaHeld {
                level,
                limit,
                requested,
                more_than_left: requested > limit.saturating_sub(used),
                retry_after,
                headers,
            },
            Check::Requests => LimitRejection::Requests {
                level,
                limit,
                retry_after,
                headers,
            },
            Check::Tokens => LimitRejection::Tokens {
                level,
                limit,
                requested,
                retry_after,
                headers,
            },
            Check::Concurrency => LimitRejection::Concurrency {
                level,
                limit,
                retry_after,
                headers,
            },
        }
    }
}

#[derive(Default)]
struct Counters {
    admitted: AtomicU64,
    rejected: [AtomicU64; REJECTION_LABELS.len()],
}

/// The most tokens an admission reserves or a settlement counts. A client's
/// `max_tokens` is its own to choose (`1e19` parses as a `u64`), and the
/// provider's reported usage is not checked either; unbounded, one request
/// drove its reseller's bucket and month count to values that never recovered
/// (a refund beyond `i64` read as a charge), and Redis refused the scripts'
/// numbers (`INCRBY` out of range), which switched every tenant to the
/// fallback. 2^32 is far above any model's output, keeps every figure the
/// scripts handle an exact integer and every difference within `i64`.
pub const MAX_TOKENS: u64 = 1 << 32;

const REJECTION_LABELS: [&str; 6] = [
    "requests",
    "tokens",
    "concurrency",
    "monthly_quota",
    "monthly_quota_held",
    "backend_unavailable",
];

struct Shared {
    settings: LimiterSettings,
    local: LocalBackend,
    redis: Option<redis::RedisBackend>,
    months: Arc<dyn MonthlyUsageSource>,
    counters: Counters,
}

/// The rate limiter of a running gateway: runtime state, built once from
/// `[limits]` and kept across configuration reloads (the limits themselves
/// come with each request, from its snapshot). Cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("backend", &self.shared.settings.backend)
            .finish_non_exhaustive()
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterStats {
    /// `local` or `redis`.
    pub backend: &'static str,
    /// True while Redis is unreachable and the fallback decides.
    pub redis_down: bool,
    /// Times admission switched from Redis to the fallback.
    pub fallbacks_total: u64,
    /// Times it switched back.
    pub recoveries_total: u64,
    pub redis_errors_total: u64,
    /// Settles and releases dropped because the queue to Redis was full.
    pub dropped_jobs_total: u64,
    pub admitted_total: u64,
    /// Refusals by [`LimitRejection::label`].
    pub rejected_total: [(&'static str, u64); REJECTION_LABELS.len()],
}

impl Limiter {
    /// A limiter for `[limits]`. The Redis backend must be built inside a Tokio
    /// runtime (it starts a worker task and dials Redis at once, without waiting
    /// for it: a request that comes first waits for it up to the timeout).
    pub fn from_config(
        config: &LimitsConfig,
        months: Arc<dyn MonthlyUsageSource>,
    ) -> Result<Self, LimitsError> {
        Self::new(LimiterSettings::from_config(config)?, months)
    }

    pub fn new(
        settings: LimiterSettings,
        months: Arc<dyn MonthlyUsageSource>,
    ) -> Result<Self, LimitsError> {
        let redis = match &settings.backend {
            Backend::Local => None,
            Backend::Redis { url } => Some(
                redis::RedisBackend::new(
                    url,
                    settings.key_prefix.clone(),
                    settings.redis_timeout,
                    settings.concurrency_lease,
                    settings.probe_interval,
                    settings.reservation_hold,
                )
                .map_err(LimitsError::RedisUrl)?,
            ),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                local: LocalBackend::new(settings.window),
                settings,
                redis,
                months,
                counters: Counters::default(),
            }),
        })
    }

    /// Checks and charges, atomically, the tenant's and the reseller's request
    /// bucket, token bucket (with `estimate_tokens`), concurrency slot and
    /// monthly quota. On success the [`Admission`] holds the slot until dropped.
    pub async fn admit(
        &self,
        key: &LimitKey,
        limits: &EffectiveLimits,
        estimate_tokens: u64,
    ) -> Result<Admission, LimitRejection> {
        if limits.is_unlimited() {
            return Ok(Admission::unlimited());
        }
        let estimate_tokens = estimate_tokens.min(MAX_TOKENS);
        let month = Month::current();
        let result = match &self.shared.redis {
            // Boxed: the Redis round trip's future is about 2.5 KiB, and
            // inline it would size (and be copied with) every admission's
            // future, local ones included, and every future that awaits one.
            Some(redis) => {
                Box::pin(self.admit_redis(redis, key, limits, estimate_tokens, month)).await
            }
            None => self.admit_local(key, limits, estimate_tokens, month),
        };
        let c = &self.shared.counters;
        match &result {
            Ok(_) => c.admitted.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                let i = REJECTION_LABELS
                    .iter()
                    .position(|l| *l == e.label())
                    .unwrap_or(0);
                c.rejected[i].fetch_add(1, Ordering::Relaxed)
            }
        };
        result
    }

    async fn admit_redis(
        &self,
        redis: &redis::RedisBackend,
        key: &LimitKey,
        limits: &EffectiveLimits,
        estimate: u64,
        month: Month,
    ) -> Result<Admission, LimitRejection> {
        let sh = &self.shared;
        let fail_open = sh.settings.on_redis_error == OnRedisError::FailOpen;
        if redis.should_try() {
            sh.local.seed_months(key, limits, month, &*sh.months);
            let seed = |level| {
                sh.local
                    .existing(key, level)
                    .map_or(0, |e| e.month_seed(month))
            };
            let seeds = [seed(Level::Tenant), seed(Level::Reseller)];
            match redis
                .admit(key, limits, estimate, month, seeds, sh.settings.window)
                .await
            {
                Ok(verdict) => {
                    redis.on_success();
                    let grant = verdict?;
                    for (n, level) in Level::BOTH.into_iter().enumerate() {
                        if limits.level(level).tokens_per_month.is_some() {
                            if let Some(e) = sh.local.existing(key, level) {
                                e.observe_month(month, grant.month_used[n]);
                            }
                        }
                    }
                    return Ok(Admission {
                        headers: grant.headers,
                        grant: Some(Grant {
                            shared: sh.clone(),
                            key: key.clone(),
                            limits: *limits,
                            estimate,
                            month,
                            settled: false,
                            hold: Hold::Redis {
                                keys: grant.keys,
                                id: grant.id,
                                slots: grant.slots,
                            },
                        }),
                    });
                }
                Err(e) => redis.on_failure(&e, fail_open),
            }
        }
        if fail_open {
            let share = limits.share(sh.settings.instances);
            self.admit_local(key, &share, estimate, month)
        } else {
            Err(LimitRejection::BackendUnavailable)
        }
    }

    fn admit_local(
        &self,
        key: &LimitKey,
        limits: &EffectiveLimits,
        estimate: u64,
        month: Month,
    ) -> Result<Admission, LimitRejection> {
        let sh = &self.shared;
        let g = sh.local.admit(key, limits, estimate, month, &*sh.months)?;
        Ok(Admission {
            headers: g.headers,
            grant: Some(Grant {
                shared: sh.clone(),
                key: key.clone(),
                limits: *limits,
                estimate,
                month,
                settled: false,
                hold: Hold::Local {
                    tenant: g.tenant,
                    reseller: g.reseller,
                    slots: g.slots,
                },
            }),
        })
    }

    /// Concurrency slots held in this process for `key` (tenant, reseller):
    /// all of them with the local backend, the fallback's under Redis.
    pub fn local_in_flight(&self, key: &LimitKey) -> [u64; 2] {
        let local = &self.shared.local;
        Level::BOTH.map(|l| local.existing(key, l).map_or(0, |e| e.in_flight()))
    }

    /// The month's settled tokens this process knows for `key` at `level`
    /// (with the estimates of admissions dropped unsettled).
    pub fn month_used(&self, key: &LimitKey, level: Level, month: Month) -> u64 {
        self.shared
            .local
            .existing(key, level)
            .map_or(0, |e| e.month_used(month))
    }

    /// The estimates of this process's local admissions (all of them with
    /// the local backend, the fallback's under Redis) that still hold `key`'s
    /// month at `level`.
    pub fn month_held(&self, key: &LimitKey, level: Level, month: Month) -> u64 {
        self.shared
            .local
            .existing(key, level)
            .map_or(0, |e| e.month_held(month))
    }

    pub fn stats(&self) -> LimiterStats {
        let sh = &self.shared;
        let h = sh.redis.as_ref().map(|r| &r.health);
        let get = |a: Option<&AtomicU64>| a.map_or(0, |a| a.load(Ordering::Relaxed));
        let mut rejected = [("", 0u64); REJECTION_LABELS.len()];
        for (i, l) in REJECTION_LABELS.iter().enumerate() {
            rejected[i] = (*l, sh.counters.rejected[i].load(Ordering::Relaxed));
        }
        LimiterStats {
            backend: if sh.redis.is_some() { "redis" } else { "local" },
            redis_down: sh.redis.as_ref().is_some_and(|r| r.is_down()),
            fallbacks_total: get(h.map(|h| &h.fallbacks_total)),
            recoveries_total: get(h.map(|h| &h.recoveries_total)),
            redis_errors_total: get(h.map(|h| &h.errors_total)),
            dropped_jobs_total: get(h.map(|h| &h.dropped_jobs_total)),
            admitted_total: sh.counters.admitted.load(Ordering::Relaxed),
            rejected_total: rejected,
        }
    }

    /// The stats in Prometheus text format, for `/metrics`.
    pub fn render_prometheus(&self, out: &mut String) {
        let s = self.stats();
        let _ = writeln!(out, "# HELP livery_limits_admitted_total Requests admitted by the rate limiter.\n# TYPE livery_limits_admitted_total counter\nlivery_limits_admitted_total {}", s.admitted_total);
        let _ = writeln!(out, "# HELP livery_limits_rejected_total Requests refused by the rate limiter, by limit.\n# TYPE livery_limits_rejected_total counter");
        for (label, n) in s.rejected_total {
            let _ = writeln!(out, "livery_limits_rejected_total{{limit=\"{label}\"}} {n}");
        }
        if s.backend == "redis" {
            let _ = writeln!(out, "# HELP livery_limits_redis_down 1 while Redis is unreachable and the fallback decides.\n# TYPE livery_limits_redis_down gauge\nlivery_limits_redis_down {}", u8::from(s.redis_down));
            let _ = writeln!(out, "# HELP livery_limits_fallbacks_total Switches from Redis to the fallback.\n# TYPE livery_limits_fallbacks_total counter\nlivery_limits_fallbacks_total {}", s.fallbacks_total);
            let _ = writeln!(out, "# HELP livery_limits_redis_errors_total Failed or timed-out Redis calls.\n# TYPE livery_limits_redis_errors_total counter\nlivery_limits_redis_errors_total {}", s.redis_errors_total);
        }
    }
}

/// An admitted request. It holds the request's concurrency slots until it is
/// dropped, so keep it alive for the whole response (for a stream: inside the
/// body) and the slot returns on every exit path. Call [`Admission::settle`]
/// once the real usage is known; an admission dropped unsettled is settled
/// with its estimate (usage may have happened that nobody reported): it
/// stays charged, and no longer holds the month as a reservation.
pub struct Admission {
    headers: RateHeaders,
    grant: Option<Grant>,
}

struct Grant {
    shared: Arc<Shared>,
    key: LimitKey,
    /// The limits as charged (the local share under `fail_open`).
    limits: EffectiveLimits,
    estimate: u64,
    month: Month,
    settled: bool,
    hold: Hold,
}

enum Hold {
    Local {
        tenant: Option<Arc<Entry>>,
        reseller: Option<Arc<Entry>>,
        slots: [bool; 2],
    },
    Redis {
        keys: Arc<redis::Keys>,
        id: Arc<str>,
        slots: [bool; 2],
    },
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("headers", &self.headers)
            .field("estimate", &self.estimate())
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// A request no limit applies to: no slot, no headers.
    pub fn unlimited() -> Self {
        Self {
            headers: RateHeaders::default(),
            grant: None,
        }
    }

    /// The rate-limit headers for the response (none if nothing is limited).
    pub fn rate_headers(&self) -> &RateHeaders {
        &self.headers
    }

    /// Tokens charged at admission.
    pub fn estimate(&self) -> u64 {
        self.grant.as_ref().map_or(0, |g| g.estimate)
    }

    /// True if counted in Redis (false: locally, or unlimited).
    pub fn is_shared(&self) -> bool {
        matches!(
            self.grant.as_ref().map(|g| &g.hold),
            Some(Hold::Redis { .. })
        )
    }

    /// Corrects the estimate with the real usage: the difference is charged to
    /// (or refunded into) the token buckets, and the month counts the real
    /// usage as settled instead of the estimate as reserved. Only the first
    /// call counts.
    pub fn settle(&mut self, actual_tokens: u64) {
        if let Some(g) = self.grant.as_mut() {
            g.settle(actual_tokens);
        }
    }
}

impl Grant {
    fn settle(&mut self, actual_tokens: u64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let g = &*self;
        let sh = &g.shared;
        let actual_tokens = actual_tokens.min(MAX_TOKENS);
        match &g.hold {
            Hold::Local {
                tenant, reseller, ..
            } => {
                let (window, now) = (sh.local.window_ms(), sh.local.now_ms());
                for (entry, plan) in [(tenant, &g.limits.tenant), (reseller, &g.limits.reseller)] {
                    if let Some(e) = entry {
                        e.settle(plan, actual_tokens, g.estimate, g.month, window, now, false);
                    }
                }
            }
            Hold::Redis { keys, .. } => {
                // Keep this instance's view of the month current for the
                // fallback; until the job below is done, the tokens are
                // left out of the seeds this instance offers Redis.
                let correction = local::UnsentCorrection::settle(
                    &sh.local,
                    &g.key,
                    &g.limits,
                    actual_tokens,
                    g.month,
                );
                if let Some(r) = &sh.redis {
                    r.settle(
                        keys,
                        &g.limits,
                        actual_tokens,
                        sh.settings.window,
                        correction,
                    );
                }
            }
        }
    }

    /// True if the admission reserved some month (what an unsettled drop
    /// must still move out of the reservations).
    fn holds_a_month(&self) -> bool {
        self.limits.tenant.tokens_per_month.is_some()
            || self.limits.reseller.tokens_per_month.is_some()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let Some(mut g) = self.grant.take() else {
            return;
        };
        // Cancelled, or served without a count: the estimate is what was
        // used as far as anyone knows (the buckets keep it charged either
        // way). Without this the reservation would hold the month until
        // the month ends (local) or its generation is dropped (Redis).
        if !g.settled && g.holds_a_month() {
            g.settle(g.estimate);
        }
        match &g.hold {
            Hold::Local {
                tenant,
                reseller,
                slots,
            } => {
                for (entry, held) in [(tenant, slots[0]), (reseller, slots[1])] {
                    if let (Some(e), true) = (entry, held) {
                        e.release();
                    }
                }
            }
            Hold::Redis { keys, id, slots } => {
                if let Some(r) = &g.shared.redis {
                    r.release(keys, id, *slots);
                }
            }
        }
    }
}
