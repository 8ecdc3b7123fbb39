//! The RFC 3339 timestamps of usage events (`ts`, `ended_at`): UTC, the
//! fraction of a second with its trailing zeros trimmed (none when zero), the
//! same text as `time`'s `Rfc3339` format. Written out by hand because every
//! request writes two, and `time`'s formatting engine costs several times
//! what the digits do.

use std::time::{SystemTime, UNIX_EPOCH};
use time::format_description::well_known::Rfc3339;

/// `t` in UTC as RFC 3339.
pub fn rfc3339(t: SystemTime) -> String {
    let Ok(since) = t.duration_since(UNIX_EPOCH) else {
        // A clock before 1970: rare enough for the general formatter.
        return general(t);
    };
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    if year > 9999 {
        return general(t);
    }
    let of_day = secs % 86_400;
    let mut out = String::with_capacity(30);
    push_digits(&mut out, year, 4);
    out.push('-');
    push_digits(&mut out, month, 2);
    out.push('-');
    push_digits(&mut out, day, 2);
    out.push('T');
    push_digits(&mut out, of_day / 3600, 2);
    out.push(':');
    push_digits(&mut out, of_day / 60 % 60, 2);
    out.push(':');
    push_digits(&mut out, of_day % 60, 2);
    let mut nanos = u64::from(since.subsec_nanos());
    if nanos != 0 {
        let mut width = 9;
        while nanos % 10 == 0 {
            nanos /= 10;
            width -= 1;
        }
        out.push('.');
        push_digits(&mut out, nanos, width);
    }
    out.push('Z');
    out
}

fn general(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `value` in decimal, zero-padded to `width` digits (it has no more).
fn push_digits(out: &mut String, mut value: u64, width: usize) {
    let mut digits = [b'0'; 9];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
    for &d in &digits[..width] {
        out.push(char::from(d));
    }
}

/// (year, month, day) of a count of days since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_what_the_time_crate_writes() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            state >> 11
        };
        // Every day boundary and leap rule somewhere in here: 1970 to 9999.
        let max_secs = 253_402_300_799; // 9999-12-31T23:59:59
        let nanos = [
            0,
            1,
            5,
            10,
            100,
            120_000_000,
            123_456_789,
            500_000_000,
            999_999_999,
        ];
        let mut cases: Vec<(u64, u32)> = vec![
            (0, 0),
            (951_782_400, 0),    // 2000-02-29
            (4_107_542_400, 7),  // 2100-03-01
            (1_733_356_800, 40), // 2024-12-05
            (max_secs, 999_999_999),
        ];
        for i in 0..20_000 {
            cases.push((next() % (max_secs + 1), nanos[i % nanos.len()]));
            cases.push((next() % (max_secs + 1), (next() % 1_000_000_000) as u32));
        }
        for (secs, nanos) in cases {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(rfc3339(t), general(t), "{secs}.{nanos:09}");
        }
        // Outside the fast path's range, the general formatter answers.
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(rfc3339(before), "1969-12-31T23:59:58.5Z");
    }
}
