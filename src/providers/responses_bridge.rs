//! OpenAI's Responses API (`POST /v1/responses`) on a provider that has none of
//! its own (`anthropic`): the request is translated to a chat completion with
//! [`responses_to_chat`] and sent through `send_chat` (which, on an Anthropic
//! route, translates it once more to Messages), and the answer comes back as
//! a `response`: [`chat_to_response`] for JSON, [`ChatStreamToResponses`]
//! event by event for streams. An error answer needs no translation: the
//! Responses API's error JSON is Chat Completions' (status kept).

use super::anthropic::PROMPT_USAGE_EVENT;
use super::responses_chat::{chat_to_response, responses_to_chat, ChatStreamToResponses, Echo};
use super::translate::{
    as_chat_request, synthetic, translate_json, translate_sse, translated_headers, unix_now,
    SseConverter, MAX_TRANSLATED_BODY,
};
use super::{ProviderError, UpstreamBody, UpstreamRequest, UpstreamResponse};
use http::StatusCode;
use serde_json::Value;
use std::future::Future;

/// Serves the Responses request `req` through `send_chat`, which sends a
/// chat-completions request to the provider.
pub(crate) async fn send_via_chat<F, Fut>(
    req: UpstreamRequest,
    send_chat: F,
) -> Result<UpstreamResponse, ProviderError>
where
    F: FnOnce(UpstreamRequest) -> Fut,
    Fut: Future<Output = Result<UpstreamResponse, ProviderError>>,
{
    let request: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ProviderError::Misconfigured(e.to_string()))?;
    let chat = match responses_to_chat(&request) {
        Ok(c) => c,
        Err(e) => return Ok(synthetic(StatusCode::BAD_REQUEST, &e.to_openai_error())),
    };
    let echo = Echo::of(&request);
    let model = req.model.clone();
    let stream = req.stream;
    let resp = send_chat(as_chat_request(req, &chat)?).await?;
    if !resp.status.is_success() {
        return Ok(resp);
    }
    let UpstreamBody::Stream(body) = resp.body;
    let status = resp.status;
    if stream && super::is_event_stream(&resp.headers) {
        let conv = ChatToResponses(ChatStreamToResponses::new(echo, &model, unix_now()));
        return Ok(UpstreamResponse {
            status,
            headers: translated_headers(resp.headers, "text/event-stream; charset=utf-8"),
            body: UpstreamBody::Stream(translate_sse(body, conv)),
        });
    }
    let body = translate_json(body, MAX_TRANSLATED_BODY, move |bytes| {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ProviderError::Body(format!("the provider's answer is not JSON: {e}")))?;
        Ok(serde_json::to_vec(&chat_to_response(&v, &echo)).unwrap_or_default())
    });
    Ok(UpstreamResponse {
        status,
        headers: translated_headers(resp.headers, "application/json"),
        body: UpstreamBody::Stream(body),
    })
}

/// Chat chunks → Responses events, framed with their `event:` names. The
/// chat stream's early prompt count (for the chat relay) is not passed on:
/// the Responses relay reads usage from `response.completed`.
struct ChatToResponses(ChatStreamToResponses);

impl SseConverter for ChatToResponses {
    fn on_event(&mut self, event: &str, data: &str) -> String {
        if event == PROMPT_USAGE_EVENT {
            return String::new();
        }
        let mut out = String::new();
        for (name, data) in self.0.on_chunk(data) {
            out.push_str("event: ");
            out.push_str(&name);
            out.push_str("\ndata: ");
            out.push_str(&data);
            out.push_str("\n\n");
        }
        out
    }

    fn on_end(&mut self) -> String {
        // No terminal event: the relay reports the truncated stream.
        String::new()
    }

    fn finished(&self) -> bool {
        self.0.is_finished()
    }
}
