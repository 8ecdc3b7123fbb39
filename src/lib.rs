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

/// The published key of the demo tenant in the embedded `gateway.toml`. A tenant
/// holding it is only served while every listener is bound to loopback.
pub const DEMO_KEY: &str = "sk-livery-demo";
