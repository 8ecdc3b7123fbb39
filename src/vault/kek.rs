//! Key-encryption keys (KEKs). [`KeyEncryptionKey`] is the seam a cloud KMS or
//! HashiCorp Vault's transit engine plugs into: the vault only ever asks a KEK to
//! wrap or unwrap a 32-byte data key, never to see a credential. The local
//! implementations hold an AES-256-GCM key read from an environment variable
//! ([`EnvKek`]) or from a file that only its owner may read ([`FileKek`]).

use super::VaultError;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A data key, unwrapped. Wiped on drop.
pub type DataKey = Zeroizing<[u8; 32]>;

/// Wraps and unwraps data keys. A remote KMS implements this with its
/// Encrypt/Decrypt calls (the `aad` becomes its encryption context).
pub trait KeyEncryptionKey: Send + Sync {
    /// Stable identifier written into every sealed string it wraps.
    fn id(&self) -> &str;
    /// Returns an opaque blob (for the local KEKs: nonce ‖ ciphertext ‖ tag).
    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, VaultError>;
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, VaultError>;
}

/// AES-256-GCM under a locally held 32-byte key.
struct AesKek {
    id: String,
    key: LessSafeKey,
}

impl AesKek {
    fn new(id: &str, material: &[u8]) -> Result<Self, VaultError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, material).map_err(|_| VaultError::KekMaterial {
                id: id.to_owned(),
                why: "it must be exactly 32 bytes".into(),
            })?;
        Ok(Self {
            id: id.to_owned(),
            key: LessSafeKey::new(unbound),
        })
    }

    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        seal_with(&self.key, dek.as_slice(), aad)
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, VaultError> {
        let (nonce, rest) = split_sealed(wrapped)?;
        // A wrapped key is 32 bytes and its tag, opened on the stack (every
        // request that unseals a key does this); no other length authenticates.
        let mut buf = Zeroizing::new(<[u8; 48]>::try_from(rest).map_err(|_| VaultError::Unseal)?);
        let plain = open_in(&self.key, nonce, aad, &mut buf[..])?;
        let arr: [u8; 32] = (&*plain).try_into().map_err(|_| VaultError::Corrupt)?;
        Ok(Zeroizing::new(arr))
    }
}

/// A KEK whose material is base64 of 32 bytes in an environment variable
/// (default `LIVERY_MASTER_KEY`).
pub struct EnvKek(AesKek);

impl EnvKek {
    pub fn load(id: &str, var: &str) -> Result<Self, VaultError> {
        let value = Zeroizing::new(std::env::var(var).map_err(|_| VaultError::KekMissing {
            id: id.to_owned(),
            detail: format!("environment variable {var} is not set"),
        })?);
        let material = decode_material(id, value.trim())?;
        Ok(Self(AesKek::new(id, &material[..])?))
    }
}

impl KeyEncryptionKey for EnvKek {
    fn id(&self) -> &str {
        &self.0.id
    }
    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.0.wrap(dek, aad)
    }
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, VaultError> {
        self.0.unwrap(wrapped, aad)
    }
}

/// A KEK read from a file holding base64 of 32 bytes. A file that group or
/// others may read is refused: the KEK would no longer be the operator's alone.
pub struct FileKek(AesKek);

impl FileKek {
    pub fn load(id: &str, path: &Path) -> Result<Self, VaultError> {
        let missing = |why: String| VaultError::KekMissing {
            id: id.to_owned(),
            detail: format!("{}: {why}", path.display()),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| missing(e.to_string()))?;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(VaultError::KekPermissions {
                    path: PathBuf::from(path),
                    mode: mode & 0o777,
                });
            }
        }
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| missing(e.to_string()))?);
        let material = decode_material(id, text.trim())?;
        Ok(Self(AesKek::new(id, &material[..])?))
    }
}

impl KeyEncryptionKey for FileKek {
    fn id(&self) -> &str {
        &self.0.id
    }
    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.0.wrap(dek, aad)
    }
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, VaultError> {
        self.0.unwrap(wrapped, aad)
    }
}

fn decode_material(id: &str, text: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| VaultError::KekMaterial {
            id: id.to_owned(),
            why: "it is not valid base64 (generate one with `livery vault keygen`)".into(),
        })?;
    if bytes.len() != 32 {
        return Err(VaultError::KekMaterial {
            id: id.to_owned(),
            why: format!("it decodes to {} bytes, not 32", bytes.len()),
        });
    }
    Ok(Zeroizing::new(bytes))
}

/// A new random KEK, base64-encoded (what `livery vault keygen` prints).
pub fn generate_kek() -> Result<String, VaultError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut bytes[..])
        .map_err(|_| VaultError::Random)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(&bytes[..]))
}

/// A fresh random data key.
pub fn generate_dek() -> Result<DataKey, VaultError> {
    let mut dek = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut dek[..])
        .map_err(|_| VaultError::Random)?;
    Ok(dek)
}

/// AES-256-GCM with a random nonce; returns nonce ‖ ciphertext ‖ tag.
pub(super) fn seal_with(
    key: &LessSafeKey,
    plain: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| VaultError::Random)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    out.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| VaultError::Corrupt)?;
    out.extend_from_slice(&body);
    body.iter_mut().for_each(|b| *b = 0);
    Ok(out)
}

/// Opens nonce ‖ ciphertext ‖ tag; fails on any change to the bytes or the AAD.
pub(super) fn open_with(
    key: &LessSafeKey,
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let (nonce, rest) = split_sealed(sealed)?;
    let mut buf = Zeroizing::new(rest.to_vec());
    let plain_len = open_in(key, nonce, aad, &mut buf[..])?.len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// The nonce and the ciphertext ‖ tag of a sealed value.
fn split_sealed(sealed: &[u8]) -> Result<(Nonce, &[u8]), VaultError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(VaultError::Corrupt);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Corrupt)?;
    Ok((nonce, rest))
}

/// Opens ciphertext ‖ tag in `buf` (a copy of it); returns the plaintext.
fn open_in<'b>(
    key: &LessSafeKey,
    nonce: Nonce,
    aad: &[u8],
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], VaultError> {
    key.open_in_place(nonce, Aad::from(aad), buf)
        .map_err(|_| VaultError::Unseal)
}

/// A DEK as an AEAD key.
pub(super) fn dek_key(dek: &DataKey) -> Result<LessSafeKey, VaultError> {
    UnboundKey::new(&AES_256_GCM, &dek[..])
        .map(LessSafeKey::new)
        .map_err(|_| VaultError::Corrupt)
}
