//! Normalising the authority a client addressed (Host header or HTTP/2
//! `:authority`) into a lookup key: port stripped, case folded, trailing dot removed.
//! Anything that is not a plausible host name yields `None`, never a guess.

use std::borrow::Cow;

/// Returns the normalised host name, or `None` if `raw` is not a valid authority.
/// Borrowed from `raw` when it needs no change but the port's removal (every
/// request resolves its Host through this).
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let raw = raw.trim();
    if raw.is_empty() || raw.contains('@') {
        return None;
    }
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: `[::1]` or `[::1]:8080`.
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        return Some(Cow::Owned(format!(
            "[{}]",
            rest[..end].to_ascii_lowercase()
        )));
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) => {
                if !valid_port(port) {
                    return None;
                }
                h
            }
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    // One pass: the allowed bytes, no empty label (a leading dot or two in a
    // row; `prev` starts as a dot), and whether any letter needs folding.
    let (mut prev, mut upper) = (b'.', false);
    for b in host.bytes() {
        match b {
            b'.' if prev == b'.' => return None,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            _ => return None,
        }
        prev = b;
    }
    Some(if upper {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn normalises() {
        assert_eq!(
            normalize_host("LocalHost:8080").as_deref(),
            Some("localhost")
        );
        assert_eq!(
            normalize_host("ai.Brand.com.").as_deref(),
            Some("ai.brand.com")
        );
        assert_eq!(
            normalize_host("ai.brand.com.:443").as_deref(),
            Some("ai.brand.com")
        );
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "a b",
            "user@host",
            "host:port",
            "a..b",
            ".a",
            "x:99999999",
            "h/x",
            "[::1",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
    }
}
