//! The in-process backend: one small state per tenant and per reseller in a
//! `DashMap`, each behind its own mutex.
//!
//! Why a mutex and not `governor`'s lock-free GCRA: an admission must check
//! and charge *both* levels (tenant and reseller) and *all* buckets (requests,
//! tokens, concurrency, month) all-or-nothing, and the token bucket must take
//! refunds after the call. A GCRA cell, once taken, cannot be given back, so a
//! request refused by the reseller's cap (or by its token bucket) would still
//! have spent a request cell, and a tenant hammering while over its own limit
//! would drain its reseller's shared bucket, hurting its neighbours. Here the
//! tenant's and the reseller's states are locked together (always tenant first,
//! and a reseller lock is never held while waiting for a tenant lock, so no
//! cycle), checked, and charged only if everything passes: the same semantics
//! as the Redis script. The critical section is a few float operations; the
//! map lookups take only a shard read lock.

use super::headers::{BucketView, LevelView, RateHeaders};
use super::month::{Month, MonthlyUsageSource};
use super::plan::{EffectiveLimits, Level, PlanLimits};
use super::{Check, LimitKey};
use crate::limits::error::LimitRejection;
use crate::FastHash;
use dashmap::DashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A refilling bucket: `level` units at `at_ms`, refilling `cap` per window
/// up to `cap`. The token bucket's level goes below zero when the real usage
/// exceeded the estimate (a debt paid back by refill).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    level: f64,
    at_ms: f64,
}

impl Bucket {
    fn full(cap: f64, now: f64) -> Self {
        Self {
            level: cap,
            at_ms: now,
        }
    }

    fn refill(&mut self, cap: f64, window_ms: f64, now: f64) {
        if now > self.at_ms {
            self.level += (now - self.at_ms) * cap / window_ms;
            self.at_ms = now;
        }
        self.level = self.level.min(cap);
    }

    /// Charges `diff` more tokens (refunds if negative) after a refill.
    /// `cap` is the limit the admission had: if a reload has raised it since,
    /// the bucket may hold more, which neither the refill nor the refund cuts
    /// down (the next admission clamps to the limit of its time).
    fn settle(&mut self, cap: f64, window_ms: f64, now: f64, diff: i64) {
        let ceiling = cap.max(self.level);
        if now > self.at_ms {
            self.level += (now - self.at_ms) * cap / window_ms;
            self.at_ms = now;
        }
        self.level = (self.level.min(ceiling) - diff as f64).min(ceiling);
    }

    fn view(&self, cap: f64, window_ms: f64) -> BucketView {
        BucketView {
            limit: cap as u64,
            level: self.level,
            reset_ms: wait_ms(cap, self.level, cap, window_ms),
        }
    }
}

/// What an admission of `estimate` tokens needs of a month with `free`
/// tokens not settled: its estimate, or all that is free if it reserves more
/// (its `max_tokens` is an upper bound, not usage). As with a token bucket
/// (a request larger than the limit passes when it is full), such a request
/// is admitted when no other reservation holds any of the month, rather than
/// refused while the month is not used up.
pub(crate) fn month_need(estimate: u64, free: u64) -> u64 {
    estimate.min(free)
}

/// The wait told with a month held by requests in flight. Nothing says when
/// they end: a few seconds is a retry that costs an admission and no upstream
/// call, spaced so that an OpenAI SDK's two default retries (it honours up to
/// 60 s) span about ten seconds, the length of a typical completion.
pub(crate) const MONTH_HELD_RETRY_MS: f64 = 5000.0;

/// Time until a bucket of `cap` per `window_ms` at `level` holds `need`.
pub(crate) fn wait_ms(need: f64, level: f64, cap: f64, window_ms: f64) -> f64 {
    ((need - level).max(0.0) * window_ms / cap).ceil()
}

/// One level's month: what is settled apart from what is reserved by
/// requests still in flight. Apart, because a month whose quota is held by
/// reservations is not used up: those requests settle at their real usage,
/// usually far below their `max_tokens`, and a request refused meanwhile is
/// told to retry, not that the month is over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MonthCount {
    month: Month,
    /// Real tokens settled, plus the estimates of admissions dropped
    /// unsettled (usage may have happened that nobody reported).
    used: u64,
    /// Estimates of this process's admissions in `month` not settled yet.
    held: u64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    in_flight: u64,
    month: Option<MonthCount>,
    /// Settled tokens in `month` that Redis has not been sent yet (their
    /// jobs are queued): the count offered to seed Redis leaves them out, or
    /// the job would add them a second time.
    unsent: i64,
}

impl State {
    fn refill(&mut self, plan: &PlanLimits, window_ms: f64, now: f64) {
        match plan.requests_per_minute {
            Some(cap) => self
                .requests
                .get_or_insert_with(|| Bucket::full(cap as f64, now))
                .refill(cap as f64, window_ms, now),
            None => self.requests = None,
        }
        match plan.tokens_per_minute {
            Some(cap) => self
                .tokens
                .get_or_insert_with(|| Bucket::full(cap as f64, now))
                .refill(cap as f64, window_ms, now),
            None => self.tokens = None,
        }
    }

    fn month_count(&self, month: Month) -> Option<&MonthCount> {
        self.month.as_ref().filter(|c| c.month == month)
    }

    fn month_used(&self, month: Month) -> u64 {
        self.month_count(month).map_or(0, |c| c.used)
    }

    fn month_held(&self, month: Month) -> u64 {
        self.month_count(month).map_or(0, |c| c.held)
    }

    fn view(&self, plan: &PlanLimits, window_ms: f64) -> LevelView {
        LevelView {
            requests: plan
                .requests_per_minute
                .zip(self.requests)
                .map(|(cap, b)| b.view(cap as f64, window_ms)),
            tokens: plan
                .tokens_per_minute
                .zip(self.tokens)
                .map(|(cap, b)| b.view(cap as f64, window_ms)),
        }
    }

    /// The first limit of `check` this state fails, with the wait in ms.
    fn fails(&self, check: Check, plan: &PlanLimits, c: &Ctx) -> Option<(u64, f64)> {
        match check {
            Check::Month => plan
                .tokens_per_month
                .filter(|&q| self.month_used(c.month) >= q)
                .map(|q| (q, 0.0)),
            Check::MonthHeld => {
                let q = plan.tokens_per_month?;
                let free = q.saturating_sub(self.month_used(c.month));
                let held = self.month_held(c.month);
                // A request that reserves nothing (a token count) adds
                // nothing to the reservations: only a month used up refuses it.
                (c.estimate > 0 && held.saturating_add(month_need(c.estimate, free)) > free)
                    .then_some((q, MONTH_HELD_RETRY_MS))
            }
            Check::Requests => {
                let (cap, b) = plan.requests_per_minute.zip(self.requests)?;
                (b.level < 1.0).then(|| (cap, wait_ms(1.0, b.level, cap as f64, c.window_ms)))
            }
            Check::Tokens => {
                let (cap, b) = plan.tokens_per_minute.zip(self.tokens)?;
                let need = (c.estimate as f64).min(cap as f64);
                // A request that reserves nothing (a token count) needs
                // nothing of it, even while it is in debt.
                (c.estimate > 0 && b.level < need)
                    .then(|| (cap, wait_ms(need, b.level, cap as f64, c.window_ms)))
            }
            Check::Concurrency => plan
                .max_concurrent
                .filter(|&m| self.in_flight >= m)
                .map(|m| (m, 1000.0)),
        }
    }

    fn charge(&mut self, plan: &PlanLimits, c: &Ctx) -> bool {
        if let Some(b) = self.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = self.tokens.as_mut() {
            b.level -= c.estimate as f64;
        }
        if plan.tokens_per_month.is_some() {
            match &mut self.month {
                Some(m) if m.month == c.month => m.held = m.held.saturating_add(c.estimate),
                // A later month is counted here already (this admission read
                // the clock before the turn): it is not this admission's to
                // replace, and its settle counts nothing in it either.
                Some(m) if m.month > c.month => {}
                other => {
                    *other = Some(MonthCount {
                        month: c.month,
                        used: 0,
                        held: c.estimate,
                    })
                }
            }
        }
        let slot = plan.max_concurrent.is_some();
        if slot {
            self.in_flight += 1;
        }
        slot
    }
}

struct Ctx {
    estimate: u64,
    month: Month,
    window_ms: f64,
}

/// One tenant's or reseller's counters.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    state: Mutex<State>,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections cannot panic; a poisoned lock still holds valid numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seeds the month's count from the durable source the first time it is
    /// needed (read outside the lock: it may be a database query).
    fn seed_month(&self, month: Month, read: impl FnOnce() -> u64) {
        if matches!(self.lock().month, Some(c) if c.month == month) {
            return;
        }
        let total = read();
        self.observe_month(month, total);
    }

    /// Raises the month's settled count to `total` if it is lower (counts
    /// only grow). A new month starts with nothing held: the reservations of
    /// the one before settle into it, not into this one.
    pub(crate) fn observe_month(&self, month: Month, total: u64) {
        let mut s = self.lock();
        match &mut s.month {
            Some(c) if c.month == month => c.used = c.used.max(total),
            Some(c) if c.month > month => {}
            other => {
                *other = Some(MonthCount {
                    month,
                    used: total,
                    held: 0,
                })
            }
        }
    }

    pub(crate) fn month_used(&self, month: Month) -> u64 {
        self.lock().month_used(month)
    }

    pub(crate) fn month_held(&self, month: Month) -> u64 {
        self.lock().month_held(month)
    }

    /// The month's count as a seed for Redis's counter: without the
    /// corrections still on their way there.
    pub(crate) fn month_seed(&self, month: Month) -> u64 {
        let s = self.lock();
        s.month_used(month)
            .saturating_add_signed(s.unsent.saturating_neg())
    }

    /// Tokens counted in [`Entry::settle`] with `for_redis` have reached
    /// Redis, or will not: they are no longer left out of the seed.
    pub(crate) fn correction_sent(&self, tokens: i64) {
        let mut s = self.lock();
        s.unsent = s.unsent.saturating_sub(tokens);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.lock().in_flight
    }

    pub(crate) fn release(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }

    /// Settles an admission of `estimate` tokens in `month` with `actual`:
    /// the token bucket is charged the difference (or refunded), the month
    /// counts `actual` as settled and no longer holds the estimate (`plan`
    /// is the admission's: a level it reserved nothing in, say before a
    /// reload gave it a quota, has nothing to give back). A month other than
    /// the one counted here (the admission's is over) is left alone.
    /// `for_redis`: the admission was Redis's, which holds the buckets and
    /// the reservation and gets the settle through a queued job; this
    /// instance only keeps its view of the month's settled tokens, and
    /// counts `actual` as unsent until [`Entry::correction_sent`]. True if
    /// it did (the month it belongs to is the one counted here).
    #[expect(
        clippy::too_many_arguments,
        reason = "the admission's figures, passed apart so that the Redis path builds no struct"
    )]
    pub(crate) fn settle(
        &self,
        plan: &PlanLimits,
        actual: u64,
        estimate: u64,
        month: Month,
        window_ms: f64,
        now: f64,
        for_redis: bool,
    ) -> bool {
        let mut s = self.lock();
        if !for_redis {
            if let (Some(cap), Some(b)) = (plan.tokens_per_minute, s.tokens.as_mut()) {
                // Both are at most MAX_TOKENS: the difference fits either way.
                b.settle(cap as f64, window_ms, now, actual as i64 - estimate as i64);
            }
        }
        let counted = match s.month.as_mut().filter(|c| c.month == month) {
            Some(c) => {
                c.used = c.used.saturating_add(actual);
                if !for_redis && plan.tokens_per_month.is_some() {
                    c.held = c.held.saturating_sub(estimate);
                }
                true
            }
            None => false,
        };
        let unsent = counted && for_redis;
        if unsent {
            s.unsent = s.unsent.saturating_add(actual as i64);
        }
        unsent
    }
}

/// Settled tokens on their way to Redis, counted as unsent in the entries
/// they were applied to until dropped: with the job that carries them, once
/// the job is done or given up (a failed or dropped job's tokens then reach
/// Redis through the next seed, as any count Redis lacks does).
pub(crate) struct UnsentCorrection {
    entries: [Option<Arc<Entry>>; 2],
    tokens: i64,
}

impl UnsentCorrection {
    /// For `entries` that [`Entry::settle`] counted `tokens` in, `for_redis`.
    pub(crate) fn new(entries: [Option<Arc<Entry>>; 2], tokens: i64) -> Self {
        Self { entries, tokens }
    }

    /// Counts the `actual` tokens a Redis admission of `key` in `month`
    /// settles with in this instance's view of each level's month
    /// ([`Entry::settle`], `for_redis`), and holds them as unsent in the
    /// entries that counted them, only: one whose month is another (the
    /// admission's month is over) or not counted here never added them, and
    /// taking them out again when sent would skew its seeds for good.
    pub(crate) fn settle(
        local: &LocalBackend,
        key: &LimitKey,
        limits: &EffectiveLimits,
        actual: u64,
        month: Month,
    ) -> Self {
        let (window, now) = (local.window_ms(), local.now_ms());
        let entries = Level::BOTH.map(|level| {
            let e = local.existing(key, level)?;
            e.settle(limits.level(level), actual, 0, month, window, now, true)
                .then_some(e)
        });
        Self {
            entries,
            tokens: actual as i64,
        }
    }
}

impl Drop for UnsentCorrection {
    fn drop(&mut self) {
        for e in self.entries.iter().flatten() {
            e.correction_sent(self.tokens);
        }
    }
}

impl std::fmt::Debug for UnsentCorrection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsentCorrection")
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// What a local admission holds: the entries whose slots it took.
pub(crate) struct LocalGrant {
    pub tenant: Option<Arc<Entry>>,
    pub reseller: Option<Arc<Entry>>,
    pub slots: [bool; 2],
    pub headers: RateHeaders,
}

#[derive(Debug)]
pub(crate) struct LocalBackend {
    base: Instant,
    window_ms: f64,
    tenants: DashMap<LimitKey, Arc<Entry>, FastHash>,
    resellers: DashMap<Arc<str>, Arc<Entry>, FastHash>,
}

impl LocalBackend {
    pub fn new(window: std::time::Duration) -> Self {
        Self {
            base: Instant::now(),
            window_ms: (window.as_secs_f64() * 1000.0).max(1.0),
            tenants: DashMap::default(),
            resellers: DashMap::default(),
        }
    }

    pub fn window_ms(&self) -> f64 {
        self.window_ms
    }

    pub fn now_ms(&self) -> f64 {
        self.base.elapsed().as_secs_f64() * 1000.0
    }

    pub fn tenant(&self, key: &LimitKey) -> Arc<Entry> {
        if let Some(e) = self.tenants.get(key) {
            return e.clone();
        }
        self.tenants.entry(key.clone()).or_default().clone()
    }

    pub fn reseller(&self, reseller: &Arc<str>) -> Arc<Entry> {
        if let Some(e) = self.resellers.get(reseller) {
            return e.clone();
        }
        self.resellers.entry(reseller.clone()).or_default().clone()
    }

    pub fn existing(&self, key: &LimitKey, level: Level) -> Option<Arc<Entry>> {
        match level {
            Level::Tenant => self.tenants.get(key).map(|e| e.clone()),
            Level::Reseller => self.resellers.get(&key.reseller).map(|e| e.clone()),
        }
    }

    /// Makes sure the month counts of the limited levels are seeded.
    pub fn seed_months(
        &self,
        key: &LimitKey,
        limits: &EffectiveLimits,
        month: Month,
        source: &dyn MonthlyUsageSource,
    ) {
        // Only the levels with a quota: an entry looked up here for another
        // level would be read as `existing` by the Redis path.
        self.seeded_entries(key, limits, month, source, |l| l.tokens_per_month.is_some());
    }

    /// The tenant's and the reseller's entries, for the levels `wanted`
    /// picks, each looked up once and its month count seeded from `source`
    /// (once a month) if the level has a monthly quota.
    fn seeded_entries(
        &self,
        key: &LimitKey,
        limits: &EffectiveLimits,
        month: Month,
        source: &dyn MonthlyUsageSource,
        wanted: impl Fn(&PlanLimits) -> bool,
    ) -> (Option<Arc<Entry>>, Option<Arc<Entry>>) {
        let tenant = wanted(&limits.tenant).then(|| self.tenant(key));
        let reseller = wanted(&limits.reseller).then(|| self.reseller(&key.reseller));
        if let Some(t) = tenant.as_deref() {
            if limits.tenant.tokens_per_month.is_some() {
                t.seed_month(month, || {
                    source.month_tokens(&key.reseller, Some(&key.tenant), month)
                });
            }
        }
        if let Some(r) = reseller.as_deref() {
            if limits.reseller.tokens_per_month.is_some() {
                r.seed_month(month, || source.month_tokens(&key.reseller, None, month));
            }
        }
        (tenant, reseller)
    }

    /// Checks every limit of both levels and charges them all, or none.
    pub fn admit(
        &self,
        key: &LimitKey,
        limits: &EffectiveLimits,
        estimate: u64,
        month: Month,
        source: &dyn MonthlyUsageSource,
    ) -> Result<LocalGrant, LimitRejection> {
        // Each limited level's entry, seeded and admitted alike (a level with
        // a monthly quota is never unlimited).
        let (tenant, reseller) =
            self.seeded_entries(key, limits, month, source, |l| !l.is_unlimited());
        let c = Ctx {
            estimate,
            month,
            window_ms: self.window_ms,
        };
        let now = self.now_ms();
        // Lock order: tenant, then reseller (see the module comment).
        let mut tg = tenant.as_deref().map(Entry::lock);
        let mut rg = reseller.as_deref().map(Entry::lock);
        if let Some(s) = tg.as_deref_mut() {
            s.refill(&limits.tenant, self.window_ms, now);
        }
        if let Some(s) = rg.as_deref_mut() {
            s.refill(&limits.reseller, self.window_ms, now);
        }
        let views = |tg: &Option<MutexGuard<'_, State>>, rg: &Option<MutexGuard<'_, State>>| {
            let tv = tg
                .as_deref()
                .map(|s| s.view(&limits.tenant, self.window_ms))
                .unwrap_or_default();
            let rv = rg
                .as_deref()
                .map(|s| s.view(&limits.reseller, self.window_ms))
                .unwrap_or_default();
            RateHeaders::combine(&tv, &rv)
        };
        // Every bucket that refuses is looked at, not only the first: the
        // answer names the one with the longest wait and tells that wait, the
        // time after which the request can pass. (Told the first one's, an
        // SDK retried as soon as its requests bucket allowed, to be refused
        // by the token bucket, and had spent its retries.) A month used up
        // is final and answered as such.
        let mut refusal: Option<(Check, Level, u64, f64)> = None;
        'checks: for check in Check::ORDER {
            for level in Level::BOTH {
                let state = match level {
                    Level::Tenant => tg.as_deref(),
                    Level::Reseller => rg.as_deref(),
                };
                let Some(state) = state else { continue };
                if let Some((limit, wait)) = state.fails(check, limits.level(level), &c) {
                    if refusal.is_none_or(|r| wait > r.3) {
                        refusal = Some((check, level, limit, wait));
                    }
                    if check == Check::Month {
                        break 'checks;
                    }
                }
            }
        }
        if let Some((check, level, limit, wait)) = refusal {
            let state = match level {
                Level::Tenant => tg.as_deref(),
                Level::Reseller => rg.as_deref(),
            };
            let used = state.map_or(0, |s| s.month_used(month));
            return Err(check.rejection(
                level,
                limit,
                estimate,
                used,
                wait,
                month,
                views(&tg, &rg),
            ));
        }
        let t_slot = tg
            .as_deref_mut()
            .is_some_and(|s| s.charge(&limits.tenant, &c));
        let r_slot = rg
            .as_deref_mut()
            .is_some_and(|s| s.charge(&limits.reseller, &c));
        let headers = views(&tg, &rg);
        drop(rg);
        drop(tg);
        Ok(LocalGrant {
            tenant,
            reseller,
            slots: [t_slot, r_slot],
            headers,
        })
    }
}
