//! Provider credentials. Bring-your-own keys are stored sealed (envelope
//! encryption: AES-256-GCM under a per-credential data key, itself wrapped by a
//! key-encryption key; see [`sealed`] and [`kek`]) and unsealed just in time for
//! the one upstream call that needs them ([`select`]). Every key travels in a
//! [`Secret`], which never prints and is wiped on drop.

pub mod kek;
mod keyring;
mod rotate;
pub mod sealed;
mod secret;
mod select;

pub use kek::{generate_kek, EnvKek, FileKek, KeyEncryptionKey};
pub use keyring::{Keyring, DEFAULT_KEK_ENV, DEFAULT_KEK_ID};
pub use rotate::{rotate_config_text, verify_config_text, CredentialReport};
pub use sealed::{CredentialOwner, SealedKey};
pub use secret::Secret;
pub use select::{select_credential, ByokPolicy, KeyOwner, ProviderCredential, StoredCredential};

use std::path::PathBuf;

/// Why a credential could not be sealed, unsealed or chosen. No variant carries
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("provider `{provider}`: environment variable {var} is not set or not valid UTF-8")]
    MissingEnv { provider: String, var: String },
    #[error("KEK `{id}` is not available: {detail}")]
    KekMissing { id: String, detail: String },
    #[error("KEK `{id}` is unusable: {why}")]
    KekMaterial { id: String, why: String },
    #[error(
        "KEK file {path} is readable by group or others (mode {mode:o}); run `chmod 600` on it"
    )]
    KekPermissions { path: PathBuf, mode: u32 },
    #[error("invalid [vault] configuration: {0}")]
    BadKekConfig(String),
    #[error("no key-encryption key is configured (set {DEFAULT_KEK_ENV} or [[vault.keks]])")]
    NoKek,
    #[error("the credential was sealed under KEK `{0}`, which is not configured")]
    UnknownKek(String),
    #[error("malformed sealed credential: {0}")]
    Malformed(String),
    #[error("the sealed credential is corrupt")]
    Corrupt,
    #[error("the credential does not unseal: wrong KEK, altered, or sealed for another owner or provider")]
    Unseal,
    #[error("the system random generator failed")]
    Random,
    #[error("owner `{0}` must be `tenant:RESELLER/TENANT`, `reseller:RESELLER` or `platform`")]
    BadOwner(String),
    #[error("this plan requires your own API key for provider `{0}`, and none is configured for your account")]
    ProviderKeyNotConfigured(String),
}

/// Reads a platform key from the environment variable `var`.
pub fn platform_key_from_env(provider: &str, var: &str) -> Result<Secret, VaultError> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim().to_owned())),
        _ => Err(VaultError::MissingEnv {
            provider: provider.to_owned(),
            var: var.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests;
