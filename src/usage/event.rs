//! The usage event, schema v1: one per finished request of a known tenant.
//!
//! [`UsageRecord`] is what the request path fills in and serialises (one JSON
//! line, the same in the spool, the JSONL mirror and every sink). [`LedgerEvent`]
//! is what sinks read back: the fields they index, plus the raw line, so that an
//! event written by a newer gateway (more fields) is still stored whole.
//!
//! Compatibility rules: fields are only ever added; a field's meaning never
//! changes within a version; `v` is bumped if one ever must.

use serde::{Deserialize, Serialize};

/// The schema version written in every event's `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// How a request ended, from the billing point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// The upstream answered with an error status.
    UpstreamError,
    /// The upstream could not be reached or timed out.
    UpstreamUnavailable,
    /// A stream broke off or ended without its proper end.
    Truncated,
    /// The client went away before the answer was complete.
    ClientDisconnected,
    /// The gateway refused the request (bad input, unknown model...).
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::Truncated => "truncated",
            Outcome::ClientDisconnected => "client_disconnected",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One try of one route.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub provider: String,
    pub model: String,
    /// `ok`, `rate_limited`, `server_error`, `overloaded` (529), `timeout`, `connect_error`,
    /// `upstream_reset`, `first_event_timeout`, `stream_failed_before_content`,
    /// `client_error`, `breaker_open`, `no_credential`...
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub latency_ms: f64,
}

/// The usage event (schema v1) as the request path builds it.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// UUIDv7, unique per event: the deduplication key of every sink.
    pub event_id: String,
    /// When the request started (RFC 3339, UTC); the billing day and month.
    pub ts: String,
    /// When the event was finished (RFC 3339, UTC).
    pub ended_at: String,
    pub request_id: String,
    pub reseller: String,
    pub tenant: String,
    pub endpoint: &'static str,
    pub requested_model: Option<String>,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    /// Whose provider key paid for the call (never the key).
    pub key_owner: Option<crate::vault::KeyOwner>,
    pub status: u16,
    pub outcome: Outcome,
    pub error_code: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Prompt tokens served from the provider's cache (part of `prompt_tokens`).
    pub cached_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    /// The counts were computed by the gateway's tokenizer, not reported by
    /// the upstream.
    pub estimated: bool,
    pub stream: bool,
    pub client_disconnected: bool,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub attempts: Vec<AttemptRecord>,
    /// The platform's cost in micro-units of `[prices] currency`; `None` when no
    /// price matches the model.
    pub cost_micros: Option<u64>,
}

/// An event as sinks read it back from the spool.
#[derive(Debug, Clone, Deserialize)]
pub struct LedgerEvent {
    #[serde(default)]
    pub v: u32,
    pub event_id: String,
    pub ts: String,
    pub request_id: String,
    pub reseller: String,
    pub tenant: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub requested_model: Option<String>,
    #[serde(default)]
    pub served_model: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub key_owner: Option<String>,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub estimated: bool,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub client_disconnected: bool,
    #[serde(default)]
    pub latency_ms: f64,
    #[serde(default)]
    pub ttfb_ms: Option<f64>,
    /// Only counted by the sinks (the full attempts stay in `raw`): skipped
    /// without building a JSON tree per attempt.
    #[serde(default)]
    pub attempts: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    pub cost_micros: Option<u64>,
    /// The event's JSON line as written (without the newline).
    #[serde(skip)]
    pub raw: String,
}

impl LedgerEvent {
    /// Parses one spool line.
    pub fn from_line(line: &[u8]) -> Result<Self, serde_json::Error> {
        let mut ev: LedgerEvent = serde_json::from_slice(line)?;
        // After a successful parse the line is UTF-8 (serde_json checks
        // strings, and everything else must be ASCII), so `from_utf8`'s ASCII
        // fast path does it; the lossy copy is only a guard.
        ev.raw = match std::str::from_utf8(line) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(line).into_owned(),
        };
        Ok(ev)
    }

    /// `YYYY-MM-DD` of `ts`.
    pub fn day(&self) -> &str {
        self.ts.get(..10).unwrap_or(&self.ts)
    }

    /// `YYYY-MM` of `ts`.
    pub fn month(&self) -> &str {
        self.ts.get(..7).unwrap_or(&self.ts)
    }

    pub fn total(&self) -> u64 {
        self.total_tokens.unwrap_or_else(|| {
            self.prompt_tokens.unwrap_or(0) + self.completion_tokens.unwrap_or(0)
        })
    }

    /// Billable: the upstream answered, or it reported tokens (a truncated
    /// stream still consumed them).
    pub fn billable(&self) -> bool {
        self.outcome.as_deref() == Some("ok") || self.total() > 0
    }
}
