//! The plain listeners under `[tls]`: which peers are trusted proxies (IP
//! addresses or CIDR blocks), whether such a proxy says the client spoke HTTPS
//! (`X-Forwarded-Proto`, or `proto=` of the first `Forwarded` element), and the
//! HTTPS URL a `redirect` policy sends everyone else to.

use crate::tenancy::normalize_host;
use http::HeaderMap;
use std::net::IpAddr;

/// Trusted proxy networks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for e in entries {
            let bad = || format!("tls.trusted_proxies: `{e}` is not an IP address or CIDR block");
            let (ip, bits) = match e.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits.parse::<u8>().map_err(|_| bad())?)),
                None => (e.as_str(), None),
            };
            let ip: IpAddr = ip.trim().parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = bits.unwrap_or(max);
            if bits > max {
                return Err(bad());
            }
            nets.push((ip, bits));
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(net, bits)| match (net, peer) {
            (IpAddr::V4(n), IpAddr::V4(p)) => {
                prefix_eq(&n.octets(), &p.octets(), usize::from(*bits))
            }
            (IpAddr::V6(n), IpAddr::V6(p)) => {
                prefix_eq(&n.octets(), &p.octets(), usize::from(*bits))
            }
            _ => false,
        })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let full = bits / 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// True if the (trusted) proxy says the client's scheme was HTTPS.
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    if let Some(v) = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        // A chain of proxies appends; the first value is the client's.
        return v
            .split(',')
            .next()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    }
    if let Some(v) = headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        let first = v.split(',').next().unwrap_or_default();
        return first.split(';').any(|pair| {
            pair.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("proto")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
            })
        });
    }
    false
}

/// `https://HOST[:PORT]/path?query` for a request's host (port replaced by
/// `https_port` unless it is 443), or `None` if the host is unusable.
pub fn https_url(raw_host: &str, https_port: Option<u16>, path_and_query: &str) -> Option<String> {
    let host = normalize_host(raw_host)?;
    let port = match https_port {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Some(format!("https://{host}{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into(), "192.168.1.7".into()])
            .unwrap();
        assert!(t.contains("10.2.3.4".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("::ffff:192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy".into()]).is_err());
    }

    #[test]
    fn forwarded_proto() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", "https, http".parse().unwrap());
        assert!(forwarded_https(&h));
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            "for=1.2.3.4;proto=https, proto=http".parse().unwrap(),
        );
        assert!(forwarded_https(&h));
        let mut h = HeaderMap::new();
        h.insert("forwarded", "for=1.2.3.4;proto=http".parse().unwrap());
        assert!(!forwarded_https(&h));
        assert!(!forwarded_https(&HeaderMap::new()));
    }

    #[test]
    fn redirect_urls() {
        assert_eq!(
            https_url("ai.acme.test:8080", Some(8443), "/v1/models?x=1").as_deref(),
            Some("https://ai.acme.test:8443/v1/models?x=1")
        );
        assert_eq!(
            https_url("ai.acme.test", Some(443), "/").as_deref(),
            Some("https://ai.acme.test/")
        );
        assert_eq!(https_url("a b", None, "/"), None);
    }
}
