//! The response body type every handler returns, and small constructors for it.

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Streams finish with a well-formed error event rather than a body error, so the
/// body itself never fails.
pub type ProxyBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn json_response(
    status: http::StatusCode,
    value: &serde_json::Value,
) -> http::Response<ProxyBody> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = http::Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A request's body that fails when its client sends nothing of it for
/// `stall` (nginx's `client_body_timeout`): without it a client that declares
/// a large body and then trickles it, or stops, holds its connection (or
/// HTTP/2 stream), its record and the body read so far for as long as it
/// keeps the socket open; no other timer runs while a body is being read.
///
/// The timer is made only when the body is not all there at the first poll:
/// a body that came with its head (most requests) costs no timer, one that
/// is still arriving costs one timer for the request and a clock read per
/// frame.
pub struct TimedBody<B> {
    inner: B,
    stall: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the last frame arrived, once the timer runs.
    last: Option<tokio::time::Instant>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            timer: None,
            last: None,
        }
    }
}

/// The error of a [`TimedBody`] whose client stalled.
#[derive(Debug)]
pub struct BodyStalled(Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no part of it arrived for {} ms", self.0.as_millis())
    }
}

impl std::error::Error for BodyStalled {}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if this.timer.is_some() {
                    this.last = Some(tokio::time::Instant::now());
                }
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        let stall = this.stall;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired: due unless a frame came since it was armed.
            let due = this
                .last
                .map_or_else(tokio::time::Instant::now, |t| t + stall);
            if due <= tokio::time::Instant::now() {
                return Poll::Ready(Some(Err(Box::new(BodyStalled(stall)))));
            }
            timer.as_mut().reset(due);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream answer's frames with one pause after the first. hyper writes every
/// frame its body has ready before it flushes, so without the pause a stream
/// whose events arrive together (a short answer, a fast model, a burst behind
/// a slow network) would hold the headers and the first event back until the
/// relay had read the last event and written the usage record. The pause (the
/// task wakes itself and yields once) lets hyper flush the first event on its
/// own; whatever is ready after it still leaves in one write.
pub struct FirstFrameAlone<S> {
    inner: S,
    pause: FirstPause,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstPause {
    BeforeFirst,
    Due,
    Taken,
}

impl<S> FirstFrameAlone<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pause: FirstPause::BeforeFirst,
        }
    }
}

impl<S: Stream + Unpin> Stream for FirstFrameAlone<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        if this.pause == FirstPause::Due {
            this.pause = FirstPause::Taken;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if this.pause == FirstPause::BeforeFirst && matches!(polled, Poll::Ready(Some(_))) {
            this.pause = FirstPause::Due;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_first_frame_leaves_alone_and_the_rest_together() {
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut s = FirstFrameAlone::new(futures_util::stream::iter([1, 2, 3]));
        let mut poll = |cx: &mut Context<'_>| Pin::new(&mut s).poll_next(cx);
        assert_eq!(poll(&mut cx), Poll::Ready(Some(1)));
        // All three were ready; the second waits one turn, and the task is
        // woken so that the turn comes.
        assert_eq!(poll(&mut cx), Poll::Pending);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(poll(&mut cx), Poll::Ready(Some(3)));
        assert_eq!(poll(&mut cx), Poll::Ready(None));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one pause only");
    }

    #[tokio::test]
    async fn nothing_is_lost_or_reordered() {
        let s = FirstFrameAlone::new(futures_util::stream::iter(0..100));
        assert_eq!(s.collect::<Vec<_>>().await, (0..100).collect::<Vec<_>>());
        let empty = FirstFrameAlone::new(futures_util::stream::iter(Vec::<u8>::new()));
        assert!(empty.collect::<Vec<_>>().await.is_empty());
    }
}
