//! The response body type every handler returns, and small constructors for it.

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

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
