//! Gateway keys presented by tenants: where they are read from, and their
//! SHA-256 digest, which is all the configuration ever stores.

use http::{HeaderMap, HeaderName, HeaderValue};
use ring::digest;

/// The SHA-256 digest of a tenant's gateway key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        let d = digest::digest(&digest::SHA256, key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Parses `sha256:<64 hex chars>` as written in gateway.toml.
    pub fn parse(text: &str) -> Option<Self> {
        let hex_part = text.strip_prefix("sha256:")?;
        let bytes = hex::decode(hex_part).ok()?;
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    pub fn to_config_string(self) -> String {
        format!("sha256:{}", hex::encode(self.0))
    }
}

/// A key's public id, `key_` and the first 12 hex digits of its digest: what
/// the admin API lists a key as, and what a usage record says it was served
/// under. It tells keys apart and gives nothing of the key away.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 16]);

impl KeyId {
    pub fn of(digest: &KeyDigest) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"key_000000000000";
        for (i, b) in digest.0[..6].iter().enumerate() {
            text[4 + 2 * i] = HEX[usize::from(b >> 4)];
            text[5 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it (above).
        std::str::from_utf8(&self.0).unwrap_or("key_")
    }

    /// The id's ASCII text, for writers that need no `str` (`from_utf8`'s
    /// check of these 16 bytes cost 124 instructions a request).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({}…)", &hex::encode(&self.0[..4]))
    }
}

/// What the client presented as its gateway key.
pub enum PresentedKey<'a> {
    Missing,
    /// A credential header was sent but is unusable (wrong scheme, not UTF-8,
    /// empty), or sent twice.
    Malformed,
    Key(&'a str),
}

const API_KEY: HeaderName = HeaderName::from_static("api-key");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Reads the key from `Authorization: Bearer` (OpenAI SDKs), `api-key` (Azure SDKs)
/// or `x-api-key` (Anthropic SDKs): the first of them present, in that order,
/// and no other (an unusable one is not rescued by the next). That header sent
/// twice is refused rather than read by an order the client cannot know: a
/// proxy in front that adds its own `Authorization` must not decide whose key
/// is used.
pub fn presented_key(headers: &HeaderMap) -> PresentedKey<'_> {
    for name in [http::header::AUTHORIZATION, API_KEY, X_API_KEY] {
        let mut values = headers.get_all(&name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return PresentedKey::Malformed;
        }
        return key_in(&name, value).map_or(PresentedKey::Malformed, PresentedKey::Key);
    }
    PresentedKey::Missing
}

/// The key in one credential header's value, if it is usable.
fn key_in<'a>(name: &HeaderName, value: &'a HeaderValue) -> Option<&'a str> {
    let s = value.to_str().ok()?.trim();
    let key = if name == http::header::AUTHORIZATION {
        let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        rest.trim()
    } else {
        s
    };
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_is_the_digests_first_twelve_hex_digits() {
        let d = KeyDigest::of("sk-FAKE-key");
        let hex = hex::encode(d.0);
        assert_eq!(KeyId::of(&d).as_str(), format!("key_{}", &hex[..12]));
    }

    #[test]
    fn digest_round_trips_through_config_form() {
        let d = KeyDigest::of("sk-livery-demo");
        assert_eq!(KeyDigest::parse(&d.to_config_string()), Some(d));
        assert_eq!(KeyDigest::parse("sha256:abcd"), None);
        assert_eq!(KeyDigest::parse("md5:00"), None);
    }

    #[test]
    fn reads_each_sdk_header() {
        for name in ["x-api-key", "api-key"] {
            let mut h = HeaderMap::new();
            h.insert(name, " k1 ".parse().unwrap());
            assert!(
                matches!(presented_key(&h), PresentedKey::Key("k1")),
                "{name}"
            );
            h.insert(name, "".parse().unwrap());
            assert!(
                matches!(presented_key(&h), PresentedKey::Malformed),
                "{name}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer  k1".parse().unwrap());
        assert!(matches!(presented_key(&h), PresentedKey::Key("k1")));
        // Authorization takes precedence, whatever the others say.
        h.insert("api-key", "k2".parse().unwrap());
        h.insert("x-api-key", "k3".parse().unwrap());
        assert!(matches!(presented_key(&h), PresentedKey::Key("k1")));
        for bad in ["Basic abc", "Bearer", "Bearer  "] {
            h.insert("authorization", bad.parse().unwrap());
            assert!(
                matches!(presented_key(&h), PresentedKey::Malformed),
                "{bad}"
            );
        }
        assert!(matches!(
            presented_key(&HeaderMap::new()),
            PresentedKey::Missing
        ));
    }

    /// `key` as header `name` carries it.
    fn credential(name: &str, key: &str) -> HeaderValue {
        let text = if name == "authorization" {
            format!("Bearer {key}")
        } else {
            key.to_owned()
        };
        text.parse().unwrap()
    }

    /// The credential header sent twice is refused, even with the same key
    /// twice: which one is read is not the client's to know.
    #[test]
    fn a_credential_header_sent_twice_is_refused() {
        for name in ["authorization", "api-key", "x-api-key"] {
            for second in ["k1", "k2"] {
                let mut h = HeaderMap::new();
                h.append(name, credential(name, "k1"));
                h.append(name, credential(name, second));
                let refused = matches!(presented_key(&h), PresentedKey::Malformed);
                assert!(refused, "{name} twice");
            }
        }
    }
}
