//! The rate-limit headers OpenAI sends and its SDKs read, on every response:
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`. A tenant sees one
//! set: its own plan's limit, and the remaining and reset of whichever level
//! (its own or its reseller's) leaves it less.

use http::{HeaderName, HeaderValue};
use std::time::Duration;

/// One bucket as the headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Header values of a response; a kind without any limit sends no headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<RateWindow>,
    pub tokens: Option<RateWindow>,
}

impl RateHeaders {
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// The headers, in OpenAI's names and formats (reset as a Go-style duration).
    pub fn to_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(6);
        for (w, [limit, remaining, reset]) in [
            (
                self.requests,
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            ),
            (
                self.tokens,
                [
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ],
            ),
        ] {
            let Some(w) = w else { continue };
            out.push((HeaderName::from_static(limit), HeaderValue::from(w.limit)));
            out.push((
                HeaderName::from_static(remaining),
                HeaderValue::from(w.remaining),
            ));
            if let Ok(v) = HeaderValue::from_str(&go_duration(w.reset)) {
                out.push((HeaderName::from_static(reset), v));
            }
        }
        out
    }

    /// Combines the views of the two levels.
    pub(crate) fn combine(tenant: &LevelView, reseller: &LevelView) -> Self {
        Self {
            requests: pick(tenant.requests, reseller.requests),
            tokens: pick(tenant.tokens, reseller.tokens),
        }
    }
}

/// One bucket of one level: its limit, its level (negative in token debt) and
/// the time until it is full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BucketView {
    pub limit: u64,
    pub level: f64,
    pub reset_ms: f64,
}

/// The two buckets of one level; `None` where the level has no such limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LevelView {
    pub requests: Option<BucketView>,
    pub tokens: Option<BucketView>,
}

fn pick(tenant: Option<BucketView>, reseller: Option<BucketView>) -> Option<RateWindow> {
    let binding = match (tenant, reseller) {
        (None, None) => return None,
        (Some(t), None) => t,
        (None, Some(r)) => r,
        (Some(t), Some(r)) if r.level.floor() < t.level.floor() => r,
        (Some(t), Some(r)) if r.level.floor() == t.level.floor() && r.reset_ms > t.reset_ms => r,
        (Some(t), Some(_)) => t,
    };
    let limit = tenant.map_or(binding.limit, |t| t.limit);
    Some(RateWindow {
        limit,
        remaining: binding.level.floor().max(0.0) as u64,
        reset: Duration::from_secs_f64((binding.reset_ms.max(0.0) / 1000.0).min(1e9)),
    })
}

/// Go's `time.Duration` text, as OpenAI sends it: `0s`, `120ms`, `6.596s`, `6m0s`, `1h2m3s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000);
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}
