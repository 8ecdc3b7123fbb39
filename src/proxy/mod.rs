//! The front door: listeners, connections (HTTP/1.1 and h2c on the same port),
//! the request pipeline ([`handler`]) and the only place errors become HTTP
//! responses ([`error`]). [`Gateway`] is the embeddable server that `livery serve`
//! and the tests start.

mod admin_http;
mod answer_scan;
mod body;
pub mod cors;
mod count_tokens;
mod ctx;
pub mod error;
mod fallback;
mod forward;
mod handler;
mod horizon;
mod idle;
mod messages;
mod messages_relay;
mod record;
mod relay;
mod request_body;
mod responses_relay;
mod stream_cut;

pub use body::ProxyBody;
pub use ctx::{ConnInfo, Dialect, RequestCtx};
use idle::{ConnIdle, Tracked};
pub use request_body::RequestBody;

use crate::config::{ConfigError, GatewayConfig};
use crate::limits::{Limiter, LimitsError, Month, MonthlyUsageSource};
use crate::routing::breaker::Breakers;
use crate::snapshot::Snapshot;
use crate::telemetry::ids::RequestId;
use crate::telemetry::metrics::Metrics;
use crate::tls::{Accepted, PlainAction, Tls, TlsError};
use crate::usage::{UsageError, UsageSink};
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Shared state of a running gateway.
pub struct App {
    pub snapshot: ArcSwap<Snapshot>,
    pub usage: UsageSink,
    pub limiter: Limiter,
    pub breakers: Breakers,
    pub metrics: Metrics,
    draining: AtomicBool,
    /// Ends the streams still running when shutdown's grace period is over.
    stream_cut: stream_cut::StreamCut,
    /// The admin API's state, when `[admin]` is configured.
    pub admin: Option<crate::admin::Admin>,
}

impl App {
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The monthly quota's history: the month's real tokens as counted by the
/// usage ledger, read once per tenant (and reseller) and month.
struct LedgerMonths(UsageSink);

impl MonthlyUsageSource for LedgerMonths {
    fn month_tokens(&self, reseller: &str, tenant: Option<&str>, month: Month) -> u64 {
        self.0.monthly_tokens(reseller, tenant, &month.to_string())
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "refusing to start: the demo tenant (key `{key}`) is configured and listener {addr} is not bound to loopback. \
         The demo key is public; remove the demo tenant from the configuration or listen on 127.0.0.1 / [::1] only."
    )]
    DemoTenantExposed { addr: SocketAddr, key: &'static str },
    #[error("no listener is configured (server.listen is empty)")]
    NoListener,
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A running gateway: its bound addresses and a handle to stop it.
pub struct Gateway {
    app: Arc<App>,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    tls: Option<Arc<Tls>>,
    /// A listener not bound to loopback, if any: no snapshot with the demo
    /// tenant may serve then, at start or after a reload.
    public_listener: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// Set when the grace period is over: the accept loops drop the
    /// connections still open (their records say so).
    cut: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Validates the configuration, binds every listener and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<Self, StartError> {
        Self::start_with(config, ClientPings::DEFAULT).await
    }

    /// [`Gateway::start`] with the client PINGs' timers shortened, so that a
    /// test sees a silent client cut in a second rather than in 30.
    #[cfg(feature = "mock-server")]
    pub async fn start_with_client_pings(
        config: GatewayConfig,
        every: Duration,
        within: Duration,
    ) -> Result<Self, StartError> {
        Self::start_with(config, ClientPings { every, within }).await
    }

    async fn start_with(config: GatewayConfig, pings: ClientPings) -> Result<Self, StartError> {
        if config.server.listen.is_empty() {
            return Err(StartError::NoListener);
        }
        let tls_listen = config
            .tls
            .as_ref()
            .map(|t| t.listen.clone())
            .unwrap_or_default();
        // Kept for reloads, which must refuse the demo tenant just as well.
        let public_listener = config
            .server
            .listen
            .iter()
            .chain(&tls_listen)
            .find(|a| !a.ip().is_loopback())
            .copied();
        // The admin API's store is merged over the file before anything is built.
        let (admin, snapshot) = match crate::admin::Admin::open(&config, public_listener)? {
            Some((admin, merged)) => (Some(admin), Snapshot::prepare(&merged)?),
            None => (None, Snapshot::prepare(&config)?),
        };
        if let (true, Some(addr)) = (snapshot.tenancy.has_demo_tenant(), public_listener) {
            return Err(StartError::DemoTenantExposed {
                addr,
                key: crate::DEMO_KEY,
            });
        }
        let usage = UsageSink::start(&config)?;
        let limiter = Limiter::from_config(&config.limits, Arc::new(LedgerMonths(usage.clone())))?;
        let app = Arc::new(App {
            snapshot: ArcSwap::from_pointee(snapshot),
            usage,
            limiter,
            breakers: Breakers::default(),
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            stream_cut: stream_cut::StreamCut::default(),
            admin,
        });
        let header_timeout = ConnTimeouts {
            header: Duration::from_millis(config.server.header_timeout_ms),
            send: Duration::from_millis(config.server.send_timeout_ms),
        };
        let (stop, stop_rx) = watch::channel(false);
        let (cut, cut_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(horizon::keep(stop_rx.clone()));
        if app.admin.is_some() {
            tasks.spawn(sync_admin_store(app.clone(), stop_rx.clone()));
        }
        // HTTPS first, so that redirects from the plain listeners know its port.
        let mut tls_listeners = Vec::new();
        let mut tls_addrs = Vec::new();
        for addr in &tls_listen {
            let (listener, local) = bind(addr).await?;
            tls_listeners.push(listener);
            tls_addrs.push(local);
        }
        let tls = match &config.tls {
            Some(t) => {
                let mut tls = Tls::build(
                    t,
                    snapshot_platform_domain(&config).as_deref(),
                    eligibility(&app),
                )?;
                if let Some(a) = tls_addrs.first() {
                    tls.set_https_port(a.port());
                }
                Some(Arc::new(tls))
            }
            None => None,
        };
        if let Some(tls) = &tls {
            for listener in tls_listeners {
                tasks.spawn(accept_loop(
                    listener,
                    app.clone(),
                    [stop_rx.clone(), cut_rx.clone()],
                    Listener::Https(tls.clone()),
                    header_timeout,
                    pings,
                ));
            }
            if let Some(acme) = tls.acme() {
                tasks.spawn(acme.clone().renewal_loop(
                    tls.eligibility(),
                    Duration::from_secs(3600),
                    stop_rx.clone(),
                ));
            }
        }
        let mut addrs = Vec::new();
        for addr in &config.server.listen {
            let (listener, local) = bind(addr).await?;
            addrs.push(local);
            tasks.spawn(accept_loop(
                listener,
                app.clone(),
                [stop_rx.clone(), cut_rx.clone()],
                Listener::Plain(tls.clone()),
                header_timeout,
                pings,
            ));
        }
        Ok(Self {
            app,
            addrs,
            tls_addrs,
            tls,
            public_listener,
            stop,
            cut,
            tasks,
        })
    }

    /// The bound HTTPS addresses (`[tls] listen`, port 0 resolved).
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The TLS side, if `[tls]` is configured.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Prepares a new snapshot from `config` and swaps it in whole. In-flight
    /// requests finish on the snapshot they started with.
    /// With the admin API on, its store is merged over `config` first.
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        if let Some(admin) = &self.app.admin {
            return admin.reload(config, &self.app.snapshot);
        }
        let next = Snapshot::prepare_for(config, self.public_listener)?;
        self.app.snapshot.store(Arc::new(next));
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), then
    /// ends the streams still running with an error event, cuts the rest and
    /// flushes the usage records.
    pub async fn shutdown(mut self, grace: Duration) {
        self.app.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, join_all(&mut self.tasks))
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period elapsed; closing remaining connections");
            // Before the cut: the records of the requests it ends say
            // `gateway_shutdown`, not that their clients left. Cut here, their
            // records are written before the ledger closes (left to the
            // runtime's end, they came after it and shipped at the next start).
            self.app.usage.mark_cut();
            // Streams end with an error event their clients can read, and
            // their connections close as the drain closes them; what is left
            // after that (answers not streamed, a client not reading) is cut.
            self.app.stream_cut.fire();
            let ended = tokio::time::timeout(STREAMS_END_WAIT, join_all(&mut self.tasks))
                .await
                .is_ok();
            if !ended {
                let _ = self.cut.send(true);
                if tokio::time::timeout(CUT_WAIT, join_all(&mut self.tasks))
                    .await
                    .is_err()
                {
                    self.tasks.abort_all();
                }
            }
        }
        let usage = self.app.usage.clone();
        let _ = tokio::task::spawn_blocking(move || usage.close()).await;
    }
}

/// Serves the admin store's changes made by other instances, checking it
/// every `[admin] sync_interval_ms` (off the runtime's workers); an
/// unreachable store is logged when it goes and when it comes back.
async fn sync_admin_store(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let Some(every) = app.admin.as_ref().map(|a| a.sync_interval) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let app = app.clone();
        let synced =
            tokio::task::spawn_blocking(move || app.admin.as_ref().map(|a| a.sync(&app.snapshot)))
                .await;
        match synced {
            Ok(Some(Ok(changed))) => {
                if !reachable {
                    tracing::info!("admin store reachable again");
                    reachable = true;
                }
                if changed {
                    tracing::info!("admin store changed by another instance: served");
                }
            }
            Ok(Some(Err(e))) if reachable => {
                tracing::warn!(error = %e, "admin store unreachable; serving its last version");
                reachable = false;
            }
            _ => {}
        }
    }
}

/// The largest HTTP/1.1 request head read (hyper's read buffer, at least 8 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// When a client's HTTP/2 connection is PINGed, and how long its pong may
/// take before the connection is cut, with every stream on it (their records
/// say `client_disconnected`, as when a client closes).
#[derive(Debug, Clone, Copy)]
struct ClientPings {
    every: Duration,
    within: Duration,
}

impl ClientPings {
    /// As upstream connections are PINGed (`providers::http2`): a client
    /// gone without a word (NAT state dropped, a laptop's lid closed) is cut
    /// within 30 s, where its streams held their upstream requests, limit
    /// slots and records until their own timers fired, minutes into a slow
    /// generation. A short period costs next to nothing: hyper PINGs only a
    /// connection that has sent no frame for `every` (one 17-byte frame), runs
    /// one timer per connection and none per request; its bookkeeping is an
    /// uncontended lock and a clock read each time the connection's task runs
    /// and per request head and body frame, on HTTP/2 only. The PINGs
    /// need not cover idle connections (the GOAWAY after `header_timeout_ms`
    /// without a stream does) and do not keep them open: a pong is no
    /// request. 20 s for the pong (hyper's default) is ample on a slow,
    /// buffer-bloated link.
    const DEFAULT: Self = Self {
        every: Duration::from_secs(10),
        within: Duration::from_secs(20),
    };
}

/// How long the streams ended at the end of grace get to send their error
/// event and close their connections, before the rest is cut.
const STREAMS_END_WAIT: Duration = Duration::from_millis(500);

/// How long the accept loops get to drop their connections once cut.
const CUT_WAIT: Duration = Duration::from_secs(2);

async fn join_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

async fn bind(addr: &SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind {
        addr: *addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

fn snapshot_platform_domain(config: &GatewayConfig) -> Option<String> {
    config
        .server
        .platform_domain
        .as_deref()
        .and_then(|d| crate::tenancy::normalize_host(d).map(|d| d.into_owned()))
}

/// A name may get an on-demand certificate if it is a registered domain of the
/// snapshot in force (an in-memory lookup); the answer is its reseller.
fn eligibility(app: &Arc<App>) -> crate::tls::Eligibility {
    let app = Arc::downgrade(app);
    Arc::new(move |name: &str| {
        let app = app.upgrade()?;
        let snapshot = app.snapshot.load();
        let idx = snapshot.tenancy.resolve_host(name).ok()?;
        Some(snapshot.tenancy.reseller(idx).id.clone())
    })
}

/// How long a client connection may wait for a request's head, and for its
/// client to take more of an answer (see `idle`).
#[derive(Debug, Clone, Copy)]
struct ConnTimeouts {
    header: Duration,
    send: Duration,
}

/// What a listener speaks: plain HTTP (with the `[tls]` plain policy, if any)
/// or HTTPS.
#[derive(Clone)]
enum Listener {
    Plain(Option<Arc<Tls>>),
    Https(Arc<Tls>),
}

async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    [mut stop, mut cut]: [watch::Receiver<bool>; 2],
    kind: Listener,
    timeouts: ConnTimeouts,
    pings: ClientPings,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slow and idle clients are closed per connection (`idle`), not by a
    // timer hyper would make for every request.
    builder.http1().header_read_timeout(None);
    // A request head is refused 431 above 64 KiB (Envoy's 60 KiB; nginx's
    // 32 KiB), where hyper's default buffer took 400 KiB: as much memory per
    // connection for as long as header_timeout_ms lets a client trickle it,
    // and 25 times what HTTP/2 accepts (its header list limit is 16 KiB).
    builder.http1().max_buf_size(MAX_HEAD_BYTES);
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    // A client that stops answering PINGs is cut with its streams: see
    // `ClientPings`. HTTP/1.1 has `send_timeout_ms` for a client that stops
    // reading; an HTTP/2 stream's answer is paced by flow control instead.
    builder
        .http2()
        .keep_alive_interval(pings.every)
        .keep_alive_timeout(pings.within);
    let builder = Arc::new(builder);
    // The connections' tasks, so that a cut can drop them; finished ones are
    // reaped as new ones come.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let drain = (graceful.watcher(), stop.clone());
        // One task per connection, spawned per listener kind: a task is the
        // size of its largest state for the connection's whole life, so a
        // plain connection must not carry room for a TLS handshake.
        match &kind {
            Listener::Plain(tls) => {
                let tls = tls.clone();
                conns.spawn(async move {
                    let conn = ConnInfo { peer, tls: None };
                    let io = TokioIo::new(stream);
                    serve(&builder, drain, io, app, conn, tls, timeouts).await;
                });
            }
            Listener::Https(tls) => {
                let tls = tls.clone();
                conns.spawn(async move {
                    match tls.accept(stream).await {
                        Ok(Accepted::Stream(stream, info)) => {
                            let conn = ConnInfo {
                                peer,
                                tls: Some(info),
                            };
                            let io = TokioIo::new(stream);
                            serve(&builder, drain, io, app, conn, None, timeouts).await;
                        }
                        Ok(Accepted::Challenge) => {}
                        Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    }
                });
            }
        }
    }
    // Draining: each connection ends after its requests in flight, until the
    // cut drops the rest (and with them their answers, whose records are
    // written as they are dropped).
    let cut = async { cut.wait_for(|cut| *cut).await.is_ok() };
    tokio::select! {
        () = graceful.shutdown() => {}
        true = cut => conns.shutdown().await,
    }
}

type ServiceFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<Tracked<ProxyBody>>, std::convert::Infallible>,
            > + Send,
    >,
>;

/// Serves HTTP/1.1 or HTTP/2 on one accepted connection. Each request gets the
/// connection's SNI (all the pipeline reads of [`ConnInfo`]); on a plain
/// listener under `[tls]`, the plain policy may answer with a redirect first.
async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    // The drain: its watcher, held while the connection lasts, and its signal.
    (watcher, mut stop): (hyper_util::server::graceful::Watcher, watch::Receiver<bool>),
    io: I,
    app: Arc<App>,
    conn: ConnInfo,
    plain_tls: Option<Arc<Tls>>,
    timeouts: ConnTimeouts,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = conn.peer;
    // Passed as it is, not in the request's extensions: a type map per request
    // cost three allocations and the `ConnInfo` a clone of its ALPN bytes.
    let sni = conn.tls.as_ref().and_then(|t| t.sni.clone());
    let idle = ConnIdle::new();
    let requests = idle.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let in_flight = requests.request(req.version());
        // The client's time to send its request, head or body: see `TimedBody`.
        let req = req.map(|b| body::TimedBody::new(b, timeouts.header));
        let app = app.clone();
        let sni = sni.clone();
        let plain_tls = plain_tls.clone();
        // Boxed: hyper's HTTP/1 dispatcher keeps a slot the size of this
        // future for the connection's whole life (streams included); boxed,
        // the slot is a pointer and the request's state is freed as soon as
        // the answer starts (about 1 KiB per open stream).
        let answer: ServiceFuture = Box::pin(async move {
            let redirect_to =
                plain_tls
                    .as_ref()
                    .and_then(|tls| match tls.plain_action(peer.ip(), &req) {
                        PlainAction::Redirect(url) => Some(url),
                        PlainAction::Serve => None,
                    });
            let resp = match redirect_to {
                Some(url) => redirect(&url),
                None => {
                    use futures_util::FutureExt as _;
                    // The request's id is made here and lent to the handler,
                    // so that the answer to a panic carries the id its span
                    // and usage record used (made after a panic, a fresh one
                    // matched neither). Lent, not cloned: the handler made it
                    // before, so the normal path does the same work.
                    let started_at = std::time::SystemTime::now();
                    let rid = RequestId::of_request(req.headers(), started_at);
                    let rid = &rid;
                    // What else the answer to a panic needs, taken before the
                    // request moves: a copy of an enum.
                    let dialect = Dialect::of_path(req.uri().path());
                    #[cfg(feature = "mock-server")]
                    let panic_test = req.headers().contains_key("x-livery-test-panic");
                    // A wrapper future, no allocation: a panic in the handler
                    // (which the panic hook logs, in the request's span) is
                    // answered as OpenAI answers its own failures, instead of the
                    // connection, and every request on it, being dropped.
                    std::panic::AssertUnwindSafe(async move {
                        #[cfg(feature = "mock-server")]
                        if panic_test {
                            test_panic();
                        }
                        handler::handle(app, req, sni, rid, started_at).await
                    })
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| panic_answer(dialect, rid))
                }
            };
            Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked::new(body, in_flight)))
        });
        answer
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // Not `watcher.watch`, which cannot also send an idle HTTP/2 connection
    // its GOAWAY: the drain is seen on `stop`, and the watcher is held until
    // the connection ends so that the accept loop's drain waits for it.
    let _watcher = watcher;
    let (mut draining, mut goaway) = (false, false);
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    // The only timer hyper runs on a connection here is the
                    // PINGs' (its HTTP/1.1 header timer is off), and its error
                    // says no more than "http2 error".
                    let silent = e
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if silent {
                        tracing::debug!(%peer, "cut an HTTP/2 connection whose client answered no PING");
                    } else {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                return;
            }
            Ok(_) = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = idle.idle_for(timeouts.header, timeouts.send) => {
                // HTTP/2: a GOAWAY, so that a stream opening at this moment
                // is served or refused retryably rather than broken; dropped
                // only if it is still open, and idle, one more period later.
                if idle.is_http2() && !goaway {
                    tracing::debug!(%peer, "sent GOAWAY to an HTTP/2 connection with no stream for header_timeout_ms");
                    goaway = true;
                    conn.as_mut().graceful_shutdown();
                    continue;
                }
                // Dropping the connection closes it: nothing is in flight on it.
                tracing::debug!(%peer, "closed a connection idle for header_timeout_ms, or whose client took nothing of its answer for send_timeout_ms");
                return;
            }
        }
    }
}

/// The answer to a request whose handler panicked: 500 `internal_error`, in
/// the client's dialect, with the request's id (the client's if it sent a
/// sane one), as its log lines and usage record have it.
fn panic_answer(dialect: Dialect, rid: &RequestId) -> http::Response<ProxyBody> {
    use crate::telemetry::ids::REQUEST_ID_HEADER;
    let mut resp = tracing::error_span!("request", request_id = %rid)
        .in_scope(|| error::GatewayError::Internal.to_response_for(dialect));
    resp.headers_mut()
        .insert(REQUEST_ID_HEADER, rid.header_value());
    resp
}

/// The tests' way to reach [`panic_answer`]: a request with the header
/// `x-livery-test-panic`, in builds with the mock provider only.
#[cfg(feature = "mock-server")]
#[expect(clippy::panic, reason = "the panic is what is tested")]
fn test_panic() {
    panic!("x-livery-test-panic");
}

fn redirect(url: &str) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(body::full(bytes::Bytes::new()));
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(url) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}
