//! Livery: a white-label, multi-tenant, OpenAI-compatible LLM gateway.
//!
//! A request flows one way through the folders of this crate:
//! `proxy` accepts → `tenancy` resolves the reseller (Host) and tenant (key) →
//! `limits` admits → `routing` picks the route → `vault` supplies the provider key →
//! `providers` speak upstream → `usage` records. All configuration that can change
//! at run time lives in one [`Snapshot`], swapped whole.

pub mod admin;
pub mod config;
pub mod limits;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod snapshot;
pub mod telemetry;
pub mod tenancy;
pub mod tls;
pub mod usage;
pub mod vault;

pub use proxy::{Gateway, StartError};
pub use snapshot::Snapshot;

/// The hasher of the maps a request looks up (hosts, key digests, provider,
/// model and tenant names). Their keys come from configuration, so no client
/// can fill them with colliding entries; a client only chooses what is looked
/// up. foldhash (seeded per process) costs a fraction of std's SipHash, about
/// 2k instructions per request.
pub type FastHash = foldhash::fast::RandomState;
/// A `HashMap` with [`FastHash`]; build it with `default()` or `collect()`.
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHash>;

/// The published key of the demo tenant in the embedded `gateway.toml`. A tenant
/// holding it is only served while every listener is bound to loopback.
pub const DEMO_KEY: &str = "sk-livery-demo";

/// `t` in Unix seconds (0 before 1970, which no clock here reads).
pub fn unix_seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
