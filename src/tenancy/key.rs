//! Gateway keys presented by tenants: where they are read from, and their
//! SHA-256 digest, which is all the configuration ever stores.

use http::HeaderMap;
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

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({}…)", &hex::encode(&self.0[..4]))
    }
}

/// What the client presented as its gateway key.
pub enum PresentedKey<'a> {
    Missing,
    /// A credential header was sent but is unusable (wrong scheme, not UTF-8, empty).
    Malformed,
    Key(&'a str),
}

/// Reads the key from `Authorization: Bearer` (OpenAI SDKs), `api-key` (Azure SDKs)
/// or `x-api-key` (Anthropic SDKs), in that order.
pub fn presented_key(headers: &HeaderMap) -> PresentedKey<'_> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let Ok(s) = v.to_str() else {
            return PresentedKey::Malformed;
        };
        let s = s.trim();
        let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
        let rest = rest.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || rest.is_empty() {
            return PresentedKey::Malformed;
        }
        return PresentedKey::Key(rest);
    }
    for name in ["api-key", "x-api-key"] {
        if let Some(v) = headers.get(name) {
            return match v.to_str().map(str::trim) {
                Ok(s) if !s.is_empty() => PresentedKey::Key(s),
                _ => PresentedKey::Malformed,
            };
        }
    }
    PresentedKey::Missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_config_form() {
        let d = KeyDigest::of("sk-livery-demo");
        assert_eq!(KeyDigest::parse(&d.to_config_string()), Some(d));
        assert_eq!(KeyDigest::parse("sha256:abcd"), None);
        assert_eq!(KeyDigest::parse("md5:00"), None);
    }

    #[test]
    fn reads_each_sdk_header() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k3".parse().unwrap());
        assert!(matches!(presented_key(&h), PresentedKey::Key("k3")));
        h.insert("api-key", "k2".parse().unwrap());
        assert!(matches!(presented_key(&h), PresentedKey::Key("k2")));
        h.insert("authorization", "Bearer k1".parse().unwrap());
        assert!(matches!(presented_key(&h), PresentedKey::Key("k1")));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(presented_key(&h), PresentedKey::Malformed));
        assert!(matches!(
            presented_key(&HeaderMap::new()),
            PresentedKey::Missing
        ));
    }
}
