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
    timer: Pin<Box<Sleep>>,
    expired: bool,
}

impl IdleTimeout {
    pub fn wrap(inner: ByteStream, idle: Duration) -> ByteStream {
        Box::pin(Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            expired: false,
        })
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
                let deadline = Instant::now() + self.idle;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(item)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.expired = true;
                    let ms = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
                    Poll::Ready(Some(Err(ProviderError::Body(format!(
                        "no data from the provider for {ms} ms"
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
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
