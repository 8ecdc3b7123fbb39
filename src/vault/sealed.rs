//! The sealed form of a credential, `lvk1:<kek-id>:<wrapped-dek>:<ciphertext>`
//! (both blobs base64url without padding), and who a credential belongs to. The
//! owner and provider are bound in as associated data, so a sealed string copied
//! onto another tenant or another provider fails to unseal.

use super::VaultError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::fmt;
use std::sync::Arc;

const VERSION: &str = "lvk1";

/// Who a stored credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialOwner {
    /// `tenant:RESELLER/TENANT`
    Tenant {
        reseller: Arc<str>,
        tenant: Arc<str>,
    },
    /// `reseller:RESELLER`
    Reseller(Arc<str>),
    /// `platform`
    Platform,
}

impl CredentialOwner {
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let bad = || VaultError::BadOwner(text.to_owned());
        if text == "platform" {
            return Ok(Self::Platform);
        }
        if let Some(r) = text.strip_prefix("reseller:") {
            if r.is_empty() || r.contains('/') {
                return Err(bad());
            }
            return Ok(Self::Reseller(r.into()));
        }
        let rest = text.strip_prefix("tenant:").ok_or_else(bad)?;
        let (reseller, tenant) = rest.split_once('/').ok_or_else(bad)?;
        if reseller.is_empty() || tenant.is_empty() {
            return Err(bad());
        }
        Ok(Self::Tenant {
            reseller: reseller.into(),
            tenant: tenant.into(),
        })
    }
}

impl CredentialOwner {
    /// The owner's text, `tenant:RESELLER/TENANT`, `reseller:RESELLER` or
    /// `platform`, in pieces: what `Display` writes and what the associated
    /// data binds in.
    fn text_parts(&self) -> [&str; 4] {
        match self {
            Self::Tenant { reseller, tenant } => ["tenant:", reseller, "/", tenant],
            Self::Reseller(r) => ["reseller:", r, "", ""],
            Self::Platform => ["platform", "", "", ""],
        }
    }
}

impl fmt::Display for CredentialOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.text_parts().iter().try_for_each(|p| f.write_str(p))
    }
}

/// A parsed sealed credential. Holds no plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKey {
    pub kek_id: String,
    pub(super) wrapped_dek: Vec<u8>,
    pub(super) ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedKey({VERSION}:{}:…)", self.kek_id)
    }
}

impl SealedKey {
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let mut parts = text.trim().split(':');
        let (Some(version), Some(kek_id), Some(dek), Some(ct), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(VaultError::Malformed(
                "expected lvk1:<kek-id>:<wrapped-key>:<ciphertext>".into(),
            ));
        };
        if version != VERSION {
            return Err(VaultError::Malformed(format!(
                "unknown version `{version}`"
            )));
        }
        if !valid_kek_id(kek_id) {
            return Err(VaultError::Malformed("invalid KEK id".into()));
        }
        let decode = |s: &str| {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| VaultError::Malformed("invalid base64".into()))
        };
        Ok(Self {
            kek_id: kek_id.to_owned(),
            wrapped_dek: decode(dek)?,
            ciphertext: decode(ct)?,
        })
    }

    pub fn to_sealed_string(&self) -> String {
        format!(
            "{VERSION}:{}:{}:{}",
            self.kek_id,
            URL_SAFE_NO_PAD.encode(&self.wrapped_dek),
            URL_SAFE_NO_PAD.encode(&self.ciphertext)
        )
    }
}

/// KEK ids appear inside sealed strings: keep them to a safe alphabet.
pub fn valid_kek_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Associated data of the wrapped data key.
pub(super) fn dek_aad(kek_id: &str, owner: &CredentialOwner, provider: &str) -> Vec<u8> {
    aad("dek", Some(kek_id), owner, provider)
}

/// Associated data of the credential ciphertext.
pub(super) fn credential_aad(owner: &CredentialOwner, provider: &str) -> Vec<u8> {
    aad("credential", None, owner, provider)
}

/// [`credential_aad`] written over `out` (a request's unseal reuses the data
/// key's buffer for it).
pub(super) fn credential_aad_into(out: &mut Vec<u8>, owner: &CredentialOwner, provider: &str) {
    out.clear();
    aad_into(out, "credential", None, owner, provider);
}

/// `livery/KIND/VERSION\0[KEK-ID\0]OWNER\0PROVIDER`, built by hand: both are
/// made on every request that unseals a key, and `format!` with the owner's
/// `Display` cost three times as many instructions as the bytes themselves.
fn aad(kind: &str, kek_id: Option<&str>, owner: &CredentialOwner, provider: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + provider.len());
    aad_into(&mut out, kind, kek_id, owner, provider);
    out
}

fn aad_into(
    out: &mut Vec<u8>,
    kind: &str,
    kek_id: Option<&str>,
    owner: &CredentialOwner,
    provider: &str,
) {
    let kek_id = kek_id.map(|id| ["\0", id]).unwrap_or_default();
    let parts = ["livery/", kind, "/", VERSION]
        .into_iter()
        .chain(kek_id)
        .chain(["\0"])
        .chain(owner.text_parts())
        .chain(["\0", provider]);
    parts.for_each(|p| out.extend_from_slice(p.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The associated data is part of every sealed credential ever written:
    /// its bytes must stay exactly what the original `format!` produced.
    #[test]
    fn associated_data_is_byte_for_byte_the_documented_layout() {
        let owners = [
            CredentialOwner::Tenant {
                reseller: "acme".into(),
                tenant: "dental".into(),
            },
            CredentialOwner::Reseller("acme".into()),
            CredentialOwner::Platform,
        ];
        for owner in &owners {
            assert_eq!(
                dek_aad("kek-2024", owner, "openai"),
                format!("livery/dek/lvk1\0kek-2024\0{owner}\0openai").into_bytes()
            );
            assert_eq!(
                credential_aad(owner, "azure"),
                format!("livery/credential/lvk1\0{owner}\0azure").into_bytes()
            );
        }
    }
}
