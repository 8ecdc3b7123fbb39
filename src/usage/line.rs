//! Reads back, without serde, the event lines this gateway writes
//! ([`UsageRecord::write_json`](super::UsageRecord::write_json)): the keys in
//! their fixed order, every string free of escapes. The shipper parses every
//! event it delivers, and serde's derived reader (matching each of 26 keys by
//! name, skipping `ended_at` and the attempts value by value) cost about 12k
//! instructions per event, a twelfth of a request.
//!
//! Anything else (keys in another order or added by a newer gateway, a
//! backslash anywhere, whitespace, a value of an unexpected shape) returns
//! `None`, and [`LedgerEvent::from_line`] reads the line with serde as before:
//! this path only ever accepts lines serde reads the same way. (One nuance: a
//! latency with more than 15 significant digits is read to the nearest double,
//! where serde_json's default float parser may land one bit away; no sink reads
//! latencies from the parsed event, only from its raw line.)

use super::event::LedgerEvent;
use std::borrow::Cow;

/// The event in `raw`, if `raw` is exactly what `write_json` writes.
pub(super) fn parse(raw: &str) -> Option<LedgerEvent<'_>> {
    // Without a backslash no string holds an escape, so each ends at the next
    // quote and is borrowed as it stands; without a control character none
    // holds one raw (JSON forbids it), and there is no whitespace between
    // tokens.
    if has_escape_or_control(raw.as_bytes()) {
        return None;
    }
    let mut c = Cursor { s: raw, at: 0 };
    c.lit("{\"v\":")?;
    let v = u32::try_from(c.uint()?).ok()?;
    let event_id = c.key("event_id")?.string()?;
    let ts = c.key("ts")?.string()?;
    c.key("ended_at")?.string()?;
    let request_id = c.key("request_id")?.string()?;
    let reseller = c.key("reseller")?.string()?;
    let tenant = c.key("tenant")?.string()?;
    // Absent from lines written before records named their key.
    let key_id = c.optional_key("key_id", Cursor::string)?;
    let endpoint = c.key("endpoint")?.string()?;
    let requested_model = c.key("requested_model")?.nullable(Cursor::string)?;
    let served_model = c.key("served_model")?.nullable(Cursor::string)?;
    let provider = c.key("provider")?.nullable(Cursor::string)?;
    let key_owner = c.key("key_owner")?.nullable(Cursor::string)?;
    let status = u16::try_from(c.key("status")?.uint()?).ok()?;
    let outcome = c.key("outcome")?.nullable(Cursor::string)?;
    let error_code = c.key("error_code")?.nullable(Cursor::string)?;
    let prompt_tokens = c.key("prompt_tokens")?.nullable(Cursor::uint)?;
    let completion_tokens = c.key("completion_tokens")?.nullable(Cursor::uint)?;
    let cached_tokens = c.key("cached_tokens")?.nullable(Cursor::uint)?;
    // Absent from the lines of gateways that did not record cache writes
    // yet, as serde reads them (`None`): such lines stay on this path.
    let cache_write_tokens = c.optional_key("cache_write_tokens", Cursor::uint)?;
    let cache_write_1h_tokens = c.optional_key("cache_write_1h_tokens", Cursor::uint)?;
    let total_tokens = c.key("total_tokens")?.nullable(Cursor::uint)?;
    let estimated = c.key("estimated")?.boolean()?;
    let stream = c.key("stream")?.boolean()?;
    let client_disconnected = c.key("client_disconnected")?.boolean()?;
    let latency_ms = c
        .key("latency_ms")?
        .nullable(Cursor::float)?
        .unwrap_or_default();
    let ttfb_ms = c.key("ttfb_ms")?.nullable(Cursor::float)?;
    c.lit(",\"attempts\":[")?;
    let mut attempts = 0;
    if !c.eat(b']') {
        loop {
            c.lit("{\"provider\":")?;
            c.string()?;
            c.key("model")?.string()?;
            c.key("outcome")?.string()?;
            c.key("status")?.nullable(Cursor::uint)?;
            c.key("latency_ms")?.nullable(Cursor::float)?;
            c.lit("}")?;
            attempts += 1;
            if c.eat(b']') {
                break;
            }
            c.lit(",")?;
        }
    }
    let cost_micros = c.key("cost_micros")?.nullable(Cursor::uint)?;
    c.lit("}")?;
    if c.at != raw.len() {
        return None;
    }
    Some(LedgerEvent {
        v,
        event_id: Cow::Borrowed(event_id),
        ts: Cow::Borrowed(ts),
        request_id: Cow::Borrowed(request_id),
        reseller: Cow::Borrowed(reseller),
        tenant: Cow::Borrowed(tenant),
        key_id: key_id.map(Cow::Borrowed),
        endpoint: Cow::Borrowed(endpoint),
        requested_model: requested_model.map(Cow::Borrowed),
        served_model: served_model.map(Cow::Borrowed),
        provider: provider.map(Cow::Borrowed),
        key_owner: key_owner.map(Cow::Borrowed),
        status,
        outcome: outcome.map(Cow::Borrowed),
        error_code: error_code.map(Cow::Borrowed),
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        cache_write_tokens,
        cache_write_1h_tokens,
        total_tokens,
        estimated,
        stream,
        client_disconnected,
        latency_ms,
        ttfb_ms,
        attempts: vec![serde::de::IgnoredAny; attempts],
        cost_micros,
        raw,
    })
}

struct Cursor<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.s.as_bytes()[self.at..]
    }

    #[inline(always)]
    fn lit(&mut self, lit: &str) -> Option<()> {
        self.rest()
            .starts_with(lit.as_bytes())
            .then(|| self.at += lit.len())
    }

    #[inline(always)]
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.rest().first() == Some(&b);
        if hit {
            self.at += 1;
        }
        hit
    }

    /// `,"name":`
    #[inline(always)]
    fn key(&mut self, name: &str) -> Option<&mut Self> {
        let rest = self.rest();
        let n = name.len();
        let hit = rest.len() >= n + 4
            && rest[..2] == *b",\""
            && rest[2..2 + n] == *name.as_bytes()
            && rest[2 + n..4 + n] == *b"\":";
        if !hit {
            return None;
        }
        self.at += n + 4;
        Some(self)
    }

    /// `,"name":` and a nullable value of `read`, or nothing at all: `None`
    /// either way when absent or `null`.
    #[inline(always)]
    fn optional_key<T>(
        &mut self,
        name: &str,
        read: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.key(name) {
            Some(c) => c.nullable(read),
            None => Some(None),
        }
    }

    /// A string without escapes or control characters (the caller made
    /// sure the line holds none).
    fn string(&mut self) -> Option<&'a str> {
        self.lit("\"")?;
        let len = memchr::memchr(b'"', self.rest())?;
        let start = self.at;
        self.at += len + 1;
        Some(&self.s[start..start + len])
    }

    /// `null`, or what `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.lit("null").is_some() {
            return Some(None);
        }
        read(self).map(Some)
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.lit("true").is_some() {
            Some(true)
        } else {
            self.lit("false").map(|()| false)
        }
    }

    /// A non-negative integer as JSON writes it (no leading zero, no sign,
    /// no fraction), within `u64`.
    fn uint(&mut self) -> Option<u64> {
        let digits = digits(self.rest());
        let text = &self.s[self.at..self.at + digits];
        if digits == 0 || (digits > 1 && text.starts_with('0')) {
            return None;
        }
        // What follows must end the number (`1.5` or `1e3` is not a u64).
        if matches!(self.rest().get(digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.at += digits;
        text.parse().ok()
    }

    /// A finite number in JSON's grammar:
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn float(&mut self) -> Option<f64> {
        let b = self.rest();
        let mut i = usize::from(b.first() == Some(&b'-'));
        let int = digits(&b[i..]);
        if int == 0 || (int > 1 && b[i] == b'0') {
            return None;
        }
        i += int;
        if b.get(i) == Some(&b'.') {
            let frac = digits(&b[i + 1..]);
            if frac == 0 {
                return None;
            }
            i += 1 + frac;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp = digits(&b[i..]);
            if exp == 0 {
                return None;
            }
            i += exp;
        }
        let value: f64 = self.s[self.at..self.at + i].parse().ok()?;
        self.at += i;
        value.is_finite().then_some(value)
    }
}

/// Whether `b` holds a backslash or a control character (below 0x20), eight
/// bytes at a time: the byte-by-byte fold did not vectorise and cost about 2.7
/// instructions a byte, 2,000 an event (callgrind).
fn has_escape_or_control(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte's high bit in the result is set where the byte is below `n`
    // (`n` <= 0x80), or zero (the classic "has less than" and "has zero").
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGHS;
    let words = b.chunks_exact(8);
    let tail = words.remainder();
    let mut hit = 0u64;
    for w in words {
        // Every chunk is eight bytes, so the default is never taken.
        let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
        hit |= below(w, 0x20) | below(w ^ (ONES * u64::from(b'\\')), 1);
    }
    hit != 0 || tail.iter().any(|&c| c < 0x20 || c == b'\\')
}

/// How many ASCII digits `b` starts with.
fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|b| b.is_ascii_digit()).count()
}

#[cfg(test)]
mod tests {
    use super::super::event::tests::record;
    use super::super::event::{AttemptRecord, Outcome, UsageRecord};
    use super::*;

    fn line(r: &UsageRecord) -> String {
        let mut out = Vec::new();
        r.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn serde_reads(raw: &str) -> Option<LedgerEvent<'_>> {
        let mut ev: LedgerEvent = serde_json::from_str(raw).ok()?;
        ev.raw = raw;
        Some(ev)
    }

    /// The word-at-a-time check agrees with the byte-by-byte one for every
    /// byte value at every place (in a word, across words, in the tail).
    #[test]
    fn the_escape_check_finds_every_backslash_and_control_character() {
        for len in [1usize, 7, 8, 9, 23, 40] {
            for at in 0..len {
                for value in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    b[at] = value;
                    let expected = value < 0x20 || value == b'\\';
                    assert_eq!(
                        has_escape_or_control(&b),
                        expected,
                        "byte {value:#04x} at {at} of {len}"
                    );
                }
            }
        }
        // Bytes just around the bounds (0x1f/0x20, 0x5b/0x5c/0x5d, 0x7f/0x80
        // and 0xff next to each other), where a borrow between bytes of
        // one word could hide one or invent one.
        assert!(!has_escape_or_control(b" [][]\x7f\xffaaaa ]]  ".as_slice()));
        assert!(has_escape_or_control(b"\xff\x1f\x80\x20aaaa".as_slice()));
        assert!(has_escape_or_control(b"\xff\x80\x7f[\\]aaa".as_slice()));
        assert!(!has_escape_or_control(b""));
    }

    /// Records of every shape the request path writes: each line is read by
    /// this path (not left to serde) and to the same event serde reads.
    #[test]
    fn what_write_json_writes_reads_back_as_serde_reads_it() {
        let mut variants = vec![record()];
        let mut r = record();
        r.served_model = Some("gpt-4o-2024-08-06".into());
        r.key_owner = None;
        r.outcome = Outcome::UpstreamError;
        r.status = 503;
        r.error_code = Some("upstream_unavailable".into());
        r.prompt_tokens = None;
        r.completion_tokens = Some(0);
        r.total_tokens = None;
        r.cached_tokens = Some(u64::MAX);
        r.cache_write_tokens = Some(418);
        r.cache_write_1h_tokens = Some(0);
        r.estimated = true;
        r.stream = false;
        r.client_disconnected = true;
        r.latency_ms = f64::NAN;
        r.ttfb_ms = None;
        r.cost_micros = None;
        // As written before records named the key.
        r.key_id = None;
        r.attempts = vec![
            AttemptRecord {
                provider: "openai".into(),
                model: "gpt-4o".into(),
                outcome: "rate_limited",
                status: Some(429),
                latency_ms: 3.25,
            },
            AttemptRecord {
                provider: "azure".into(),
                model: "m".into(),
                outcome: "timeout",
                status: None,
                latency_ms: 1e-7,
            },
        ];
        variants.push(r);
        let mut r = record();
        r.latency_ms = 1e21;
        r.ttfb_ms = Some(-0.5);
        r.tenant = "clínica dental 東京".into();
        r.attempts = vec![AttemptRecord {
            provider: "p".into(),
            model: "m".into(),
            outcome: "ok",
            status: Some(200),
            latency_ms: 0.0,
        }];
        variants.push(r);
        for r in &variants {
            let raw = line(r);
            let fast = parse(&raw).unwrap_or_else(|| panic!("not read: {raw}"));
            assert_eq!(Some(&fast), serde_reads(&raw).as_ref(), "{raw}");
            assert_eq!(fast.raw, raw);
            assert!(matches!(fast.event_id, Cow::Borrowed(_)));
        }
    }

    /// A line spooled by a gateway that did not record cache writes (no
    /// such keys at all) is still read here, as serde reads it: no cache
    /// writes. So is one with only the total of its writes.
    #[test]
    fn a_line_written_before_cache_writes_were_recorded_reads_back() {
        let mut r = record();
        r.cache_write_tokens = Some(418);
        r.cache_write_1h_tokens = Some(18);
        let new = line(&r);
        let fields = ",\"cache_write_tokens\":418,\"cache_write_1h_tokens\":18";
        assert!(new.contains(fields), "{new}");
        let ev = parse(&new).unwrap();
        assert_eq!(
            (ev.cache_write_tokens, ev.cache_write_1h_tokens),
            (Some(418), Some(18))
        );
        let old = new.replacen(fields, "", 1);
        let only_total = new.replacen(",\"cache_write_1h_tokens\":18", "", 1);
        for (raw, want) in [(&old, None), (&only_total, Some(418))] {
            let fast = parse(raw).unwrap_or_else(|| panic!("not read: {raw}"));
            assert_eq!(Some(&fast), serde_reads(raw).as_ref(), "{raw}");
            assert_eq!(fast.cache_write_tokens, want, "{raw}");
            assert_eq!(fast.cache_write_1h_tokens, None, "{raw}");
            assert_eq!(fast.total_tokens, Some(21), "{raw}");
        }
    }

    /// Lines this path must leave to serde: it accepts nothing serde would
    /// read differently or refuse.
    #[test]
    fn other_lines_are_left_to_serde() {
        let good = line(&record());
        let mut with_quote = record();
        with_quote.requested_model = Some("we\"ird".into());
        let mut with_tab = record();
        with_tab.tenant = "den\ttal".into();
        let cases = [
            // Escaped strings (serde unescapes them).
            line(&with_quote),
            line(&with_tab),
            // A newer gateway's extra field, keys in another order, spaces.
            good.replacen("{\"v\":1,", "{\"v\":1,\"region\":\"eu\",", 1),
            good.replacen(
                "\"reseller\":\"acme\",\"tenant\":\"dental\"",
                "\"tenant\":\"dental\",\"reseller\":\"acme\"",
                1,
            ),
            good.replacen(",\"tenant\":", ", \"tenant\":", 1),
            format!("{good} "),
            // Numbers JSON does not allow, or that are not what the field holds.
            good.replacen("\"prompt_tokens\":9", "\"prompt_tokens\":09", 1),
            good.replacen("\"prompt_tokens\":9", "\"prompt_tokens\":9.0", 1),
            good.replacen("\"prompt_tokens\":9", "\"prompt_tokens\":-9", 1),
            good.replacen("\"status\":200", "\"status\":70000", 1),
            good.replacen("\"latency_ms\":12.5", "\"latency_ms\":.5", 1),
            good.replacen("\"latency_ms\":12.5", "\"latency_ms\":1e999", 1),
            good.replacen("\"latency_ms\":12.5", "\"latency_ms\":1.", 1),
            // A raw control character, a cut-off line, a wrong type.
            good.replacen("dental", "den\ttal", 1),
            good[..good.len() - 1].to_owned(),
            good.replacen("\"stream\":true", "\"stream\":1", 1),
        ];
        for raw in &cases {
            assert!(parse(raw).is_none(), "{raw}");
        }
        // The ones serde does read still come back whole from `from_line`.
        for raw in &cases[..6] {
            let ev = LedgerEvent::from_line(raw.as_bytes()).unwrap();
            assert_eq!(Some(ev), serde_reads(raw), "{raw}");
        }
    }
}
