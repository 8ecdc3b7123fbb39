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
use std::borrow::Cow;

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
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::UpstreamError,
        Outcome::UpstreamUnavailable,
        Outcome::Truncated,
        Outcome::ClientDisconnected,
        Outcome::Rejected,
    ];

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
    /// Shared with the snapshot's provider and route (no copy per request).
    pub provider: std::sync::Arc<str>,
    pub model: std::sync::Arc<str>,
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
    pub request_id: crate::telemetry::ids::RequestId,
    /// Shared with the request's context (no copy per request).
    pub reseller: std::sync::Arc<str>,
    pub tenant: std::sync::Arc<str>,
    /// The gateway key the request was served under, by its public id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<crate::tenancy::KeyId>,
    pub endpoint: &'static str,
    /// Shared with the model table when the model is one of its own.
    pub requested_model: Option<std::sync::Arc<str>>,
    pub served_model: Option<std::sync::Arc<str>>,
    pub provider: Option<std::sync::Arc<str>>,
    /// Whose provider key paid for the call (never the key).
    pub key_owner: Option<crate::vault::KeyOwner>,
    pub status: u16,
    pub outcome: Outcome,
    pub error_code: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Prompt tokens served from the provider's cache (part of `prompt_tokens`).
    pub cached_tokens: Option<u64>,
    /// Prompt tokens written to the provider's cache (part of `prompt_tokens`,
    /// apart from `cached_tokens`): Anthropic bills them above the input
    /// price, so they are priced apart.
    pub cache_write_tokens: Option<u64>,
    /// The part of `cache_write_tokens` written for an hour (Anthropic's
    /// `ephemeral_1h_input_tokens`), dearer than the default five minutes;
    /// `None` when the provider does not break its writes down.
    pub cache_write_1h_tokens: Option<u64>,
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

impl UsageRecord {
    /// The event's JSON line (without the newline): exactly what `Serialize`
    /// writes, but with the keys written as literals. It runs on the request
    /// path once per request, and serde's writer escapes every key (about a
    /// third of the serialisation's instructions).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"v\":");
        json(out, &self.v);
        member_str(out, key!("event_id"), &self.event_id);
        member_str(out, key!("ts"), &self.ts);
        member_str(out, key!("ended_at"), &self.ended_at);
        member_str(out, key!("request_id"), self.request_id.as_str());
        member_str(out, key!("reseller"), &self.reseller);
        member_str(out, key!("tenant"), &self.tenant);
        if let Some(id) = &self.key_id {
            // Hex digits after `key_`: nothing to escape.
            out.extend_from_slice(key!("key_id"));
            out.push(b'"');
            out.extend_from_slice(id.as_bytes());
            out.push(b'"');
        }
        member_str(out, key!("endpoint"), self.endpoint);
        member_opt_str(
            out,
            key!("requested_model"),
            self.requested_model.as_deref(),
        );
        member_opt_str(out, key!("served_model"), self.served_model.as_deref());
        member_opt_str(out, key!("provider"), self.provider.as_deref());
        member(out, key!("key_owner"), &self.key_owner);
        member(out, key!("status"), &self.status);
        member(out, key!("outcome"), &self.outcome);
        member_opt_str(out, key!("error_code"), self.error_code.as_deref());
        member(out, key!("prompt_tokens"), &self.prompt_tokens);
        member(out, key!("completion_tokens"), &self.completion_tokens);
        member(out, key!("cached_tokens"), &self.cached_tokens);
        member(out, key!("cache_write_tokens"), &self.cache_write_tokens);
        member(
            out,
            key!("cache_write_1h_tokens"),
            &self.cache_write_1h_tokens,
        );
        member(out, key!("total_tokens"), &self.total_tokens);
        member(out, key!("estimated"), &self.estimated);
        member(out, key!("stream"), &self.stream);
        member(out, key!("client_disconnected"), &self.client_disconnected);
        member(out, key!("latency_ms"), &self.latency_ms);
        member(out, key!("ttfb_ms"), &self.ttfb_ms);
        out.extend_from_slice(b",\"attempts\":[");
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"provider\":");
            text(out, &a.provider);
            member_str(out, key!("model"), &a.model);
            member_str(out, key!("outcome"), a.outcome);
            member(out, key!("status"), &a.status);
            member(out, key!("latency_ms"), &a.latency_ms);
            out.push(b'}');
        }
        out.push(b']');
        member(out, key!("cost_micros"), &self.cost_micros);
        out.push(b'}');
    }
}

/// `,"name":` as one literal, for a key that needs no escaping: one copy of
/// a length the compiler knows instead of three calls to `memcpy`.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}
use key;

/// `,"name":value`, `key` from [`key!`].
fn member<T: Serialize + ?Sized>(out: &mut Vec<u8>, key: &[u8], value: &T) {
    out.extend_from_slice(key);
    json(out, value);
}

/// `,"name":"value"`.
fn member_str(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    text(out, value);
}

/// `,"name":"value"` or `,"name":null`.
fn member_opt_str(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    out.extend_from_slice(key);
    match value {
        Some(v) => text(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A string as serde_json writes it. Most need no escape (ids, timestamps,
/// names): those are copied as they are, after one pass that checks for the
/// only bytes serde_json escapes (control characters, `"` and `\\`), written
/// without an early exit so that it vectorises.
fn text(out: &mut Vec<u8>, value: &str) {
    let escape = value
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escape {
        json(out, value);
    } else {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

/// One value, as serde_json writes it (escaped strings, `null` for `None` and
/// for a float that is not finite). Writing into a `Vec` cannot fail, and none
/// of these types can fail to serialise.
fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(&mut *out, value);
}

/// An event as sinks read it back from the spool: its strings borrowed from the
/// spool batch they were read from (copied only when they hold a JSON escape),
/// since the shipper reads every event back and copying a dozen strings and
/// the line itself cost about a quarter of that.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LedgerEvent<'a> {
    #[serde(default)]
    pub v: u32,
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    #[serde(borrow)]
    pub request_id: Cow<'a, str>,
    #[serde(borrow)]
    pub reseller: Cow<'a, str>,
    #[serde(borrow)]
    pub tenant: Cow<'a, str>,
    /// Absent from lines written before records named their key.
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub key_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub endpoint: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub requested_model: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub served_model: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub provider: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub key_owner: Option<Cow<'a, str>>,
    #[serde(default)]
    pub status: u16,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub outcome: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub error_code: Option<Cow<'a, str>>,
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    /// Absent from lines written before cache writes were recorded.
    #[serde(default)]
    pub cache_write_tokens: Option<u64>,
    #[serde(default)]
    pub cache_write_1h_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub estimated: bool,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub client_disconnected: bool,
    /// `null` (how JSON writes a float that is not finite) reads as 0: a
    /// malformed duration must not make the event unreadable.
    #[serde(default, deserialize_with = "null_as_zero")]
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
    pub raw: &'a str,
}

/// An optional string, borrowed when it holds no escape. (`#[serde(borrow)]`
/// alone borrows a `Cow<str>` but not one inside an `Option`.) Shared by every
/// peek that reads JSON strings it may keep: `#[serde(borrow, default,
/// deserialize_with = "opt_text")]`.
pub fn opt_text<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<Text<'a>>::deserialize(d).map(|t| t.map(|t| t.0))
}

fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(d).map(Option::unwrap_or_default)
}

impl<'a> LedgerEvent<'a> {
    /// Parses one spool line, borrowing from it.
    pub fn from_line(line: &'a [u8]) -> Result<Self, serde_json::Error> {
        // One UTF-8 check of the whole line; parsing from a `str` then skips
        // serde_json's check of every string (about 40 per event).
        let raw = std::str::from_utf8(line)
            .map_err(|_| <serde_json::Error as serde::de::Error>::custom("line is not UTF-8"))?;
        if let Some(ev) = super::line::parse(raw) {
            return Ok(ev);
        }
        let mut ev: LedgerEvent<'a> = serde_json::from_str(raw)?;
        ev.raw = raw;
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
    /// stream still consumed them). A token count answered is not: it
    /// consumes no tokens and the provider counts for free (Anthropic's
    /// count_tokens), so a reseller billed per request is not billed for the
    /// counts its tenants' clients make before they send.
    pub fn billable(&self) -> bool {
        (self.outcome.as_deref() == Some("ok")
            && self.endpoint != crate::providers::Endpoint::CountTokens.name())
            || self.total() > 0
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A typical event (also the base of `usage::line`'s tests).
    pub(in crate::usage) fn record() -> UsageRecord {
        UsageRecord {
            v: SCHEMA_VERSION,
            event_id: "0193b5f0-7c1e-7000-8000-000000000001".into(),
            ts: "2026-12-02T19:00:00.123Z".into(),
            ended_at: "2026-12-02T19:00:01.456Z".into(),
            request_id: crate::telemetry::ids::RequestId::from_text(b"req-1").unwrap(),
            reseller: "acme".into(),
            tenant: "dental".into(),
            key_id: Some(crate::tenancy::KeyId::of(&crate::tenancy::KeyDigest::of(
                "sk-FAKE-key",
            ))),
            endpoint: "chat",
            requested_model: Some("gpt-4o".into()),
            served_model: None,
            provider: Some("openai".into()),
            key_owner: Some(crate::vault::KeyOwner::Tenant),
            status: 200,
            outcome: Outcome::Ok,
            error_code: None,
            prompt_tokens: Some(9),
            completion_tokens: Some(12),
            cached_tokens: None,
            cache_write_tokens: None,
            cache_write_1h_tokens: None,
            total_tokens: Some(21),
            estimated: false,
            stream: true,
            client_disconnected: false,
            latency_ms: 12.5,
            ttfb_ms: Some(0.000_1),
            attempts: Vec::new(),
            cost_micros: Some(1_234),
        }
    }

    /// Every sink and reader parses this line: the hand-written writer must
    /// produce exactly what the derived `Serialize` does.
    #[test]
    fn the_event_line_is_byte_for_byte_what_serialize_writes() {
        let mut variants = vec![record()];
        let mut r = record();
        r.requested_model = Some("we\"ird\\model\n\u{1}é".into());
        r.tenant = "t\u{7f}\u{2028}".into();
        r.key_owner = None;
        r.outcome = Outcome::ClientDisconnected;
        r.error_code = Some("rate_limit_exceeded".into());
        r.latency_ms = f64::NAN;
        r.ttfb_ms = Some(f64::INFINITY);
        r.cost_micros = None;
        r.prompt_tokens = Some(u64::MAX);
        r.cache_write_tokens = Some(418);
        r.cache_write_1h_tokens = Some(u64::MAX);
        r.attempts = vec![
            AttemptRecord {
                provider: "openai".into(),
                model: "gpt-4o-2024-08-06".into(),
                outcome: "rate_limited",
                status: Some(429),
                latency_ms: 3.25,
            },
            AttemptRecord {
                provider: "az\"ure".into(),
                model: "m".into(),
                outcome: "ok",
                status: None,
                latency_ms: 1e-7,
            },
        ];
        variants.push(r);
        for owner in [
            crate::vault::KeyOwner::Reseller,
            crate::vault::KeyOwner::Platform,
            crate::vault::KeyOwner::None,
        ] {
            let mut r = record();
            r.key_owner = Some(owner);
            r.latency_ms = 1e21;
            variants.push(r);
        }
        for r in &variants {
            let mut mine = Vec::new();
            r.write_json(&mut mine);
            let serde = serde_json::to_vec(r).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&mine),
                String::from_utf8_lossy(&serde)
            );
            // Even a float that is not finite (written as null) reads back.
            LedgerEvent::from_line(&mine).unwrap();
        }
    }

    /// The shipper reads every event back: its strings must point into the
    /// spool batch, and only a string with an escape may be copied.
    #[test]
    fn ledger_events_borrow_their_strings_and_copy_only_escaped_ones() {
        let line = br#"{"v":1,"event_id":"e1","ts":"2025-01-01T00:00:00Z","request_id":"r","reseller":"a","tenant":"t","endpoint":"chat","requested_model":"m\"x","provider":"openai","key_owner":null,"outcome":"ok","attempts":[{"provider":"openai"}]}"#;
        let e = LedgerEvent::from_line(line).unwrap();
        assert!(matches!(e.event_id, Cow::Borrowed("e1")));
        assert!(matches!(e.endpoint, Cow::Borrowed("chat")));
        assert!(matches!(e.provider, Some(Cow::Borrowed("openai"))));
        assert!(matches!(e.outcome, Some(Cow::Borrowed("ok"))));
        assert_eq!(e.requested_model.as_deref(), Some("m\"x"));
        assert!(matches!(e.requested_model, Some(Cow::Owned(_))));
        assert_eq!(e.key_owner, None);
        assert_eq!(e.attempts.len(), 1);
        assert_eq!(e.raw.as_bytes(), line);
        assert!(e.billable());
        let text = std::str::from_utf8(line).unwrap();
        let count = text.replace(
            r#""endpoint":"chat""#,
            r#""endpoint":"messages.count_tokens""#,
        );
        let e = LedgerEvent::from_line(count.as_bytes()).unwrap();
        assert!(!e.billable(), "a count answered");
        // A field of the wrong type still makes the line unreadable.
        let bad = br#"{"event_id":"e1","ts":"x","request_id":"r","reseller":"a","tenant":"t","provider":7}"#;
        assert!(LedgerEvent::from_line(bad).is_err());
    }
}
