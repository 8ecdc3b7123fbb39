//! The front door: listeners, connections (HTTP/1.1 and h2c on the same port),
//! the request pipeline ([`handler`]) and the only place errors become HTTP
//! responses ([`error`]). [`Gateway`] is the embeddable server that `livery serve`
//! and the tests start.

mod body;
mod ctx;
pub mod error;
mod fallback;
mod forward;
mod handler;
mod messages;
mod messages_relay;
mod record;
mod relay;

pub use body::ProxyBody;
pub use ctx::{Dialect, RequestCtx};

use crate::config::{ConfigError, GatewayConfig};
use crate::routing::breaker::Breakers;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;
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
    pub breakers: Breakers,
    pub metrics: Metrics,
    draining: AtomicBool,
}

impl App {
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Usage(#[from] UsageError),
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
}

/// A running gateway: its bound addresses and a handle to stop it.
pub struct Gateway {
    app: Arc<App>,
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Validates the configuration, binds every listener and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<Self, StartError> {
        let snapshot = Snapshot::prepare(&config)?;
        if config.server.listen.is_empty() {
            return Err(StartError::NoListener);
        }
        if snapshot.tenancy.has_demo_tenant() {
            if let Some(addr) = config.server.listen.iter().find(|a| !a.ip().is_loopback()) {
                return Err(StartError::DemoTenantExposed {
                    addr: *addr,
                    key: crate::DEMO_KEY,
                });
            }
        }
        let usage = UsageSink::start(&config)?;
        let app = Arc::new(App {
            snapshot: ArcSwap::from_pointee(snapshot),
            usage,
            breakers: Breakers::default(),
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for addr in &config.server.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
            addrs.push(local);
            tasks.spawn(accept_loop(listener, app.clone(), stop_rx.clone()));
        }
        Ok(Self {
            app,
            addrs,
            stop,
            tasks,
        })
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
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        let next = Snapshot::prepare(config)?;
        self.app.snapshot.store(Arc::new(next));
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), then
    /// flushes the usage records.
    pub async fn shutdown(mut self, grace: Duration) {
        self.app.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("shutdown grace period elapsed; closing remaining connections");
            self.tasks.abort_all();
        }
        let usage = self.app.usage.clone();
        let _ = tokio::task::spawn_blocking(move || usage.close()).await;
    }
}

async fn accept_loop(listener: TcpListener, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    loop {
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
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(handler::handle(app, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
