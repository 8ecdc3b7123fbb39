//! Who is calling: the reseller, from the authority the client addressed, and the
//! tenant, from the gateway key it presented. [`Tenancy`] is an immutable index
//! built once per configuration snapshot; lookups are O(1) hash-map probes and the
//! final key comparison is constant-time. A key that belongs to another reseller
//! is indistinguishable from an unknown key.

mod brand;
mod host;
mod key;

pub use brand::{
    Brand, BrandHeaders, DEFAULT_EXPOSED, DEFAULT_HEADER_PREFIX, DEFAULT_KEY_PREFIX,
    X_LIVERY_DOWNGRADED_FROM, X_LIVERY_ESTIMATED, X_LIVERY_MODEL,
};
pub use host::normalize_host;
pub use key::{presented_key, KeyDigest, KeyId, PresentedKey};

use crate::config::{DisallowedModel, GatewayConfig, TenantStatus};
use crate::limits::PlanLimits;
use crate::vault::{ByokPolicy, CredentialOwner, SealedKey};
use crate::FastMap;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Why a request could not be attributed to a tenant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenancyError {
    #[error("no reseller is served at this host")]
    UnknownHost,
    #[error("the Host header is missing, repeated or inconsistent")]
    AmbiguousHost,
    #[error("no API key was provided")]
    MissingKey,
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("this account is suspended")]
    TenantSuspended,
    #[error("the API key has expired")]
    ExpiredKey,
}

#[derive(Debug)]
pub struct Plan {
    pub name: Arc<str>,
    /// Tenant-facing model names, in configuration order.
    pub models: Vec<Arc<str>>,
    pub byok: ByokPolicy,
    pub disallowed_model: DisallowedModel,
    pub downgrade_to: Option<Arc<str>>,
    /// Rate limits and quotas of the plan (absent fields: unlimited).
    pub limits: PlanLimits,
}

impl Plan {
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|m| &**m == model)
    }
}

#[derive(Debug)]
pub struct Tenant {
    pub id: Arc<str>,
    pub name: Option<String>,
    pub plan: Arc<Plan>,
    pub status: TenantStatus,
    pub key_count: usize,
    /// Sealed provider keys by provider name (never plaintext).
    pub credentials: FastMap<String, SealedKey>,
    /// The plan's limits with the tenant's overrides applied.
    pub limits: PlanLimits,
}

#[derive(Debug)]
pub struct Reseller {
    pub id: Arc<str>,
    pub name: Option<String>,
    pub domains: Vec<String>,
    pub tenants: Vec<Arc<Tenant>>,
    /// Sealed provider keys by provider name (never plaintext).
    pub credentials: FastMap<String, SealedKey>,
    /// The reseller's own plan, whose limits cap the sum of its tenants.
    pub plan: Option<Arc<Plan>>,
    /// Limits on the sum of all tenants (all unlimited without a plan).
    pub limits: PlanLimits,
    /// What its tenants see of it; unbranded resellers share one default.
    pub brand: Arc<Brand>,
}

/// Index of a reseller inside one [`Tenancy`] snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResellerIdx(usize);

#[derive(Debug, Clone)]
struct KeyOwner {
    reseller: usize,
    tenant: usize,
    /// Unix seconds from which the key is refused (`None`: never).
    expires_at: Option<std::num::NonZeroU64>,
    /// The models the key may use, of its plan's (`None`: all of them).
    models: Option<KeyModels>,
    /// Made once here: in hex per request it cost about 50 instructions.
    id: KeyId,
}

/// The tenant-facing models one key is limited to.
pub type KeyModels = Arc<[Arc<str>]>;

/// Whether a key limited to `models` (`None`: not limited) may use `model`.
pub fn key_allows(models: Option<&[Arc<str>]>, model: &str) -> bool {
    models.is_none_or(|ms| ms.iter().any(|m| &**m == model))
}

/// Who a key is: its tenant, and what the key itself may use.
#[derive(Debug)]
pub struct KeyHolder {
    pub tenant: Arc<Tenant>,
    /// The key's public id, for its usage records.
    pub id: KeyId,
    /// The key's own model list, which narrows its plan's (`None`: the plan's).
    pub models: Option<KeyModels>,
}

/// The resolved tenancy: resellers, their domains, tenants and key digests.
#[derive(Debug)]
pub struct Tenancy {
    platform_domain: Option<String>,
    domains: FastMap<String, usize>,
    reseller_ids: FastMap<String, usize>,
    resellers: Vec<Reseller>,
    keys: FastMap<KeyDigest, KeyOwner>,
}

/// Key digest of the published demo key; tenants holding it only work on loopback.
pub fn demo_key_digest() -> KeyDigest {
    KeyDigest::of(crate::DEMO_KEY)
}

impl Tenancy {
    /// Builds the index, rejecting duplicate ids, domains and keys, and unknown plans.
    /// `known_models` are the tenant-facing model names of the model table.
    pub fn build(
        config: &GatewayConfig,
        known_models: &HashSet<String>,
        known_providers: &HashSet<String>,
    ) -> Result<Self, String> {
        let platform_domain = match &config.server.platform_domain {
            Some(d) => Some(
                normalize_host(d)
                    .ok_or_else(|| format!("platform_domain `{d}` is not a valid host name"))?
                    .into_owned(),
            ),
            None => None,
        };
        let mut plans = HashMap::new();
        for p in &config.plans {
            for m in &p.models {
                if !known_models.contains(m) {
                    return Err(format!("plan `{}` lists unknown model `{m}`", p.name));
                }
            }
            let limits = PlanLimits::from_plan(p).map_err(|e| format!("plan `{}`: {e}", p.name))?;
            let plan = Arc::new(Plan {
                limits,
                name: p.name.as_str().into(),
                models: p.models.iter().map(|m| Arc::from(m.as_str())).collect(),
                byok: p.byok,
                disallowed_model: p.disallowed_model,
                downgrade_to: p.downgrade_to.as_deref().map(Arc::from),
            });
            if plans.insert(p.name.clone(), plan).is_some() {
                return Err(format!("plan `{}` is declared twice", p.name));
            }
        }

        let mut t = Tenancy {
            platform_domain,
            domains: FastMap::default(),
            reseller_ids: FastMap::default(),
            resellers: Vec::new(),
            keys: FastMap::default(),
        };
        let default_brand = Arc::new(Brand::default());
        for (ri, r) in config.resellers.iter().enumerate() {
            if !is_dns_label(&r.id) {
                return Err(format!(
                    "reseller id `{}` must be a lowercase DNS label",
                    r.id
                ));
            }
            if t.reseller_ids.insert(r.id.clone(), ri).is_some() {
                return Err(format!("reseller `{}` is declared twice", r.id));
            }
            let mut domains = Vec::new();
            for d in &r.domains {
                let n = normalize_host(d)
                    .ok_or_else(|| format!("reseller `{}`: `{d}` is not a valid domain", r.id))?
                    .into_owned();
                // `{id}.{platform_domain}` is reseller `id`'s host, and custom
                // domains are looked up first: another reseller listing it
                // would take it over (or take the host of a reseller added later).
                let platform_label = t
                    .platform_domain
                    .as_deref()
                    .and_then(|pd| n.strip_suffix(pd))
                    .and_then(|h| h.strip_suffix('.'))
                    .filter(|label| is_dns_label(label));
                if let Some(label) = platform_label.filter(|label| *label != r.id) {
                    return Err(format!(
                        "reseller `{}`: domain `{n}` is the platform host of reseller id `{label}`; \
                         list custom domains outside the platform domain",
                        r.id
                    ));
                }
                if let Some(prev) = t.domains.insert(n.clone(), ri) {
                    return Err(format!(
                        "domain `{n}` is claimed by both `{}` and `{}`",
                        config.resellers[prev].id, r.id
                    ));
                }
                domains.push(n);
            }
            let reseller_plan =
                r.plan
                    .as_ref()
                    .map(|name| {
                        plans.get(name).cloned().ok_or_else(|| {
                            format!("reseller `{}` uses unknown plan `{name}`", r.id)
                        })
                    })
                    .transpose()?;
            let mut tenants = Vec::new();
            let mut tenant_ids = HashSet::new();
            for (ti, tc) in r.tenants.iter().enumerate() {
                // Ids go into usage records, CSV reports and credential
                // owners (`tenant:RESELLER/TENANT`): no separators, no spaces.
                if !is_tenant_id(&tc.id) {
                    return Err(format!(
                        "reseller `{}`: tenant id `{}` must be 1-64 of [A-Za-z0-9._-]",
                        r.id, tc.id
                    ));
                }
                if !tenant_ids.insert(tc.id.as_str()) {
                    return Err(format!(
                        "reseller `{}`: tenant id `{}` is repeated",
                        r.id, tc.id
                    ));
                }
                let plan = plans.get(&tc.plan).cloned().ok_or_else(|| {
                    format!(
                        "tenant `{}/{}` uses unknown plan `{}`",
                        r.id, tc.id, tc.plan
                    )
                })?;
                let limits = plan
                    .limits
                    .overridden_by(&tc.limits)
                    .map_err(|e| format!("tenant `{}/{}`: limits: {e}", r.id, tc.id))?;
                for kh in &tc.key_hashes {
                    let digest = KeyDigest::parse(&kh.hash).ok_or_else(|| {
                        format!(
                            "tenant `{}/{}`: key hash must be `sha256:` followed by 64 hex digits (see `livery hash-key`)",
                            r.id, tc.id
                        )
                    })?;
                    if kh.read_only {
                        return Err(format!(
                            "tenant `{}/{}`: `read_only` is for admin keys, not a tenant's gateway key",
                            r.id, tc.id
                        ));
                    }
                    if kh.expires_at == Some(0) {
                        return Err(format!(
                            "tenant `{}/{}`: a key's expires_at is Unix seconds, not 0",
                            r.id, tc.id
                        ));
                    }
                    let models = match &kh.models {
                        None => None,
                        Some(list) => Some(key_models(list, known_models).map_err(|e| {
                            format!("tenant `{}/{}`: a key's models: {e}", r.id, tc.id)
                        })?),
                    };
                    let owner = KeyOwner {
                        reseller: ri,
                        tenant: ti,
                        expires_at: kh.expires_at.and_then(std::num::NonZeroU64::new),
                        models,
                        id: KeyId::of(&digest),
                    };
                    if t.keys.insert(digest, owner).is_some() {
                        return Err(format!(
                            "tenant `{}/{}`: a key hash is used twice",
                            r.id, tc.id
                        ));
                    }
                }
                tenants.push(Arc::new(Tenant {
                    limits,
                    id: tc.id.as_str().into(),
                    name: tc.name.clone(),
                    plan,
                    status: tc.status,
                    key_count: tc.key_hashes.len(),
                    credentials: parse_credentials(
                        &format!("tenant `{}/{}`", r.id, tc.id),
                        &tc.credentials,
                        known_providers,
                    )?,
                }));
            }
            let brand = if r.branding.is_default() {
                default_brand.clone()
            } else {
                Arc::new(
                    Brand::from_config(&r.branding)
                        .map_err(|e| format!("reseller `{}`: {e}", r.id))?,
                )
            };
            t.resellers.push(Reseller {
                brand,
                limits: reseller_plan.as_ref().map(|p| p.limits).unwrap_or_default(),
                plan: reseller_plan,
                id: r.id.as_str().into(),
                name: r.name.clone(),
                domains,
                tenants,
                credentials: parse_credentials(
                    &format!("reseller `{}`", r.id),
                    &r.credentials,
                    known_providers,
                )?,
            });
        }
        Ok(t)
    }

    pub fn resellers(&self) -> &[Reseller] {
        &self.resellers
    }

    pub fn reseller(&self, idx: ResellerIdx) -> &Reseller {
        &self.resellers[idx.0]
    }

    /// Reseller `id`, if this snapshot has it.
    pub fn reseller_by_id(&self, id: &str) -> Option<&Reseller> {
        self.reseller_ids.get(id).map(|&i| &self.resellers[i])
    }

    /// True if any reseller or tenant has a sealed provider credential.
    pub fn has_sealed_credentials(&self) -> bool {
        self.resellers.iter().any(|r| {
            !r.credentials.is_empty() || r.tenants.iter().any(|t| !t.credentials.is_empty())
        })
    }

    /// Every sealed credential with its owner and provider.
    pub fn sealed_credentials(&self) -> Vec<(CredentialOwner, &str, &SealedKey)> {
        let mut out = Vec::new();
        for r in &self.resellers {
            for (p, k) in &r.credentials {
                out.push((CredentialOwner::Reseller(r.id.clone()), p.as_str(), k));
            }
            for t in &r.tenants {
                for (p, k) in &t.credentials {
                    let owner = CredentialOwner::Tenant {
                        reseller: r.id.clone(),
                        tenant: t.id.clone(),
                    };
                    out.push((owner, p.as_str(), k));
                }
            }
        }
        out
    }

    /// True if some tenant holds the published demo key.
    pub fn has_demo_tenant(&self) -> bool {
        self.keys.contains_key(&demo_key_digest())
    }

    /// Finds the reseller served at `host` (already normalised).
    pub fn resolve_host(&self, host: &str) -> Result<ResellerIdx, TenancyError> {
        if let Some(&i) = self.domains.get(host) {
            return Ok(ResellerIdx(i));
        }
        if let Some(pd) = &self.platform_domain {
            if let Some(label) = host
                .strip_suffix(pd.as_str())
                .and_then(|h| h.strip_suffix('.'))
            {
                if let Some(&i) = self.reseller_ids.get(label) {
                    return Ok(ResellerIdx(i));
                }
            }
        }
        Err(TenancyError::UnknownHost)
    }

    /// Authenticates `key` for the reseller at `reseller`.
    /// The tenant holding `key` at `reseller`, at time `at` (a key past its
    /// `expires_at` is refused).
    pub fn authenticate(
        &self,
        reseller: ResellerIdx,
        key: &str,
        at: std::time::SystemTime,
    ) -> Result<KeyHolder, TenancyError> {
        let digest = KeyDigest::of(key);
        // The map probe compares digests, which leaks nothing usable about the key;
        // the final comparison is constant-time all the same, and a miss does the
        // same work as a hit so that timing does not tell the two apart.
        let (stored, owner) = match self.keys.get_key_value(&digest) {
            Some((k, o)) => (k.0, Some(o)),
            None => ([0u8; 32], None),
        };
        let same: bool = stored.ct_eq(&digest.0).into();
        match owner {
            Some(o) if same && o.reseller == reseller.0 => {
                // Said only to the key's holder: another reseller's, or a
                // wrong key, is the plain refusal above.
                // The clock is converted only for a key that can expire:
                // the conversion is about 40 instructions of every request.
                if o.expires_at
                    .is_some_and(|exp| crate::unix_seconds(at) >= exp.get())
                {
                    return Err(TenancyError::ExpiredKey);
                }
                let tenant = &self.resellers[o.reseller].tenants[o.tenant];
                if tenant.status == TenantStatus::Suspended {
                    return Err(TenancyError::TenantSuspended);
                }
                Ok(KeyHolder {
                    tenant: tenant.clone(),
                    id: o.id,
                    models: o.models.clone(),
                })
            }
            _ => Err(TenancyError::InvalidKey),
        }
    }
}

/// A key's model list, checked: at least one model, each one the model table
/// serves (whether the plan offers it is asked per request, so that a plan
/// can change without its keys).
fn key_models(list: &[String], known_models: &HashSet<String>) -> Result<KeyModels, String> {
    if list.is_empty() {
        return Err("the list is empty (a key that may use nothing is deleted instead)".into());
    }
    if let Some(m) = list.iter().find(|m| !known_models.contains(*m)) {
        return Err(format!("unknown model `{m}`"));
    }
    Ok(list.iter().map(|m| Arc::from(m.as_str())).collect())
}

fn parse_credentials(
    who: &str,
    raw: &std::collections::BTreeMap<String, String>,
    known_providers: &HashSet<String>,
) -> Result<FastMap<String, SealedKey>, String> {
    let mut out = FastMap::default();
    for (provider, sealed) in raw {
        if !known_providers.contains(provider) {
            return Err(format!(
                "{who}: credential for unknown provider `{provider}`"
            ));
        }
        let key = SealedKey::parse(sealed).map_err(|e| {
            format!("{who}: credential for `{provider}`: {e} (seal keys with `livery vault seal`)")
        })?;
        out.insert(provider.clone(), key);
    }
    Ok(out)
}

fn is_tenant_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
