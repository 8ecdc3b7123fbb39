//! Closing client connections that hold a socket without asking anything: a
//! connection with no request in flight is closed when no complete request
//! head has arrived for `[server] header_timeout_ms`. That covers a kept-alive
//! connection left idle after its last answer, a client sending its head too
//! slowly, and one that connects and sends nothing at all (which hyper's own
//! header-read timeout never covered: it starts with the first request).
//!
//! One timer per connection, re-armed only when it fires, instead of hyper's
//! per-request one (a boxed `Sleep` made, entered into the timer wheel and
//! taken out again on every request: about 2k instructions per request,
//! callgrind). A request costs two atomic updates and, when it ends, a clock
//! read.
//!
//! An HTTP/1.1 connection with a request in flight is closed when its client
//! has taken none of the answer for `[server] send_timeout_ms` (nginx's
//! `send_timeout`): the answer's body handed hyper a frame and hyper has not
//! come back for the next one, because the client stopped reading and the
//! socket is full. Without it the stream, its record, its concurrency slot and
//! the upstream stream (with its flow-control window on the shared HTTP/2
//! connection to the provider) stay held for as long as the client holds the
//! socket: the relay's own deadline and idle timers only run when it is polled.
//! An answer waiting on the upstream is not stalled (the body said Pending).
//!
//! An HTTP/2 connection, once its first request shows it to be one, is due
//! only when it has had no stream in flight for `header_timeout_ms`, and is
//! then closed with a GOAWAY (`proxy::serve`), never dropped: a stream opening
//! at that moment is served or refused retryably. Its streams' answers are
//! paced by HTTP/2 flow control, not by `send_timeout_ms`: a client gone
//! silent with streams open is found out by hyper's keep-alive PINGs instead
//! (`ClientPings` in `proxy`), which cut it when it answers none. Before, an
//! HTTP/2 connection was never due: a client could hold any number of idle
//! ones.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One client connection's idleness.
#[derive(Debug)]
pub struct ConnIdle {
    accepted: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `accepted` when the last request ended (0: none yet).
    idle_since: AtomicU64,
    /// Milliseconds after `accepted` (at least 1) when the answer's body last
    /// handed hyper a frame that hyper has not followed with another poll: the
    /// client's turn to take it. 0: not the client's turn.
    handed_at: AtomicU64,
    http2: AtomicBool,
}

impl ConnIdle {
    /// A connection just accepted: idle from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            handed_at: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request's head is complete: the connection is busy until the
    /// returned guard (carried by the answer's body) is dropped.
    pub fn request(self: &Arc<Self>, version: http::Version) -> InFlight {
        if version == http::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `limit`,
    /// or its client has taken nothing of an answer for `send` (never for an
    /// HTTP/2 connection, whose streams share it).
    pub fn idle_for(&self, limit: Duration, send: Duration) -> IdleFor<'_> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        IdleFor {
            conn: self,
            limit_ms: ms(limit),
            send_ms: ms(send),
            timer: None,
        }
    }

    /// Milliseconds to wait before looking again; 0 when the connection is due.
    fn wait_ms(&self, limit_ms: u64, send_ms: u64) -> u64 {
        let http2 = self.is_http2();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            if http2 {
                return limit_ms;
            }
            let handed = self.handed_at.load(Ordering::Acquire);
            if handed == 0 {
                return limit_ms.min(send_ms);
            }
            let waited = self.now_ms().saturating_sub(handed);
            return send_ms.saturating_sub(waited);
        }
        let idle = self
            .now_ms()
            .saturating_sub(self.idle_since.load(Ordering::Acquire));
        limit_ms.saturating_sub(idle)
    }

    /// Whether a request showed the connection to be HTTP/2: it is then
    /// closed with a GOAWAY, not dropped.
    pub fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }
}

/// [`ConnIdle::idle_for`]'s future. It shares its task with the connection,
/// which is woken several times per request: between its timer's firings a poll
/// only reads the timer's state, where polling the `Sleep` would register the
/// task's waker again each time.
pub struct IdleFor<'a> {
    conn: &'a ConnIdle,
    limit_ms: u64,
    send_ms: u64,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::future::Future for IdleFor<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.as_ref().is_some_and(|t| !t.is_elapsed()) {
            return Poll::Pending;
        }
        loop {
            let wait = match self.conn.wait_ms(self.limit_ms, self.send_ms) {
                0 => return Poll::Ready(()),
                ms => Duration::from_millis(ms),
            };
            let deadline = tokio::time::Instant::now() + wait;
            let timer = match &mut self.timer {
                Some(t) => {
                    t.as_mut().reset(deadline);
                    t
                }
                None => self
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// A request in flight on its connection; dropped when its answer's body is
/// done (sent whole, or abandoned by a client that went away).
#[derive(Debug)]
pub struct InFlight(Arc<ConnIdle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.handed_at.store(0, Ordering::Release);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
        }
    }
}

/// An answer's body that keeps its request [`InFlight`] until it is dropped.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let conn = &self._in_flight.0;
        // Polled: hyper took the last frame. A frame handed over now is the
        // client's to take until the next poll.
        conn.handed_at.store(0, Ordering::Release);
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &frame {
            let conn = &self._in_flight.0;
            conn.handed_at
                .store(conn.now_ms().max(1), Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_is_due_after_the_limit_and_a_busy_one_is_not() {
        let conn = ConnIdle::new();
        let limit = Duration::from_millis(60);
        // Busy for longer than the limit: not due while the request lasts.
        let busy = conn.request(http::Version::HTTP_11);
        let due =
            tokio::time::timeout(Duration::from_millis(150), conn.idle_for(limit, limit)).await;
        assert!(
            due.is_err(),
            "a connection with a request in flight was due"
        );
        drop(busy);
        // Idle from the moment the request ended.
        let ended = Instant::now();
        conn.idle_for(limit, limit).await;
        assert!(ended.elapsed() >= Duration::from_millis(55));
    }

    #[tokio::test]
    async fn an_http2_connection_is_due_only_without_streams() {
        let conn = ConnIdle::new();
        let limit = Duration::from_millis(40);
        let stream = conn.request(http::Version::HTTP_2);
        assert!(conn.is_http2());
        let due =
            tokio::time::timeout(Duration::from_millis(150), conn.idle_for(limit, limit)).await;
        assert!(due.is_err(), "an HTTP/2 connection with a stream was due");
        drop(stream);
        let ended = Instant::now();
        conn.idle_for(limit, limit).await;
        assert!(ended.elapsed() >= Duration::from_millis(35));
    }
}
