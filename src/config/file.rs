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
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Where rate limits and quotas are counted (`[limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Platform cost per model (`[prices]`, `[[prices.models]]`).
    #[serde(default)]
    pub prices: PricesConfig,
    /// How each reseller is billed (`[billing.RESELLER_ID]`).
    #[serde(default)]
    pub billing: BTreeMap<String, BillingConfig>,
    /// HTTPS for reseller domains (`[tls]`); absent: plain listeners only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The admin API (`[admin]`); absent: `/admin/` is not served.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
}

/// `[admin]`: the admin API under `/admin/v1/` on the gateway's listeners.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The store of what the API makes (resellers, tenants, keys, sealed
    /// credentials): a JSON file, rewritten whole on each change and merged
    /// over this file at start and at every reload. With Redis (below), the
    /// last copy read from it, which a start while Redis is down serves from.
    #[serde(default)]
    pub store_path: Option<PathBuf>,
    /// The store in Redis instead, shared by every instance (exactly one of
    /// `redis_url` and `redis_url_env`, the variable holding the URL).
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub redis_url_env: Option<String>,
    /// The Redis key (a hash) that holds the store.
    #[serde(default = "default_admin_redis_key")]
    pub redis_key: String,
    /// How often each instance checks the store for another one's changes.
    #[serde(default = "default_admin_sync_interval_ms")]
    pub sync_interval_ms: u64,
    /// `sha256:<64 hex>` digests of the platform's admin keys (`livery hash-key`),
    /// or `{ hash, name, expires_at, read_only }` tables: they manage every reseller.
    #[serde(default)]
    pub platform_key_hashes: Vec<KeyEntry>,
}

fn default_admin_redis_key() -> String {
    "livery:admin:store".into()
}
fn default_admin_sync_interval_ms() -> u64 {
    1000
}

impl AdminConfig {
    /// The Redis URL, if the store is in Redis.
    pub fn resolved_redis_url(&self) -> Result<Option<String>, String> {
        url_or_env(&self.redis_url, &self.redis_url_env, "[admin] ")
    }
}

/// A URL given as `redis_url` or through the variable `redis_url_env` names
/// (at most one of them); `section` prefixes the errors.
fn url_or_env(
    url: &Option<String>,
    env: &Option<String>,
    section: &str,
) -> Result<Option<String>, String> {
    match (url, env) {
        (Some(url), None) => Ok(Some(url.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("{section}redis_url_env: environment variable {var} is not set")),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(format!(
            "{section}set one of redis_url and redis_url_env, not both"
        )),
    }
}

/// `[tls]`: HTTPS listeners, static certificates, on-demand ACME and what the
/// plain listeners do.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// HTTPS listeners (ALPN `h2` and `http/1.1`).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Certificates read from PEM files, tried first.
    #[serde(default)]
    pub certs: Vec<StaticCertConfig>,
    /// On-demand certificates for registered domains (`[tls.acme]`).
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// The plain listeners: `serve` (behind a TLS-terminating load balancer)
    /// or `redirect` (308 to HTTPS).
    #[serde(default)]
    pub plain: PlainPolicy,
    /// Peers (IP addresses or CIDR blocks) whose `X-Forwarded-Proto` /
    /// `Forwarded: proto=` is believed on the plain listeners.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The HTTPS port clients reach, which `plain = "redirect"` points them at
    /// (default: the first HTTPS listener's). Behind a port mapping (a
    /// container's 8443 published as 443, a Service's 443 to 8443) the bound
    /// port is not the one clients can reach.
    #[serde(default)]
    pub redirect_port: Option<u16>,
}

/// What a plain-HTTP listener does with a request when `[tls]` is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlainPolicy {
    /// Serve it (TLS is terminated in front of the gateway).
    #[default]
    Serve,
    /// Answer 308 to the same URL over HTTPS, unless a trusted proxy says the
    /// client already spoke HTTPS. Health checks are always served.
    Redirect,
}

/// `[[tls.certs]]`: one certificate chain and key in PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names it serves (`ai.brand.com`, `*.{platform_domain}`); default: the
    /// DNS names in the certificate.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `[tls.acme]`: an RFC 8555 CA, its limits and the on-disk cache.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// Let's Encrypt production by default; staging is
    /// `https://acme-staging-v02.api.letsencrypt.org/directory`.
    #[serde(default = "default_acme_directory")]
    pub directory_url: String,
    /// Account contacts (`mailto:ops@example.com`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Account and certificates (default `certs/acme`).
    #[serde(default = "default_acme_cache_dir")]
    pub cache_dir: PathBuf,
    /// Orders any one reseller's domains may place per rolling hour.
    #[serde(default = "default_orders_per_reseller")]
    pub orders_per_hour_per_reseller: u32,
    /// Orders the whole gateway may place per rolling hour.
    #[serde(default = "default_orders_per_hour")]
    pub orders_per_hour: u32,
    /// A PEM root to trust for the directory (a test CA such as pebble's);
    /// default: the system's roots.
    #[serde(default)]
    pub directory_root_ca: Option<PathBuf>,
    /// Renew a certificate this long before it expires.
    #[serde(default = "default_renew_before_days")]
    pub renew_before_days: u32,
    /// First wait after a failed order; doubles per failure up to `backoff_max_secs`.
    #[serde(default = "default_backoff_base_secs")]
    pub backoff_base_secs: u64,
    #[serde(default = "default_backoff_max_secs")]
    pub backoff_max_secs: u64,
    /// How long a handshake waits for an on-demand order before failing.
    #[serde(default = "default_issue_wait_secs")]
    pub handshake_wait_secs: u64,
}

fn default_acme_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".to_owned()
}
fn default_acme_cache_dir() -> PathBuf {
    PathBuf::from("certs/acme")
}
fn default_orders_per_reseller() -> u32 {
    10
}
fn default_orders_per_hour() -> u32 {
    100
}
fn default_renew_before_days() -> u32 {
    30
}
fn default_backoff_base_secs() -> u64 {
    60
}
fn default_backoff_max_secs() -> u64 {
    6 * 3600
}
fn default_issue_wait_secs() -> u64 {
    20
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
    /// `sha256:` hashes of operator keys; with one, `GET /readyz?detail=1` shows
    /// circuit breakers (never to tenants).
    #[serde(default)]
    pub operator_key_hashes: Vec<String>,
    /// A client connection waiting for a request's head (a new connection, or
    /// a kept-alive one after its last answer) is closed when the head is not
    /// complete within this time: idle keep-alive connections, slow clients and
    /// silent ones. Read at start.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// An HTTP/1.1 client that takes no more of its answer for this long (it
    /// stopped reading, its socket full) has its connection closed, as nginx's
    /// `send_timeout`: its stream, record, slot and upstream stream would be
    /// held for as long as it holds the socket. Read at start.
    #[serde(default = "default_send_timeout_ms")]
    pub send_timeout_ms: u64,
    /// Origins browsers may call from (CORS): `["*"]` (default, as OpenAI),
    /// a list such as `["https://app.example.com"]`, or `[]` for none.
    #[serde(default = "default_cors_origins")]
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            platform_domain: None,
            max_body_bytes: default_max_body_bytes(),
            max_upstream_body_bytes: default_max_upstream_body_bytes(),
            operator_key_hashes: Vec::new(),
            header_timeout_ms: default_header_timeout_ms(),
            send_timeout_ms: default_send_timeout_ms(),
            cors_origins: default_cors_origins(),
        }
    }
}

fn default_cors_origins() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_send_timeout_ms() -> u64 {
    60_000
}

fn default_header_timeout_ms() -> u64 {
    30_000
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Append-only JSONL file receiving one record per finished request (a
    /// plain mirror; the ledger below is the durable record). Absent:
    /// `usage.jsonl`; `""`: no mirror.
    #[serde(
        default = "default_usage_path",
        deserialize_with = "deserialize_mirror_path"
    )]
    pub jsonl_path: Option<PathBuf>,
    /// The durable ledger (spool + sinks). Default: on when the configuration
    /// was loaded from a file (`livery serve`), off for configurations parsed
    /// in memory unless `spool_dir` is set.
    #[serde(default)]
    pub ledger: Option<bool>,
    /// Write-ahead spool directory (default `usage-spool` beside `jsonl_path`,
    /// else in the working directory; relative paths are relative to the
    /// working directory, like `jsonl_path`).
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Cap on the spool's size on disk; beyond it new events are refused
    /// (counted in the spool's stats and logged) rather than filling the disk.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// A segment file is closed and a new one started above this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Group-commit interval: appended events are fsynced this often.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Sinks the spool ships to: `sqlite` (default), `redis`, `webhook`.
    #[serde(default = "default_sinks")]
    pub sinks: Vec<String>,
    /// The SQLite ledger (default `usage.db`, placed like `spool_dir`).
    #[serde(default)]
    pub sqlite_path: Option<PathBuf>,
    #[serde(default)]
    pub webhook: Option<WebhookSinkConfig>,
    #[serde(default)]
    pub redis: Option<RedisSinkConfig>,
}

/// `[usage.redis]`: events appended to a stream plus daily rollup hashes,
/// deduplicated by `event_id` (see `usage::sinks::redis`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://`).
    pub url: Option<String>,
    /// Environment variable holding the URL instead (when it carries a
    /// password); one of `url` and `url_env` is required.
    pub url_env: Option<String>,
    /// Prefix of every key; the default's braces are a cluster hash tag.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
    /// How long an `event_id`'s dedup marker lives; keep it above the longest
    /// outage the spool can absorb.
    #[serde(default = "default_redis_dedup_ttl_secs")]
    pub dedup_ttl_secs: u64,
    /// Approximate cap of the stream (`XADD MAXLEN ~`); 0 leaves it uncapped.
    #[serde(default)]
    pub stream_maxlen: u64,
    #[serde(default = "default_redis_sink_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_webhook_batch")]
    pub batch_max_events: usize,
}

/// `[usage.webhook]`: batched POSTs of events, signed with HMAC-SHA256.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    pub url: String,
    /// Environment variable holding the HMAC secret.
    pub secret_env: String,
    #[serde(default = "default_webhook_batch")]
    pub batch_max_events: usize,
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            jsonl_path: default_usage_path(),
            ledger: None,
            spool_dir: None,
            spool_max_bytes: default_spool_max_bytes(),
            segment_bytes: default_segment_bytes(),
            fsync_interval_ms: default_fsync_interval_ms(),
            sinks: default_sinks(),
            sqlite_path: None,
            webhook: None,
            redis: None,
        }
    }
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_segment_bytes() -> u64 {
    8 << 20
}
fn default_fsync_interval_ms() -> u64 {
    5
}
fn default_sinks() -> Vec<String> {
    vec!["sqlite".to_owned()]
}
fn default_webhook_batch() -> usize {
    500
}
fn default_webhook_timeout_ms() -> u64 {
    10_000
}
fn default_redis_key_prefix() -> String {
    "{livery}:usage".to_owned()
}
fn default_redis_dedup_ttl_secs() -> u64 {
    7 * 24 * 3600
}
fn default_redis_sink_timeout_ms() -> u64 {
    2_000
}

/// `[prices]`: what the platform pays per model. Amounts are decimal strings
/// (`"0.15"`) or numbers, read exactly into integer micro-units.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesConfig {
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default)]
    pub models: Vec<ModelPriceConfig>,
}

impl Default for PricesConfig {
    fn default() -> Self {
        Self {
            currency: default_currency(),
            models: Vec::new(),
        }
    }
}

fn default_currency() -> String {
    "USD".to_owned()
}

/// One `[[prices.models]]` entry: matched against the served model, then the
/// route's upstream model, then the requested model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPriceConfig {
    pub model: String,
    /// Only for calls served by this provider (default: any).
    #[serde(default)]
    pub provider: Option<String>,
    pub input_per_million: crate::usage::price::Amount,
    pub output_per_million: crate::usage::price::Amount,
    /// Cached prompt tokens (default: the input price).
    #[serde(default)]
    pub cached_input_per_million: Option<crate::usage::price::Amount>,
    /// Prompt tokens written to the provider's cache for five minutes, and
    /// writes whose lifetime is not reported (default: 1.25 × the input price).
    #[serde(default)]
    pub cache_write_input_per_million: Option<crate::usage::price::Amount>,
    /// Prompt tokens written to the cache for an hour (default: 2 × the
    /// input price).
    #[serde(default)]
    pub cache_write_1h_input_per_million: Option<crate::usage::price::Amount>,
}

/// How a reseller is billed by the platform (`[billing.RESELLER_ID]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    pub model: BillingModel,
    /// `wholesale`: the reseller's price per million prompt tokens...
    #[serde(default)]
    pub input_per_million: Option<crate::usage::price::Amount>,
    /// ...per million completion tokens...
    #[serde(default)]
    pub output_per_million: Option<crate::usage::price::Amount>,
    /// ...and per billable request.
    #[serde(default)]
    pub per_request: Option<crate::usage::price::Amount>,
    /// `revenue_share`: the platform's share of what the reseller charges
    /// (`"0.2"` or `"20%"`)...
    #[serde(default)]
    pub share: Option<crate::usage::price::Ratio>,
    /// ...where the reseller charges its tenants these per million tokens.
    #[serde(default)]
    pub retail_input_per_million: Option<crate::usage::price::Amount>,
    #[serde(default)]
    pub retail_output_per_million: Option<crate::usage::price::Amount>,
    /// `platform_fee`: a monthly fee chosen by the month's total tokens; the
    /// first tier whose `up_to_tokens` is not exceeded (none: the last tier).
    #[serde(default)]
    pub tiers: Vec<FeeTier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingModel {
    Wholesale,
    RevenueShare,
    PlatformFee,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeTier {
    /// Inclusive upper bound of the month's total tokens; absent: unbounded.
    #[serde(default)]
    pub up_to_tokens: Option<u64>,
    pub fee: crate::usage::price::Amount,
}

fn default_usage_path() -> Option<PathBuf> {
    Some(PathBuf::from("usage.jsonl"))
}

/// `jsonl_path`: a path, or `""` for no mirror (TOML has no null, and leaving
/// the key out means the default file).
fn deserialize_mirror_path<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<PathBuf>, D::Error> {
    let path = PathBuf::deserialize(d)?;
    Ok((!path.as_os_str().is_empty()).then_some(path))
}

/// Which chat-completions field carries the completion cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The built-in, offline, deterministic provider.
    Mock,
    /// OpenAI or any server speaking its API (`base_url`).
    #[serde(alias = "openai_compatible")]
    Openai,
    /// Azure OpenAI: deployment URLs, `api-version`, `api-key` header. The route's
    /// model is the deployment name.
    AzureOpenai,
    /// Anthropic's Messages API, translated to and from OpenAI's format.
    Anthropic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// e.g. `https://api.openai.com/v1`; required for `openai` and `azure_openai`.
    /// For `anthropic` the default is `https://api.anthropic.com` (requests go to
    /// `{base_url}/v1/messages`; a trailing `/v1` is accepted too).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the platform key for this provider.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed from sending the request to receiving the response headers
    /// (default 600 s, as long as the OpenAI SDK waits).
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// A response body (or stream) that sends nothing for this long is cut off
    /// with an error instead of hanging the client.
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Azure OpenAI's `api-version` (default `2024-10-21`); Anthropic's
    /// `anthropic-version` (default `2023-06-01`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Anthropic only: the `max_tokens` sent (the Messages API requires it) when
    /// a chat-completions request sets neither `max_completion_tokens` nor
    /// `max_tokens` (default 4096).
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
    /// OpenAI-speaking kinds: the field a `/v1/messages` request's required
    /// `max_tokens` becomes in the chat completion sent here. `max_tokens`
    /// (default) is what most OpenAI-compatible servers know; OpenAI's
    /// reasoning models (o-series, gpt-5) refuse it and need
    /// `max_completion_tokens`.
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
    /// Speak HTTP/2 to this provider without negotiation (h2c over plain
    /// HTTP, e.g. to an inference server or a mesh sidecar that accepts it):
    /// concurrent requests and streams share a few connections. Over https,
    /// HTTP/2 is already chosen by ALPN when the provider offers it.
    #[serde(default)]
    pub http2_prior_knowledge: bool,
    /// PEM file of extra CA certificates to trust for this provider's `https`
    /// URL (a private inference server behind an internal CA), on top of the
    /// public web roots. Relative paths are relative to the working directory.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
/// As long as the OpenAI SDK waits, and the request's default deadline: a
/// non-streamed answer's headers come when it is complete (OpenAI's
/// `openai-processing-ms` is the generation's time), and a long generation
/// cut at 120 s was sent again, billed twice, and answered 504 anyway.
fn default_first_byte_timeout_ms() -> u64 {
    600_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name tenants ask for (a real name like `gpt-4o-mini` or an alias like `fast`).
    pub name: String,
    /// Shorthand for a single route: the provider...
    #[serde(default)]
    pub provider: Option<String>,
    /// ...and the model name sent upstream (defaults to `name`).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Ordered routes: tried by `priority` (lowest first), spread by `weight`
    /// among routes of equal priority, falling back down the list.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub provider: String,
    /// Upstream model name (defaults to the tenant-facing name).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub priority: u32,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Retries, fallbacks, deadlines and circuit breaking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Extra attempts on the same route before falling back to the next one.
    pub retries_per_route: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A provider's `retry-after` is honoured up to this; beyond it, fall back at once.
    pub retry_after_cap_ms: u64,
    /// No request outlives this, whatever its retries and stream length.
    pub request_deadline_ms: u64,
    /// A stream must produce its first content event within this after its headers.
    pub first_event_timeout_ms: u64,
    /// Consecutive failures (within `breaker_window_ms`) that open a route's breaker.
    pub breaker_failures: u32,
    pub breaker_window_ms: u64,
    /// How long an open breaker skips its route before letting one probe through.
    pub breaker_cooldown_ms: u64,
    /// When a stream is committed to its route (no fallback after that).
    pub stream_commit: StreamCommit,
}

/// The point from which a streamed answer belongs to its route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamCommit {
    /// At the first event: it goes to the client as it arrives (lowest time
    /// to first byte); a stream failing after it ends with an error event.
    #[default]
    FirstEvent,
    /// At the first event carrying content, a finish or usage: lifecycle
    /// frames (OpenAI's role-only first chunk, Anthropic's `message_start`,
    /// pings) are held, so a route that fails before producing anything still
    /// falls back. Costs time to first byte, not time to first token.
    FirstContent,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            retries_per_route: 1,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            retry_after_cap_ms: 5_000,
            request_deadline_ms: 600_000,
            first_event_timeout_ms: 60_000,
            breaker_failures: 5,
            breaker_window_ms: 30_000,
            breaker_cooldown_ms: 30_000,
            stream_commit: StreamCommit::FirstEvent,
        }
    }
}

/// What happens when a tenant asks for a model its plan does not include.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisallowedModel {
    /// 403 `model_not_allowed`, naming the allowed models.
    #[default]
    Reject,
    /// Served by the plan's `downgrade_to` model instead.
    Downgrade,
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
    /// `reject` (default) or `downgrade` a model outside `models`.
    #[serde(default)]
    pub disallowed_model: DisallowedModel,
    /// The model that serves downgraded requests (must be in `models`).
    #[serde(default)]
    pub downgrade_to: Option<String>,
    /// Requests per minute (absent: unlimited).
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute, prompt and completion (absent: unlimited).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Tokens per calendar month, UTC (absent: unlimited).
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
    /// Requests in flight at once, streams included (absent: unlimited).
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    /// Completion tokens assumed for a request without `max_tokens` when its
    /// cost is estimated before the call (default 1024).
    #[serde(default)]
    pub default_completion_tokens: Option<u64>,
}

/// A tenant's `limits = { ... }`: single fields that replace its plan's.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_completion_tokens: Option<u64>,
}

/// Where limits are counted: in this process, or shared through Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitsBackend {
    #[default]
    Local,
    Redis,
}

/// What admission does while Redis is slow or down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// Count locally, each instance taking `1 / instances` of every limit.
    #[default]
    FailOpen,
    /// Refuse with 503 `rate_limiter_unavailable`.
    FailClosed,
}

/// `[limits]`: the counting backend of rate limits and quotas.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub backend: LimitsBackend,
    /// e.g. `redis://127.0.0.1:6379/0`; `backend = "redis"` needs it or
    /// `redis_url_env`.
    pub redis_url: Option<String>,
    /// Environment variable holding the URL instead (when it carries a password).
    pub redis_url_env: Option<String>,
    /// Budget of one Redis round trip; beyond it Redis counts as down.
    pub redis_timeout_ms: u64,
    pub on_redis_error: OnRedisError,
    /// Gateway instances sharing the limits: under `fail_open` each one takes
    /// this share of every per-minute and concurrency limit.
    pub instances: u32,
}

impl LimitsConfig {
    /// The Redis URL, from `redis_url` or the variable `redis_url_env` names
    /// (exactly one of them).
    pub fn resolved_redis_url(&self) -> Result<String, String> {
        url_or_env(&self.redis_url, &self.redis_url_env, "")?
            .ok_or_else(|| "backend = \"redis\" needs redis_url or redis_url_env".into())
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            backend: LimitsBackend::Local,
            redis_url: None,
            redis_url_env: None,
            redis_timeout_ms: 25,
            on_redis_error: OnRedisError::FailOpen,
            instances: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResellerConfig {
    /// A DNS label: the reseller is reachable at `{id}.{platform_domain}`.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Exact custom domains (`ai.brand.com`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// A plan whose limits cap the sum of all the reseller's tenants (its
    /// `models` are not used); absent: no reseller-wide cap.
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Sealed provider keys of the reseller (`livery vault seal`), by provider name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
    /// `sha256:<64 hex>` digests of the reseller's admin keys, or `{ hash,
    /// name, expires_at, read_only }` tables: they manage this reseller's
    /// tenants through the admin API, on its own hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_key_hashes: Vec<KeyEntry>,
    /// What the reseller's tenants see of the reseller rather than of the
    /// platform (`[resellers.branding]`).
    #[serde(default, skip_serializing_if = "BrandingConfig::is_default")]
    pub branding: BrandingConfig,
}

/// A reseller's brand on the surfaces its tenants see. Every field is
/// optional; an absent one falls back to the platform's neutral default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrandingConfig {
    /// Prefix of the tenant keys the admin API issues for this reseller
    /// (`sk-acme-`); default `sk-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Where the reseller's tenants find their keys: a 401 says so, as
    /// OpenAI's points to its own key page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_url: Option<String>,
    /// Prefix of the gateway's own response headers (`x-acme-` makes
    /// `x-acme-model`); default `x-livery-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_prefix: Option<String>,
}

impl BrandingConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    #[default]
    Active,
    Suspended,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub plan: String,
    #[serde(default)]
    pub status: TenantStatus,
    /// The tenant's gateway keys: `sha256:<64 hex>` digests (`livery
    /// hash-key`), or `{ hash, name, expires_at, models }` tables.
    pub key_hashes: Vec<KeyEntry>,
    /// Sealed provider keys of the tenant (`livery vault seal`), by provider name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
    /// Single limit fields that replace the plan's for this tenant.
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// One key of a `key_hashes` list (a tenant's gateway keys, or admin keys):
/// its digest, and optionally a name (to tell keys apart in lists), an expiry
/// (Unix seconds; refused from then on), the models a tenant key may use (of
/// its plan's; absent: all of them) and whether an admin key only reads.
/// Written as the bare digest when it has none of these, as files always had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub hash: String,
    pub name: Option<String>,
    pub expires_at: Option<u64>,
    pub models: Option<Vec<String>>,
    pub read_only: bool,
}

impl KeyEntry {
    /// A key with no name, no expiry and every right its holder has.
    pub fn digest(hash: String) -> Self {
        Self {
            hash,
            name: None,
            expires_at: None,
            models: None,
            read_only: false,
        }
    }
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct KeyEntryTable {
    hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    read_only: bool,
}

/// A string or a table, each with its own errors (an untagged enum would
/// answer any mistake with "did not match any variant").
impl<'de> Deserialize<'de> for KeyEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a `sha256:` digest, or a table with `hash`, `name`, `expires_at`, `models` and `read_only`",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyEntry, E> {
                Ok(KeyEntry::digest(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<KeyEntry, A::Error> {
                let t =
                    KeyEntryTable::deserialize(serde::de::value::MapAccessDeserializer::new(a))?;
                Ok(KeyEntry {
                    hash: t.hash,
                    name: t.name,
                    expires_at: t.expires_at,
                    models: t.models,
                    read_only: t.read_only,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for KeyEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.name.is_none()
            && self.expires_at.is_none()
            && self.models.is_none()
            && !self.read_only
        {
            return s.serialize_str(&self.hash);
        }
        KeyEntryTable {
            hash: self.hash.clone(),
            name: self.name.clone(),
            expires_at: self.expires_at,
            models: self.models.clone(),
            read_only: self.read_only,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tenant_key_tests {
    use super::*;

    #[test]
    fn a_key_is_a_digest_or_a_table_and_is_written_back_as_it_came() {
        let keys: Vec<KeyEntry> = serde_json::from_str(
            r#"["sha256:aa", {"hash": "sha256:bb", "name": "ci", "expires_at": 1798761600},
                {"hash": "sha256:cc", "models": ["m"]}]"#,
        )
        .unwrap();
        assert_eq!(keys[0], KeyEntry::digest("sha256:aa".into()));
        assert_eq!(keys[1].name.as_deref(), Some("ci"));
        assert_eq!(keys[1].expires_at, Some(1798761600));
        assert_eq!(keys[2].models, Some(vec!["m".to_owned()]));
        assert_eq!(
            serde_json::to_string(&keys).unwrap(),
            r#"["sha256:aa",{"hash":"sha256:bb","name":"ci","expires_at":1798761600},{"hash":"sha256:cc","models":["m"]}]"#
        );
        let toml_keys: TenantConfig = toml::from_str(
            "id = \"t\"\nplan = \"p\"\nkey_hashes = [\"sha256:aa\", { hash = \"sha256:bb\", expires_at = 5 }]\n",
        )
        .unwrap();
        assert_eq!(toml_keys.key_hashes[1].expires_at, Some(5));
        for (bad, says) in [
            (
                r#"[{"hash": "sha256:bb", "expires": 5}]"#,
                "unknown field `expires`",
            ),
            (r#"[{"name": "ci"}]"#, "missing field `hash`"),
            (
                r#"[{"hash": "sha256:bb", "expires_at": "tomorrow"}]"#,
                "expected u64",
            ),
            (
                r#"[{"hash": "sha256:bb", "models": "m"}]"#,
                "expected a sequence",
            ),
            (r#"[7]"#, "a `sha256:` digest, or a table"),
        ] {
            let err = serde_json::from_str::<Vec<KeyEntry>>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}

#[cfg(test)]
mod default_tests {
    use super::*;

    /// A provider without timeouts waits for a non-streamed answer as long
    /// as the request's deadline and the OpenAI SDK do.
    #[test]
    fn a_provider_waits_for_response_headers_as_long_as_the_request_may_last() {
        let p: ProviderConfig = toml::from_str("name = \"p\"\nkind = \"openai\"\n").unwrap();
        assert_eq!(p.first_byte_timeout_ms, 600_000);
        assert!(p.first_byte_timeout_ms >= RoutingConfig::default().request_deadline_ms);
    }
}
