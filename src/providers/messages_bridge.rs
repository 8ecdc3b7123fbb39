//! Anthropic's `POST /v1/messages` on a provider that speaks OpenAI's chat
//! completions (`openai`, `azure_openai`, `mock`): the request is translated with
//! [`messages_to_chat_with`] (which also asks for the streamed usage chunk), sent as a
//! chat completion, and the answer translated back: [`chat_to_message`] for JSON,
//! [`ChatStreamToMessages`] event by event for streams, and
//! [`openai_error_to_anthropic`] for errors (status kept).

use super::anthropic::{
    chat_to_message, messages_to_chat_with, openai_error_to_anthropic, ChatStreamToMessages,
    MaxTokensField,
};
use super::translate::{
    as_chat_request, synthetic, translate_json, translate_sse, translated_headers, ChatToAnthropic,
    MAX_ERROR_BODY, MAX_TRANSLATED_BODY,
};
use super::{ProviderError, UpstreamBody, UpstreamRequest, UpstreamResponse};
use http::StatusCode;
use serde_json::Value;
use std::future::Future;

/// Serves the Messages request `req` through `send_chat`, which sends a
/// chat-completions request to the provider.
pub(crate) async fn send_via_chat<F, Fut>(
    req: UpstreamRequest,
    max_tokens_field: MaxTokensField,
    send_chat: F,
) -> Result<UpstreamResponse, ProviderError>
where
    F: FnOnce(UpstreamRequest) -> Fut,
    Fut: Future<Output = Result<UpstreamResponse, ProviderError>>,
{
    let messages: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ProviderError::Misconfigured(e.to_string()))?;
    let chat = match messages_to_chat_with(&messages, &req.model, max_tokens_field) {
        Ok(c) => c,
        Err(e) => return Ok(synthetic(StatusCode::BAD_REQUEST, &e.to_anthropic_error())),
    };
    let model = req.model.clone();
    let stream = req.stream;
    // The beta features are Anthropic's; an OpenAI route has none.
    let resp = send_chat(as_chat_request(req, &chat)?).await?;
    let UpstreamBody::Stream(body) = resp.body;
    let status = resp.status;
    if !status.is_success() {
        let body = translate_json(body, MAX_ERROR_BODY, move |bytes| {
            let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
            Ok(
                serde_json::to_vec(&openai_error_to_anthropic(status.as_u16(), &v))
                    .unwrap_or_default(),
            )
        });
        return Ok(UpstreamResponse {
            status,
            headers: translated_headers(resp.headers, "application/json"),
            body: UpstreamBody::Stream(body),
        });
    }
    let is_sse = super::is_event_stream(&resp.headers);
    if stream && is_sse {
        let conv = ChatToAnthropic(ChatStreamToMessages::new(&model));
        return Ok(UpstreamResponse {
            status,
            headers: translated_headers(resp.headers, "text/event-stream; charset=utf-8"),
            body: UpstreamBody::Stream(translate_sse(body, conv)),
        });
    }
    let body = translate_json(body, MAX_TRANSLATED_BODY, move |bytes| {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ProviderError::Body(format!("the provider's answer is not JSON: {e}")))?;
        let served = v.get("model").and_then(Value::as_str).unwrap_or(&model);
        Ok(serde_json::to_vec(&chat_to_message(&v, served)).unwrap_or_default())
    });
    Ok(UpstreamResponse {
        status,
        headers: translated_headers(resp.headers, "application/json"),
        body: UpstreamBody::Stream(body),
    })
}
