//! [`PendingRecord`]: the usage record of a request in flight. It is written exactly
//! once: by `finish` on every normal exit, or by `Drop` when the request is
//! abandoned (the client went away while the gateway was waiting or streaming).

use super::ctx::RequestCtx;
use crate::providers::Endpoint;
use crate::usage::{now_rfc3339, Outcome, UsageRecord, UsageSink};
use serde_json::Value;
use std::time::Instant;

/// Token counts as reported by the upstream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub total: Option<u64>,
}

impl TokenUsage {
    /// Reads OpenAI's `usage` object.
    pub fn from_json(usage: &Value) -> Option<Self> {
        let o = usage.as_object()?;
        let n = |k: &str| o.get(k).and_then(Value::as_u64);
        Some(Self {
            prompt: n("prompt_tokens"),
            completion: n("completion_tokens"),
            total: n("total_tokens"),
        })
    }
}

pub struct PendingRecord {
    sink: UsageSink,
    record: Option<UsageRecord>,
    started: Instant,
    pub first_byte: Option<Instant>,
    pub tokens: TokenUsage,
}

impl PendingRecord {
    pub fn new(ctx: &RequestCtx, sink: UsageSink, endpoint: Endpoint) -> Self {
        Self {
            sink,
            started: ctx.started,
            first_byte: None,
            tokens: TokenUsage::default(),
            record: Some(UsageRecord {
                ts: now_rfc3339(),
                request_id: ctx.request_id.clone(),
                reseller: ctx.reseller.to_string(),
                tenant: ctx.tenant.id.to_string(),
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
                total_tokens: None,
                stream: false,
                client_disconnected: false,
                latency_ms: 0.0,
                ttfb_ms: None,
                attempts: Vec::new(),
            }),
        }
    }

    /// Edits the record before it is written.
    pub fn update(&mut self, f: impl FnOnce(&mut UsageRecord)) {
        if let Some(r) = self.record.as_mut() {
            f(r);
        }
    }

    pub fn mark_first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
    }

    /// Writes the record with its final status and outcome.
    pub fn finish(&mut self, status: u16, outcome: Outcome, error_code: Option<&str>) {
        let Some(mut r) = self.record.take() else {
            return;
        };
        r.status = status;
        r.outcome = outcome;
        r.error_code = error_code.map(str::to_owned);
        r.client_disconnected = outcome == Outcome::ClientDisconnected;
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
        self.sink.record(r);
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if self.record.is_some() {
            // 499: the client closed the request (nginx's convention).
            self.finish(
                499,
                Outcome::ClientDisconnected,
                Some("client_disconnected"),
            );
        }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
