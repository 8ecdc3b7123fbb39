//! On-demand ACME certificates ([`Acme`]): the in-memory cache of issued
//! certificates (reloaded from disk at start, swapped in place on issue and
//! renewal), challenge certificates in flight, and the policy around each order:
//! one order per name at a time, rolling-hour budgets globally and per reseller,
//! exponential backoff after failures, and a background renewal loop.
//!
//! Whether a name may be ordered at all is decided by the caller from the
//! current tenancy snapshot (an in-memory lookup); this module never orders a
//! name it was not handed with its reseller.

mod limits;
mod order;
mod store;

pub use order::challenge_cert;
pub use store::{NameState, OrderPhase, Store};

use super::certs::LoadedCert;
use super::{Eligibility, TlsError};
use crate::config::AcmeConfig;
use dashmap::DashMap;
use instant_acme::Account;
use limits::{backoff_secs, OrderBudget};
use rustls::sign::CertifiedKey;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Why a handshake got no on-demand certificate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    #[error("backing off after a failed order until {next_retry} (unix): {last_error}")]
    BackingOff { next_retry: i64, last_error: String },
    #[error("{0}")]
    RateLimited(String),
    #[error("order failed: {0}")]
    Failed(String),
    #[error("no certificate yet: the order is still running")]
    StillRunning,
}

pub struct Acme {
    config: AcmeConfig,
    store: Store,
    issued: DashMap<String, LoadedCert>,
    challenges: order::Challenges,
    states: Mutex<BTreeMap<String, NameState>>,
    budget: Mutex<OrderBudget>,
    in_flight: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    account: tokio::sync::OnceCell<Account>,
    orders_placed: AtomicU64,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory_url", &self.config.directory_url)
            .field("issued", &self.issued.len())
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Acme {
    /// Opens the cache (creating its folders) and loads every cached certificate.
    pub fn open(config: &AcmeConfig) -> Result<Self, TlsError> {
        let store = Store::new(&config.cache_dir);
        store.create()?;
        let issued = DashMap::new();
        for (name, cert) in store.load_certs() {
            issued.insert(name, cert);
        }
        let mut states = store.load_state();
        // An order that was running when the gateway stopped is not running now.
        states.retain(|_, s| s.phase == OrderPhase::Failed);
        if !issued.is_empty() {
            tracing::info!(count = issued.len(), "loaded cached ACME certificates");
        }
        Ok(Self {
            budget: Mutex::new(OrderBudget::new(
                config.orders_per_hour,
                config.orders_per_hour_per_reseller,
            )),
            config: config.clone(),
            store,
            issued,
            challenges: DashMap::new(),
            states: Mutex::new(states),
            in_flight: DashMap::new(),
            account: tokio::sync::OnceCell::new(),
            orders_placed: AtomicU64::new(0),
        })
    }

    /// The cached certificate for `name` if it has not expired.
    pub fn cached(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let c = self.issued.get(name)?;
        (c.not_after > now()).then(|| c.key.clone())
    }

    /// The TLS-ALPN-01 certificate for `name` while its validation runs.
    pub fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges.get(name).map(|c| c.clone())
    }

    /// Orders placed with the CA since start (for tests and metrics).
    pub fn orders_placed(&self) -> u64 {
        self.orders_placed.load(Ordering::Relaxed)
    }

    /// Makes sure `name` (eligible, owned by `reseller`) has a certificate,
    /// waiting up to `wait` for an order. The order runs in its own task and
    /// completes even if this caller stops waiting.
    pub async fn ensure(
        self: &Arc<Self>,
        name: &str,
        reseller: Arc<str>,
        wait: Duration,
    ) -> Result<(), IssueError> {
        if self.cached(name).is_some() {
            return Ok(());
        }
        let me = self.clone();
        let owned = name.to_owned();
        let task = tokio::spawn(async move { me.obtain(&owned, &reseller, false).await });
        match tokio::time::timeout(wait, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(IssueError::Failed(format!("order task: {e}"))),
            Err(_) => Err(IssueError::StillRunning),
        }
    }

    /// Orders a certificate for `name` unless one is cached (and, when
    /// `renewal`, not yet due), within the budgets and backoff.
    async fn obtain(&self, name: &str, reseller: &str, renewal: bool) -> Result<(), IssueError> {
        let lock = self.in_flight.entry(name.to_owned()).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(c) = self.issued.get(name) {
            let due = c.renewal_due(self.config.renew_before_days);
            if (!renewal && c.not_after > now()) || (renewal && now() < due) {
                return Ok(());
            }
        }
        let t = now();
        if let Some(s) = self.state(name) {
            if s.phase == OrderPhase::Failed && s.next_retry.is_some_and(|n| n > t) {
                return Err(IssueError::BackingOff {
                    next_retry: s.next_retry.unwrap_or(t),
                    last_error: s.last_error.unwrap_or_default(),
                });
            }
        }
        let taken = self
            .budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(reseller, t);
        if let Err(refused) = taken {
            tracing::warn!(name, reseller, reason = %refused.reason, "certificate order refused by the budget");
            let failures = self.state(name).map_or(0, |s| s.failures);
            self.set_state(
                name,
                Some(NameState {
                    phase: OrderPhase::Failed,
                    last_error: Some(refused.reason.clone()),
                    failures,
                    next_retry: Some(refused.retry_at),
                    updated: t,
                }),
            );
            return Err(IssueError::RateLimited(refused.reason));
        }
        let failures = self.state(name).map_or(0, |s| s.failures);
        self.set_state(
            name,
            Some(NameState {
                phase: OrderPhase::Pending,
                last_error: None,
                failures,
                next_retry: None,
                updated: t,
            }),
        );
        tracing::info!(name, reseller, renewal, "ordering a certificate");
        match self.order(name).await {
            Ok(cert) => {
                tracing::info!(name, not_after = cert.not_after, "certificate issued");
                self.issued.insert(name.to_owned(), cert);
                self.set_state(name, None);
                Ok(())
            }
            Err(e) => {
                let failures = failures + 1;
                let wait = backoff_secs(
                    failures,
                    self.config.backoff_base_secs,
                    self.config.backoff_max_secs,
                );
                tracing::warn!(name, error = %e, retry_in_secs = wait, "certificate order failed");
                self.set_state(
                    name,
                    Some(NameState {
                        phase: OrderPhase::Failed,
                        last_error: Some(e.clone()),
                        failures,
                        next_retry: Some(
                            now().saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)),
                        ),
                        updated: now(),
                    }),
                );
                Err(IssueError::Failed(e))
            }
        }
    }

    async fn order(&self, name: &str) -> Result<LoadedCert, String> {
        let account = self
            .account
            .get_or_try_init(|| {
                order::account(
                    &self.store,
                    &self.config.directory_url,
                    &self.config.contact,
                    self.config.directory_root_ca.as_deref(),
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        self.orders_placed.fetch_add(1, Ordering::Relaxed);
        let issued = tokio::time::timeout(
            Duration::from_secs(180),
            order::order(account, name, &self.challenges),
        )
        .await
        .map_err(|_| {
            self.challenges.remove(name);
            "the order did not complete within 180 s".to_owned()
        })??;
        let cert =
            super::certs::parse_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes(), name)
                .map_err(|e| format!("the CA's certificate is unusable: {e}"))?;
        self.store
            .save_cert(name, &issued.chain_pem, &issued.key_pem)
            .map_err(|e| format!("cannot cache the certificate: {e}"))?;
        Ok(cert)
    }

    fn state(&self, name: &str) -> Option<NameState> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn set_state(&self, name: &str, state: Option<NameState>) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        match state {
            Some(s) => states.insert(name.to_owned(), s),
            None => states.remove(name),
        };
        if let Err(e) = self.store.save_state(&states) {
            tracing::warn!(error = %e, "cannot persist the ACME order state");
        }
    }

    /// Renews, every `interval`, each cached certificate within
    /// `renew_before_days` of expiry whose name is still eligible. Returns when
    /// `stop` fires.
    pub async fn renewal_loop(
        self: Arc<Self>,
        eligible: Eligibility,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let due: Vec<String> = self
                .issued
                .iter()
                .filter(|c| c.renewal_due(self.config.renew_before_days) <= now())
                .map(|c| c.key().clone())
                .collect();
            for name in due {
                match eligible(&name) {
                    Some(reseller) => {
                        if let Err(e) = self.obtain(&name, &reseller, true).await {
                            tracing::warn!(name, error = %e, "renewal did not happen");
                        }
                    }
                    None => tracing::debug!(name, "not renewing: no longer a registered domain"),
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
