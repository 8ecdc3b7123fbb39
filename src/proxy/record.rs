//! [`PendingRecord`]: the usage record of a request in flight. It is written exactly
//! once: by `finish` on every normal exit, or by `Drop` when the request is
//! abandoned (the client went away while the gateway was waiting or streaming).
//!
//! `finish` runs before the response's last byte is released (the relay calls it
//! before emitting `[DONE]` or its final error event; JSON answers before they
//! are returned), and [`UsageSink::record`] appends the event to the spool
//! synchronously, so a client never holds a complete answer whose event is not
//! in the kernel.
//!
//! When the upstream reported no usage, `finish` counts tokens itself with
//! OpenAI's tokenizer (`crate::usage::estimate`) from the request body given to
//! [`PendingRecord::set_request_body`] and the completion text given to
//! [`PendingRecord::add_completion_text`], and marks the event `estimated`.

use super::ctx::RequestCtx;
use crate::limits::Admission;
use crate::providers::Endpoint;
use crate::usage::price::PriceTable;
use crate::usage::spool::Ticket;
use crate::usage::{estimate, rfc3339, Outcome, UsageRecord, UsageSink, SCHEMA_VERSION};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Token counts as reported by the upstream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub total: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`.
    pub cached: Option<u64>,
    /// `prompt_tokens_details.cache_write_tokens` (Anthropic's
    /// `cache_creation_input_tokens`).
    pub cache_write: Option<u64>,
    /// The part of `cache_write` written for an hour (Anthropic's answers
    /// only: OpenAI's usage has no such count).
    pub cache_write_1h: Option<u64>,
}

impl TokenUsage {
    /// Reads OpenAI's `usage` object, a chat completion's or (with
    /// `input_tokens`, `output_tokens`, `input_tokens_details`) a
    /// response's.
    pub fn from_json(usage: &Value) -> Option<Self> {
        let o = usage.as_object()?;
        let n = |k: &str| o.get(k).and_then(Value::as_u64);
        let details = |k: &str| {
            o.get("prompt_tokens_details")
                .or_else(|| o.get("input_tokens_details"))
                .and_then(|d| d.get(k))
                .and_then(Value::as_u64)
        };
        Some(Self {
            prompt: n("prompt_tokens").or_else(|| n("input_tokens")),
            completion: n("completion_tokens").or_else(|| n("output_tokens")),
            total: n("total_tokens"),
            cached: details("cached_tokens"),
            cache_write: details("cache_write_tokens"),
            cache_write_1h: None,
        })
    }
}

/// OpenAI's `usage` object read straight from the answer's bytes, without a
/// JSON tree (the tree of a ~1 KB answer cost ~20k instructions per request).
/// A count that is not a non-negative integer reads as absent, like
/// [`TokenUsage::from_json`]. The Responses API's names are read as the chat
/// completion's.
#[derive(Debug, Default, serde::Deserialize)]
pub struct UsagePeek {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: LenientCount,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: LenientCount,
    #[serde(default)]
    total_tokens: LenientCount,
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<DetailsPeek>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct DetailsPeek {
    #[serde(default)]
    cached_tokens: LenientCount,
    #[serde(default)]
    cache_write_tokens: LenientCount,
}

impl From<UsagePeek> for TokenUsage {
    fn from(u: UsagePeek) -> Self {
        let (cached, cache_write) = u.prompt_tokens_details.map_or((None, None), |d| {
            (d.cached_tokens.0, d.cache_write_tokens.0)
        });
        Self {
            prompt: u.prompt_tokens.0,
            completion: u.completion_tokens.0,
            total: u.total_tokens.0,
            cached,
            cache_write,
            cache_write_1h: None,
        }
    }
}

/// A `usage` member read as [`UsagePeek`] when it is an object, and as absent
/// when it is anything else (`null` in every chunk but the last, in OpenAI's
/// streams), without building a JSON tree of it.
#[derive(Debug, Default)]
pub struct UsageField(pub Option<TokenUsage>);

impl<'de> serde::Deserialize<'de> for UsageField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::value::MapAccessDeserializer;
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        use serde::Deserialize;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UsageField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<UsageField, A::Error> {
                let u = UsagePeek::deserialize(MapAccessDeserializer::new(a))?;
                Ok(UsageField(Some(u.into())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<UsageField, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(UsageField(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<UsageField, E> {
                Ok(UsageField(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<UsageField, E> {
                Ok(UsageField(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<UsageField, E> {
                Ok(UsageField(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<UsageField, E> {
                Ok(UsageField(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<UsageField, E> {
                Ok(UsageField(None))
            }
            fn visit_unit<E>(self) -> Result<UsageField, E> {
                Ok(UsageField(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A token count, or `None` for any other JSON value (which is skipped).
#[derive(Debug, Default)]
struct LenientCount(Option<u64>);

impl<'de> serde::Deserialize<'de> for LenientCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E>(self, v: u64) -> Result<LenientCount, E> {
                Ok(LenientCount(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<LenientCount, E> {
                Ok(LenientCount(u64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<LenientCount, E> {
                Ok(LenientCount(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<LenientCount, E> {
                Ok(LenientCount(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<LenientCount, E> {
                Ok(LenientCount(None))
            }
            fn visit_unit<E>(self) -> Result<LenientCount, E> {
                Ok(LenientCount(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<LenientCount, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientCount(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<LenientCount, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientCount(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The record and the admission are boxed: a `PendingRecord` is moved through
/// several nested request futures (each keeping its own slot for it) and
/// lives in every open stream, so it is kept small.
pub struct PendingRecord {
    sink: UsageSink,
    /// The prices of the request's snapshot.
    prices: Arc<PriceTable>,
    record: Option<Box<UsageRecord>>,
    started: Instant,
    pub first_byte: Option<Instant>,
    pub tokens: TokenUsage,
    /// The client's request body, for estimating prompt tokens if need be.
    request_body: Option<Bytes>,
    /// Completion text seen so far (capped), for estimating completion tokens.
    completion_text: String,
    /// Bytes of completion text beyond the cap.
    completion_overflow: usize,
    /// The request's limit admission: settled with the real tokens and
    /// released (concurrency slot) when the record is written, which happens on
    /// every exit path, `Drop` included.
    admission: Option<Box<Admission>>,
}

/// Completion text kept for estimation; beyond it, counts scale by length
/// (kept small: every open stream holds up to this much).
const COMPLETION_TEXT_CAP: usize = 64 << 10;

impl PendingRecord {
    pub fn new(ctx: &RequestCtx, sink: UsageSink, endpoint: Endpoint) -> Self {
        sink.open_record();
        Self {
            sink,
            prices: ctx.snapshot.prices.clone(),
            started: ctx.started,
            first_byte: None,
            // A token count consumes none, whatever the path: its record must
            // never estimate the body as a call served without a count, which
            // would bill it and charge the token buckets with it.
            tokens: if endpoint == Endpoint::CountTokens {
                TokenUsage {
                    prompt: Some(0),
                    completion: Some(0),
                    total: Some(0),
                    ..TokenUsage::default()
                }
            } else {
                TokenUsage::default()
            },
            request_body: None,
            completion_text: String::new(),
            completion_overflow: 0,
            admission: None,
            record: Some(Box::new(UsageRecord {
                v: SCHEMA_VERSION,
                event_id: String::new(),
                ts: rfc3339(ctx.started_at),
                ended_at: String::new(),
                request_id: ctx.request_id.clone(),
                reseller: ctx.reseller.clone(),
                tenant: ctx.tenant.id.clone(),
                key_id: Some(ctx.key_id),
                endpoint: endpoint.name(),
                requested_model: None,
                served_model: None,
                provider: None,
                key_owner: None,
                status: 0,
                outcome: Outcome::ClientDisconnected,
                error_code: None,
                prompt_tokens: None,
                completion_tokens: None,
                cached_tokens: None,
                cache_write_tokens: None,
                cache_write_1h_tokens: None,
                total_tokens: None,
                estimated: false,
                stream: false,
                client_disconnected: false,
                latency_ms: 0.0,
                ttfb_ms: None,
                attempts: Vec::new(),
                cost_micros: None,
            })),
        }
    }

    /// Holds the request's admission until the record is written.
    pub fn hold_admission(&mut self, admission: Admission) {
        self.admission = Some(Box::new(admission));
    }

    /// Edits the record before it is written.
    pub fn update(&mut self, f: impl FnOnce(&mut UsageRecord)) {
        if let Some(r) = self.record.as_mut() {
            f(r);
        }
    }

    /// The model the upstream says served the request. The route's own
    /// name (already recorded) is kept when the answer names the same model:
    /// no copy per request then.
    pub fn set_served_model(&mut self, model: &str) {
        self.update(|r| {
            if r.served_model.as_deref() != Some(model) {
                r.served_model = Some(std::sync::Arc::from(model));
            }
        });
    }

    pub fn mark_first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
    }

    /// Keeps the client's request body (a cheap reference-counted clone) so
    /// that prompt tokens can be estimated if the upstream reports none.
    pub fn set_request_body(&mut self, body: Bytes) {
        self.request_body = Some(body);
    }

    /// Adds completion text as it streams (delta `content`, `refusal`, tool
    /// call arguments...), for estimating completion tokens if the upstream
    /// reports none.
    pub fn add_completion_text(&mut self, text: &str) {
        if self.completion_text.len() + text.len() <= COMPLETION_TEXT_CAP {
            self.completion_text.push_str(text);
        } else {
            self.completion_overflow += text.len();
        }
    }

    /// True once some completion text was seen.
    pub fn has_completion_text(&self) -> bool {
        !self.completion_text.is_empty() || self.completion_overflow > 0
    }

    /// Takes the completion text of a whole (non-streamed) answer.
    pub fn add_completion_from_response(&mut self, response: &Value) {
        let text = estimate::completion_text(response);
        self.add_completion_text(&text);
    }

    /// Fills in counts the upstream did not report. Only for calls an upstream
    /// served (or was serving): refused and failed calls are not estimated.
    fn estimate_missing(&mut self, r: &mut UsageRecord, outcome: Outcome) {
        let served = served_by_upstream(r, outcome);
        // Embeddings have no completion tokens.
        let has_completion = r.endpoint != "embeddings";
        let complete =
            self.tokens.prompt.is_some() && (self.tokens.completion.is_some() || !has_completion);
        if !served || complete {
            return;
        }
        let model = r
            .served_model
            .as_deref()
            .or(r.requested_model.as_deref())
            .unwrap_or("")
            .to_owned();
        if self.tokens.prompt.is_none() {
            if let Some(body) = &self.request_body {
                if let Ok(v) = serde_json::from_slice::<Value>(body) {
                    self.tokens.prompt = Some(estimate::estimate_prompt_tokens_within(
                        &model,
                        &v,
                        estimate::RECORD_PROMPT_BUDGET,
                    ));
                    r.estimated = true;
                }
            }
        }
        if self.tokens.completion.is_none() && has_completion {
            let counted = estimate::estimate_text_tokens(&model, &self.completion_text);
            let extra = if self.completion_overflow > 0 && !self.completion_text.is_empty() {
                (counted as u128 * self.completion_overflow as u128
                    / self.completion_text.len() as u128) as u64
            } else {
                0
            };
            self.tokens.completion = Some(counted + extra);
            r.estimated = true;
        }
        if r.estimated {
            self.tokens.total = None;
        }
    }

    /// Writes the record with its final status and outcome.
    pub fn finish(&mut self, status: u16, outcome: Outcome, error_code: Option<&str>) {
        if let Some(r) = self.complete(status, outcome, error_code) {
            self.sink.record(*r);
        }
    }

    /// Like [`PendingRecord::finish`], but the spool line is only staged:
    /// await [`UsageSink::spooled`] with the ticket before the answer leaves
    /// (it is written with those of the other requests finishing now).
    #[must_use = "the answer must wait for its staged usage line"]
    pub fn finish_staged(
        &mut self,
        status: u16,
        outcome: Outcome,
        error_code: Option<&str>,
    ) -> Option<Ticket> {
        let r = self.complete(status, outcome, error_code)?;
        self.sink.record_staged(*r)
    }

    /// The finished record, once (`None` after the first call).
    fn complete(
        &mut self,
        status: u16,
        outcome: Outcome,
        error_code: Option<&str>,
    ) -> Option<Box<UsageRecord>> {
        let mut r = self.record.take()?;
        self.sink.close_record();
        r.status = status;
        r.outcome = outcome;
        r.error_code = error_code.map(str::to_owned);
        r.client_disconnected = outcome == Outcome::ClientDisconnected;
        self.estimate_missing(&mut r, outcome);
        r.prompt_tokens = self.tokens.prompt;
        r.completion_tokens = self.tokens.completion;
        r.total_tokens = self
            .tokens
            .total
            .or(match (self.tokens.prompt, self.tokens.completion) {
                (Some(p), Some(c)) => Some(p + c),
                _ => None,
            });
        r.latency_ms = ms(self.started.elapsed());
        r.ttfb_ms = self.first_byte.map(|t| ms(t.duration_since(self.started)));
        r.cached_tokens = self.tokens.cached;
        r.cache_write_tokens = self.tokens.cache_write;
        r.cache_write_1h_tokens = self.tokens.cache_write_1h;
        r.cost_micros = self.prices.cost_of(&r);
        let now = std::time::SystemTime::now();
        r.event_id = crate::telemetry::ids::uuid_v7_text_at(now);
        r.ended_at = rfc3339(now);
        if let Some(mut admission) = self.admission.take() {
            // Refund the estimate of a call no upstream served; keep it charged
            // for one served without a count (usage may have happened).
            match (r.total_tokens, served_by_upstream(&r, outcome)) {
                (Some(total), _) => admission.settle(total),
                (None, false) => admission.settle(0),
                (None, true) => {}
            }
        }
        Some(r)
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if self.record.is_some() {
            if std::thread::panicking() {
                // The handler panicked (it is answered 500 internal_error).
                self.finish(500, Outcome::Truncated, Some("internal_error"));
            } else if self.sink.is_cut() {
                // Shutdown's grace period ended with the answer unfinished.
                self.finish(503, Outcome::Truncated, Some("gateway_shutdown"));
            } else {
                // 499: the client closed the request (nginx's convention).
                self.finish(
                    499,
                    Outcome::ClientDisconnected,
                    Some("client_disconnected"),
                );
            }
        }
    }
}

/// True if an upstream served the call, or was serving it when it ended:
/// tokens may have been spent even when none were reported. That includes an
/// error the upstream sent inside an answer already under way (status 200; an
/// error answered instead of the answer has the error's status): the client
/// got what came before it.
fn served_by_upstream(r: &UsageRecord, outcome: Outcome) -> bool {
    r.provider.is_some()
        && match outcome {
            Outcome::Ok | Outcome::Truncated | Outcome::ClientDisconnected => true,
            Outcome::UpstreamError => r.status == 200,
            _ => false,
        }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
