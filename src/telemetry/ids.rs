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
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// A fresh UUIDv7 as text (lowercase, hyphenated) in one exact allocation:
/// `to_string` goes through `Display` into a growing `String`, and every
/// request makes two (its id, unless the client sent one, and its event's).
pub fn uuid_v7_text() -> String {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid_v7().hyphenated().encode_lower(&mut text).to_owned()
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
    fn the_text_form_is_uuids_own() {
        let text = uuid_v7_text();
        let parsed = uuid::Uuid::parse_str(&text).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(text, parsed.to_string());
    }
}
