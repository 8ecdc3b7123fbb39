//! The rate-limit headers OpenAI sends and its SDKs read, on every response:
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`. A tenant sees one
//! set: its own plan's limit, the remaining of whichever level (its own or its
//! reseller's) leaves it less, and the time until it has its limit again.

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

// Built at compile time: `from_static` checks the name byte by byte.
const REQUEST_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const TOKEN_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

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
        self.each(|name, value| out.push((name, value)));
        out
    }

    /// The headers, set in `map` (an answer's): no list in between.
    pub fn insert_into(&self, map: &mut HeaderMap) {
        self.each(|name, value| {
            map.insert(name, value);
        });
    }

    /// Every value is written into one buffer and split off it: the headers
    /// share that buffer instead of allocating one value each.
    fn each(&self, mut f: impl FnMut(HeaderName, HeaderValue)) {
        let mut text = BytesMut::with_capacity(64);
        let mut push = |name: HeaderName, text: &mut BytesMut| {
            // Digits, letters and a dot: always a valid header value.
            if let Ok(v) = HeaderValue::from_maybe_shared(text.split().freeze()) {
                f(name, v);
            }
        };
        for (w, [limit, remaining, reset]) in [
            (self.requests, REQUEST_HEADERS),
            (self.tokens, TOKEN_HEADERS),
        ] {
            let Some(w) = w else { continue };
            text.extend_from_slice(itoa::Buffer::new().format(w.limit).as_bytes());
            push(limit, &mut text);
            text.extend_from_slice(itoa::Buffer::new().format(w.remaining).as_bytes());
            push(remaining, &mut text);
            write_go_duration(&mut text, w.reset);
            push(reset, &mut text);
        }
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
    // OpenAI's reset is the time until `remaining` is back at `limit`: with
    // both levels, until the tenant's bucket is full and the reseller's holds
    // the tenant's limit again (not until the reseller's, often far larger,
    // is full: a tenant told 59 s where 20 s would do paced itself three
    // times slower than it may).
    let reset_ms = match (tenant, reseller) {
        (Some(t), Some(r)) => t.reset_ms.max(time_to(&r, t.limit.min(r.limit) as f64)),
        _ => binding.reset_ms,
    };
    Some(RateWindow {
        limit,
        remaining: binding.level.floor().max(0.0) as u64,
        reset: Duration::from_secs_f64((reset_ms.max(0.0) / 1000.0).min(1e9)),
    })
}

/// Time until bucket `b` holds `units`, from its refill (linear, reaching its
/// limit after `reset_ms`), in whole milliseconds.
fn time_to(b: &BucketView, units: f64) -> f64 {
    let cap = b.limit as f64;
    if b.level >= units || b.level >= cap {
        return 0.0;
    }
    (b.reset_ms * (units - b.level) / (cap - b.level)).ceil()
}

/// Go's `time.Duration` text, as OpenAI sends it: `0s`, `120ms`, `6.596s`, `6m0s`, `1h2m3s`.
pub fn go_duration(d: Duration) -> String {
    let mut out = BytesMut::with_capacity(16);
    write_go_duration(&mut out, d);
    // Only ASCII digits and unit letters are written.
    String::from_utf8_lossy(&out).into_owned()
}

/// [`go_duration`] appended to `out`, without `format!`.
fn write_go_duration(out: &mut BytesMut, d: Duration) {
    let num = |out: &mut BytesMut, n: u128| {
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    };
    let ms = d.as_micros().div_ceil(1000);
    if ms == 0 {
        out.extend_from_slice(b"0s");
    } else if ms < 1000 {
        num(out, ms);
        out.extend_from_slice(b"ms");
    } else if ms < 60_000 {
        num(out, ms / 1000);
        let frac = ms % 1000;
        if frac != 0 {
            // Three digits with the trailing zeros dropped: 6.5s, 6.05s, 6.596s.
            let digits = [frac / 100, (frac / 10) % 10, frac % 10].map(|d| b'0' + d as u8);
            let keep = 3 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            out.extend_from_slice(b".");
            out.extend_from_slice(&digits[..keep]);
        }
        out.extend_from_slice(b"s");
    } else {
        let secs = ms.div_ceil(1000);
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        if h > 0 {
            num(out, h);
            out.extend_from_slice(b"h");
        }
        num(out, m);
        out.extend_from_slice(b"m");
        num(out, s);
        out.extend_from_slice(b"s");
    }
}
