//! Server-sent events read from an upstream body, as they arrive: `sse-core`'s
//! decoder (WHATWG framing, `memchr` line search, one `String` per event) over
//! a [`ByteStream`]. `eventsource-stream`, used before, re-buffered every chunk
//! into a `String` and parsed it with `nom`, line by line: about 9,000
//! instructions per OpenAI chunk against under 2,000 here (callgrind, one
//! streamed answer of 15 events, `benches/request_path.rs` `sse/*`).
//!
//! `retry:` fields mean nothing to a proxy and are skipped; an event larger
//! than [`MAX_EVENT_BYTES`] ends the stream with [`EventError::TooLarge`].

use super::{ByteStream, ProviderError};
use bytes::Bytes;
use futures_util::Stream;
use sse_core::{SseDecoder, SseEvent, SseStream, SseStreamError};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::task::{Context, Poll};

/// One event: its type (`"message"` when the upstream named none) and its data
/// (lines joined with `\n`).
pub use sse_core::MessageEvent as Event;

/// The largest event a stream may carry (its data, name or id, each). A chunk
/// of a streamed answer is a few hundred bytes; a whole tool call's arguments
/// sent in one event can reach hundreds of kilobytes.
pub const MAX_EVENT_BYTES: usize = 8 << 20;
const EVENT_LIMIT: NonZeroUsize = match NonZeroUsize::new(MAX_EVENT_BYTES) {
    Some(n) => n,
    None => panic!("MAX_EVENT_BYTES is not zero"),
};

/// Why an event stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Transport(ProviderError),
    #[error("an upstream event exceeded {MAX_EVENT_BYTES} bytes")]
    TooLarge,
}

impl EventError {
    /// The provider error to report: the transport's own, or a body error.
    pub fn into_provider(self) -> ProviderError {
        match self {
            EventError::Transport(p) => p,
            other => ProviderError::Body(other.to_string()),
        }
    }
}

/// The events of an upstream body.
pub struct EventStream {
    inner: SseStream<ByteStream>,
}

/// Reads `body` as server-sent events.
pub fn events(body: ByteStream) -> EventStream {
    let mut inner = SseStream::with_decoder(SseDecoder::with_limit(EVENT_LIMIT));
    inner.attach(body);
    EventStream { inner }
}

impl Stream for EventStream {
    type Item = Result<Event, EventError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let item = match std::task::ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => None,
                Some(Ok(SseEvent::Message(ev))) => Some(Ok(ev)),
                Some(Ok(SseEvent::Retry(_))) => continue,
                Some(Err(SseStreamError::Inner(e))) => Some(Err(EventError::Transport(e))),
                Some(Err(SseStreamError::PayloadTooLarge(_))) => Some(Err(EventError::TooLarge)),
            };
            return Poll::Ready(item);
        }
    }
}

/// Whether an event's `event:` field names a type of its own (an absent one,
/// or `message`, SSE's default, does not: the data's `type` then tells it).
pub fn is_named(event: &str) -> bool {
    !(event.is_empty() || event == "message")
}

/// `data` framed as one SSE event, with an `event:` line when it has a type of
/// its own, then `tail`. Each line of `data` gets its own `data:` line, so that
/// a payload the upstream sent over several lines stays one event. One
/// allocation of the exact size.
pub fn frame(event: &str, data: &str, tail: &[u8]) -> Bytes {
    let named = is_named(event);
    let lines = 1 + memchr::memchr_iter(b'\n', data.as_bytes()).count();
    let mut out = Vec::with_capacity(
        if named { event.len() + 8 } else { 0 } + data.len() + lines * 7 + 1 + tail.len(),
    );
    if named {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    if lines == 1 {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data.as_bytes());
        out.push(b'\n');
    } else {
        for line in data.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out.extend_from_slice(tail);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn body(chunks: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, ProviderError>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn collect(chunks: &[&'static [u8]]) -> Vec<(String, String)> {
        events(body(chunks))
            .map(|e| {
                let e = e.expect("event");
                (e.event.into_owned(), e.data)
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn events_are_framed_whatever_the_chunking_and_line_endings() {
        let whole: &[u8] = b": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: x\rdata:y\r\rretry: 10\n\ndata: {\"b\":\ndata: 2}\n\ndata: [DONE]\n\n";
        let expected = vec![
            ("message_start".to_owned(), "{\"a\":1}".to_owned()),
            ("message".to_owned(), "x\ny".to_owned()),
            ("message".to_owned(), "{\"b\":\n2}".to_owned()),
            ("message".to_owned(), "[DONE]".to_owned()),
        ];
        assert_eq!(collect(&[whole]).await, expected);
        // Every split point, including inside a CRLF pair.
        for i in 1..whole.len() {
            let (a, b) = whole.split_at(i);
            let a: &'static [u8] = Box::leak(a.to_vec().into_boxed_slice());
            let b: &'static [u8] = Box::leak(b.to_vec().into_boxed_slice());
            assert_eq!(collect(&[a, b]).await, expected, "split at {i}");
        }
    }

    #[test]
    fn an_event_is_framed_line_by_line_with_its_type() {
        assert_eq!(
            &frame("message", "{\"a\":1}", b"")[..],
            b"data: {\"a\":1}\n\n"
        );
        assert_eq!(
            &frame("", "x", b"data: [DONE]\n\n")[..],
            b"data: x\n\ndata: [DONE]\n\n"
        );
        assert_eq!(
            &frame("ping", "{\"b\":\n2}", b"")[..],
            b"event: ping\ndata: {\"b\":\ndata: 2}\n\n"
        );
        let framed = frame("ping", "a\n\nb", b"tail");
        assert_eq!(
            &framed[..],
            b"event: ping\ndata: a\ndata: \ndata: b\n\ntail"
        );
    }

    #[tokio::test]
    async fn an_unfinished_event_at_the_end_is_not_delivered() {
        assert_eq!(
            collect(&[b"data: a\n\ndata: cut"]).await,
            vec![("message".to_owned(), "a".to_owned())]
        );
    }

    #[tokio::test]
    async fn an_event_over_the_cap_ends_the_stream_with_too_large() {
        let mut big = b"data: ".to_vec();
        big.resize(MAX_EVENT_BYTES + 16, b'x');
        big.extend_from_slice(b"\n\ndata: after\n\n");
        let big: &'static [u8] = Box::leak(big.into_boxed_slice());
        let mut s = events(body(&[b"data: first\n\n", big]));
        assert_eq!(s.next().await.unwrap().unwrap().data, "first");
        assert!(matches!(s.next().await, Some(Err(EventError::TooLarge))));
        // A large tool call's arguments in one event (1 MiB) still pass.
        let mut large = b"data: ".to_vec();
        large.resize(1 << 20, b'y');
        large.extend_from_slice(b"\n\n");
        let large: &'static [u8] = Box::leak(large.into_boxed_slice());
        let mut s = events(body(&[large]));
        assert_eq!(s.next().await.unwrap().unwrap().data.len(), (1 << 20) - 6);
        let e = EventError::TooLarge.into_provider();
        assert!(matches!(e, ProviderError::Body(m) if m.contains("exceeded")));
    }

    #[tokio::test]
    async fn a_transport_error_is_passed_on() {
        let items: Vec<Result<Bytes, ProviderError>> = vec![
            Ok(Bytes::from_static(b"data: a\n\n")),
            Err(ProviderError::Body("reset".into())),
        ];
        let mut s = events(Box::pin(futures_util::stream::iter(items)));
        assert_eq!(s.next().await.unwrap().unwrap().data, "a");
        match s.next().await {
            Some(Err(EventError::Transport(ProviderError::Body(m)))) => assert_eq!(m, "reset"),
            other => panic!("{other:?}"),
        }
    }
}
