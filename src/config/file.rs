//! The serde structures that mirror `gateway.toml`, one struct per table.
//! Unknown keys are rejected so that a typo never silently disables a setting.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub usage: UsageConfig,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub plans: Vec<PlanConfig>,
    #[serde(default)]
    pub resellers: Vec<ResellerConfig>,
    #[serde(default)]
    pub vault: VaultConfig,
}

/// Key-encryption keys for sealed provider credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The KEK new seals use (default: the first of `keks`).
    #[serde(default)]
    pub active_kek: Option<String>,
    /// With none, the implicit KEK `default` is read from `LIVERY_MASTER_KEY`.
    #[serde(default)]
    pub keks: Vec<KekConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekConfig {
    pub id: String,
    /// Environment variable holding base64 of 32 bytes.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding base64 of 32 bytes, readable by its owner only.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Plain HTTP listeners (HTTP/1.1 and h2c on each).
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Resellers are also reachable at `{reseller_id}.{platform_domain}`.
    #[serde(default)]
    pub platform_domain: Option<String>,
    /// Request bodies above this size get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Cap on a buffered (non-streamed) upstream response body.
    #[serde(default = "default_max_upstream_body_bytes")]
    pub max_upstream_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            platform_domain: None,
            max_body_bytes: default_max_body_bytes(),
            max_upstream_body_bytes: default_max_upstream_body_bytes(),
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
}
fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_upstream_body_bytes() -> usize {
    64 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Append-only JSONL file receiving one record per finished request.
    #[serde(default = "default_usage_path")]
    pub jsonl_path: Option<PathBuf>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            jsonl_path: default_usage_path(),
        }
    }
}

fn default_usage_path() -> Option<PathBuf> {
    Some(PathBuf::from("usage.jsonl"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The built-in, offline, deterministic provider.
    Mock,
    /// OpenAI or any server speaking its API (`base_url`).
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// e.g. `https://api.openai.com/v1`; required for `openai`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the platform key for this provider.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed from sending the request to receiving the response headers.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// A response body (or stream) that sends nothing for this long is cut off
    /// with an error instead of hanging the client.
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_first_byte_timeout_ms() -> u64 {
    120_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name tenants ask for.
    pub name: String,
    pub provider: String,
    /// The model name sent upstream (defaults to `name`).
    #[serde(default)]
    pub upstream_model: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    pub name: String,
    /// Tenant-facing model names this plan may use.
    pub models: Vec<String>,
    /// Whose provider key pays: `required` (the tenant's own), `preferred`
    /// (tenant, else reseller, else platform) or `never` (reseller, else platform).
    #[serde(default)]
    pub byok: crate::vault::ByokPolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResellerConfig {
    /// A DNS label: the reseller is reachable at `{id}.{platform_domain}`.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Exact custom domains (`ai.brand.com`).
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Sealed provider keys of the reseller (`livery vault seal`), by provider name.
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    #[default]
    Active,
    Suspended,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub plan: String,
    #[serde(default)]
    pub status: TenantStatus,
    /// `sha256:<64 hex>` digests of the tenant's gateway keys (`livery hash-key`).
    pub key_hashes: Vec<String>,
    /// Sealed provider keys of the tenant (`livery vault seal`), by provider name.
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
}
