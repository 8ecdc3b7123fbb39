//! The gateway's configuration file (`gateway.toml`): its serde shape, loading and
//! validation. Validation is the *prepare* half of a reload: it either yields a
//! complete [`crate::Snapshot`] or an error naming what is wrong; nothing half-built
//! ever reaches the request path.

mod file;

pub use file::{
    BillingConfig, BillingModel, FeeTier, ModelPriceConfig, PricesConfig, WebhookSinkConfig,
};
pub use file::{
    DisallowedModel, GatewayConfig, KekConfig, MaxTokensField, ModelConfig, PlanConfig,
    ProviderConfig, ProviderKind, RedisSinkConfig, ResellerConfig, RouteConfig, RoutingConfig,
    ServerConfig, TenantConfig, TenantStatus, UsageConfig, VaultConfig,
};

pub use file::{
    AcmeConfig, AdminConfig, BrandingConfig, KeyEntry, PlainPolicy, StaticCertConfig, TlsConfig,
};
pub use file::{LimitOverrides, LimitsBackend, LimitsConfig, OnRedisError, StreamCommit};

use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The configuration file the CLI reads unless told otherwise.
pub const DEFAULT_PATH: &str = "gateway.toml";

/// The repository's `gateway.toml`, built into the binary: the quick start's
/// configuration (loopback only, the demo tenant) wherever the binary runs.
pub const EMBEDDED: &str = include_str!("../../gateway.toml");

/// Where the configuration comes from, decided once at start: a reload
/// reads the same source again and never switches to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file, read strictly (a missing file is an error, at start and at reload).
    File(PathBuf),
    /// [`EMBEDDED`]: no path was given and there is no [`DEFAULT_PATH`].
    Embedded,
}

impl ConfigSource {
    /// `given` is the path from `--config` or `LIVERY_CONFIG`. Only when none
    /// was given, and [`DEFAULT_PATH`] does not exist in the working
    /// directory, is the embedded configuration used: a path that was named
    /// (even `gateway.toml`) must exist.
    pub fn resolve(given: Option<PathBuf>) -> Self {
        match given {
            Some(path) => Self::File(path),
            None => match std::fs::metadata(DEFAULT_PATH) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::Embedded,
                _ => Self::File(PathBuf::from(DEFAULT_PATH)),
            },
        }
    }

    pub fn load(&self) -> Result<GatewayConfig, ConfigError> {
        match self {
            Self::File(path) => GatewayConfig::load(path),
            Self::Embedded => {
                let mut config = GatewayConfig::parse(EMBEDDED)?;
                config.usage.ledger.get_or_insert(true);
                Ok(config)
            }
        }
    }
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Embedded => f.write_str("(built-in configuration)"),
        }
    }
}

impl GatewayConfig {
    /// Reads and parses a TOML file, which must exist; semantic checks happen
    /// when the snapshot is built and in [`validate_static`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        // A gateway run from a configuration file keeps a durable usage ledger
        // unless the file says `ledger = false` (in-memory configurations opt in).
        config.usage.ledger.get_or_insert(true);
        Ok(config)
    }

    /// Parses TOML text (used by tests, which build configurations inline).
    /// The error gives line, column and message but not the quoted source
    /// line toml would print: that line may hold a URL with a password.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: parse_message(text, &e),
        })
    }
}

fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = mask_userinfo(e.message().trim_end());
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// `scheme://user:password@host` with the user information replaced by `***`
/// (serde's messages quote the offending value, which may be such a URL).
pub fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| {
                c == '/'
                    || c == '?'
                    || c == '#'
                    || c.is_whitespace()
                    || c == '"'
                    || c == '`'
                    || c == '\''
            })
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// What `serve` checks of a configuration beyond its [`crate::Snapshot`]
/// before it starts, and what `check-config` and a reload check the same
/// way: the sections read only at start (listeners, `[limits]`, `[usage]`,
/// `[tls]`) and the demo tenant's exposure. Nothing is opened or bound.
pub fn validate_static(config: &GatewayConfig) -> Result<(), ConfigError> {
    let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(e.to_string());
    if config.server.listen.is_empty() {
        return Err(ConfigError::Invalid(
            "no listener is configured (server.listen is empty)".into(),
        ));
    }
    crate::limits::LimiterSettings::from_config(&config.limits).map_err(|e| invalid(&e))?;
    // The spool clamped these silently (to 1 ms and 4 KiB).
    if config.usage.fsync_interval_ms == 0 {
        return Err(ConfigError::Invalid(
            "usage.fsync_interval_ms must be positive".into(),
        ));
    }
    if config.usage.segment_bytes < 4096 {
        return Err(ConfigError::Invalid(
            "usage.segment_bytes must be at least 4096".into(),
        ));
    }
    if config.usage.spool_max_bytes == 0 {
        return Err(ConfigError::Invalid(
            "usage.spool_max_bytes must be positive".into(),
        ));
    }
    crate::usage::check_config(config).map_err(|e| invalid(&e))?;
    if let Some(admin) = &config.admin {
        let redis = admin.resolved_redis_url().map_err(|e| invalid(&e))?;
        if redis.is_none() && admin.store_path.is_none() {
            return Err(ConfigError::Invalid(
                "[admin] needs store_path (the store file) or redis_url / redis_url_env".into(),
            ));
        }
        if admin.sync_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "[admin] sync_interval_ms must be positive".into(),
            ));
        }
    }
    if let Some(tls) = &config.tls {
        let platform_domain = config
            .server
            .platform_domain
            .as_deref()
            .and_then(crate::tenancy::normalize_host);
        crate::tls::Tls::check(tls, platform_domain.as_deref()).map_err(|e| invalid(&e))?;
    }
    let demo = crate::tenancy::demo_key_digest();
    let has_demo = config
        .resellers
        .iter()
        .flat_map(|r| &r.tenants)
        .flat_map(|t| &t.key_hashes)
        .any(|k| crate::tenancy::KeyDigest::parse(&k.hash).as_ref() == Some(&demo));
    let public = config
        .server
        .listen
        .iter()
        .chain(config.tls.iter().flat_map(|t| &t.listen))
        .find(|a| !a.ip().is_loopback());
    if let (true, Some(addr)) = (has_demo, public) {
        return Err(ConfigError::Invalid(format!(
            "the demo tenant (key `{}`) is configured and listener {addr} is not bound to loopback; \
             remove the demo tenant or listen on 127.0.0.1 / [::1] only",
            crate::DEMO_KEY
        )));
    }
    Ok(())
}

/// What of `[admin]` is read only at start: where the store is.
fn store_settings(a: &AdminConfig) -> impl PartialEq + '_ {
    (
        &a.store_path,
        &a.redis_url,
        &a.redis_url_env,
        &a.redis_key,
        a.sync_interval_ms,
    )
}

/// The sections of `next` read only at start that differ from `running`'s:
/// a reload cannot apply them, and says so.
pub fn start_only_changes(running: &GatewayConfig, next: &GatewayConfig) -> Vec<&'static str> {
    let (a, b) = (&running.server, &next.server);
    let has_tls = running.tls.is_some() || next.tls.is_some();
    [
        (a.listen != b.listen, "server.listen"),
        (
            a.header_timeout_ms != b.header_timeout_ms,
            "server.header_timeout_ms",
        ),
        (
            a.send_timeout_ms != b.send_timeout_ms,
            "server.send_timeout_ms",
        ),
        // The certificates' names (`*.{platform_domain}`) are resolved at start.
        (
            has_tls && a.platform_domain != b.platform_domain,
            "server.platform_domain (TLS certificate names)",
        ),
        (running.limits != next.limits, "[limits]"),
        (running.usage != next.usage, "[usage]"),
        (running.tls != next.tls, "[tls]"),
        // The store is read at start; the keys are read at every reload.
        (
            running.admin.as_ref().map(store_settings) != next.admin.as_ref().map(store_settings),
            "[admin] (its store, or the admin API switched on or off)",
        ),
    ]
    .into_iter()
    .filter_map(|(changed, section)| changed.then_some(section))
    .collect()
}
