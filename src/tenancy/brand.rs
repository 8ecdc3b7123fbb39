//! A reseller's brand as its tenants meet it: the prefix of the keys the admin
//! API issues for it, the page a 401 sends a tenant to for its key, and the
//! names of the gateway's own response headers. Built and checked once per
//! snapshot from `[resellers.branding]`, so the request path reads prepared
//! names and never formats one. Without a brand, nothing a tenant sees names
//! a reseller, and only the default header prefix names the platform.

use crate::config::BrandingConfig;
use http::{HeaderName, HeaderValue};

/// Prefix of the tenant keys the admin API issues when a reseller sets none.
pub const DEFAULT_KEY_PREFIX: &str = "sk-";
/// Prefix of the gateway's own response headers when a reseller sets none.
pub const DEFAULT_HEADER_PREFIX: &str = "x-livery-";

#[derive(Debug, Clone)]
pub struct Brand {
    pub key_prefix: String,
    /// Where the reseller's tenants find their keys (an http(s) URL).
    pub keys_url: Option<String>,
    pub headers: BrandHeaders,
}

/// The platform's names, as constants: inserted into a response, a constant
/// name's hash folds at compile time (a name read from a brand is hashed,
/// and cloned, on every response).
pub const X_LIVERY_MODEL: HeaderName = HeaderName::from_static("x-livery-model");
pub const X_LIVERY_DOWNGRADED_FROM: HeaderName =
    HeaderName::from_static("x-livery-downgraded-from");
pub const X_LIVERY_ESTIMATED: HeaderName = HeaderName::from_static("x-livery-estimated");

/// The gateway's own response headers under the reseller's prefix.
#[derive(Debug, Clone)]
pub struct BrandHeaders {
    /// False for the platform's own names (then [`X_LIVERY_MODEL`] and its
    /// siblings are the names to insert).
    pub branded: bool,
    /// The tenant-facing model that served the request.
    pub model: HeaderName,
    /// The model asked for, when the plan downgraded it.
    pub downgraded_from: HeaderName,
    /// On a token count the gateway estimated rather than the provider counted.
    pub estimated: HeaderName,
    /// The three names, for `Access-Control-Expose-Headers`.
    pub exposed: HeaderValue,
}

/// [`BrandHeaders::exposed`] of the default brand, for answers made before a
/// reseller is known.
pub static DEFAULT_EXPOSED: HeaderValue =
    HeaderValue::from_static("x-livery-model, x-livery-downgraded-from, x-livery-estimated");

impl Default for Brand {
    fn default() -> Self {
        // Static names: cloning one onto a response copies no bytes.
        Self {
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            keys_url: None,
            headers: BrandHeaders {
                branded: false,
                model: X_LIVERY_MODEL,
                downgraded_from: X_LIVERY_DOWNGRADED_FROM,
                estimated: X_LIVERY_ESTIMATED,
                exposed: DEFAULT_EXPOSED.clone(),
            },
        }
    }
}

impl Brand {
    /// The brand `config` describes, or why it cannot be used.
    pub fn from_config(config: &BrandingConfig) -> Result<Self, String> {
        let mut brand = Self::default();
        if let Some(p) = &config.key_prefix {
            let ok = (1..=32).contains(&p.len())
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!(
                    "branding.key_prefix `{p}` must be 1-32 of [A-Za-z0-9_-]"
                ));
            }
            brand.key_prefix = p.clone();
        }
        if let Some(url) = &config.keys_url {
            let uri: Option<http::Uri> = url.parse().ok();
            let ok = url.len() <= 512
                && uri.as_ref().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("https" | "http")) && u.authority().is_some()
                });
            if !ok {
                return Err(format!(
                    "branding.keys_url `{url}` must be an http(s) URL of at most 512 bytes"
                ));
            }
            brand.keys_url = Some(url.clone());
        }
        if let Some(p) = &config.header_prefix {
            let ok = (2..=32).contains(&p.len())
                && p.ends_with('-')
                && !p.starts_with('-')
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(format!(
                    "branding.header_prefix `{p}` must be 2-32 of [a-z0-9-], ending in `-` (as `x-acme-`)"
                ));
            }
            let name = |suffix: &str| {
                HeaderName::from_bytes(format!("{p}{suffix}").as_bytes())
                    .map_err(|_| format!("branding.header_prefix `{p}` makes no header name"))
            };
            let headers = BrandHeaders {
                branded: true,
                model: name("model")?,
                downgraded_from: name("downgraded-from")?,
                estimated: name("estimated")?,
                exposed: HeaderValue::from_str(&format!(
                    "{p}model, {p}downgraded-from, {p}estimated"
                ))
                .map_err(|_| format!("branding.header_prefix `{p}` makes no header name"))?,
            };
            brand.headers = headers;
        }
        Ok(brand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branding(key: Option<&str>, url: Option<&str>, header: Option<&str>) -> BrandingConfig {
        BrandingConfig {
            key_prefix: key.map(str::to_owned),
            keys_url: url.map(str::to_owned),
            header_prefix: header.map(str::to_owned),
        }
    }

    #[test]
    fn default_brand_is_neutral_and_static() {
        let b = Brand::from_config(&BrandingConfig::default()).unwrap();
        assert_eq!(b.key_prefix, "sk-");
        assert_eq!(b.keys_url, None);
        assert_eq!(b.headers.model.as_str(), "x-livery-model");
        assert_eq!(
            b.headers.exposed,
            "x-livery-model, x-livery-downgraded-from, x-livery-estimated"
        );
    }

    #[test]
    fn a_brand_renames_every_header() {
        let b = Brand::from_config(&branding(
            Some("sk-acme-"),
            Some("https://acme.example/account/keys"),
            Some("x-acme-"),
        ))
        .unwrap();
        assert_eq!(b.key_prefix, "sk-acme-");
        assert_eq!(
            b.keys_url.as_deref(),
            Some("https://acme.example/account/keys")
        );
        assert_eq!(b.headers.model.as_str(), "x-acme-model");
        assert_eq!(b.headers.downgraded_from.as_str(), "x-acme-downgraded-from");
        assert_eq!(b.headers.estimated.as_str(), "x-acme-estimated");
        assert_eq!(
            b.headers.exposed,
            "x-acme-model, x-acme-downgraded-from, x-acme-estimated"
        );
    }

    #[test]
    fn bad_brands_are_refused_with_the_field() {
        for (cfg, field) in [
            (branding(Some(""), None, None), "key_prefix"),
            (branding(Some("sk acme"), None, None), "key_prefix"),
            (branding(Some(&"k".repeat(33)), None, None), "key_prefix"),
            (branding(None, Some("acme.example/keys"), None), "keys_url"),
            (
                branding(None, Some("ftp://acme.example/"), None),
                "keys_url",
            ),
            (
                branding(None, Some("https://acme.example/a b"), None),
                "keys_url",
            ),
            (branding(None, None, Some("x-acme")), "header_prefix"),
            (branding(None, None, Some("X-Acme-")), "header_prefix"),
            (branding(None, None, Some("x acme-")), "header_prefix"),
            (branding(None, None, Some("-")), "header_prefix"),
        ] {
            let err = Brand::from_config(&cfg).unwrap_err();
            assert!(err.contains(field), "{cfg:?}: {err}");
        }
    }
}
