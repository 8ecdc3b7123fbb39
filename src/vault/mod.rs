//! Provider credentials: the [`Secret`] wrapper every key travels in, and the
//! platform keys read from the environment at start-up. Envelope-encrypted
//! bring-your-own keys (issue 3) will be unsealed here, just in time.

mod secret;

pub use secret::Secret;

/// Why a credential could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("provider `{provider}`: environment variable {var} is not set or not valid UTF-8")]
    MissingEnv { provider: String, var: String },
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
