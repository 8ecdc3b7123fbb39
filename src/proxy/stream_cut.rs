//! [`StreamCut`]: the end of shutdown's grace period as the streamed answers
//! still running see it. Each ends with the gateway's own error event
//! (`gateway_shutdown`) and a proper end of body before its connection is
//! dropped, so that its client reads an error it can report (the OpenAI SDK
//! raises `APIError`, Anthropic's its `APIStatusError`) instead of a body cut
//! mid-chunk, which HTTP clients report as a protocol error, if at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// The gateway's one signal to every stream (see the module's doc).
#[derive(Clone, Default)]
pub struct StreamCut {
    notify: Arc<Notify>,
    /// Set before the waiters are woken, for a stream that starts watching
    /// after that.
    fired: Arc<AtomicBool>,
}

impl StreamCut {
    /// Tells every stream watching to end now.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// A watch for one stream. A [`fire`](Self::fire) before its first poll
    /// still reaches it (tokio's `notify_waiters` reaches every `Notified`
    /// made before it, polled or not).
    pub fn watch(&self) -> CutWatch {
        CutWatch {
            notified: Box::pin(self.notify.clone().notified_owned()),
            fired: self.fired.clone(),
        }
    }
}

/// One stream's view of the [`StreamCut`].
pub struct CutWatch {
    notified: Pin<Box<OwnedNotified>>,
    fired: Arc<AtomicBool>,
}

impl CutWatch {
    /// Whether the stream must end now, without registering for a wake-up.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Whether the stream must end now; otherwise its task is woken when it
    /// must.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.fired.load(Ordering::Acquire) {
            return true;
        }
        matches!(self.notified.as_mut().poll(cx), Poll::Ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_watch_made_before_or_after_the_fire_sees_it() {
        let cut = StreamCut::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut early = cut.watch();
        let mut unpolled = cut.watch();
        assert!(!early.poll_fired(&mut cx));
        cut.fire();
        assert!(early.poll_fired(&mut cx));
        assert!(unpolled.poll_fired(&mut cx));
        assert!(cut.watch().poll_fired(&mut cx));
    }
}
