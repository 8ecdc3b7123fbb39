//! [`Snapshot`]: everything the request path reads that may change at run time,
//! built whole from a configuration (the fallible *prepare*) and swapped in
//! atomically (`ArcSwap::store`, the infallible *swap*).

use crate::config::{ConfigError, GatewayConfig, RoutingConfig};
use crate::routing::ModelTable;
use crate::tenancy::KeyDigest;
use crate::tenancy::Tenancy;
use crate::usage::price::PriceTable;
use crate::vault::Keyring;
use std::collections::HashSet;
use std::sync::Arc;

/// Size limits applied by the proxy.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_request_bytes: usize,
    pub max_upstream_bytes: usize,
}

#[derive(Debug)]
pub struct Snapshot {
    pub tenancy: Tenancy,
    pub keyring: Arc<Keyring>,
    pub models: ModelTable,
    pub limits: BodyLimits,
    pub routing: RoutingConfig,
    pub operator_keys: Vec<KeyDigest>,
    /// The admin API's keys (platform and resellers).
    pub admin_keys: crate::admin::AdminKeys,
    /// Which origins browsers may call from.
    pub cors: crate::proxy::cors::CorsPolicy,
    /// The platform's prices: a request's usage record is priced with the
    /// table of the snapshot it started on, as its routes and plan were.
    pub prices: Arc<PriceTable>,
    /// Unix time the snapshot was built; reported as `created` in `/v1/models`.
    pub created: u64,
}

impl Snapshot {
    /// [`Snapshot::prepare`], refusing the published demo tenant where a
    /// listener is not on loopback (`public_listener`), as at start.
    pub fn prepare_for(
        config: &GatewayConfig,
        public_listener: Option<std::net::SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let next = Self::prepare(config)?;
        if let (true, Some(addr)) = (next.tenancy.has_demo_tenant(), public_listener) {
            return Err(ConfigError::Invalid(
                crate::proxy::StartError::DemoTenantExposed {
                    addr,
                    key: crate::DEMO_KEY,
                }
                .to_string(),
            ));
        }
        Ok(next)
    }

    pub fn prepare(config: &GatewayConfig) -> Result<Self, ConfigError> {
        let models = ModelTable::build(config).map_err(ConfigError::Invalid)?;
        let names: HashSet<String> = models.names().map(str::to_owned).collect();
        let providers: HashSet<String> = config.providers.iter().map(|p| p.name.clone()).collect();
        let tenancy = Tenancy::build(config, &names, &providers).map_err(ConfigError::Invalid)?;
        // Without [[vault.keks]] the only KEK is `default`: naming another
        // was ignored and sealed under `default` all the same.
        if let (Some(a), true) = (&config.vault.active_kek, config.vault.keks.is_empty()) {
            if a != "default" {
                return Err(ConfigError::Invalid(format!(
                    "vault.active_kek `{a}` names no [[vault.keks]] entry (without any, the only KEK is `default`, from LIVERY_MASTER_KEY)"
                )));
            }
        }
        let keyring = Keyring::from_config(&config.vault, tenancy.has_sealed_credentials())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // Fail the load, not a request, if any credential does not unseal. The
        // plaintexts produced here are dropped (and wiped) at once.
        for (owner, provider, sealed) in tenancy.sealed_credentials() {
            keyring.unseal(sealed, &owner, provider).map_err(|e| {
                ConfigError::Invalid(format!(
                    "credential of {owner} for provider `{provider}`: {e}"
                ))
            })?;
        }
        check_positive(config)?;
        check_billing_and_prices(config, &providers)?;
        if config.server.header_timeout_ms == 0 || config.server.send_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "server.header_timeout_ms and server.send_timeout_ms must be positive".into(),
            ));
        }
        let admin_keys = crate::admin::AdminKeys::build(config).map_err(ConfigError::Invalid)?;
        Ok(Self {
            admin_keys,
            tenancy,
            keyring: Arc::new(keyring),
            prices: Arc::new(PriceTable::from_config(config)),
            cors: crate::proxy::cors::CorsPolicy::from_origins(&config.server.cors_origins)
                .map_err(ConfigError::Invalid)?,
            models,
            routing: config.routing.clone(),
            operator_keys: config
                .server
                .operator_key_hashes
                .iter()
                .map(|h| {
                    KeyDigest::parse(h).ok_or_else(|| {
                        ConfigError::Invalid(
                            "server.operator_key_hashes: expected `sha256:<64 hex>`".into(),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            limits: BodyLimits {
                max_request_bytes: config.server.max_body_bytes,
                max_upstream_bytes: config.server.max_upstream_body_bytes,
            },
            created: crate::unix_seconds(std::time::SystemTime::now()),
        })
    }
}

/// Sizes and timeouts of 0 would fail every request (a deadline of 0 ms
/// answers 504 at once), so they are refused by name.
fn check_positive(config: &GatewayConfig) -> Result<(), ConfigError> {
    let s = &config.server;
    let r = &config.routing;
    for (field, zero) in [
        ("server.max_body_bytes", s.max_body_bytes == 0),
        (
            "server.max_upstream_body_bytes",
            s.max_upstream_body_bytes == 0,
        ),
        ("routing.request_deadline_ms", r.request_deadline_ms == 0),
        (
            "routing.first_event_timeout_ms",
            r.first_event_timeout_ms == 0,
        ),
    ] {
        if zero {
            return Err(ConfigError::Invalid(format!("{field} must be positive")));
        }
    }
    for p in &config.providers {
        for (field, zero) in [
            ("connect_timeout_ms", p.connect_timeout_ms == 0),
            ("first_byte_timeout_ms", p.first_byte_timeout_ms == 0),
            ("stream_idle_timeout_ms", p.stream_idle_timeout_ms == 0),
        ] {
            if zero {
                return Err(ConfigError::Invalid(format!(
                    "provider `{}`: {field} must be positive",
                    p.name
                )));
            }
        }
    }
    Ok(())
}

/// `[billing.X]` and `[[prices.models]]` are read only by `usage report` and
/// when pricing records: a typo in them would pass silently until then.
fn check_billing_and_prices(
    config: &GatewayConfig,
    providers: &HashSet<String>,
) -> Result<(), ConfigError> {
    for (reseller, billing) in &config.billing {
        if !config.resellers.iter().any(|r| &r.id == reseller) {
            return Err(ConfigError::Invalid(format!(
                "[billing.{reseller}]: no reseller has id `{reseller}`"
            )));
        }
        crate::usage::report::check_billing(billing)
            .map_err(|e| ConfigError::Invalid(format!("[billing.{reseller}]: {e}")))?;
    }
    for price in &config.prices.models {
        if let Some(p) = price
            .provider
            .as_deref()
            .filter(|p| !providers.contains(*p))
        {
            return Err(ConfigError::Invalid(format!(
                "[[prices.models]] `{}` names unknown provider `{p}`",
                price.model
            )));
        }
        crate::usage::price::check_entry(price)
            .map_err(|e| ConfigError::Invalid(format!("[[prices.models]] {e}")))?;
    }
    Ok(())
}
