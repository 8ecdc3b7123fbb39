//! Prometheus text metrics: responses by status class, upstream attempts by
//! provider and outcome, and circuit-breaker states. Counters are atomics in a
//! `DashMap` keyed by low-cardinality labels (provider names and fixed outcome
//! words; never tenants), so recording costs no lock on the request path.

use dashmap::DashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Metrics {
    responses: [AtomicU64; 5],
    /// Keyed by the provider's shared name: a lookup clones an `Arc`, never
    /// copies the name.
    attempts: DashMap<(Arc<str>, &'static str), AtomicU64, crate::FastHash>,
    /// Requests refused before a tenant was known (host, key, path), by the
    /// error's code: a fixed set of words, so a low-cardinality label. These
    /// have no usage record; a climbing `invalid_api_key` is a key being
    /// guessed.
    refusals: DashMap<&'static str, AtomicU64, crate::FastHash>,
}

/// A breaker as the metrics see it: provider, owner kind, state, times opened.
pub struct BreakerSample<'a> {
    pub provider: &'a str,
    pub owner: &'a str,
    pub open: bool,
    pub opened_total: u64,
}

impl Metrics {
    pub fn response(&self, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn attempt(&self, provider: &Arc<str>, outcome: &'static str) {
        let key = (Arc::clone(provider), outcome);
        if let Some(c) = self.attempts.get(&key) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.attempts
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusal(&self, code: &'static str) {
        if let Some(c) = self.refusals.get(code) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.refusals
            .entry(code)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the Prometheus text exposition format.
    pub fn render<'a>(&self, breakers: impl Iterator<Item = BreakerSample<'a>>) -> String {
        let mut out = String::new();
        out.push_str("# HELP livery_responses_total Responses sent, by status class.\n# TYPE livery_responses_total counter\n");
        for (i, c) in self.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "livery_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP livery_upstream_attempts_total Upstream attempts, by provider and outcome.\n# TYPE livery_upstream_attempts_total counter\n");
        let mut rows: Vec<(Arc<str>, &'static str, u64)> = self
            .attempts
            .iter()
            .map(|e| {
                (
                    e.key().0.clone(),
                    e.key().1,
                    e.value().load(Ordering::Relaxed),
                )
            })
            .collect();
        rows.sort();
        for (p, o, n) in rows {
            let _ = writeln!(
                out,
                "livery_upstream_attempts_total{{provider=\"{}\",outcome=\"{o}\"}} {n}",
                escape(&p)
            );
        }
        out.push_str("# HELP livery_refusals_total Requests refused before a tenant was known, by error code.\n# TYPE livery_refusals_total counter\n");
        let mut refusals: Vec<(&'static str, u64)> = self
            .refusals
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        refusals.sort();
        for (code, n) in refusals {
            let _ = writeln!(out, "livery_refusals_total{{code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP livery_breaker_open Circuit breakers open, per provider and owner kind.\n# TYPE livery_breaker_open gauge\n");
        let mut opened = String::from("# HELP livery_breaker_opened_total Times circuit breakers opened, per provider and owner kind.\n# TYPE livery_breaker_opened_total counter\n");
        // Owners are reported by kind only (tenant ids stay out of metrics),
        // so the breakers of one provider and kind (each tenant's own key)
        // are summed into one series: one line each, per series, and a
        // counter that only grows (breakers are never forgotten).
        let mut by_kind: std::collections::BTreeMap<(&str, &str), (u64, u64)> =
            std::collections::BTreeMap::new();
        for b in breakers {
            let kind = b.owner.split(':').next().unwrap_or("none");
            let sums = by_kind.entry((b.provider, kind)).or_default();
            sums.0 += u64::from(b.open);
            sums.1 += b.opened_total;
        }
        for ((provider, kind), (open, opened_total)) in by_kind {
            let labels = format!(
                "provider=\"{}\",owner=\"{}\"",
                escape(provider),
                escape(kind)
            );
            let _ = writeln!(out, "livery_breaker_open{{{labels}}} {open}");
            let _ = writeln!(
                opened,
                "livery_breaker_opened_total{{{labels}}} {opened_total}"
            );
        }
        out.push_str(&opened);
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each tenant's own key has its breaker, and the metrics name owners by
    /// kind only: one series per provider and kind, summed (it came out once
    /// per breaker, duplicate series that Prometheus rejects).
    #[test]
    fn breakers_of_one_provider_and_kind_are_one_series() {
        let sample = |owner, open, opened_total| BreakerSample {
            provider: "openai",
            owner,
            open,
            opened_total,
        };
        let text = Metrics::default().render(
            [
                sample("tenant:acme/dental", true, 2),
                sample("tenant:acme/realty", false, 3),
                sample("platform", false, 1),
            ]
            .into_iter(),
        );
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("livery_breaker"))
            .collect();
        assert_eq!(
            lines,
            [
                "livery_breaker_open{provider=\"openai\",owner=\"platform\"} 0",
                "livery_breaker_open{provider=\"openai\",owner=\"tenant\"} 1",
                "livery_breaker_opened_total{provider=\"openai\",owner=\"platform\"} 1",
                "livery_breaker_opened_total{provider=\"openai\",owner=\"tenant\"} 5",
            ]
        );
    }
}
