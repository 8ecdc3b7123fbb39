//! The admin API (`/admin/v1/`, served on the gateway's listeners when
//! `[admin]` is configured): platform and reseller admin keys manage resellers,
//! tenants, gateway keys, sealed provider keys and read usage. [`Admin`] owns
//! the configuration file's last reading and the [`Store`] of what the API
//! made; every change is prepared as a whole snapshot of the two merged, then
//! written to the store, then swapped in, so a change the configuration would
//! refuse is refused before anything is kept, and the request path only ever
//! sees complete snapshots. Changes are serialised by one lock that the
//! request path never takes.

mod api;
mod backend;
mod keys;
mod store;

pub use api::{handle, Reply, Request};
pub use keys::{key_id, new_key, AdminGrant, AdminKeyRefusal, AdminKeys, Principal};
pub use store::Store;

use crate::config::{ConfigError, GatewayConfig};
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use backend::{BackendError, StoreBackend, Version};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why an admin request failed (mapped to a status by `proxy::error`).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} is declared in the configuration file: change it there")]
    Declared(String),
    /// The change makes a configuration that does not validate (its reason).
    #[error("{0}")]
    Invalid(String),
    #[error("the request body is not valid: {0}")]
    BadBody(String),
    #[error("method {0} is not allowed on {1}")]
    Method(String, String),
    #[error("the change could not be saved: {0}")]
    Store(String),
    #[error("the admin store was changed by another instance meanwhile: retry")]
    StoreConflict,
    /// The vault cannot seal (no key-encryption key), or similar.
    #[error("{0}")]
    Vault(String),
    #[error("no SQLite usage ledger is configured ([usage] ledger and the `sqlite` sink)")]
    NoLedger,
    #[error("the usage ledger could not be read: {0}")]
    Ledger(String),
}

/// The admin API's state: the configuration file as last read, the store,
/// and where the store lives.
pub struct Admin {
    backend: StoreBackend,
    /// Where the demo tenant must not appear (a listener not on loopback).
    public_listener: Option<SocketAddr>,
    /// How often [`Admin::sync`] should run.
    pub sync_interval: Duration,
    state: Mutex<State>,
}

struct State {
    /// The configuration file as last read (start or reload).
    base: GatewayConfig,
    store: Store,
    /// The store's version `store` was read or written at.
    version: Version,
    /// `base` with `store` merged in: what the running snapshot was built from.
    merged: GatewayConfig,
    /// A version of the store this instance could not serve (logged once).
    refused: Option<Version>,
}

impl From<BackendError> for AdminError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Conflict => AdminError::StoreConflict,
            BackendError::Unavailable(m) => AdminError::Store(m),
        }
    }
}

impl Admin {
    /// Reads the store named by `config`'s `[admin]` (if any) and returns the
    /// admin state with the merged configuration to build the first snapshot from.
    pub fn open(
        config: &GatewayConfig,
        public_listener: Option<SocketAddr>,
    ) -> Result<Option<(Self, GatewayConfig)>, ConfigError> {
        let Some(admin) = &config.admin else {
            return Ok(None);
        };
        let backend = StoreBackend::from_config(admin).map_err(ConfigError::Invalid)?;
        let (store, version) = backend
            .load(true)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let merged = store.merge(config);
        let state = State {
            base: config.clone(),
            store,
            version,
            merged: merged.clone(),
            refused: None,
        };
        Ok(Some((
            Self {
                backend,
                public_listener,
                sync_interval: Duration::from_millis(admin.sync_interval_ms.max(1)),
                state: Mutex::new(state),
            },
            merged,
        )))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reload: `base` is the configuration file's new reading; the store is
    /// merged over it, and the snapshot prepared and swapped as one.
    pub fn reload(
        &self,
        base: &GatewayConfig,
        snapshot: &ArcSwap<Snapshot>,
    ) -> Result<(), ConfigError> {
        let mut state = self.lock();
        let merged = state.store.merge(base);
        let next = Snapshot::prepare_for(&merged, self.public_listener)?;
        snapshot.store(Arc::new(next));
        state.base = base.clone();
        state.merged = merged;
        Ok(())
    }

    /// Serves another instance's changes: if the store's version moved, reads
    /// it and swaps in the merged snapshot. Blocking. A store this instance
    /// cannot serve (its configuration file refuses it) is logged once and the
    /// running snapshot stays.
    pub fn sync(&self, snapshot: &ArcSwap<Snapshot>) -> Result<bool, AdminError> {
        let mut state = self.lock();
        self.sync_locked(&mut state, snapshot)
    }

    fn sync_locked(
        &self,
        state: &mut State,
        snapshot: &ArcSwap<Snapshot>,
    ) -> Result<bool, AdminError> {
        let version = self.backend.version()?;
        if version == state.version || state.refused.as_ref() == Some(&version) {
            return Ok(false);
        }
        let (store, version) = self.backend.load(false)?;
        let merged = store.merge(&state.base);
        match Snapshot::prepare_for(&merged, self.public_listener) {
            Ok(next) => {
                snapshot.store(Arc::new(next));
                state.store = store;
                state.version = version;
                state.merged = merged;
                state.refused = None;
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "the admin store's new version does not validate here; the running configuration stays");
                state.refused = Some(version);
                Ok(false)
            }
        }
    }

    /// Runs `change` on a copy of the store (it sees the configuration file's
    /// reading and the merged configuration), then prepares the merged result,
    /// writes the store (if still at the version the copy was made from) and
    /// swaps the snapshot in, in that order.
    pub fn change<T>(
        &self,
        snapshot: &ArcSwap<Snapshot>,
        change: impl FnOnce(&mut Store, &GatewayConfig, &GatewayConfig) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let mut state = self.lock();
        // Another instance's changes first, so that this one is made on them.
        self.sync_locked(&mut state, snapshot)?;
        let mut store = state.store.clone();
        let out = change(&mut store, &state.base, &state.merged)?;
        store.prune(&state.base);
        let merged = store.merge(&state.base);
        let next = Snapshot::prepare_for(&merged, self.public_listener).map_err(|e| match e {
            ConfigError::Invalid(m) => AdminError::Invalid(m),
            other => AdminError::Invalid(other.to_string()),
        })?;
        let version = self.backend.save(&state.version, &store)?;
        snapshot.store(Arc::new(next));
        state.store = store;
        state.version = version;
        state.merged = merged;
        Ok(out)
    }
}
