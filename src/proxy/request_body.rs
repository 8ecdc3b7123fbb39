//! The client's request body, read once: its top-level members located in the
//! received bytes (no tree is built), the fields the gateway owns read from
//! them, and the upstream body written by splicing the gateway's `model` (and,
//! for streams, `stream_options`) around the client's own bytes, which go
//! upstream exactly as they came.
//!
//! Building a `serde_json::Value` tree and serialising it again cost about a
//! tenth of the gateway's instructions per request; the members' byte ranges
//! give the same validation (every value is still checked to be JSON) for a
//! fraction of it.

use super::error::GatewayError;
use crate::limits::RequestFields;
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// A validated JSON object body.
pub struct RequestBody {
    bytes: Bytes,
    members: Vec<Member>,
    /// The `stream_options` sent upstream instead of the client's.
    stream_options: Option<Cow<'static, str>>,
}

struct Member {
    key: MemberKey,
    value: Range<usize>,
    /// A later member has the same key. JSON parsers keep the last one; so do
    /// the gateway's reads and the upstream body.
    shadowed: bool,
}

enum MemberKey {
    /// The key's text between its quotes, which holds no escape.
    Plain(Range<usize>),
    Escaped(Box<str>),
}

impl RequestBody {
    /// Checks that `bytes` is one JSON object and locates its members.
    pub fn parse(bytes: Bytes) -> Result<Self, GatewayError> {
        let mut members = top_level(&bytes)?;
        mark_shadowed(&bytes, &mut members);
        Ok(Self {
            bytes,
            members,
            stream_options: None,
        })
    }

    /// The client's `model`: a non-empty string.
    pub fn model(&self) -> Result<std::borrow::Cow<'_, str>, GatewayError> {
        let Some(raw) = self.field("model") else {
            return Err(GatewayError::MissingModel);
        };
        // Borrowed from the body unless it has an escape to undo, in one
        // parse; `null` reads as `None`.
        let mut de = serde_json::Deserializer::from_str(raw);
        let model = crate::usage::event::opt_text(&mut de)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|_| GatewayError::InvalidField("model", "a string"))?;
        match model {
            // Model names are short; a long one would be copied whole into
            // the refusal's usage record (and every sink) before any limit.
            Some(m) if m.len() > MAX_MODEL_BYTES => Err(GatewayError::InvalidField(
                "model",
                "a model name of at most 256 bytes",
            )),
            Some(m) if !m.is_empty() => Ok(m),
            _ => Err(GatewayError::MissingModel),
        }
    }

    /// The client's `stream`: a boolean, `false` when absent or null.
    pub fn stream(&self) -> Result<bool, GatewayError> {
        match self.field("stream") {
            None | Some("null") => Ok(false),
            Some(raw) => serde_json::from_str::<bool>(raw)
                .map_err(|_| GatewayError::InvalidField("stream", "a boolean")),
        }
    }

    /// Sends `stream_options.include_usage: true` upstream, keeping the
    /// client's other options, so that every stream's usage is counted.
    /// Returns whether the client asked for the usage chunk itself.
    pub fn require_stream_usage(&mut self) -> Result<bool, GatewayError> {
        let not_object = GatewayError::InvalidField("stream_options", "an object");
        let mut opts = match self.field("stream_options") {
            None | Some("null") => {
                self.stream_options = Some(Cow::Borrowed(r#"{"include_usage":true}"#));
                return Ok(false);
            }
            Some(raw) => match serde_json::from_str::<Value>(raw) {
                Ok(Value::Object(o)) => o,
                _ => return Err(not_object),
            },
        };
        let wanted = opts
            .get("include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        opts.insert("include_usage".into(), Value::Bool(true));
        self.stream_options = Some(Cow::Owned(Value::Object(opts).to_string()));
        Ok(wanted)
    }

    /// The body for an upstream that serves the request as `model`: the
    /// gateway's `model` first, then the client's members as they came (all
    /// but a member it replaces or a duplicate key's earlier copies).
    pub fn upstream(&self, model: &str) -> Bytes {
        let extra = self.stream_options.as_ref().map_or(0, |s| s.len() + 20);
        let mut out = Vec::with_capacity(self.bytes.len() + model.len() + 16 + extra);
        out.extend_from_slice(b"{\"model\":");
        write_json_str(&mut out, model);
        for m in &self.members {
            if m.shadowed {
                continue;
            }
            let key = key_bytes(&self.bytes, &m.key);
            if key == b"model" || (key == b"stream_options" && self.stream_options.is_some()) {
                continue;
            }
            out.push(b',');
            match &m.key {
                MemberKey::Plain(r) => {
                    out.push(b'"');
                    out.extend_from_slice(&self.bytes[r.clone()]);
                    out.push(b'"');
                }
                MemberKey::Escaped(k) => write_json_str(&mut out, k),
            }
            out.push(b':');
            out.extend_from_slice(&self.bytes[m.value.clone()]);
        }
        if let Some(opts) = &self.stream_options {
            out.extend_from_slice(b",\"stream_options\":");
            out.extend_from_slice(opts.as_bytes());
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

impl RequestFields for RequestBody {
    fn field(&self, key: &str) -> Option<&str> {
        let m = self
            .members
            .iter()
            .rev()
            .find(|m| key_bytes(&self.bytes, &m.key) == key.as_bytes())?;
        std::str::from_utf8(&self.bytes[m.value.clone()]).ok()
    }
}

/// Marks each member that a later one with the same key shadows. A request
/// has a handful of members, compared pairwise without allocating; a body
/// with many (a 4 MiB object holds some 400,000) goes through a hash set, as
/// pairwise it would take minutes of the request thread before any limit.
fn mark_shadowed(bytes: &[u8], members: &mut [Member]) {
    const PAIRWISE: usize = 32;
    let n = members.len();
    if n <= PAIRWISE {
        for i in 0..n {
            for j in i + 1..n {
                if key_bytes(bytes, &members[i].key) == key_bytes(bytes, &members[j].key) {
                    members[i].shadowed = true;
                    break;
                }
            }
        }
        return;
    }
    let mut seen = std::collections::HashSet::with_capacity(n);
    let shadowed: Vec<usize> = (0..n)
        .rev()
        .filter(|&i| !seen.insert(key_bytes(bytes, &members[i].key)))
        .collect();
    for i in shadowed {
        members[i].shadowed = true;
    }
}

fn key_bytes<'a>(bytes: &'a [u8], key: &'a MemberKey) -> &'a [u8] {
    match key {
        MemberKey::Plain(r) => &bytes[r.clone()],
        MemberKey::Escaped(k) => k.as_bytes(),
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The longest `model` accepted.
const MAX_MODEL_BYTES: usize = 256;

/// The deepest nesting accepted: what serde_json reads when it builds a tree
/// (its recursion limit of 128 stops at the 128th level), as the Anthropic translation and the mock do. Checked here, where
/// the body is only skimmed (serde skips nested values without a limit), so
/// that a deeper body is the client's 400 whichever route serves it, not a
/// provider's failure to read it.
const MAX_DEPTH: usize = 127;

/// Whether `text` nests arrays and objects deeper than [`MAX_DEPTH`]. A body
/// with fewer opening brackets than that cannot, and nearly every body is one
/// of those: counting them is a vectorised pass, the exact scan is not.
fn too_deep(text: &[u8]) -> bool {
    if memchr::memchr2_iter(b'[', b'{', text)
        .nth(MAX_DEPTH)
        .is_none()
    {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn top_level(text: &[u8]) -> Result<Vec<Member>, GatewayError> {
    let bad = |e: serde_json::Error| GatewayError::BadJson(e.to_string());
    if too_deep(text) {
        return Err(GatewayError::BadJson(format!(
            "the JSON nests arrays and objects more than {MAX_DEPTH} levels deep"
        )));
    }
    let first = text
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<de::IgnoredAny>(text) {
            Ok(_) => GatewayError::NotAnObject,
            Err(e) => bad(e),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    let members = (&mut de)
        .deserialize_map(Members {
            base: text.as_ptr() as usize,
        })
        .map_err(bad)?;
    de.end().map_err(bad)?;
    Ok(members)
}

/// Where `part`, a slice of the parsed text, lies in it.
fn span(base: usize, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - base;
    start..start + part.len()
}

struct Members {
    base: usize,
}

impl<'de> Visitor<'de> for Members {
    type Value = Vec<Member>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key_seed(KeySeed { base: self.base })? {
            let value: &'de RawValue = map.next_value()?;
            members.push(Member {
                key,
                value: span(self.base, value.get()),
                shadowed: false,
            });
        }
        Ok(members)
    }
}

/// A key borrowed from the text when it has no escapes (nearly always).
struct KeySeed {
    base: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = MemberKey;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<MemberKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = MemberKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<MemberKey, E> {
        Ok(MemberKey::Plain(span(self.base, v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MemberKey, E> {
        Ok(MemberKey::Escaped(v.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many members (a large body is mostly keys) are checked for duplicates
    /// in linear time, and the last of equal keys still wins.
    #[test]
    fn a_body_of_many_members_parses_quickly_and_the_last_key_wins() {
        let mut body = String::from("{\"model\":\"a\"");
        for i in 0..200_000 {
            body.push_str(&format!(",\"k{i}\":0"));
        }
        body.push_str(",\"model\":\"b\"}");
        let started = std::time::Instant::now();
        let parsed = RequestBody::parse(Bytes::from(body)).unwrap();
        // Pairwise, this took about a minute (2e10 comparisons).
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(parsed.model().unwrap(), "b");
        assert_eq!(parsed.members.iter().filter(|m| m.shadowed).count(), 1);
    }
    use serde_json::json;

    fn parse(text: &str) -> Result<RequestBody, GatewayError> {
        RequestBody::parse(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn upstream(body: &RequestBody, model: &str) -> Value {
        serde_json::from_slice(&body.upstream(model)).unwrap()
    }

    #[test]
    fn the_upstream_body_is_the_clients_with_the_gateways_model() {
        let text = r#" {"model" : "demo", "messages":[{"role":"user","content":"h\u00e9 \"x\""}],
            "temperature": 0.25, "tools": [ {"type":"function"} ], "n":1e0, "user": null} "#;
        let body = parse(text).unwrap();
        assert_eq!(body.model().unwrap(), "demo");
        let mut want: Value = serde_json::from_str(text).unwrap();
        want["model"] = json!("gpt-4o-2024-08-06");
        assert_eq!(upstream(&body, "gpt-4o-2024-08-06"), want);
        // Values go upstream byte for byte (the number keeps its spelling).
        let bytes = body.upstream("m");
        let s = std::str::from_utf8(&bytes).unwrap();
        assert!(s.starts_with(r#"{"model":"m","#), "{s}");
        assert!(s.contains(r#""n":1e0"#), "{s}");
        assert!(s.contains(r#""content":"h\u00e9 \"x\"""#), "{s}");
        // A model name is escaped as JSON.
        assert_eq!(upstream(&body, "a\"b")["model"], json!("a\"b"));
    }

    #[test]
    fn a_model_name_longer_than_256_bytes_is_refused() {
        let ok = format!(r#"{{"model":"{}"}}"#, "m".repeat(256));
        assert_eq!(parse(&ok).unwrap().model().unwrap().len(), 256);
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(257));
        assert!(matches!(
            parse(&long).unwrap().model(),
            Err(GatewayError::InvalidField("model", _))
        ));
    }

    #[test]
    fn nesting_deeper_than_serde_reads_is_refused_as_bad_json() {
        let nested = |n: usize| {
            format!(
                r#"{{"model":"m","x":{}{}}}"#,
                "[".repeat(n - 1),
                "]".repeat(n - 1)
            )
        };
        // 127 levels (the object and 126 arrays) are what serde_json reads.
        assert!(parse(&nested(127)).is_ok());
        serde_json::from_str::<Value>(&nested(127)).unwrap();
        assert!(matches!(
            parse(&nested(128)),
            Err(GatewayError::BadJson(m)) if m.contains("127 levels")
        ));
        assert!(serde_json::from_str::<Value>(&nested(128)).is_err());
        // Brackets inside strings (escaped quotes included) are text.
        let text = format!(r#"{{"model":"m","x":"\"{}"}}"#, "[".repeat(300));
        assert!(parse(&text).is_ok());
        // Many brackets, shallow: fine.
        let wide = format!(r#"{{"model":"m","x":[{}[]]}}"#, "[],".repeat(300));
        assert!(parse(&wide).is_ok());
    }

    #[test]
    fn a_plain_model_name_is_borrowed_and_an_escaped_one_unescaped() {
        use std::borrow::Cow;
        let body = parse(r#"{"model":"gpt-4o"}"#).unwrap();
        assert!(matches!(body.model().unwrap(), Cow::Borrowed("gpt-4o")));
        let body = parse(r#"{"model":"gpt-\u0034o"}"#).unwrap();
        assert!(matches!(body.model().unwrap(), Cow::Owned(m) if m == "gpt-4o"));
        let body = parse(r#"{"model":"\u0000"}"#).unwrap();
        assert_eq!(body.model().unwrap(), "\0");
        assert!(matches!(
            parse(r#"{"model":""}"#).unwrap().model(),
            Err(GatewayError::MissingModel)
        ));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_as_json_parsers_do() {
        let body = parse(r#"{"model":"a","stream":true,"x":1,"model":"b","x":2}"#).unwrap();
        assert_eq!(body.model().unwrap(), "b");
        assert_eq!(body.field("x"), Some("2"));
        let s = body.upstream("up");
        let s = std::str::from_utf8(&s).unwrap();
        assert_eq!(s, r#"{"model":"up","stream":true,"x":2}"#);
    }

    #[test]
    fn escaped_keys_are_read_and_written_back_as_json() {
        let body = parse(r#"{"mod\u0065l":"a","we\"ird":1}"#).unwrap();
        assert_eq!(body.model().unwrap(), "a");
        assert_eq!(upstream(&body, "up"), json!({"model": "up", "we\"ird": 1}));
    }

    #[test]
    fn stream_options_ask_for_usage_and_keep_the_clients_other_options() {
        let mut body = parse(r#"{"model":"a","stream":true}"#).unwrap();
        assert!(body.stream().unwrap());
        assert!(!body.require_stream_usage().unwrap());
        assert_eq!(
            upstream(&body, "up")["stream_options"],
            json!({"include_usage": true})
        );
        let mut body =
            parse(r#"{"model":"a","stream":true,"stream_options":{"include_usage":true,"x":[1]}}"#)
                .unwrap();
        assert!(body.require_stream_usage().unwrap());
        assert_eq!(
            upstream(&body, "up")["stream_options"],
            json!({"include_usage": true, "x": [1]})
        );
        let mut body = parse(r#"{"model":"a","stream_options":{"include_usage":false}}"#).unwrap();
        assert!(!body.require_stream_usage().unwrap());
        let up = upstream(&body, "up");
        assert_eq!(up["stream_options"], json!({"include_usage": true}));
        assert_eq!(up.as_object().unwrap().len(), 2, "{up}");
        let mut body = parse(r#"{"model":"a","stream_options":null}"#).unwrap();
        assert!(!body.require_stream_usage().unwrap());
        let mut body = parse(r#"{"model":"a","stream_options":3}"#).unwrap();
        assert!(matches!(
            body.require_stream_usage(),
            Err(GatewayError::InvalidField("stream_options", _))
        ));
    }

    #[test]
    fn bad_bodies_get_the_errors_a_tree_parse_gave() {
        let err = |t: &str| parse(t).err().map(|e| e.code());
        assert!(matches!(parse("{"), Err(GatewayError::BadJson(_))));
        assert!(matches!(parse(""), Err(GatewayError::BadJson(_))));
        assert!(matches!(
            parse(r#"{"a":1} x"#),
            Err(GatewayError::BadJson(_))
        ));
        assert!(matches!(
            parse(r#"{"a":tru}"#),
            Err(GatewayError::BadJson(_))
        ));
        assert!(matches!(
            parse(r#"{"a":[1,}"#),
            Err(GatewayError::BadJson(_))
        ));
        assert!(matches!(parse("[1,2]"), Err(GatewayError::NotAnObject)));
        assert!(matches!(parse(" \"s\" "), Err(GatewayError::NotAnObject)));
        assert!(matches!(parse("[1,"), Err(GatewayError::BadJson(_))));
        assert_eq!(err("{}"), None);
        let missing =
            |t: &str| matches!(parse(t).unwrap().model(), Err(GatewayError::MissingModel));
        assert!(missing("{}"));
        assert!(missing(r#"{"model":null}"#));
        assert!(missing(r#"{"model":""}"#));
        assert!(matches!(
            parse(r#"{"model":1}"#).unwrap().model(),
            Err(GatewayError::InvalidField("model", _))
        ));
        assert!(matches!(
            parse(r#"{"model":"a","stream":"yes"}"#).unwrap().stream(),
            Err(GatewayError::InvalidField("stream", _))
        ));
        assert!(!parse(r#"{"stream":null}"#).unwrap().stream().unwrap());
    }
}
