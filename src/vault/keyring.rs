//! [`Keyring`]: the configured KEKs (one active for sealing, the others kept for
//! unsealing during a rotation) and the envelope operations: seal, unseal, and
//! re-wrap a data key under the active KEK without touching the credential.

use super::kek::{dek_key, generate_dek, open_with, seal_with, EnvKek, FileKek, KeyEncryptionKey};
use super::sealed::{
    credential_aad, credential_aad_into, dek_aad, valid_kek_id, CredentialOwner, SealedKey,
};
use super::{Secret, VaultError};
use crate::config::VaultConfig;
use std::collections::HashMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The environment variable of the implicit KEK used when `[vault]` names none.
pub const DEFAULT_KEK_ENV: &str = "LIVERY_MASTER_KEY";
/// The id of that implicit KEK.
pub const DEFAULT_KEK_ID: &str = "default";

#[derive(Default)]
pub struct Keyring {
    active: Option<String>,
    keks: HashMap<String, Arc<dyn KeyEncryptionKey>, crate::FastHash>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keks.keys().collect();
        ids.sort();
        write!(f, "Keyring(active={:?}, keks={ids:?})", self.active)
    }
}

impl Keyring {
    /// Loads the KEKs of `[vault]`. With none configured, the implicit KEK
    /// `default` is read from `LIVERY_MASTER_KEY`, but only if `needed` (some
    /// credential is sealed, or the caller wants to seal).
    pub fn from_config(cfg: &VaultConfig, needed: bool) -> Result<Self, VaultError> {
        let mut ring = Keyring::default();
        if cfg.keks.is_empty() {
            if needed {
                ring.add(Arc::new(EnvKek::load(DEFAULT_KEK_ID, DEFAULT_KEK_ENV)?));
                ring.active = Some(DEFAULT_KEK_ID.to_owned());
            }
            return Ok(ring);
        }
        for k in &cfg.keks {
            if !valid_kek_id(&k.id) {
                return Err(VaultError::BadKekConfig(format!(
                    "KEK id `{}` must be 1-64 of [A-Za-z0-9._-]",
                    k.id
                )));
            }
            let kek: Arc<dyn KeyEncryptionKey> = match (&k.env, &k.file) {
                (Some(var), None) => Arc::new(EnvKek::load(&k.id, var)?),
                (None, Some(path)) => Arc::new(FileKek::load(&k.id, path)?),
                _ => {
                    return Err(VaultError::BadKekConfig(format!(
                        "KEK `{}` must have exactly one of `env` or `file`",
                        k.id
                    )))
                }
            };
            if ring.keks.contains_key(&k.id) {
                return Err(VaultError::BadKekConfig(format!(
                    "KEK `{}` is declared twice",
                    k.id
                )));
            }
            ring.add(kek);
        }
        let active = cfg
            .active_kek
            .clone()
            .or_else(|| cfg.keks.first().map(|k| k.id.clone()));
        if let Some(a) = &active {
            if !ring.keks.contains_key(a) {
                return Err(VaultError::BadKekConfig(format!(
                    "active_kek `{a}` is not among [[vault.keks]]"
                )));
            }
        }
        ring.active = active;
        Ok(ring)
    }

    /// Adds a KEK (the first one added becomes active if none is).
    pub fn add(&mut self, kek: Arc<dyn KeyEncryptionKey>) {
        if self.active.is_none() {
            self.active = Some(kek.id().to_owned());
        }
        self.keks.insert(kek.id().to_owned(), kek);
    }

    pub fn set_active(&mut self, id: &str) -> Result<(), VaultError> {
        if !self.keks.contains_key(id) {
            return Err(VaultError::UnknownKek(id.to_owned()));
        }
        self.active = Some(id.to_owned());
        Ok(())
    }

    pub fn active_id(&self) -> Option<&str> {
        self.active.as_deref()
    }

    fn active_kek(&self) -> Result<&Arc<dyn KeyEncryptionKey>, VaultError> {
        let id = self.active.as_deref().ok_or(VaultError::NoKek)?;
        self.keks
            .get(id)
            .ok_or_else(|| VaultError::UnknownKek(id.to_owned()))
    }

    fn kek(&self, id: &str) -> Result<&Arc<dyn KeyEncryptionKey>, VaultError> {
        self.keks
            .get(id)
            .ok_or_else(|| VaultError::UnknownKek(id.to_owned()))
    }

    /// Seals `plaintext` for `owner` and `provider` under a fresh data key.
    pub fn seal(
        &self,
        owner: &CredentialOwner,
        provider: &str,
        plaintext: &str,
    ) -> Result<SealedKey, VaultError> {
        let kek = self.active_kek()?;
        let dek = generate_dek()?;
        let ciphertext = seal_with(
            &dek_key(&dek)?,
            plaintext.as_bytes(),
            &credential_aad(owner, provider),
        )?;
        let wrapped_dek = kek.wrap(&dek, &dek_aad(kek.id(), owner, provider))?;
        Ok(SealedKey {
            kek_id: kek.id().to_owned(),
            wrapped_dek,
            ciphertext,
        })
    }

    /// Unseals a credential, which must belong to `owner` and `provider`.
    pub fn unseal(
        &self,
        sealed: &SealedKey,
        owner: &CredentialOwner,
        provider: &str,
    ) -> Result<Secret, VaultError> {
        let kek = self.kek(&sealed.kek_id)?;
        // One buffer for both associated data, the data key's and then the
        // credential's; the opened plaintext becomes the secret without a copy.
        let mut aad = dek_aad(&sealed.kek_id, owner, provider);
        let dek = kek.unwrap(&sealed.wrapped_dek, &aad)?;
        credential_aad_into(&mut aad, owner, provider);
        let mut plain = open_with(&dek_key(&dek)?, &sealed.ciphertext, &aad)?;
        match String::from_utf8(std::mem::take(&mut *plain)) {
            Ok(text) => Ok(Secret::new(text)),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                Err(VaultError::Corrupt)
            }
        }
    }

    /// Re-wraps the data key under the active KEK. The credential's ciphertext is
    /// carried over unchanged: its plaintext is never produced.
    pub fn rewrap(
        &self,
        sealed: &SealedKey,
        owner: &CredentialOwner,
        provider: &str,
    ) -> Result<SealedKey, VaultError> {
        let old = self.kek(&sealed.kek_id)?;
        let dek = old.unwrap(
            &sealed.wrapped_dek,
            &dek_aad(&sealed.kek_id, owner, provider),
        )?;
        let new = self.active_kek()?;
        // Prove the data key opens the credential before committing to it.
        open_with(
            &dek_key(&dek)?,
            &sealed.ciphertext,
            &credential_aad(owner, provider),
        )?;
        Ok(SealedKey {
            kek_id: new.id().to_owned(),
            wrapped_dek: new.wrap(&dek, &dek_aad(new.id(), owner, provider))?,
            ciphertext: sealed.ciphertext.clone(),
        })
    }
}
