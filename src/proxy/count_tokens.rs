//! `POST /v1/messages/count_tokens`: Anthropic's token counting (the SDK's
//! `messages.count_tokens`, which Claude Code calls before it sends a long
//! prompt). The front door is `/v1/messages`' (reseller by Host, tenant by
//! key, the model chosen under the plan, refusals in Anthropic's shape); then
//! the answer, `{"input_tokens": N}`, comes from where the model is served:
//!
//! - a model with an Anthropic route goes through the fallback loop as
//!   [`Endpoint::CountTokens`]: the body (its `model` rewritten per route) to
//!   the provider's own count_tokens, with the key and `anthropic-beta` a
//!   `/v1/messages` call would send, its answer back untouched, its errors
//!   reshaped, 429/5xx/connect failures retried and fallen back like any
//!   request's. An OpenAI-speaking route that the loop reaches is answered
//!   from the gateway's tokenizer ([`estimate_answer`]): nothing is sent, so
//!   it is no attempt (no key unsealed, no breaker probed or closed by a
//!   call that never reached the provider, none refusing it);
//! - a model with none is answered from the gateway's tokenizer at once:
//!   OpenAI's API has nothing to count a prompt with, so no provider is
//!   called, and no provider key unsealed.
//!
//! A count from the tokenizer says so: `x-livery-estimated: true`.
//!
//! Counting consumes no tokens, so the call is admitted with an estimate of
//! 0: it takes a request of the per-minute bucket and a concurrency slot (a
//! client cannot call it without bound), and reserves nothing of the token
//! buckets or the monthly quota. It leaves a usage record like every call of
//! a tenant (endpoint `messages.count_tokens`, 0 tokens, not billable), which
//! keeps the audit trail whole (whose key the provider saw) and releases the
//! concurrency slot on every exit path, as for any request.

use super::body::{json_response, ProxyBody};
use super::ctx::{Dialect, RequestCtx};
use super::error::GatewayError;
use super::fallback::{self, Prepared};
use super::record::{PendingRecord, TokenUsage};
use super::App;
use crate::limits::{EffectiveLimits, LimitKey};
use crate::providers::{estimate_input_tokens, Endpoint};
use crate::routing::Route;
use crate::usage::Outcome;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use std::sync::Arc;

// Header names as constants, not `&str`: http copies a string key into a new
// allocation on every insert.
const X_LIVERY_ESTIMATED: HeaderName = HeaderName::from_static("x-livery-estimated");
const X_LIVERY_MODEL: HeaderName = HeaderName::from_static("x-livery-model");
const X_LIVERY_DOWNGRADED_FROM: HeaderName = HeaderName::from_static("x-livery-downgraded-from");

/// Answers one count_tokens call of the tenant `ctx` resolved; a refusal
/// is recorded and returned, for the caller to answer in Anthropic's shape.
pub async fn serve<B>(
    app: &Arc<App>,
    ctx: &RequestCtx,
    body: B,
) -> Result<Response<ProxyBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut record = PendingRecord::new(ctx, app.usage.clone(), Endpoint::CountTokens);
    // Whatever comes back: the record must not estimate the prompt from the
    // body as a call the upstream served without a count, which would bill
    // it and charge the token buckets with it.
    record.tokens = TokenUsage {
        prompt: Some(0),
        completion: Some(0),
        total: Some(0),
        ..TokenUsage::default()
    };
    let (prepared, parsed) = match read(ctx, body, &mut record).await {
        Ok(p) => p,
        Err(e) => return Err(reject(&mut record, e)),
    };
    let limits = EffectiveLimits::of(ctx.snapshot.tenancy.reseller(ctx.reseller_idx), &ctx.tenant);
    let rate_headers = if limits.is_unlimited() {
        None
    } else {
        let key = LimitKey::new(ctx.reseller.clone(), ctx.tenant.id.clone());
        match app.limiter.admit(&key, &limits, 0).await {
            Ok(a) => {
                let headers = *a.rate_headers();
                record.hold_admission(a);
                Some(headers)
            }
            Err(e) => return Err(reject(&mut record, GatewayError::Limit(e))),
        }
    };
    let routes = match ctx.snapshot.models.routes(&prepared.model) {
        Ok(r) => r,
        Err(e) => return Err(reject(&mut record, e.into())),
    };
    let counts_natively = routes.iter().any(|r| r.provider.counts_tokens());
    let mut resp = if counts_natively {
        fallback::serve(app, ctx, Endpoint::CountTokens, prepared, record).await
    } else {
        // The tokenizer of the model that would serve the call.
        let model = routes
            .first()
            .map_or_else(|| prepared.model.clone(), |r| r.upstream_model.clone());
        estimated(app, &prepared, &model, parsed, record).await
    };
    if let Some(rate_headers) = rate_headers {
        rate_headers.insert_into(resp.headers_mut());
    }
    Ok(resp)
}

/// Reads the body (size-limited, as every request's) and validates it: a
/// JSON object with a string `model`, chosen under the plan, and a
/// `messages` array. Returns the request, never streamed, and its JSON.
async fn read<B>(
    ctx: &RequestCtx,
    body: B,
    record: &mut PendingRecord,
) -> Result<(Prepared, Value), GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = ctx.snapshot.limits.max_request_bytes;
    if http_body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n > limit as u64)
    {
        return Err(GatewayError::BodyTooLarge(limit));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(GatewayError::BodyTooLarge(limit))
        }
        Err(e) => return Err(GatewayError::BodyRead(e.to_string())),
    };
    let (body, choice, _) = super::handler::read_body(ctx, bytes.clone(), record)?;
    // Checked here, not left to the provider as `/v1/messages` leaves it:
    // the tokenizer must count the same thing a provider would refuse.
    let parsed: Value =
        serde_json::from_slice(&bytes).map_err(|e| GatewayError::BadJson(e.to_string()))?;
    if !parsed.get("messages").is_some_and(Value::is_array) {
        return Err(GatewayError::InvalidField("messages", "an array"));
    }
    let prepared = Prepared {
        model: choice.model,
        downgraded_from: choice.downgraded_from,
        body,
        // Anthropic answers a count in JSON, whatever the body says.
        stream: false,
        client_wants_usage: false,
    };
    Ok((prepared, parsed))
}

fn reject(record: &mut PendingRecord, err: GatewayError) -> GatewayError {
    record.finish(err.status().as_u16(), Outcome::Rejected, Some(err.code()));
    err
}

/// The answer of `route`, which speaks OpenAI, reached by the fallback loop
/// on a model that also has an Anthropic route: the gateway's count, by the
/// route's model's encoding. The record keeps the attempts made before and
/// names no provider: none was called.
pub(super) async fn estimate_answer(
    app: &App,
    prepared: &Prepared,
    route: &Route,
    record: PendingRecord,
) -> Response<ProxyBody> {
    // The body was read as JSON with a `messages` array (`read`).
    let body = serde_json::from_slice(&prepared.body.upstream(&route.upstream_model))
        .unwrap_or(Value::Null);
    estimated(app, prepared, &route.upstream_model, body, record).await
}

/// The count from the gateway's tokenizer, by `model`'s encoding, answered
/// as Anthropic's count with `x-livery-estimated: true`.
async fn estimated(
    app: &App,
    prepared: &Prepared,
    model: &str,
    body: Value,
    mut record: PendingRecord,
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
    h.insert(X_LIVERY_ESTIMATED, HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(&prepared.model) {
        h.insert(X_LIVERY_MODEL, v);
    }
    if let Some(from) = &prepared.downgraded_from {
        if let Ok(v) = HeaderValue::from_str(from) {
            h.insert(X_LIVERY_DOWNGRADED_FROM, v);
        }
    }
    if let Some(ticket) = staged {
        // As every plain answer: its usage line in the kernel before it leaves.
        app.usage.spooled(ticket).await;
    }
    resp
}
