//! `POST /v1/messages/count_tokens`: Anthropic's token counting (the SDK's
//! `messages.count_tokens`, which Claude Code calls before it sends a long
//! prompt). The front door is `/v1/messages`' (reseller by Host, tenant by
//! key, the model chosen under the plan, refusals in Anthropic's shape); then
//! the answer, `{"input_tokens": N}`, comes from where the model is served.
//! Every count goes through the handler's admission and the fallback loop as
//! `Endpoint::CountTokens`, with its body checked by [`prepare_body`]:
//!
//! - an Anthropic route gets the body (its `model` rewritten per route) to
//!   the provider's own count_tokens, with the key and `anthropic-beta` a
//!   `/v1/messages` call would send, its answer back untouched, its errors
//!   reshaped, 429/5xx/connect failures retried and fallen back like any
//!   request's. An OpenAI-speaking route that the loop reaches is answered
//!   from the gateway's tokenizer ([`estimate_answer`]): nothing is sent, so
//!   it is no attempt (no key unsealed, no breaker probed or closed by a
//!   call that never reached the provider, none refusing it);
//! - a model with none is thus answered from the gateway's tokenizer at its
//!   first route: OpenAI's API has nothing to count a prompt with, so no
//!   provider is called, and no provider key unsealed.
//!
//! A count from the tokenizer says so: `x-livery-estimated: true`.
//!
//! Counting consumes no tokens, so the call is admitted with an estimate of
//! 0 (`handler::admit`) and its record starts at 0 tokens (`PendingRecord::new`): it takes a request of the per-minute bucket and a concurrency slot (a
//! client cannot call it without bound), and reserves nothing of the token
//! buckets or the monthly quota. It leaves a usage record like every call of
//! a tenant (endpoint `messages.count_tokens`, 0 tokens, not billable), which
//! keeps the audit trail whole (whose key the provider saw) and releases the
//! concurrency slot on every exit path, as for any request.

use super::body::{json_response, ProxyBody};
use super::ctx::{Dialect, RequestCtx};
use super::error::GatewayError;
use super::fallback::Prepared;
use super::record::PendingRecord;
use super::App;
use crate::limits::RequestFields;
use crate::providers::estimate_input_tokens;
use crate::routing::Route;
use crate::tenancy::BrandHeaders;
use crate::usage::Outcome;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

/// Validates a count's body: what every forwarded body must be (a JSON
/// object, `model` chosen under the plan) and a `messages` array, checked
/// here rather than left to the provider as `/v1/messages` leaves it, since
/// the tokenizer must count what a provider would accept. Never streamed:
/// Anthropic answers a count in JSON, whatever the body says.
pub fn prepare_body(
    ctx: &RequestCtx,
    body: Bytes,
    record: &mut PendingRecord,
) -> Result<Prepared, GatewayError> {
    let (body, choice, _) = super::handler::read_body(ctx, body, record)?;
    if !body
        .field("messages")
        .is_some_and(|m| m.trim_start().starts_with('['))
    {
        return Err(GatewayError::InvalidField("messages", "an array"));
    }
    Ok(Prepared {
        model: choice.model,
        downgraded_from: choice.downgraded_from,
        body,
        stream: false,
        client_wants_usage: false,
    })
}

/// The answer of `route`, which speaks OpenAI, reached by the fallback loop
/// (first, on a model without an Anthropic route; after the Anthropic ones
/// failed, on one with both): the gateway's count, by the route's model's
/// encoding. The record keeps the attempts made before and names no
/// provider: none was called.
pub(super) async fn estimate_answer(
    app: &App,
    prepared: &Prepared,
    route: &Route,
    record: PendingRecord,
    names: &BrandHeaders,
) -> Response<ProxyBody> {
    // The body was read as JSON with a `messages` array (`read`).
    let body = serde_json::from_slice(&prepared.body.upstream(&route.upstream_model))
        .unwrap_or(Value::Null);
    estimated(app, prepared, &route.upstream_model, body, record, names).await
}

/// The count from the gateway's tokenizer, by `model`'s encoding, answered
/// as Anthropic's count with `x-livery-estimated: true` (under the
/// reseller's header prefix).
async fn estimated(
    app: &App,
    prepared: &Prepared,
    model: &str,
    body: Value,
    mut record: PendingRecord,
    names: &BrandHeaders,
) -> Response<ProxyBody> {
    // Tokenizing takes CPU in proportion to the prompt (a 4 MiB one: up to
    // about a second): off the request threads, where it held up every
    // request and stream of the connections on the same thread.
    let model = model.to_owned();
    let tokens =
        match tokio::task::spawn_blocking(move || estimate_input_tokens(&model, &body)).await {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::error!(error = %e, "the token count failed");
                let err = GatewayError::Internal;
                record.finish(err.status().as_u16(), Outcome::Truncated, Some(err.code()));
                return err.to_response_for(Dialect::Anthropic);
            }
        };
    let staged = record.finish_staged(StatusCode::OK.as_u16(), Outcome::Ok, None);
    let mut resp = json_response(StatusCode::OK, &json!({ "input_tokens": tokens }));
    let h = resp.headers_mut();
    h.insert(names.estimated.clone(), HeaderValue::from_static("true"));
    super::fallback::served_headers(h, prepared, names);
    if let Some(ticket) = staged {
        // As every plain answer: its usage line in the kernel before it leaves.
        app.usage.spooled(ticket).await;
    }
    resp
}
