//! Identifiers of requests and usage events: UUIDv7 (time-ordered, so logs and
//! ledgers sort by time), with the random part drawn from a per-thread PRNG
//! (`fastrand`, seeded once per thread from the OS) rather than a `getrandom(2)`
//! system call per identifier. Uniqueness is what they need, not secrecy.

use std::time::{SystemTime, UNIX_EPOCH};

/// The header that carries a request's id, to the client and to the provider.
/// A constant, not a `&str`: http copies a string key on every insert.
pub const REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A new UUIDv7.
pub fn uuid_v7() -> uuid::Uuid {
    uuid_v7_at(SystemTime::now())
}

/// A new UUIDv7 for the moment `t` (a clock read the caller shares with a
/// timestamp: each read is ~20 ns, and a request made four).
pub fn uuid_v7_at(t: SystemTime) -> uuid::Uuid {
    let millis = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// A request's id, checked once (1–128 characters from a conservative set)
/// and held as the header value it travels in: the answer, the upstream
/// request, the usage record and the log line share one buffer, where the id
/// as a `String` was copied into six allocations per request.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(http::HeaderValue);

impl RequestId {
    /// The client's own id if it is sane, else a fresh UUIDv7 for `now`.
    pub fn of_request(headers: &http::HeaderMap, now: SystemTime) -> Self {
        Self::of_header(headers.get(REQUEST_ID_HEADER), now)
    }

    /// The id in the client's `x-request-id` value if it is sane, else a
    /// fresh UUIDv7 for `now`.
    pub fn of_header(value: Option<&http::HeaderValue>, now: SystemTime) -> Self {
        value
            .and_then(|v| Self::from_text(v.as_bytes()))
            .unwrap_or_else(|| Self::fresh_at(now))
    }

    /// `text` as an id if every byte is from the id set. Copied: a slice of
    /// the client's header would hold hyper's read buffer for the request's
    /// whole life.
    pub fn from_text(text: &[u8]) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= 128
            && text
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        ok.then(|| Self::from_checked(text))
    }

    /// A fresh UUIDv7 for `now`.
    fn fresh_at(now: SystemTime) -> Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        Self::from_checked(uuid_v7_text_in(now, &mut text).as_bytes())
    }

    fn from_checked(text: &[u8]) -> Self {
        match http::HeaderValue::from_bytes(text) {
            Ok(v) => Self(v),
            // Unreachable: callers pass visible ASCII only.
            Err(_) => Self(http::HeaderValue::from_static("invalid")),
        }
    }

    pub fn as_str(&self) -> &str {
        // Visible ASCII by construction, so `to_str` cannot fail.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value: a shared reference, not a copy.
    pub fn header_value(&self) -> http::HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A fresh UUIDv7 for the moment `t` as text (lowercase, hyphenated) in one
/// exact allocation: `to_string` goes through `Display` into a growing
/// `String`, and every request makes one (its event's id).
pub fn uuid_v7_text_at(t: SystemTime) -> String {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid_v7_text_in(t, &mut text).to_owned()
}

/// A fresh UUIDv7 for the moment `t` as text in `buf` (on the caller's
/// stack; `uuid` writes it as `str`, so nothing checks it again).
fn uuid_v7_text_in(t: SystemTime, buf: &mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> &str {
    uuid_v7_at(t).hyphenated().encode_lower(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_unique_and_time_ordered() {
        let ids: Vec<_> = (0..10_000).map(|_| uuid_v7()).collect();
        assert!(ids.iter().all(|u| u.get_version_num() == 7));
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let first = ids[0].get_timestamp().unwrap().to_unix();
        let last = ids[ids.len() - 1].get_timestamp().unwrap().to_unix();
        assert!(last >= first);
    }

    #[test]
    fn a_request_id_is_the_clients_when_sane_and_fresh_otherwise() {
        let mut h = http::HeaderMap::new();
        h.insert(
            REQUEST_ID_HEADER,
            http::HeaderValue::from_static("abc-1.2:3_4"),
        );
        let id = RequestId::of_request(&h, SystemTime::now());
        assert_eq!(id.as_str(), "abc-1.2:3_4");
        assert_eq!(id.header_value(), "abc-1.2:3_4");
        assert_eq!(id.to_string(), "abc-1.2:3_4");
        for bad in ["", "a b", "a/b", "<script>", &"x".repeat(129)] {
            h.insert(REQUEST_ID_HEADER, http::HeaderValue::from_str(bad).unwrap());
            let id = RequestId::of_request(&h, SystemTime::now());
            let parsed = uuid::Uuid::parse_str(id.as_str()).unwrap();
            assert_eq!(parsed.get_version_num(), 7, "{bad:?}");
        }
        h.insert(
            REQUEST_ID_HEADER,
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_ne!(
            RequestId::of_request(&h, SystemTime::now()).as_str(),
            "café"
        );
        assert_eq!(
            RequestId::of_request(&http::HeaderMap::new(), SystemTime::now())
                .as_str()
                .len(),
            36
        );
        assert_eq!(
            serde_json::to_string(&RequestId::from_text(b"r-1").unwrap()).unwrap(),
            "\"r-1\""
        );
    }

    #[test]
    fn the_text_form_is_uuids_own() {
        let text = uuid_v7_text_at(SystemTime::now());
        let parsed = uuid::Uuid::parse_str(&text).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(text, parsed.to_string());
    }
}
