//! Circuit breakers, one per provider and credential owner (a tenant's broken key
//! must not open the breaker for everyone on that provider). After
//! `breaker_failures` consecutive failures within `breaker_window_ms`, the route is
//! skipped for `breaker_cooldown_ms`; then one probe request is let through, and
//! its outcome closes the breaker or opens it again.

use dashmap::DashMap;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

/// Provider name and credential owner (`platform`, `reseller:ID`, `tenant:R/T`).
pub type BreakerKey = (String, String);

#[derive(Debug)]
struct State {
    failures: u32,
    window_start: Instant,
    open_until: Option<Instant>,
    probe_started: Option<Instant>,
    opened_total: u64,
}

/// What the breaker allows for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Closed,
    /// The one request that decides whether an open breaker closes.
    Probe,
    Open,
}

#[derive(Debug, Serialize)]
pub struct BreakerView {
    pub provider: String,
    pub owner: String,
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub opened_total: u64,
    pub retry_in_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Breakers {
    states: DashMap<BreakerKey, State, crate::FastHash>,
    /// Set by the first failure ever recorded: until then every breaker is
    /// closed, and a request need not build its key or look it up.
    tracking: AtomicBool,
}

impl Breakers {
    /// False while no failure was ever recorded: [`admit`](Self::admit)
    /// would answer `Closed` and [`on_success`](Self::on_success) do nothing
    /// for every key.
    pub fn tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    pub fn admit(&self, key: &BreakerKey, s: BreakerSettings) -> Admission {
        let Some(mut st) = self.states.get_mut(key) else {
            return Admission::Closed;
        };
        let now = Instant::now();
        match st.open_until {
            None => Admission::Closed,
            Some(until) if now < until => Admission::Open,
            Some(_) => {
                // A probe that never reported back (its request was abandoned) does
                // not block the next one forever.
                let probe_stale = st
                    .probe_started
                    .is_none_or(|t| now.duration_since(t) > s.cooldown);
                if probe_stale {
                    st.probe_started = Some(now);
                    Admission::Probe
                } else {
                    Admission::Open
                }
            }
        }
    }

    pub fn on_success(&self, key: &BreakerKey) {
        if let Some(mut st) = self.states.get_mut(key) {
            st.failures = 0;
            st.open_until = None;
            st.probe_started = None;
        }
    }

    /// A probe's request ended without saying whether the provider is
    /// healthy: the next request may probe.
    pub fn probe_inconclusive(&self, key: &BreakerKey) {
        if let Some(mut st) = self.states.get_mut(key) {
            st.probe_started = None;
        }
    }

    pub fn on_failure(&self, key: &BreakerKey, s: BreakerSettings) {
        self.tracking.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let mut st = self.states.entry(key.clone()).or_insert_with(|| State {
            failures: 0,
            window_start: now,
            open_until: None,
            probe_started: None,
            opened_total: 0,
        });
        if st.probe_started.take().is_some() || st.open_until.is_some_and(|u| now >= u) {
            // The probe failed: open again for a full cool-down.
            st.open_until = Some(now + s.cooldown);
            st.opened_total += 1;
            return;
        }
        if now.duration_since(st.window_start) > s.window {
            st.failures = 0;
            st.window_start = now;
        }
        st.failures += 1;
        if st.failures >= s.failures && st.open_until.is_none() {
            st.open_until = Some(now + s.cooldown);
            st.opened_total += 1;
            tracing::warn!(provider = %key.0, owner = %key.1, failures = st.failures, "circuit breaker opened");
        }
    }

    /// The operators' view (readyz detail).
    pub fn view(&self) -> Vec<BreakerView> {
        let now = Instant::now();
        let mut out: Vec<BreakerView> = self
            .states
            .iter()
            .map(|e| {
                let st = e.value();
                let (state, retry_in) = match st.open_until {
                    None => ("closed", None),
                    Some(u) if now < u => ("open", Some(u.duration_since(now))),
                    Some(_) => ("half_open", None),
                };
                BreakerView {
                    provider: e.key().0.clone(),
                    owner: e.key().1.clone(),
                    state,
                    consecutive_failures: st.failures,
                    opened_total: st.opened_total,
                    retry_in_ms: retry_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.provider, &a.owner).cmp(&(&b.provider, &b.owner)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_millis(50),
        }
    }

    #[test]
    fn opens_skips_probes_and_closes() {
        let b = Breakers::default();
        let k: BreakerKey = ("openai".into(), "platform".into());
        let s = settings();
        assert!(
            !b.tracking(),
            "nothing failed yet: requests skip the breakers"
        );
        assert_eq!(b.admit(&k, s), Admission::Closed);
        b.on_success(&k);
        assert!(!b.tracking(), "a success starts no tracking");
        for _ in 0..2 {
            b.on_failure(&k, s);
            assert!(b.tracking());
            assert_eq!(b.admit(&k, s), Admission::Closed);
        }
        b.on_failure(&k, s);
        assert_eq!(b.admit(&k, s), Admission::Open);
        assert_eq!(b.view()[0].state, "open");
        std::thread::sleep(Duration::from_millis(60));
        // One probe only.
        assert_eq!(b.admit(&k, s), Admission::Probe);
        assert_eq!(b.admit(&k, s), Admission::Open);
        // The probe fails: open again.
        b.on_failure(&k, s);
        assert_eq!(b.admit(&k, s), Admission::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(&k, s), Admission::Probe);
        b.on_success(&k);
        assert_eq!(b.admit(&k, s), Admission::Closed);
        assert_eq!(b.view()[0].state, "closed");
        assert_eq!(b.view()[0].opened_total, 2);
    }

    #[test]
    fn a_success_resets_the_count_and_owners_are_separate() {
        let b = Breakers::default();
        let s = settings();
        let tenant: BreakerKey = ("openai".into(), "tenant:acme/dental".into());
        let platform: BreakerKey = ("openai".into(), "platform".into());
        b.on_failure(&tenant, s);
        b.on_failure(&tenant, s);
        b.on_success(&tenant);
        b.on_failure(&tenant, s);
        b.on_failure(&tenant, s);
        assert_eq!(b.admit(&tenant, s), Admission::Closed);
        b.on_failure(&tenant, s);
        assert_eq!(b.admit(&tenant, s), Admission::Open);
        assert_eq!(b.admit(&platform, s), Admission::Closed);
    }
}
