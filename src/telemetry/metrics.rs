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
        out.push_str("# HELP livery_breaker_open Whether a circuit breaker is open (1) or not (0).\n# TYPE livery_breaker_open gauge\n");
        let mut opened = String::from("# HELP livery_breaker_opened_total Times a circuit breaker opened.\n# TYPE livery_breaker_opened_total counter\n");
        for b in breakers {
            // Owners are reported by kind only: tenant ids stay out of metrics.
            let kind = b.owner.split(':').next().unwrap_or("none");
            let labels = format!(
                "provider=\"{}\",owner=\"{}\"",
                escape(b.provider),
                escape(kind)
            );
            let _ = writeln!(out, "livery_breaker_open{{{labels}}} {}", u8::from(b.open));
            let _ = writeln!(
                opened,
                "livery_breaker_opened_total{{{labels}}} {}",
                b.opened_total
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
