//! Forwarding a tenant's request upstream and turning the provider's answer into
//! the client's: buffered JSON for plain requests, [`SseRelay`] for streams, and
//! provider errors reshaped into OpenAI's error JSON with provider-identifying
//! details (account ids, request ids, key fragments, provider URLs) scrubbed.

use super::body::{full, ProxyBody};
use super::error::GatewayError;
use super::record::{PendingRecord, TokenUsage};
use super::relay::SseRelay;
use crate::providers::{ByteStream, ProviderError, UpstreamBody, UpstreamResponse};
use crate::usage::Outcome;
use crate::vault::KeyOwner;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};

/// Upstream error bodies are small; read at most this much of one.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct Answer {
    pub response: Response<ProxyBody>,
}

/// Turns the provider's response into the client's response, finishing `record`
/// (or handing it to the stream relay, which finishes it when the stream ends).
pub async fn answer(
    upstream: UpstreamResponse,
    mut record: PendingRecord,
    stream: bool,
    client_wants_usage: bool,
    max_body: usize,
    key_owner: KeyOwner,
) -> Result<Answer, (GatewayError, PendingRecord)> {
    let UpstreamBody::Stream(body) = upstream.body;
    let status = upstream.status;
    if !status.is_success() {
        let bytes = match collect(body, MAX_ERROR_BODY, &mut record).await {
            Ok(b) => b,
            Err(e) => return Err((e.into(), record)),
        };
        let (client_status, payload, code) = reshape_error(status, &bytes, key_owner);
        record.finish(client_status.as_u16(), Outcome::UpstreamError, Some(&code));
        let mut resp = Response::new(full(payload));
        *resp.status_mut() = client_status;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(ra) = upstream.headers.get(http::header::RETRY_AFTER) {
            h.insert(http::header::RETRY_AFTER, ra.clone());
        }
        return Ok(Answer { response: resp });
    }

    let is_sse = upstream
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if stream && is_sse {
        let relay = SseRelay::new(body, record, client_wants_usage);
        let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(relay)));
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        // Tells nginx-style proxies in front of us not to buffer the stream.
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(Answer { response: resp });
    }

    let bytes = match collect(body, max_body, &mut record).await {
        Ok(b) => b,
        Err(e) => {
            let err = GatewayError::from(e);
            record.finish(err.status().as_u16(), Outcome::Truncated, Some(err.code()));
            return Err((err, record));
        }
    };
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        if let Some(u) = v.get("usage").and_then(TokenUsage::from_json) {
            record.tokens = u;
        }
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            let m = m.to_owned();
            record.update(|r| r.served_model = Some(m));
        }
    }
    record.finish(status.as_u16(), Outcome::Ok, None);
    let ct = upstream
        .headers
        .get(http::header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    Ok(Answer { response: resp })
}

async fn collect(
    mut body: ByteStream,
    cap: usize,
    record: &mut PendingRecord,
) -> Result<Bytes, ProviderError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        record.mark_first_byte();
        if buf.len() + chunk.len() > cap {
            return Err(ProviderError::BodyTooLarge(cap));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reshapes a provider error body into OpenAI's error JSON. Returns the status for
/// the client, the body and the error code for the usage record.
///
/// A 401/403 from the provider is never passed on as such: it would tell the
/// tenant its *gateway* key is wrong. If the tenant's own provider key was refused
/// it becomes 400 `provider_key_rejected`; a reseller's or the platform's key,
/// 502 `upstream_auth_failed`.
pub fn reshape_error(
    status: StatusCode,
    body: &[u8],
    key_owner: KeyOwner,
) -> (StatusCode, Bytes, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let (mut message, mut typ, param, mut code) = match err {
        Some(Value::Object(o)) => (
            o.get("message").and_then(Value::as_str).map(str::to_owned),
            o.get("type").and_then(Value::as_str).map(str::to_owned),
            o.get("param").cloned().unwrap_or(Value::Null),
            o.get("code").and_then(|c| {
                c.as_str()
                    .map(str::to_owned)
                    .or_else(|| c.as_i64().map(|n| n.to_string()))
            }),
        ),
        Some(Value::String(s)) => (Some(s.clone()), None, Value::Null, None),
        _ => (
            parsed
                .as_ref()
                .and_then(|v| v.get("message").or_else(|| v.get("detail")))
                .and_then(Value::as_str)
                .map(str::to_owned),
            None,
            Value::Null,
            None,
        ),
    };
    let mut client_status = status;
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        if key_owner == KeyOwner::Tenant {
            // The tenant's own provider key: the tenant can and must fix it.
            client_status = StatusCode::BAD_REQUEST;
            message = Some("The provider rejected your own API key for this model; update the provider key configured for your account.".into());
            typ = Some("invalid_request_error".into());
            code = Some("provider_key_rejected".into());
        } else {
            client_status = StatusCode::BAD_GATEWAY;
            message = Some("The upstream provider refused the gateway's credentials for this model; the operator must fix the provider key.".into());
            typ = Some("upstream_error".into());
            code = Some("upstream_auth_failed".into());
        }
    }
    let message = message
        .map(|m| scrub(&m))
        .unwrap_or_else(|| format!("The upstream provider returned HTTP {}.", status.as_u16()));
    let typ = typ.unwrap_or_else(|| default_type(status).to_owned());
    let code_value = code.clone().map_or(Value::Null, Value::String);
    let payload =
        json!({"error": {"message": message, "type": typ, "param": param, "code": code_value}});
    let bytes = Bytes::from(serde_json::to_vec(&payload).unwrap_or_default());
    (
        client_status,
        bytes,
        code.unwrap_or_else(|| format!("upstream_{}", status.as_u16())),
    )
}

fn default_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "upstream_error",
    }
}

/// Removes words that identify the provider or the platform's account there:
/// key fragments, organisation/project/request ids and provider URLs.
pub fn scrub(message: &str) -> String {
    const PREFIXES: &[&str] = &[
        "sk-", "sk_", "org-", "org_", "proj_", "req_", "user-", "http://", "https://",
    ];
    const HOSTS: &[&str] = &["openai.com", "anthropic.com", "azure.com", "azure.net"];
    let mut out = String::with_capacity(message.len());
    for (i, word) in message.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core = word.trim_start_matches(['(', '[', '"', '\'', '`']);
        let lower = core.to_ascii_lowercase();
        // `***` marks a masked key fragment (`sk-ab***yz`), whatever its prefix.
        if PREFIXES.iter().any(|p| lower.starts_with(p))
            || HOSTS.iter().any(|h| lower.contains(h))
            || lower.contains("***")
        {
            let trailing: String = word
                .chars()
                .rev()
                .take_while(|c| matches!(c, '.' | ',' | ')' | ']' | ';' | ':'))
                .collect();
            out.push_str("[redacted]");
            out.extend(trailing.chars().rev());
        } else {
            out.push_str(word);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_provider_identifiers() {
        let m = "Rate limit reached for gpt-4o-mini in organization org-uVqpjtJiKqvVJMVfvpaounIh on tokens. Visit https://platform.openai.com/account/rate-limits to learn more. (Please include the request ID req_0123.)";
        let s = scrub(m);
        assert!(!s.contains("org-uV"), "{s}");
        assert!(!s.contains("openai.com"), "{s}");
        assert!(!s.contains("req_0123"), "{s}");
        let masked = scrub("Invalid key 0123abcd****************wxyz given.");
        assert_eq!(masked, "Invalid key [redacted] given.");
        assert!(s.starts_with(
            "Rate limit reached for gpt-4o-mini in organization [redacted] on tokens."
        ));
    }

    #[test]
    fn upstream_auth_failure_is_not_a_client_401() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-proj-****wXyZ","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let (status, payload, code) =
            reshape_error(StatusCode::UNAUTHORIZED, body, KeyOwner::Platform);
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(code, "upstream_auth_failed");
        assert!(!String::from_utf8_lossy(&payload).contains("sk-proj"));
    }

    #[test]
    fn non_openai_errors_are_reshaped() {
        let (status, payload, _) = reshape_error(
            StatusCode::NOT_FOUND,
            br#"{"error":"model 'x' not found"}"#,
            KeyOwner::Platform,
        );
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["error"]["message"], "model 'x' not found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let (_, payload, _) = reshape_error(
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
            KeyOwner::Platform,
        );
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v["error"]["message"],
            "The upstream provider returned HTTP 502."
        );
        assert_eq!(v["error"]["type"], "server_error");
    }
}
