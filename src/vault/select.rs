//! Which key pays for a call: the plan's BYOK policy cuts the lookup order
//! tenant key → reseller key → platform key, and the chosen credential is
//! unsealed just in time. The caller drops the returned [`Secret`] as soon as the
//! upstream call no longer needs it.

use super::sealed::{CredentialOwner, SealedKey};
use super::{Keyring, Secret, VaultError};
use serde::{Deserialize, Serialize};

/// A plan's bring-your-own-key policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ByokPolicy {
    /// Only the tenant's own key; none configured is an error.
    Required,
    /// The tenant's key, else the reseller's, else the platform's.
    #[default]
    Preferred,
    /// Never the tenant's key: the reseller's, else the platform's.
    Never,
}

/// Whose key paid for a call (recorded in usage; the key itself never is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOwner {
    Tenant,
    Reseller,
    Platform,
    /// The provider needs no key (e.g. a local Ollama).
    None,
}

/// A stored credential together with its owner, as found in the tenancy.
pub struct StoredCredential<'a> {
    pub owner: CredentialOwner,
    pub sealed: &'a SealedKey,
}

/// The unsealed key for one upstream call.
pub struct ProviderCredential {
    pub owner: KeyOwner,
    pub key: Option<Secret>,
}

/// Picks and unseals the key for `provider` under `policy`.
pub fn select_credential(
    policy: ByokPolicy,
    provider: &str,
    keyring: &Keyring,
    tenant: Option<StoredCredential<'_>>,
    reseller: Option<StoredCredential<'_>>,
    platform: Option<&Secret>,
) -> Result<ProviderCredential, VaultError> {
    let unseal = |c: StoredCredential<'_>| keyring.unseal(c.sealed, &c.owner, provider);
    match policy {
        ByokPolicy::Required => match tenant {
            Some(c) => Ok(ProviderCredential {
                owner: KeyOwner::Tenant,
                key: Some(unseal(c)?),
            }),
            None => Err(VaultError::ProviderKeyNotConfigured(provider.to_owned())),
        },
        ByokPolicy::Preferred | ByokPolicy::Never => {
            if policy == ByokPolicy::Preferred {
                if let Some(c) = tenant {
                    return Ok(ProviderCredential {
                        owner: KeyOwner::Tenant,
                        key: Some(unseal(c)?),
                    });
                }
            }
            if let Some(c) = reseller {
                return Ok(ProviderCredential {
                    owner: KeyOwner::Reseller,
                    key: Some(unseal(c)?),
                });
            }
            Ok(match platform {
                Some(k) => ProviderCredential {
                    owner: KeyOwner::Platform,
                    key: Some(k.clone()),
                },
                None => ProviderCredential {
                    owner: KeyOwner::None,
                    key: None,
                },
            })
        }
    }
}
