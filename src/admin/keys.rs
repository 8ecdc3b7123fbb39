//! Admin keys: who an admin request acts for ([`Principal`]), the index from a
//! key's digest to it ([`AdminKeys`], built with each snapshot), and the keys
//! the API hands out (gateway keys for tenants, admin keys for resellers).

use crate::config::GatewayConfig;
use crate::tenancy::{KeyDigest, KeyId};
use crate::vault::Secret;
use crate::FastMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who an admin request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The platform: every reseller.
    Platform,
    /// One reseller: its own tenants, keys, credentials and usage.
    Reseller(Arc<str>),
}

impl Principal {
    /// How the audit log names it.
    pub fn label(&self) -> String {
        match self {
            Principal::Platform => "platform".into(),
            Principal::Reseller(r) => format!("reseller:{r}"),
        }
    }
}

/// What one admin key may do: act for its principal, only reading if
/// `read_only`, until `expires_at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminGrant {
    pub principal: Principal,
    pub read_only: bool,
    expires_at: Option<u64>,
}

/// Why an admin key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminKeyRefusal {
    /// Not an admin key.
    Unknown,
    /// An admin key past its `expires_at`, and whom it acted for.
    Expired(Principal),
}

/// The admin keys of one configuration snapshot.
#[derive(Debug, Default)]
pub struct AdminKeys {
    keys: FastMap<KeyDigest, AdminGrant>,
}

impl AdminKeys {
    /// Indexes `[admin] platform_key_hashes` and each reseller's
    /// `admin_key_hashes`. A digest listed twice, or also a tenant's gateway
    /// key, is refused: one key must never carry two sets of rights.
    pub fn build(config: &GatewayConfig) -> Result<Self, String> {
        let mut keys = FastMap::default();
        let tenant_keys: std::collections::HashSet<KeyDigest> = config
            .resellers
            .iter()
            .flat_map(|r| &r.tenants)
            .flat_map(|t| &t.key_hashes)
            .filter_map(|k| KeyDigest::parse(&k.hash))
            .collect();
        let platform = config.admin.iter().flat_map(|a| &a.platform_key_hashes);
        let owned = platform.map(|h| {
            (
                "[admin] platform_key_hashes".to_owned(),
                h,
                Principal::Platform,
            )
        });
        let resellers = config.resellers.iter().flat_map(|r| {
            r.admin_key_hashes.iter().map(move |h| {
                (
                    format!("reseller `{}` admin_key_hashes", r.id),
                    h,
                    Principal::Reseller(r.id.as_str().into()),
                )
            })
        });
        for (who, entry, principal) in owned.chain(resellers) {
            let hash = &entry.hash;
            let digest = KeyDigest::parse(hash)
                .ok_or_else(|| format!("{who}: expected `sha256:<64 hex>`, got `{hash}`"))?;
            if tenant_keys.contains(&digest) {
                return Err(format!("{who}: the key is also a tenant's gateway key"));
            }
            if entry.models.is_some() {
                return Err(format!(
                    "{who}: `models` limits a tenant's gateway key, not an admin key"
                ));
            }
            if entry.expires_at == Some(0) {
                return Err(format!("{who}: a key's expires_at is Unix seconds, not 0"));
            }
            let grant = AdminGrant {
                principal,
                read_only: entry.read_only,
                expires_at: entry.expires_at,
            };
            if keys.insert(digest, grant).is_some() {
                return Err(format!("{who}: the key is listed twice"));
            }
        }
        Ok(Self { keys })
    }

    /// What `key` may do at time `at`, if it is an admin key. The final
    /// comparison is constant-time, and a miss does the same work as a hit.
    pub fn grant(
        &self,
        key: &str,
        at: std::time::SystemTime,
    ) -> Result<AdminGrant, AdminKeyRefusal> {
        let digest = KeyDigest::of(key);
        let (stored, grant) = match self.keys.get_key_value(&digest) {
            Some((k, g)) => (k.0, Some(g)),
            None => ([0u8; 32], None),
        };
        let same: bool = stored.ct_eq(&digest.0).into();
        let grant = grant.filter(|_| same).ok_or(AdminKeyRefusal::Unknown)?;
        if grant
            .expires_at
            .is_some_and(|exp| crate::unix_seconds(at) >= exp)
        {
            return Err(AdminKeyRefusal::Expired(grant.principal.clone()));
        }
        Ok(grant.clone())
    }
}

/// A key's public id, as the API lists it and deletes by: a prefix of its
/// digest (never of the key), so that it can be shown and logged.
/// The same id as a usage record names the key by ([`KeyId`]), however
/// the digest's hex is cased.
pub fn key_id(hash: &str) -> String {
    match KeyDigest::parse(hash) {
        Some(d) => KeyId::of(&d).to_string(),
        // Not a digest (refused at load): named as it stands.
        None => {
            let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
            format!("key_{}", hex.get(..12).unwrap_or(hex))
        }
    }
}

/// A new random key with `prefix` (160 bits from the system's CSPRNG), and
/// the digest the configuration keeps of it.
pub fn new_key(prefix: &str) -> Result<(Secret, String), ring::error::Unspecified> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 20]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes[..])?;
    let key = Secret::new(format!("{prefix}{}", hex::encode(&bytes[..])));
    let hash = KeyDigest::of(key.expose()).to_config_string();
    Ok((key, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> GatewayConfig {
        GatewayConfig::parse(text).unwrap()
    }

    const BASE: &str = "[admin]\nstore_path = \"s.json\"\nplatform_key_hashes = [\"PLATFORM\"]\n\
        [[providers]]\nname = \"m\"\nkind = \"mock\"\n[[models]]\nname = \"d\"\nprovider = \"m\"\n\
        [[plans]]\nname = \"p\"\nmodels = [\"d\"]\n\
        [[resellers]]\nid = \"acme\"\nadmin_key_hashes = [\"ACME\"]\n\
        [[resellers.tenants]]\nid = \"t\"\nplan = \"p\"\nkey_hashes = [\"TENANT\"]\n";

    fn with(platform: &str, acme: &str, tenant: &str) -> GatewayConfig {
        let h = |k: &str| KeyDigest::of(k).to_config_string();
        config(
            &BASE
                .replace("PLATFORM", &h(platform))
                .replace("ACME", &h(acme))
                .replace("TENANT", &h(tenant)),
        )
    }

    #[test]
    fn each_key_acts_for_its_own_principal_and_nothing_else() {
        let keys = AdminKeys::build(&with("p-key", "a-key", "t-key")).unwrap();
        let now = std::time::SystemTime::now();
        let principal = |k: &str| keys.grant(k, now).map(|g| g.principal);
        assert_eq!(principal("p-key"), Ok(Principal::Platform));
        assert_eq!(principal("a-key"), Ok(Principal::Reseller("acme".into())));
        assert_eq!(
            principal("t-key"),
            Err(AdminKeyRefusal::Unknown),
            "a tenant key is no admin key"
        );
        assert_eq!(principal("other"), Err(AdminKeyRefusal::Unknown));
    }

    /// A table entry's `read_only` and `expires_at` are the grant's; an
    /// admin key with `models` (a tenant key's field) is refused.
    #[test]
    fn an_admin_key_may_be_read_only_and_expire() {
        let h = KeyDigest::of("a-key").to_config_string();
        let table = |fields: &str| {
            config(
                &BASE
                    .replace("PLATFORM", &KeyDigest::of("p-key").to_config_string())
                    .replace("\"ACME\"", &format!("{{ hash = \"{h}\", {fields} }}"))
                    .replace("TENANT", &KeyDigest::of("t-key").to_config_string()),
            )
        };
        let keys = AdminKeys::build(&table("read_only = true, expires_at = 2000")).unwrap();
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let grant = keys.grant("a-key", at(1999)).unwrap();
        assert!(grant.read_only);
        assert_eq!(
            keys.grant("a-key", at(2000)),
            Err(AdminKeyRefusal::Expired(Principal::Reseller("acme".into())))
        );
        assert!(!keys.grant("p-key", at(2000)).unwrap().read_only);
        let e = AdminKeys::build(&table("models = [\"d\"]")).unwrap_err();
        assert!(e.contains("not an admin key"), "{e}");
    }

    #[test]
    fn a_key_with_two_sets_of_rights_is_refused() {
        let e = AdminKeys::build(&with("same", "same", "t-key")).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let e = AdminKeys::build(&with("p-key", "a-key", "a-key")).unwrap_err();
        assert!(e.contains("tenant's gateway key"), "{e}");
    }

    #[test]
    fn new_keys_are_distinct_and_their_hash_matches() {
        let (a, ha) = new_key("sk-livery-").unwrap();
        let (b, _) = new_key("sk-livery-").unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), "sk-livery-".len() + 40);
        assert_eq!(ha, KeyDigest::of(a.expose()).to_config_string());
        assert_eq!(key_id(&ha).len(), 16);
        assert_eq!(format!("{a:?}"), "[redacted]");
    }
}
