//! Reads `usage` and `model` out of a plain (non-streamed) OpenAI-style answer
//! in one pass over its bytes, without serde. Every JSON answer is read for its
//! usage, and serde's derived reader (its visitor machinery for each skipped
//! token of a pretty-printed ~1 KB answer) cost about 10k instructions per
//! request, 7% of a request's.
//!
//! The scan checks the whole body's structure as it goes (strings, numbers,
//! literals, nesting, nothing after the top-level object) and returns `None`
//! for anything it does not read exactly as serde does: a key or model name
//! with an escape or a non-ASCII byte, a repeated `usage` or `model`, a value of an unexpected type, a negative or
//! oversized count, deep nesting, invalid JSON. The caller then reads the body
//! with serde as before, so this path only ever accepts answers serde reads
//! the same way (a test compares the two over samples and mutations of them).

use super::record::TokenUsage;

/// What an answer reports about itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AnswerFacts<'a> {
    /// `usage`, when it is an object (`null` or absent: `None`).
    pub usage: Option<TokenUsage>,
    /// `model`, when it is a string without escapes.
    pub model: Option<&'a str>,
}

/// Deeper nesting is left to serde (whose own limit is 128).
const MAX_DEPTH: usize = 100;

/// The answer's usage and model, or `None` to read it with serde instead.
pub fn scan(body: &[u8]) -> Option<AnswerFacts<'_>> {
    let mut s = Scanner { b: body, at: 0 };
    let mut facts = AnswerFacts::default();
    let (mut saw_usage, mut saw_model) = (false, false);
    s.ws();
    s.expect(b'{')?;
    s.members(|s, key| {
        match key {
            b"usage" if !saw_usage => {
                saw_usage = true;
                facts.usage = s.usage()?;
            }
            b"model" if !saw_model => {
                saw_model = true;
                facts.model = if s.literal(b"null") {
                    None
                } else {
                    // A key-like string is ASCII, so whole characters.
                    let (start, end) = s.plain_string()?;
                    Some(std::str::from_utf8(&body[start..end]).ok()?)
                };
            }
            // serde's derived reader refuses a repeated field.
            b"usage" | b"model" => return None,
            _ => s.value(1)?,
        }
        Some(())
    })?;
    s.ws();
    (s.at == s.b.len()).then_some(facts)
}

struct Scanner<'a> {
    b: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    /// Skips whitespace: a pretty-printed answer is mostly indentation, so
    /// runs of spaces are skipped eight bytes at a time.
    fn ws(&mut self) {
        loop {
            if let Some(word) = word_at(self.b, self.at) {
                let not_space = word ^ (ONES * u64::from(b' '));
                if not_space == 0 {
                    self.at += 8;
                    continue;
                }
                self.at += first_byte(not_space);
            }
            match self.peek() {
                Some(b' ' | b'\n' | b'\r' | b'\t') => self.at += 1,
                _ => return,
            }
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, lit: &[u8]) -> bool {
        let found = self
            .b
            .get(self.at..)
            .is_some_and(|rest| rest.starts_with(lit));
        if found {
            self.at += lit.len();
        }
        found
    }

    /// An object's members after its `{`, through its `}`: `each` gets the raw
    /// bytes of each key (which must be free of escapes) with the scanner at
    /// the member's value, and must consume the value.
    fn members(&mut self, mut each: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let (start, end) = self.plain_string()?;
            let b = self.b;
            self.ws();
            self.expect(b':')?;
            self.ws();
            each(self, &b[start..end])?;
            if self.closes(b'}')? {
                return Some(());
            }
        }
    }

    /// After a member or an element: `true` at the container's `close`,
    /// `false` at a comma (and past the whitespace after it).
    fn closes(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let next = self.peek()?;
        self.at += 1;
        if next == close {
            return Some(true);
        }
        (next == b',').then(|| self.ws()).map(|()| false)
    }

    /// An ASCII string without escapes (a key, a model name): the range of
    /// its contents. Keys are compared as bytes and serde checks the UTF-8 of
    /// the keys it reads, so anything else is left to it.
    fn plain_string(&mut self) -> Option<(usize, usize)> {
        self.expect(b'"')?;
        let start = self.at;
        self.at = string_stop(self.b, start, true)?;
        self.expect(b'"')?;
        Some((start, self.at - 1))
    }

    /// Any string, escapes checked as JSON defines them.
    fn string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        loop {
            self.at = string_stop(self.b, self.at, false)?;
            match *self.b.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        // Four hex digits. A skipped string's surrogates are
                        // not paired, as serde does not pair them either.
                        b'u' => {
                            let hex = self.b.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let n = self.b[self.at..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        self.at += n;
        n
    }

    /// A number as JSON's grammar has it; `true` when it is a plain integer
    /// (no sign, fraction or exponent).
    fn number(&mut self) -> Option<bool> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let first = self.peek()?;
        let int_digits = self.digits();
        if int_digits == 0 || (first == b'0' && int_digits > 1) {
            return None;
        }
        let mut plain = !negative;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
            plain = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            plain = false;
        }
        Some(plain)
    }

    /// Skips one value of any type, checking its structure.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => {
                self.at += 1;
                let depth = deeper(depth)?;
                self.members(|s, _| s.value(depth))
            }
            b'[' => {
                self.at += 1;
                let depth = deeper(depth)?;
                self.ws();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.value(depth)?;
                    if self.closes(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.literal(b"null").then_some(()),
            _ => self.number().map(|_| ()),
        }
    }

    /// A token count: a non-negative integer is `Some`; any other value is
    /// read past and counts as absent (as `LenientCount` has it). A negative
    /// integer or one beyond `u64` is left to serde.
    fn count(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'0'..=b'9' => {
                let start = self.at;
                if !self.number()? {
                    return Some(None);
                }
                // Plain digits, checked by `number`; beyond `u64`, `None`.
                self.b[start..self.at]
                    .iter()
                    .try_fold(0u64, |n, d| {
                        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                    })
                    .map(Some)
            }
            b'-' => None,
            _ => self.value(2).map(|()| None),
        }
    }

    /// The `usage` member's value: `null` or an object of counts.
    fn usage(&mut self) -> Option<Option<TokenUsage>> {
        if self.literal(b"null") {
            return Some(None);
        }
        self.expect(b'{')?;
        let mut u = TokenUsage::default();
        let mut seen = [false; 4];
        let mut once = |i: usize| (!std::mem::replace(&mut seen[i], true)).then_some(());
        self.members(|s, key| {
            let (i, slot, read): (usize, &mut Option<u64>, fn(&mut Self) -> _) = match key {
                // The Responses API's names, as serde's aliases read them.
                b"prompt_tokens" | b"input_tokens" => (0, &mut u.prompt, Self::count),
                b"completion_tokens" | b"output_tokens" => (1, &mut u.completion, Self::count),
                b"total_tokens" => (2, &mut u.total, Self::count),
                b"prompt_tokens_details" | b"input_tokens_details" => {
                    once(3)?;
                    (u.cached, u.cache_write) = s.details()?;
                    return Some(());
                }
                _ => return s.value(2),
            };
            once(i)?;
            *slot = read(s)?;
            Some(())
        })?;
        Some(Some(u))
    }

    /// `prompt_tokens_details`: `null` or an object; its `cached_tokens`
    /// and `cache_write_tokens`.
    fn details(&mut self) -> Option<(Option<u64>, Option<u64>)> {
        if self.literal(b"null") {
            return Some((None, None));
        }
        self.expect(b'{')?;
        let (mut cached, mut written) = (None, None);
        let mut seen = [false; 2];
        self.members(|s, key| {
            let (i, slot) = match key {
                b"cached_tokens" => (0, &mut cached),
                b"cache_write_tokens" => (1, &mut written),
                _ => return s.value(3),
            };
            // serde's derived reader refuses a repeated field.
            if std::mem::replace(&mut seen[i], true) {
                return None;
            }
            *slot = s.count()?;
            Some(())
        })?;
        Some((cached, written))
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The eight bytes at `at`, as a little-endian word (byte `at` lowest).
fn word_at(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// The index of the lowest byte of `w` that is not zero (`w` is not zero).
fn first_byte(w: u64) -> usize {
    (w.trailing_zeros() / 8) as usize
}

/// High bit set in each byte of `w` that is zero, exact for the lowest such
/// byte (a borrow may mark bytes above it, never below).
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGH
}

/// Where the run of plain string content from `at` ends: the first quote,
/// backslash or control character (or, with `stop_at_non_ascii`, byte of
/// 0x80 or more), eight bytes at a time as serde_json's own reader does.
fn string_stop(b: &[u8], mut at: usize, stop_at_non_ascii: bool) -> Option<usize> {
    while let Some(w) = word_at(b, at) {
        let mut stops = zero_bytes(w ^ (ONES * u64::from(b'"')))
            | zero_bytes(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if stop_at_non_ascii {
            stops |= w & HIGH;
        }
        if stops != 0 {
            return Some(at + first_byte(stops));
        }
        at += 8;
    }
    let n = b
        .get(at..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20 || (stop_at_non_ascii && c >= 0x80))?;
    Some(at + n)
}

fn deeper(depth: usize) -> Option<usize> {
    (depth < MAX_DEPTH).then_some(depth + 1)
}

#[cfg(test)]
mod tests {
    use super::super::forward::read_answer_with_serde;
    use super::*;

    const CHAT: &str = r#"{
  "id": "chatcmpl-C4GmWI2Sl7HnrQsKorSAZkJy94dpT",
  "object": "chat.completion",
  "created": 1755133856,
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Caf\u00e9 \"au lait\" \\ done\n\ud83d\ude00",
        "tool_calls": [
          {
            "id": "call_8fxy20OEu9ulvvaa5b5CzVA4",
            "type": "function",
            "function": {
              "name": "get_weather",
              "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"
            }
          }
        ],
        "refusal": null,
        "annotations": []
      },
      "logprobs": {"content": [{"token": "a", "logprob": -0.5e-3, "top_logprobs": []}]},
      "finish_reason": "tool_calls"
    }
  ],
  "usage": {
    "prompt_tokens": 92,
    "completion_tokens": 19,
    "total_tokens": 111,
    "prompt_tokens_details": {
      "cached_tokens": 64,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default",
  "system_fingerprint": "fp_560af6e559"
}"#;

    const EMBEDDINGS: &str = r#"{"object":"list","data":[{"object":"embedding","embedding":[0.017608326,-0.045733217,1E-7,0,-0.0,12],"index":0}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;

    /// What the scan read, in the shape of the serde reader's answer.
    fn scanned(body: &[u8]) -> Option<(Option<TokenUsage>, Option<String>)> {
        scan(body).map(|f| (f.usage, f.model.map(str::to_owned)))
    }

    fn serde_reads(body: &[u8]) -> (Option<TokenUsage>, Option<String>) {
        let (usage, model, _) = read_answer_with_serde(body);
        (usage, model.map(std::borrow::Cow::into_owned))
    }

    /// The scan either declines or agrees with serde.
    fn agrees(body: &[u8]) -> bool {
        match scanned(body) {
            None => true,
            Some(read) => read == serde_reads(body),
        }
    }

    #[test]
    fn real_answers_are_read_as_serde_reads_them() {
        let chat = scanned(CHAT.as_bytes()).expect("the chat answer is scanned");
        assert_eq!(
            chat,
            (
                Some(TokenUsage {
                    prompt: Some(92),
                    completion: Some(19),
                    total: Some(111),
                    cached: Some(64),
                    cache_write: None,
                    cache_write_1h: None,
                }),
                Some("gpt-4o-mini-2024-07-18".to_owned()),
            )
        );
        assert_eq!(chat, serde_reads(CHAT.as_bytes()));
        // An Anthropic answer translated (and OpenAI-compatible upstreams
        // that report cache writes): the writes are read too.
        let bridged = CHAT.replacen("\"audio_tokens\": 0", "\"cache_write_tokens\": 12", 1);
        let (usage, _) = scanned(bridged.as_bytes()).expect("scanned");
        let usage = usage.unwrap();
        assert_eq!((usage.cached, usage.cache_write), (Some(64), Some(12)));
        assert_eq!(
            scanned(bridged.as_bytes()),
            Some(serde_reads(bridged.as_bytes()))
        );
        let emb = scanned(EMBEDDINGS.as_bytes()).expect("the embeddings answer is scanned");
        assert_eq!(emb.0.and_then(|u| u.total), Some(8));
        assert_eq!(emb, serde_reads(EMBEDDINGS.as_bytes()));
        // A Responses API answer names its counts otherwise.
        let response = scanned(RESPONSE.as_bytes()).expect("the response is scanned");
        let usage = response.0.unwrap();
        assert_eq!(
            (usage.prompt, usage.completion, usage.total, usage.cached),
            (Some(36), Some(87), Some(123), Some(5))
        );
        assert_eq!(response, serde_reads(RESPONSE.as_bytes()));
        let tree: serde_json::Value = serde_json::from_str(RESPONSE).unwrap();
        assert_eq!(TokenUsage::from_json(&tree["usage"]), Some(usage));
        // Both names of a count: refused by serde, so left to it.
        let both = r#"{"usage":{"prompt_tokens":1,"input_tokens":2}}"#;
        assert!(scanned(both.as_bytes()).is_none());
        assert!(agrees(both.as_bytes()));
    }

    const RESPONSE: &str = r#"{"id":"resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b","object":"response","created_at":1741476542,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[{"type":"message","id":"msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b","status":"completed","role":"assistant","content":[{"type":"output_text","text":"In a peaceful grove beneath a silver moon...","annotations":[]}]}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":5},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123},"user":null,"metadata":{}}"#;

    #[test]
    fn odd_values_read_as_serde_reads_them_or_are_left_to_it() {
        let cases = [
            // Scanned: counts of other types are absent, as LenientCount has them.
            (
                r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":"7","total_tokens":null,"x":[1,{"a":[]}]}}"#,
                true,
            ),
            (
                r#"{"usage":{"prompt_tokens":true,"completion_tokens":[1],"total_tokens":{"n":1},"prompt_tokens_details":null}}"#,
                true,
            ),
            (r#"{"usage":null,"model":null}"#, true),
            (r#"{}"#, true),
            (r#" { "model" : "m" , "usage" : { } } "#, true),
            (
                r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1e2}}"#,
                true,
            ),
            // Left to serde.
            (r#"{"usage":{"prompt_tokens":-1}}"#, false),
            (r#"{"usage":{"prompt_tokens":18446744073709551616}}"#, false),
            (r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#, false),
            (
                r#"{"usage":{"prompt_tokens_details":{"cache_write_tokens":1,"cache_write_tokens":2}}}"#,
                false,
            ),
            (
                r#"{"usage":{"prompt_tokens_details":{"cache_write_tokens":"1","cached_tokens":2}}}"#,
                true,
            ),
            (r#"{"usage":{},"usage":null}"#, false),
            (r#"{"model":"a","model":"b"}"#, false),
            (r#"{"usage":7}"#, false),
            (r#"{"usage":"x"}"#, false),
            (r#"{"usage":{"prompt_tokens_details":[]}}"#, false),
            (r#"{"model":7}"#, false),
            (r#"{"model":"gpt\u002d4"}"#, false),
            (r#"{"us\u0061ge":{"prompt_tokens":3}}"#, false),
            (r#"{"usage":{"prompt_tokens":01}}"#, false),
            (r#"{"usage":{}} x"#, false),
            (r#"{"usage":{}"#, false),
            (r#"[{"usage":{}}]"#, false),
            (r#"{"a":"\ud83d"}"#, true),
            (r#"{"a":"\u12g4"}"#, false),
            (r#"{"a":"\x"}"#, false),
            (r#"{"a":tru}"#, false),
            (r#"{"a":1.}"#, false),
            (r#"{"a":-}"#, false),
            (r#"{"a":1,}"#, false),
            (r#"{"a" 1}"#, false),
            ("{\"a\":\"tab\there\"}", false),
        ];
        for (body, scanned_ok) in cases {
            assert_eq!(scan(body.as_bytes()).is_some(), scanned_ok, "{body}");
            assert!(agrees(body.as_bytes()), "{body}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(150), "]".repeat(150));
        assert!(scan(deep.as_bytes()).is_none());
        // Bytes that are not UTF-8 in a skipped string: serde does not check
        // them either; in a key, or a model name, the scan leaves them to serde.
        for body in [
            &b"{\"a\":\"\xff\",\"usage\":{\"total_tokens\":2}}"[..],
            b"{\"\xc3\xa9\":1,\"usage\":{\"total_tokens\":2}}",
            b"{\"model\":\"\xc3\xa9\"}",
            b"{\"model\":\"\xff\"}",
        ] {
            assert!(agrees(body), "{}", String::from_utf8_lossy(body));
        }
        assert!(scan(b"{\"\xc3\xa9\":1}").is_none());
        assert!(scan(b"{\"model\":\"\xc3\xa9\"}").is_none());
    }

    /// Every single-byte change of the samples (replaced by each of a set of
    /// bytes that matter to JSON) is either declined or read as serde reads it.
    #[test]
    fn mutated_answers_are_declined_or_read_as_serde_reads_them() {
        let mut scanned_some = 0;
        for sample in [CHAT, EMBEDDINGS] {
            let base = sample.as_bytes();
            for at in 0..base.len() {
                for &b in b"\"\\{}[],:0-.e tnu1x\x01\xc3" {
                    let mut body = base.to_vec();
                    body[at] = b;
                    if scan(&body).is_some() {
                        scanned_some += 1;
                    }
                    assert!(agrees(&body), "{}", String::from_utf8_lossy(&body));
                }
            }
        }
        // Most changes (to string contents, digits, whitespace) still scan.
        assert!(scanned_some > 5_000, "{scanned_some}");
    }
}
