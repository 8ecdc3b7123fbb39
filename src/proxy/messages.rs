//! The Anthropic front door, `POST /v1/messages`: what the request path does
//! differently for clients that speak Anthropic's Messages API. The body is
//! validated ([`prepare_body`]) and then goes through the same fallback loop as a
//! chat completion; providers answer in Anthropic's wire format (natively on
//! Anthropic routes, translated on OpenAI-speaking ones, see
//! `crate::providers`). This module reads that format: which stream events are
//! lifecycle frames to hold back ([`verdict`]), the usage of a whole message
//! ([`usage_of_message`]), and provider errors reshaped into Anthropic's error
//! JSON ([`reshape_error`]). The stream relay is [`super::messages_relay`].

use super::ctx::RequestCtx;
use super::error::{anthropic_error_type, GatewayError};
use super::fallback::Prepared;
use super::forward::{scrub, Verdict, TENANT_KEY_REJECTED};
use super::record::{PendingRecord, TokenUsage};
use crate::providers::anthropic::Tokens;
use crate::vault::KeyOwner;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

/// Validates a Messages body: a JSON object with a string `model` (chosen under
/// the plan's policy) and an optional boolean `stream`. Everything else is the
/// provider's to judge (Anthropic) or the translator's (OpenAI routes).
pub fn prepare_body(
    ctx: &RequestCtx,
    body: bytes::Bytes,
    record: &mut PendingRecord,
) -> Result<Prepared, GatewayError> {
    let (body, choice, stream) = super::handler::read_body(ctx, body, record)?;
    Ok(Prepared {
        model: choice.model,
        downgraded_from: choice.downgraded_from,
        body,
        stream,
        // Anthropic streams always carry their usage.
        client_wants_usage: true,
    })
}

/// The event's name: the `event:` field, or the data's `type` when it has none.
pub fn event_name<'a>(event: &'a str, data: &'a Value) -> &'a str {
    if crate::providers::sse::is_named(event) {
        event
    } else {
        data.get("type").and_then(Value::as_str).unwrap_or("")
    }
}

/// Whether an Anthropic stream event commits the route: `message_start`, `ping`,
/// an empty text block's start and unknown events are held back; `error` before
/// content lets the route fall back; anything else is content.
pub fn verdict(event: &str, data: &str) -> Verdict {
    let parsed: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    match event_name(event, &parsed) {
        "message_start" | "ping" | "content_block_stop" => Verdict::Hold,
        "content_block_start" => {
            let block = parsed.get("content_block").unwrap_or(&Value::Null);
            let empty_text = block.get("type").and_then(Value::as_str) == Some("text")
                && block
                    .get("text")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty);
            if empty_text {
                Verdict::Hold
            } else {
                Verdict::Content
            }
        }
        "content_block_delta" | "message_delta" | "message_stop" => Verdict::Content,
        "error" => Verdict::InBandError,
        _ => Verdict::Hold,
    }
}

/// Token counts of Anthropic `usage`, in the record's (OpenAI's) terms: prompt =
/// input + cache writes + cache reads, cached = cache reads, cache writes
/// apart (and of them those for an hour, when the answer says).
pub fn token_usage(tokens: Tokens) -> TokenUsage {
    let prompt = tokens.prompt();
    TokenUsage {
        prompt: Some(prompt),
        completion: Some(tokens.output),
        total: Some(prompt.saturating_add(tokens.output)),
        cached: Some(tokens.cache_read),
        cache_write: Some(tokens.cache_creation),
        cache_write_1h: tokens.cache_creation_1h,
    }
}

/// The usage of a whole (non-streamed) Anthropic message, if it reports one.
pub fn usage_of_message(message: &Value) -> Option<TokenUsage> {
    let usage = message.get("usage").filter(|u| u.is_object())?;
    Some(token_usage(Tokens::from_anthropic(Some(usage))))
}

/// Reshapes a provider error body (Anthropic's error JSON, native or translated)
/// for a `/v1/messages` client: provider-identifying words scrubbed, the
/// `request_id` dropped, the status kept (a 529 stays 529: Anthropic's SDK knows
/// it). As for OpenAI clients, a provider's 401/403 is never passed on as such:
/// the tenant's own key refused is 400 `invalid_request_error`, the gateway's
/// 502 `api_error`. Returns the status, the body and the usage record's code.
pub fn reshape_error(
    status: StatusCode,
    body: &[u8],
    key_owner: KeyOwner,
) -> (StatusCode, Bytes, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let typ = err
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(scrub);
    let (client_status, typ, message, code) = if let Some(fault) =
        super::forward::route_fault(status, body, key_owner)
    {
        // As for OpenAI clients (see forward::reshape_error).
        (
            fault.status,
            "api_error".to_owned(),
            fault.message.to_owned(),
            fault.code.to_owned(),
        )
    } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        // The tenant's own provider key.
        (
            StatusCode::BAD_REQUEST,
            "invalid_request_error".to_owned(),
            TENANT_KEY_REJECTED.to_owned(),
            "provider_key_rejected".to_owned(),
        )
    } else {
        let typ = typ.unwrap_or_else(|| anthropic_error_type(status).to_owned());
        let message = message
            .unwrap_or_else(|| format!("The upstream provider returned HTTP {}.", status.as_u16()));
        (status, typ.clone(), message, typ)
    };
    let payload = json!({"type": "error", "error": {"type": typ, "message": message}});
    let bytes = Bytes::from(serde_json::to_vec(&payload).unwrap_or_default());
    (client_status, bytes, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_events_are_held_back() {
        assert!(matches!(verdict("message_start", "{}"), Verdict::Hold));
        assert!(matches!(
            verdict("ping", "{\"type\": \"ping\"}"),
            Verdict::Hold
        ));
        assert!(matches!(
            verdict(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
            ),
            Verdict::Hold
        ));
        assert!(matches!(
            verdict(
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#
            ),
            Verdict::Content
        ));
        assert!(matches!(
            verdict(
                "",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}"#
            ),
            Verdict::Content
        ));
        assert!(matches!(
            verdict(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            Verdict::InBandError
        ));
    }

    #[test]
    fn errors_keep_anthropic_shape_and_lose_identifiers() {
        let body = include_bytes!("../../tests/fixtures/wire/anthropic/error_429.json");
        let (status, payload, code) =
            reshape_error(StatusCode::TOO_MANY_REQUESTS, body, KeyOwner::Platform);
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(code, "rate_limit_error");
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(!m.contains("claude.com") && !m.contains("req_"), "{m}");
        assert!(v.get("request_id").is_none());

        let body = include_bytes!("../../tests/fixtures/wire/anthropic/error_overloaded.json");
        let (status, payload, _) =
            reshape_error(StatusCode::from_u16(529).unwrap(), body, KeyOwner::Platform);
        assert_eq!(status.as_u16(), 529);
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");

        let body = include_bytes!("../../tests/fixtures/wire/anthropic/error_401.json");
        let (status, _, code) = reshape_error(StatusCode::UNAUTHORIZED, body, KeyOwner::Tenant);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(code, "provider_key_rejected");
    }

    #[test]
    fn usage_counts_cache_reads_and_writes_in_the_prompt() {
        let msg: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/wire/anthropic/messages_response.json"
        ))
        .unwrap();
        let u = usage_of_message(&msg).unwrap();
        assert_eq!(u.prompt, Some(187 + 418 + 1111));
        assert_eq!(u.cached, Some(1111));
        assert_eq!(u.cache_write, Some(418));
        assert_eq!(u.cache_write_1h, Some(0));
        assert_eq!(u.completion, Some(33));
        assert_eq!(u.total, Some(187 + 418 + 1111 + 33));
    }
}
