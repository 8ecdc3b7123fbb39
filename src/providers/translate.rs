//! Byte-stream adapters that re-express an upstream answer in the wire format the
//! client speaks: [`translate_sse`] converts a stream event by event as it
//! arrives (nothing is accumulated beyond the event being parsed), and
//! [`translate_json`] converts a whole (bounded) JSON body once it has arrived.
//! The two stream converters are [`AnthropicToChat`] (Anthropic events → OpenAI
//! chunks) and [`ChatToAnthropic`] (OpenAI chunks → Anthropic events); both sit on
//! the pure translators of [`super::anthropic`].
//!
//! A transport error of the upstream body is passed on as the stream's error, so
//! the proxy's relay ends the client's stream the way it ends any broken one.

use super::anthropic::{
    anthropic_sse_frame, ChatStreamToMessages, MessagesStreamToChat, PROMPT_USAGE_EVENT,
};
use super::sse;
use super::{ByteStream, ProviderError, UpstreamBody, UpstreamRequest, UpstreamResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

/// Cap on an upstream body buffered for translation (the proxy caps the
/// translated body again with `max_upstream_body_bytes`).
pub(crate) const MAX_TRANSLATED_BODY: usize = 64 * 1024 * 1024;

/// Cap on an upstream error body buffered for translation.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// Converts one upstream SSE stream into framed client bytes.
pub(crate) trait SseConverter: Send + 'static {
    /// One upstream event (`event:` name, `data:` text) → framed bytes to send,
    /// possibly none.
    fn on_event(&mut self, event: &str, data: &str) -> String;
    /// The upstream body ended (only called if the converter is not finished).
    fn on_end(&mut self) -> String;
    /// True once the translated stream is complete (or failed): nothing more is
    /// read from the upstream.
    fn finished(&self) -> bool;
}

/// Applies `conv` to every event of `body`, as the events arrive.
pub(crate) fn translate_sse<C: SseConverter>(body: ByteStream, conv: C) -> ByteStream {
    let events = sse::events(body);
    Box::pin(futures_util::stream::unfold(
        (events, conv, false),
        |(mut events, mut conv, done)| async move {
            if done {
                return None;
            }
            loop {
                match events.next().await {
                    Some(Ok(ev)) => {
                        let out = conv.on_event(&ev.event, &ev.data);
                        let finished = conv.finished();
                        if !out.is_empty() {
                            return Some((Ok(Bytes::from(out)), (events, conv, finished)));
                        }
                        if finished {
                            return None;
                        }
                    }
                    Some(Err(e)) => {
                        return Some((Err(e.into_provider()), (events, conv, true)));
                    }
                    None => {
                        let out = conv.on_end();
                        if out.is_empty() {
                            return None;
                        }
                        return Some((Ok(Bytes::from(out)), (events, conv, true)));
                    }
                }
            }
        },
    ))
}

/// Buffers `body` (up to `cap` bytes) and yields `convert` of it as one piece.
pub(crate) fn translate_json<F>(body: ByteStream, cap: usize, convert: F) -> ByteStream
where
    F: FnOnce(&[u8]) -> Result<Vec<u8>, ProviderError> + Send + 'static,
{
    Box::pin(futures_util::stream::once(async move {
        let bytes = collect(body, cap).await?;
        convert(&bytes).map(Bytes::from)
    }))
}

async fn collect(mut body: ByteStream, cap: usize) -> Result<Bytes, ProviderError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > cap {
            return Err(ProviderError::BodyTooLarge(cap));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// An answer the provider layer gives itself (a request it cannot translate):
/// `status` with a JSON `body`.
pub(crate) fn synthetic(status: StatusCode, body: &Value) -> UpstreamResponse {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(bytes)]));
    UpstreamResponse {
        status,
        headers,
        body: UpstreamBody::Stream(body),
    }
}

/// The upstream's headers for a translated body: the content type replaced,
/// framing headers (which described the untranslated bytes) removed.
pub(crate) fn translated_headers(mut headers: HeaderMap, content_type: &'static str) -> HeaderMap {
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::CONTENT_ENCODING);
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    headers
}

/// `req` re-addressed as the chat completion `chat` (a bridge's first hop:
/// same model, stream flag and request id; no Anthropic beta features, which
/// a chat completion does not carry).
pub(crate) fn as_chat_request(
    req: UpstreamRequest,
    chat: &Value,
) -> Result<UpstreamRequest, ProviderError> {
    let body = Bytes::from(
        serde_json::to_vec(chat).map_err(|e| ProviderError::Misconfigured(e.to_string()))?,
    );
    Ok(UpstreamRequest {
        endpoint: super::Endpoint::ChatCompletions,
        model: req.model,
        body,
        stream: req.stream,
        request_id: req.request_id,
        anthropic_beta: None,
    })
}

/// The gateway's clock in unix seconds, for `created`.
pub(crate) fn unix_now() -> u64 {
    crate::unix_seconds(std::time::SystemTime::now())
}

/// Anthropic Messages events → OpenAI `chat.completion.chunk`s, always with the
/// final usage chunk (the relay hides it from a client that did not ask), then
/// `data: [DONE]` after `message_stop`. An `event: error` becomes one
/// `data: {"error": ...}` chunk, which the relay passes on as the stream's end.
/// The prompt's counts go to the relay ahead of the answer, in a
/// [`PROMPT_USAGE_EVENT`].
pub(crate) struct AnthropicToChat {
    conv: MessagesStreamToChat,
    prompt_sent: bool,
}

impl AnthropicToChat {
    pub(crate) fn new(conv: MessagesStreamToChat) -> Self {
        Self {
            conv,
            prompt_sent: false,
        }
    }
}

impl SseConverter for AnthropicToChat {
    fn on_event(&mut self, event: &str, data: &str) -> String {
        let mut out = String::new();
        let result = self.conv.on_event(event, data);
        if !self.prompt_sent {
            // A count of 0 is no report (a `message_start` without usage):
            // a later event may still bring one.
            if let Some((prompt, cached, written)) = self.conv.prompt_usage().filter(|u| u.0 > 0) {
                self.prompt_sent = true;
                out.push_str(&format!(
                    "event: {PROMPT_USAGE_EVENT}\ndata: {{\"prompt_tokens\":{prompt},\"cached_tokens\":{cached},\"cache_write_tokens\":{written}}}\n\n"
                ));
            }
        }
        match result {
            Ok(chunks) => {
                for c in chunks {
                    out.push_str("data: ");
                    out.push_str(&c);
                    out.push_str("\n\n");
                }
                if self.conv.is_finished() {
                    out.push_str("data: [DONE]\n\n");
                }
            }
            Err(e) => {
                out.push_str(&format!("data: {}\n\n", e.to_openai_error()));
            }
        }
        out
    }

    fn on_end(&mut self) -> String {
        // No `[DONE]`: the relay reports the truncated stream.
        String::new()
    }

    fn finished(&self) -> bool {
        self.conv.is_finished()
    }
}

/// OpenAI `chat.completion.chunk`s → Anthropic Messages events; a failure (an
/// error chunk, a stream that ends without a finish reason) becomes
/// `event: error`.
pub(crate) struct ChatToAnthropic(pub ChatStreamToMessages);

impl ChatToAnthropic {
    fn frame(result: Result<Vec<(&'static str, String)>, super::anthropic::StreamError>) -> String {
        match result {
            Ok(events) => events
                .iter()
                .map(|(name, data)| anthropic_sse_frame(name, data))
                .collect(),
            Err(e) => anthropic_sse_frame("error", &e.to_anthropic_event().to_string()),
        }
    }
}

impl SseConverter for ChatToAnthropic {
    fn on_event(&mut self, _event: &str, data: &str) -> String {
        Self::frame(self.0.on_chunk(data))
    }

    fn on_end(&mut self) -> String {
        Self::frame(self.0.end_of_body())
    }

    fn finished(&self) -> bool {
        self.0.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(pieces: &[&'static str]) -> ByteStream {
        let items: Vec<Result<Bytes, ProviderError>> = pieces
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn text(s: ByteStream) -> String {
        let parts: Vec<_> = s.collect().await;
        parts
            .into_iter()
            .map(|p| String::from_utf8(p.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn anthropic_stream_becomes_chunks_and_done() {
        let sse = include_str!("../../tests/fixtures/wire/anthropic/messages_stream.sse");
        // Split mid-event to check that framing does not depend on chunking.
        let (a, b) = sse.split_at(sse.len() / 2);
        let a: &'static str = Box::leak(a.to_owned().into_boxed_str());
        let b: &'static str = Box::leak(b.to_owned().into_boxed_str());
        let out = text(translate_sse(
            body_of(&[a, b]),
            AnthropicToChat::new(MessagesStreamToChat::new("claude", 1, true)),
        ))
        .await;
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        assert!(out.contains("\"content\":\"2\""), "{out}");
        assert!(out.contains("\"finish_reason\":\"stop\""), "{out}");
        assert!(out.contains("\"prompt_tokens\":20"), "{out}");
        // The one named event is the relay's, first: message_start's counts.
        let first =
            "event: livery-prompt-usage\ndata: {\"prompt_tokens\":20,\"cached_tokens\":0,\"cache_write_tokens\":0}\n\n";
        assert!(out.starts_with(first), "{out}");
        assert_eq!(out.matches("event:").count(), 1, "{out}");
    }

    #[tokio::test]
    async fn chat_stream_becomes_anthropic_events() {
        let sse = include_str!("../../tests/fixtures/wire/openai/chat_stream.sse");
        let out = text(translate_sse(
            body_of(&[sse]),
            ChatToAnthropic(ChatStreamToMessages::new("gpt")),
        ))
        .await;
        assert!(out.starts_with("event: message_start\n"), "{out}");
        assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }

    #[tokio::test]
    async fn a_chat_stream_without_finish_ends_with_an_error_event() {
        let out = text(translate_sse(
            body_of(&["data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"]),
            ChatToAnthropic(ChatStreamToMessages::new("gpt")),
        ))
        .await;
        assert!(
            out.ends_with("\n\n") && out.contains("event: error\n"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_chat_stream_cut_after_its_finish_reason_ends_with_an_error_event() {
        // A finish reason, then the body ends: no usage chunk, no `[DONE]`.
        let out = text(translate_sse(
            body_of(&["data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n"]),
            ChatToAnthropic(ChatStreamToMessages::new("gpt")),
        ))
        .await;
        assert!(out.ends_with("\n\n"), "{out}");
        assert!(out.contains("event: error\n"), "{out}");
        assert!(!out.contains("message_stop"), "{out}");
        // With `[DONE]` the same stream ends cleanly.
        let out = text(translate_sse(
            body_of(&["data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"]),
            ChatToAnthropic(ChatStreamToMessages::new("gpt")),
        ))
        .await;
        assert!(
            out.ends_with("data: {\"type\":\"message_stop\"}\n\n"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn json_translation_is_capped() {
        let s = translate_json(body_of(&["0123456789"]), 4, |b| Ok(b.to_vec()));
        let items: Vec<_> = s.collect().await;
        assert!(matches!(items[0], Err(ProviderError::BodyTooLarge(4))));
    }
}
