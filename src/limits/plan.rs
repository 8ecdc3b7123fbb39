//! The limits of one plan ([`PlanLimits`]), a tenant's overrides, and what one
//! request is held to: its tenant's limits and its reseller's ([`EffectiveLimits`]).

use crate::config::{LimitOverrides, PlanConfig};

/// Completion tokens assumed for a request without `max_tokens` when the plan
/// sets no `default_completion_tokens`.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 1024;

/// Limits of one plan; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_month: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub default_completion_tokens: Option<u64>,
}

impl PlanLimits {
    /// Reads and checks a plan's limit fields.
    pub fn from_plan(p: &PlanConfig) -> Result<Self, String> {
        Self {
            requests_per_minute: p.requests_per_minute,
            tokens_per_minute: p.tokens_per_minute,
            tokens_per_month: p.tokens_per_month,
            max_concurrent: p.max_concurrent,
            default_completion_tokens: p.default_completion_tokens,
        }
        .checked()
    }

    /// This plan with the fields the tenant sets replaced.
    pub fn overridden_by(&self, o: &LimitOverrides) -> Result<Self, String> {
        Self {
            requests_per_minute: o.requests_per_minute.or(self.requests_per_minute),
            tokens_per_minute: o.tokens_per_minute.or(self.tokens_per_minute),
            tokens_per_month: o.tokens_per_month.or(self.tokens_per_month),
            max_concurrent: o.max_concurrent.or(self.max_concurrent),
            default_completion_tokens: o
                .default_completion_tokens
                .or(self.default_completion_tokens),
        }
        .checked()
    }

    /// True if nothing is limited (the default completion is only an estimate).
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none()
            && self.tokens_per_minute.is_none()
            && self.tokens_per_month.is_none()
            && self.max_concurrent.is_none()
    }

    fn checked(self) -> Result<Self, String> {
        for (name, v) in [
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
            ("tokens_per_month", self.tokens_per_month),
            ("max_concurrent", self.max_concurrent),
            ("default_completion_tokens", self.default_completion_tokens),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "`{name}` must be positive (leave it out for no limit; suspend a tenant to stop it)"
                ));
            }
        }
        Ok(self)
    }

    /// One instance's share of the per-minute and concurrency limits when
    /// `instances` gateways count them separately (rounded up, so never zero).
    /// The monthly quota is not divided: its count is global.
    pub(crate) fn share(&self, instances: u32) -> Self {
        let n = u64::from(instances.max(1));
        let part = |v: Option<u64>| v.map(|v| v.div_ceil(n));
        Self {
            requests_per_minute: part(self.requests_per_minute),
            tokens_per_minute: part(self.tokens_per_minute),
            max_concurrent: part(self.max_concurrent),
            ..*self
        }
    }
}

/// What one request is held to: both levels are checked and charged together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EffectiveLimits {
    /// The tenant's plan with its overrides.
    pub tenant: PlanLimits,
    /// The reseller's plan: caps the sum of all its tenants.
    pub reseller: PlanLimits,
}

impl EffectiveLimits {
    pub fn new(tenant: &PlanLimits, reseller: &PlanLimits) -> Self {
        Self {
            tenant: *tenant,
            reseller: *reseller,
        }
    }

    /// The limits of a resolved tenant of a resolved reseller.
    pub fn of(reseller: &crate::tenancy::Reseller, tenant: &crate::tenancy::Tenant) -> Self {
        Self::new(&tenant.limits, &reseller.limits)
    }

    pub fn is_unlimited(&self) -> bool {
        self.tenant.is_unlimited() && self.reseller.is_unlimited()
    }

    /// Completion tokens to assume for a request that sets no `max_tokens`.
    pub fn default_completion_tokens(&self) -> u64 {
        self.tenant
            .default_completion_tokens
            .unwrap_or(DEFAULT_COMPLETION_TOKENS)
    }

    pub(crate) fn share(&self, instances: u32) -> Self {
        Self {
            tenant: self.tenant.share(instances),
            reseller: self.reseller.share(instances),
        }
    }

    pub(crate) fn level(&self, level: Level) -> &PlanLimits {
        match level {
            Level::Tenant => &self.tenant,
            Level::Reseller => &self.reseller,
        }
    }
}

/// Which of the two levels a limit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Tenant,
    Reseller,
}

impl Level {
    pub const BOTH: [Level; 2] = [Level::Tenant, Level::Reseller];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Tenant => "tenant",
            Level::Reseller => "reseller",
        }
    }
}
