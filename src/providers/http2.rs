//! [`Http2Upstream`]: requests to a provider that speaks HTTP/2, sent on one
//! shared connection through the `h2` crate directly.
//!
//! hyper's pooled client does the same job with a pool checkout (a lock and a
//! map lookup keyed by the URI), a dispatch channel into the connection task,
//! and a separate task or poll that pipes the body after the headers; that is
//! about 10k instructions per request (callgrind), and the HEADERS and DATA
//! frames leave in two writes. Here the request's HEADERS and DATA are queued
//! together on the connection, which writes them in one go.
//!
//! The connection is found by prior knowledge (h2c over plain HTTP, when the
//! provider is configured so) or by ALPN over TLS. A TLS server that does not
//! agree HTTP/2 is remembered, and its requests go through hyper's pooled
//! HTTP/1.1 client instead ([`Dialled::Http1`]).
//!
//! One connection serves all requests while it carries fewer streams than the
//! server's `max_concurrent_streams`. At that limit the next request opens a
//! new connection, which serves the requests after it (the full one keeps its
//! streams to their end, then closes): an LLM stream lasts seconds to
//! minutes, and `h2` queues the streams above the limit (its readiness says
//! nothing of it), so a gateway held to one connection's limit (often 100)
//! made the rest wait until they timed out. Each connection counts its open
//! streams itself, with a slot that the response body carries. At most
//! [`MAX_CONNECTIONS`] are open per provider; beyond, streams queue as before.
//! When the
//! connection ends (the server closed it, sent GOAWAY, or it failed), the next
//! request dials again; a connection idle for longer than [`IDLE`] is not
//! trusted (a NAT or a load balancer may have dropped it silently) and is
//! replaced. Every connection is PINGed each [`PING_EVERY`]; one whose pong
//! does not come back within [`PONG_WITHIN`] is dropped, failing its streams
//! (a blackholed connection, silent while requests keep it from going idle,
//! would otherwise hold every request sent on it until `first_byte_timeout`,
//! ten minutes by default). A request whose connection turns out closed
//! before it could be sent is sent on a new connection; once sent, a failure
//! is the route's (its fallback decides).

use super::ProviderError;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::Stream;
use h2::client::SendRequest;
use h2::RecvStream;
use http::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

/// A connection unused for this long is replaced rather than reused (hyper's
/// pool drops idle connections after the same time).
pub const IDLE: Duration = Duration::from_secs(90);
/// How often a connection is PINGed (one PING frame per connection, not per
/// request).
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// How long a pong may take before the connection is taken for dead (as
/// hyper's default `keep_alive_timeout`).
pub const PONG_WITHIN: Duration = Duration::from_secs(20);

// As hyper's HTTP/2 client: windows large enough that a long completion is
// never held up by flow control on a fast link.
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_SEND_BUF: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// The fewest concurrent streams a server should allow (RFC 9113 6.5.2).
const INITIAL_MAX_STREAMS: usize = 100;
/// Connections open at most to one provider (a full one is replaced for the
/// next requests while it finishes its streams).
const MAX_CONNECTIONS: usize = 16;

/// What dialling the provider gave.
pub enum Dialled {
    /// An HTTP/2 response head and its body, and the stream's slot on its
    /// connection (for [`Http2Body`] to hold).
    Http2(Response<RecvStream>, StreamSlot),
    /// The provider does not speak HTTP/2 (TLS without `h2` by ALPN): the
    /// request back, unsent, for the HTTP/1.1 client.
    Http1(Request<Bytes>),
}

/// One provider's shared HTTP/2 connection.
pub struct Http2Upstream {
    connector: HttpsConnector<HttpConnector>,
    /// The provider's scheme and authority, what is dialled.
    origin: Uri,
    current: ArcSwapOption<Live>,
    /// Held while dialling, so that concurrent first requests share one
    /// connection instead of each opening its own.
    dialling: tokio::sync::Mutex<()>,
    /// The server answered ALPN without `h2`.
    http1_only: AtomicBool,
    /// Connections whose task still runs (the current one and full ones
    /// finishing their streams).
    open: Arc<AtomicUsize>,
    /// [`IDLE`], but for tests.
    idle_ms: u64,
    /// [`PING_EVERY`] and [`PONG_WITHIN`], but for tests.
    keepalive: KeepAlive,
    epoch: Instant,
}

/// A connection in use: its request handle and when it was last used.
struct Live {
    send: SendRequest<Bytes>,
    /// Milliseconds since [`Http2Upstream::epoch`].
    last_used: AtomicU64,
    /// Streams sent on it whose response body is still held.
    streams: Arc<AtomicUsize>,
    /// The server's limit as a connection before this one learnt it: until
    /// this connection's SETTINGS arrive, `h2` assumes 100 streams, and the
    /// streams above the server's limit would be refused.
    known_limit: usize,
}

impl Live {
    fn new(send: SendRequest<Bytes>, now: u64, known_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            send,
            last_used: AtomicU64::new(now),
            streams: Arc::new(AtomicUsize::new(0)),
            known_limit,
        })
    }

    /// The server's limit of concurrent streams, as far as it is known.
    fn limit(&self) -> usize {
        self.send.current_max_send_streams().min(self.known_limit)
    }

    /// At the server's limit of concurrent streams.
    fn full(&self) -> bool {
        self.streams.load(Ordering::Relaxed) >= self.limit()
    }
}

/// One open stream of a connection, released when the response body (or a
/// failed send) lets it go.
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection is PINGed, and how long its pong may take.
#[derive(Debug, Clone, Copy)]
struct KeepAlive {
    every: Duration,
    within: Duration,
}

impl KeepAlive {
    /// Returns when a pong did not come back in time, or the connection
    /// ended (its own future reports that).
    async fn until_silent(self, mut pings: h2::PingPong) {
        loop {
            tokio::time::sleep(self.every).await;
            match tokio::time::timeout(self.within, pings.ping(h2::Ping::opaque())).await {
                Ok(Ok(_pong)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        "upstream HTTP/2 connection answered no PING within {:?}; dropped",
                        self.within
                    );
                    return;
                }
            }
        }
    }
}

impl Http2Upstream {
    pub fn new(connector: HttpsConnector<HttpConnector>, origin: Uri) -> Self {
        let keepalive = KeepAlive {
            every: PING_EVERY,
            within: PONG_WITHIN,
        };
        Self::with_timers(connector, origin, IDLE, keepalive)
    }

    fn with_timers(
        connector: HttpsConnector<HttpConnector>,
        origin: Uri,
        idle: Duration,
        keepalive: KeepAlive,
    ) -> Self {
        Self {
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            keepalive,
            connector,
            origin,
            current: ArcSwapOption::empty(),
            dialling: tokio::sync::Mutex::new(()),
            http1_only: AtomicBool::new(false),
            open: Arc::new(AtomicUsize::new(0)),
            epoch: Instant::now(),
        }
    }

    /// Sends `req` with `body` and waits for the response head.
    #[allow(clippy::manual_async_fn)] // see the comment on the async block
    pub fn send(
        &self,
        req: Request<Bytes>,
    ) -> impl std::future::Future<Output = Result<Dialled, ProviderError>> + Send + '_ {
        // An async block, not an async fn: an async fn copies its arguments
        // into locals and keeps both in its state (rust-lang/rust#62958), and
        // this future is nested in every one of the request path above it.
        async move {
            if self.http1_only.load(Ordering::Relaxed) {
                return Ok(Dialled::Http1(req));
            }
            let mut retried = false;
            let (ready, slot) = loop {
                let Some(mut live) = self.live().await? else {
                    return Ok(Dialled::Http1(req));
                };
                // At the limit: the next requests go to a new connection
                // (another request may have filled that one meanwhile; and
                // at MAX_CONNECTIONS, the stream queues on a full one).
                let mut hops = 0;
                while live.full() && hops < MAX_CONNECTIONS {
                    match Box::pin(self.replace_full(&live)).await? {
                        Some(next) => live = next,
                        None => break,
                    }
                    hops += 1;
                }
                match live.send.clone().ready().await {
                    Ok(ready) => break (ready, StreamSlot::take(&live.streams)),
                    // The connection ended while idle (closed, GOAWAY, broken):
                    // nothing was sent, so forget it and dial once more.
                    Err(e) => {
                        self.forget(&live);
                        if retried {
                            return Err(ProviderError::Connect(super::client::error_chain(&e)));
                        }
                        retried = true;
                    }
                }
            };
            let (head, body) = req.into_parts();
            send_on(ready, Request::from_parts(head, ()), body)
                .await
                .map(|resp| Dialled::Http2(resp, slot))
        }
    }

    /// The connection to use: the current one if it is fresh enough, else a
    /// new one. `None` if the server does not speak HTTP/2.
    async fn live(&self) -> Result<Option<Arc<Live>>, ProviderError> {
        let now = self.now_ms();
        if let Some(live) = self.usable(now) {
            return Ok(Some(live));
        }
        // Boxed: the dial (TCP, TLS, HTTP/2 handshake) is a 4 KiB future that
        // runs once per connection; inline, every request's future would carry
        // its space, and moving that future costs a copy of it.
        Box::pin(self.redial(now)).await
    }

    /// Dials a new connection unless another request did meanwhile.
    async fn redial(&self, now: u64) -> Result<Option<Arc<Live>>, ProviderError> {
        let _dialling = self.dialling.lock().await;
        // Another request may have dialled while this one waited.
        if let Some(live) = self.usable(now) {
            return Ok(Some(live));
        }
        if self.http1_only.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Some(send) = self.dial().await? else {
            self.http1_only.store(true, Ordering::Relaxed);
            return Ok(None);
        };
        let live = Live::new(send, now, usize::MAX);
        self.current.store(Some(live.clone()));
        Ok(Some(live))
    }

    /// A new current connection instead of `full`, unless another request
    /// already replaced it (then that one) or [`MAX_CONNECTIONS`] are open
    /// (then `None`: the stream queues on `full`).
    async fn replace_full(&self, full: &Arc<Live>) -> Result<Option<Arc<Live>>, ProviderError> {
        let _dialling = self.dialling.lock().await;
        if let Some(current) = self.current.load_full() {
            if !Arc::ptr_eq(&current, full) {
                return Ok(Some(current));
            }
        }
        if self.open.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            return Ok(None);
        }
        let Some(send) = self.dial().await? else {
            return Ok(None);
        };
        let live = Live::new(send, self.now_ms(), full.limit());
        self.current.store(Some(live.clone()));
        Ok(Some(live))
    }

    fn usable(&self, now: u64) -> Option<Arc<Live>> {
        let live = self.current.load_full()?;
        let last = live.last_used.swap(now, Ordering::Relaxed);
        if now.saturating_sub(last) > self.idle_ms {
            self.forget(&live);
            return None;
        }
        Some(live)
    }

    /// Drops `live` as the current connection, unless another already
    /// replaced it.
    fn forget(&self, live: &Arc<Live>) {
        let _ = self
            .current
            .compare_and_swap(&Some(live.clone()), None::<Arc<Live>>);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Dials the provider and does the HTTP/2 handshake; `None` if TLS agreed
    /// on another protocol.
    async fn dial(&self) -> Result<Option<SendRequest<Bytes>>, ProviderError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(self.origin.clone())
            .await
            .map_err(|e| super::client::connect_failure(&*e))?;
        let tls = self.origin.scheme_str() == Some("https");
        if tls && !io.connected().is_negotiated_h2() {
            return Ok(None);
        }
        let (send, mut conn) = h2::client::Builder::new()
            // Until the server's SETTINGS arrive, as hyper does: h2's default
            // is unlimited, and a burst on a new connection would have the
            // streams above the server's limit refused.
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUF)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(TokioIo::new(io))
            .await
            .map_err(|e| ProviderError::Connect(super::client::error_chain(&e)))?;
        let open = self.open.clone();
        open.fetch_add(1, Ordering::AcqRel);
        let pings = conn.ping_pong();
        let keepalive = self.keepalive;
        tokio::spawn(async move {
            let silent = async {
                match pings {
                    Some(pings) => keepalive.until_silent(pings).await,
                    None => std::future::pending().await,
                }
            };
            // Dropping a silent connection fails its streams and its request
            // handle, so the next request dials again.
            tokio::select! {
                ended = &mut conn => if let Err(e) = ended {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                },
                () = silent => {}
            }
            drop(conn);
            open.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(Some(send))
    }
}

/// Sends on a connection ready for a new stream. A failure from here on is
/// not retried on another connection: the request may have reached the
/// provider (the route's fallback decides what happens next).
async fn send_on(
    mut send: SendRequest<Bytes>,
    req: Request<()>,
    body: Bytes,
) -> Result<Response<RecvStream>, ProviderError> {
    let broken = provider_error;
    let (response, mut stream) = send.send_request(req, body.is_empty()).map_err(broken)?;
    if !body.is_empty() {
        // Queued behind the HEADERS frame; the connection task writes both
        // in one go.
        stream.send_data(body, true).map_err(broken)?;
    }
    match response.await.map_err(broken) {
        // A stream the server had taken fails as a broken pipe when the
        // connection closes after its GOAWAY; the connection remembers why.
        Err(ProviderError::Body(text)) if gone_away(send) => Err(ProviderError::GoneAway(text)),
        r => r,
    }
}

/// Whether the server ended this connection with a GOAWAY (h2 keeps it as the
/// connection's error, which a readiness check returns at once).
fn gone_away(send: SendRequest<Bytes>) -> bool {
    use futures_util::FutureExt;
    matches!(send.ready().now_or_never(), Some(Err(e)) if e.is_go_away() && e.is_remote())
}

/// An HTTP/2 stream's failure: [`ProviderError::GoneAway`] when the server's
/// GOAWAY ended it, [`ProviderError::Refused`] when the server refused the
/// stream unprocessed, else a broken response.
fn provider_error(e: h2::Error) -> ProviderError {
    let text = super::client::error_chain(&e);
    if e.is_go_away() && e.is_remote() {
        ProviderError::GoneAway(text)
    } else if e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        ProviderError::Refused(text)
    } else {
        ProviderError::Body(text)
    }
}

/// A response body from an HTTP/2 stream, handing the flow-control window
/// back as each chunk is taken.
pub struct Http2Body {
    stream: RecvStream,
    /// Held until the body is done with: its connection counts the stream
    /// open until then.
    _slot: StreamSlot,
}

impl Http2Body {
    pub fn new(stream: RecvStream, slot: StreamSlot) -> Self {
        Self {
            stream,
            _slot: slot,
        }
    }
}

impl Stream for Http2Body {
    type Item = Result<Bytes, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.stream.poll_data(cx));
        Poll::Ready(item.map(|chunk| {
            let chunk = chunk.map_err(provider_error)?;
            let _ = self.stream.flow_control().release_capacity(chunk.len());
            Ok(chunk)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// An h2c server answering 200 with `ok`; counts its connections.
    async fn h2c_server() -> (Uri, Arc<AtomicUsize>) {
        h2c_server_with(Duration::ZERO, None).await
    }

    /// [`h2c_server`] answering after `delay`, allowing `max_streams` streams
    /// per connection.
    async fn h2c_server_with(delay: Duration, max_streams: Option<u32>) -> (Uri, Arc<AtomicUsize>) {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
                });
            }
        });
        (origin, connections)
    }

    fn connector() -> HttpsConnector<HttpConnector> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(http)
    }

    async fn post(up: &Http2Upstream, origin: &Uri) -> Bytes {
        let uri: Uri = format!("{origin}v1/chat/completions").parse().unwrap();
        let mut req = Request::new(Bytes::from_static(b"{}"));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        let (resp, slot) = match up.send(req).await {
            Ok(Dialled::Http2(resp, slot)) => (resp, slot),
            Ok(Dialled::Http1(_)) => panic!("not sent over HTTP/2"),
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(resp.status(), 200);
        let mut body = Http2Body::new(resp.into_body(), slot);
        let mut out = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
            out.extend_from_slice(&chunk.unwrap());
        }
        Bytes::from(out)
    }

    #[tokio::test]
    async fn requests_share_one_connection_until_it_has_been_idle_too_long() {
        let (origin, connections) = h2c_server().await;
        let up = Http2Upstream::with_timers(
            connector(),
            origin.clone(),
            Duration::from_millis(300),
            KeepAlive {
                every: PING_EVERY,
                within: PONG_WITHIN,
            },
        );
        for _ in 0..3 {
            assert_eq!(post(&up, &origin).await, "ok");
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "one shared connection"
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(post(&up, &origin).await, "ok");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "idle past the limit: replaced by a new connection"
        );
        assert_eq!(post(&up, &origin).await, "ok");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    /// A server that allows one stream per connection and answers after
    /// 300 ms: three requests at once are answered together, a connection
    /// each, instead of queueing behind one another in `h2` (an LLM stream
    /// holds its stream for seconds to minutes).
    #[tokio::test]
    async fn requests_beyond_the_servers_stream_limit_open_another_connection() {
        let (origin, connections) = h2c_server_with(Duration::from_millis(300), Some(1)).await;
        let up = Http2Upstream::new(connector(), origin.clone());
        // The first request learns the server's SETTINGS (until they come, h2
        // assumes 100 streams).
        assert_eq!(post(&up, &origin).await, "ok");
        let started = Instant::now();
        let answers = futures_util::future::join_all((0..3).map(|_| post(&up, &origin))).await;
        assert!(answers.iter().all(|a| a == "ok"));
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "queued behind one another: {:?}",
            started.elapsed()
        );
        assert!(connections.load(Ordering::SeqCst) >= 3);
        // Sequential requests after that keep to the current connection.
        let before = connections.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(post(&up, &origin).await, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), before);
    }

    /// A server that completes the handshake and then goes silent (a
    /// blackholed connection): the request sent on it fails once a PING goes
    /// unanswered, and the next request dials a new connection.
    #[tokio::test]
    async fn a_connection_that_answers_no_ping_is_dropped_with_its_streams() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                // Handshaken, then never polled: no frame is read or answered.
                held.push(h2::server::handshake(tcp).await.unwrap());
            }
        });
        let keepalive = KeepAlive {
            every: Duration::from_millis(100),
            within: Duration::from_millis(200),
        };
        let up = Http2Upstream::with_timers(connector(), origin.clone(), IDLE, keepalive);
        let req = || {
            let mut req = Request::new(Bytes::from_static(b"{}"));
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = format!("{origin}v1/chat/completions").parse().unwrap();
            req
        };
        let sent = tokio::time::timeout(Duration::from_secs(5), up.send(req())).await;
        assert!(
            matches!(sent, Ok(Err(ProviderError::Body(_)))),
            "the request on a silent connection fails within the PING timeout"
        );
        assert_eq!(up.open.load(Ordering::SeqCst), 0);
        let _ = tokio::time::timeout(Duration::from_secs(1), up.send(req())).await;
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the next request dials again"
        );
    }

    #[tokio::test]
    async fn a_goaway_under_a_request_is_reported_as_gone_away() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            // The request arrives and the server sheds the connection, as a
            // server does after a burst of stream resets. The response handle
            // stays alive: dropping it would reset the stream first.
            if let Some(Ok((_request, _respond))) = conn.accept().await {
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                while conn.accept().await.is_some() {}
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let req = Request::post("http://127.0.0.1/v1/chat/completions")
            .body(())
            .unwrap();
        let err = send_on(send, req, Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::GoneAway(_)), "{err:?}");
    }
}
