//! [`IdleTimeout`]: ends an upstream body with an error when no bytes arrive for a
//! while, so a provider that stalls mid-stream cannot hold a client (and a
//! concurrency slot) forever. The relay turns the error into an SSE error event.

use super::{ByteStream, ProviderError};
use bytes::Bytes;
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub struct IdleTimeout {
    inner: ByteStream,
    idle: Duration,
    /// Made the first time the body has to be waited for: a body already
    /// whole when it is first read (most plain answers) never arms a timer,
    /// which saves a box, a clock read and a timer-wheel insertion and
    /// removal per request.
    timer: Option<Pin<Box<Sleep>>>,
    /// An item came since the timer was set: it is set again (one clock
    /// read) when the body is next waited for, not on every item.
    stale: bool,
    expired: bool,
}

impl IdleTimeout {
    pub fn wrap(inner: ByteStream, idle: Duration) -> ByteStream {
        Box::pin(Self::new(inner, idle))
    }

    fn new(inner: ByteStream, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            stale: false,
            expired: false,
        }
    }
}

impl Stream for IdleTimeout {
    type Item = Result<Bytes, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(item) => {
                self.stale = true;
                Poll::Ready(item)
            }
            Poll::Pending => {
                // The idle time counts from when the body is waited for.
                let idle = self.idle;
                let stale = std::mem::take(&mut self.stale);
                let timer = match &mut self.timer {
                    Some(timer) => {
                        if stale {
                            timer.as_mut().reset(Instant::now() + idle);
                        }
                        timer
                    }
                    None => self.timer.insert(Box::pin(tokio::time::sleep(idle))),
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.expired = true;
                        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
                        Poll::Ready(Some(Err(ProviderError::Body(format!(
                            "no data from the provider for {ms} ms"
                        )))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_with_an_error() {
        let stalled: ByteStream = Box::pin(
            futures_util::stream::iter([Ok(Bytes::from_static(b"a"))])
                .chain(futures_util::stream::pending()),
        );
        let mut s = IdleTimeout::wrap(stalled, Duration::from_secs(5));
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"a"));
        assert!(matches!(s.next().await, Some(Err(ProviderError::Body(_)))));
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_already_whole_arms_no_timer_and_a_wait_arms_one() {
        let whole: ByteStream = Box::pin(futures_util::stream::iter([
            Ok(Bytes::from_static(b"a")),
            Ok(Bytes::from_static(b"b")),
        ]));
        let mut s = IdleTimeout::new(whole, Duration::from_secs(5));
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"a"));
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"b"));
        assert!(s.next().await.is_none());
        assert!(s.timer.is_none());

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, ProviderError>>(1);
        let mut s = IdleTimeout::new(
            Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))),
            Duration::from_secs(5),
        );
        let waiting = tokio::spawn(async move {
            let first = s.next().await;
            (s.timer.is_some(), first)
        });
        tokio::time::sleep(Duration::from_secs(4)).await;
        tx.send(Ok(Bytes::from_static(b"late"))).await.unwrap();
        let (armed, first) = waiting.await.unwrap();
        assert!(armed);
        assert_eq!(first.unwrap().unwrap(), Bytes::from_static(b"late"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_is_left_alone() {
        let steady: ByteStream = Box::pin(futures_util::stream::iter(0..5).then(|_| async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok(Bytes::from_static(b"x"))
        }));
        let items: Vec<_> = IdleTimeout::wrap(steady, Duration::from_secs(5))
            .collect()
            .await;
        assert_eq!(items.len(), 5);
        assert!(items.iter().all(Result::is_ok));
    }
}
