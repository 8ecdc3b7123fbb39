//! Token counts for when the upstream reports none (some OpenAI-compatible
//! servers; a client gone mid-stream; an upstream cut mid-stream). Events
//! carrying these counts have `estimated = true`.
//!
//! The tokenizer is OpenAI's own BPE (`tiktoken-rs`): `o200k_base` for the
//! gpt-4o / gpt-4.1 / gpt-4.5 / gpt-5 / o1 / o3 / o4 families, `cl100k_base` for
//! gpt-4, gpt-3.5 and the `text-embedding-*` models, so OpenAI-family counts are
//! exact for text. For any other model (Llama, Mistral, Claude, ...) the count is
//! `cl100k_base`'s, a documented approximation: those tokenizers typically count
//! within about 10-20% of it for English text.
//!
//! Chat prompts follow OpenAI's cookbook framing: 3 tokens per message, 1 per
//! `name`, 3 to prime the reply; tool definitions and image parts are not
//! counted (their billing is model-specific). The tokenizer tables load on first
//! use (a few hundred milliseconds once per process).

use serde_json::Value;
use std::cell::Cell;
use tiktoken_rs::CoreBPE;

const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// Which BPE counts `model`'s tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Cl100kBase,
    O200kBase,
}

/// The encoding of a model family (the provider's name for it, or the
/// tenant-facing one); unknown models get `cl100k_base`.
pub fn encoding_for(model: &str) -> Encoding {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
    ];
    if o200k
        .iter()
        .any(|p| m == *p || m.starts_with(&format!("{p}-")))
    {
        Encoding::O200kBase
    } else {
        Encoding::Cl100kBase
    }
}

fn bpe(model: &str) -> &'static CoreBPE {
    match encoding_for(model) {
        Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    }
}

/// The longest text `tiktoken-rs` is given at once. Its pre-tokenizing
/// regex (`fancy-regex`, which backtracks) fails on a run of whitespace of
/// some 10^6 characters (a `StackOverflow` error), and `count_ordinary`
/// panics on that error: the request's answer became a 500, or the record
/// being written was lost. Longer text is counted in pieces of this size,
/// cut at a character boundary; a cut can split a token in two, so the
/// count may grow by one per piece (a 4 MiB prompt: at most 64 of about a
/// million), which an estimate can bear.
const MAX_PIECE: usize = 64 * 1024;

/// `text`'s tokens by `bpe`, in pieces of at most [`MAX_PIECE`] bytes.
fn count_ordinary(bpe: &CoreBPE, text: &str) -> u64 {
    let mut rest = text;
    let mut n = 0u64;
    while rest.len() > MAX_PIECE {
        let mut cut = MAX_PIECE;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        n += bpe.count_ordinary(piece) as u64;
        rest = tail;
    }
    n + bpe.count_ordinary(rest) as u64
}

/// Tokens of plain text (special-token text counts as ordinary text, as the
/// API does for user content).
pub fn estimate_text_tokens(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    count_ordinary(bpe(model), text)
}

/// How much of a prompt's text a usage record's estimate tokenizes, the rest
/// being extrapolated (as the completion text beyond its cap is, in
/// `proxy::record`). The record is finished on the request thread, and the
/// tokenizer costs 20 to 300 ns a byte (a release build: prose at the low
/// end, a run of one character at the high one): a 4 MiB prompt took 0.1 to
/// 1.2 s there, every other request on the thread waiting, each time a
/// client left a stream of an OpenAI route before its usage chunk. Within
/// this budget a prompt is counted exactly (about 16,000 tokens of prose),
/// and the wait is at most about 20 ms.
pub const RECORD_PROMPT_BUDGET: usize = 64 << 10;

/// The fewest tokens a byte beyond the budget is counted as: the ratio of the
/// text tokenized is used above it. A floor, so that text whose first part
/// tokenizes cheaply (a page of blanks, 128 bytes a token) cannot make the
/// rest of a prompt nearly free; prose is about 0.22 tokens a byte and CJK
/// 0.33, so they keep their own ratio.
const MIN_TOKENS_PER_BYTE: (u64, u64) = (1, 5);

/// Counts text with the tokenizer until `left` bytes are spent, then
/// extrapolates.
struct Budgeted<'a> {
    bpe: &'a CoreBPE,
    left: Cell<usize>,
    /// Bytes tokenized so far, and their tokens.
    seen: Cell<(u64, u64)>,
}

impl Budgeted<'_> {
    fn count(&self, s: &str) -> u64 {
        let mut cut = s.len().min(self.left.get());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = s.split_at(cut);
        let n = if head.is_empty() {
            0
        } else {
            count_ordinary(self.bpe, head)
        };
        self.left.set(self.left.get() - cut);
        let (bytes, tokens) = self.seen.get();
        self.seen.set((bytes + cut as u64, tokens + n));
        n + self.extrapolate(tail.len() as u64)
    }

    fn extrapolate(&self, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let (bytes, tokens) = self.seen.get();
        let (fl_n, fl_d) = MIN_TOKENS_PER_BYTE;
        // tokens / bytes, unless below the floor.
        let (n, d) = if bytes == 0
            || u128::from(tokens) * u128::from(fl_d) < u128::from(bytes) * u128::from(fl_n)
        {
            (fl_n, fl_d)
        } else {
            (tokens, bytes)
        };
        u64::try_from((u128::from(len) * u128::from(n)).div_ceil(u128::from(d))).unwrap_or(u64::MAX)
    }
}

/// Prompt tokens of a request body: chat `messages` (and a Messages body's
/// `system`, `tool_result` and `tool_use` blocks), completions
/// `prompt` (string or list of strings or token arrays), embeddings `input`
/// (same shapes), a Responses API body's `instructions` and `input` (a
/// string, or items framed as messages). Every byte of text is tokenized: off the request threads
/// only (a token count's answer); a record uses [`estimate_prompt_tokens_within`].
pub fn estimate_prompt_tokens(model: &str, request: &Value) -> u64 {
    estimate_prompt_tokens_within(model, request, usize::MAX)
}

/// [`estimate_prompt_tokens`], tokenizing at most `budget` bytes of text and
/// extrapolating the rest from their ratio (at least 1 token per 5 bytes).
pub fn estimate_prompt_tokens_within(model: &str, request: &Value, budget: usize) -> u64 {
    let budgeted = Budgeted {
        bpe: bpe(model),
        left: Cell::new(budget),
        seen: Cell::new((0, 0)),
    };
    let count = |s: &str| budgeted.count(s);
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        let mut n = REPLY_PRIMING;
        // A Messages body's top-level `system`, framed as the system message
        // it is on an OpenAI route.
        if let Some(system) = request.get("system") {
            n += TOKENS_PER_MESSAGE + count("system") + count_content(Some(system), &count);
        }
        for m in messages {
            n += TOKENS_PER_MESSAGE;
            if let Some(role) = m.get("role").and_then(Value::as_str) {
                n += count(role);
            }
            if let Some(name) = m.get("name").and_then(Value::as_str) {
                n += count(name) + TOKENS_PER_NAME;
            }
            n += count_content(m.get("content"), &count);
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for c in calls {
                    let f = &c["function"];
                    n += 1;
                    n += f["name"].as_str().map_or(0, count);
                    n += f["arguments"].as_str().map_or(0, count);
                }
            }
        }
        return n;
    }
    let input = request.get("prompt").or_else(|| request.get("input"));
    // A Responses API request's `instructions`.
    let instructions = request
        .get("instructions")
        .and_then(Value::as_str)
        .map_or(0, count);
    instructions
        + match input {
            Some(v) => count_input(v, &count),
            None => 0,
        }
}

/// A message's `content`: a string, or parts whose text counts: OpenAI's and
/// Anthropic's text parts, Anthropic's `tool_result` (its content, a string or
/// blocks) and `tool_use` (its `input`, as the JSON the model wrote).
fn count_content(content: Option<&Value>, count: &dyn Fn(&str) -> u64) -> u64 {
    match content {
        Some(Value::String(s)) => count(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    return count(t);
                }
                match p.get("type").and_then(Value::as_str) {
                    Some("tool_result") => count_content(p.get("content"), count),
                    Some("tool_use") => {
                        let name = p.get("name").and_then(Value::as_str).map_or(0, count);
                        let input = p.get("input").map_or(0, |i| count(&i.to_string()));
                        name + input
                    }
                    _ => 0,
                }
            })
            .sum(),
        _ => 0,
    }
}

fn count_input(v: &Value, count: &dyn Fn(&str) -> u64) -> u64 {
    match v {
        Value::String(s) => count(s),
        // A token array is already counted.
        Value::Array(items) if items.iter().all(Value::is_number) => items.len() as u64,
        Value::Array(items) => items.iter().map(|i| count_input(i, count)).sum(),
        // A Responses API input item: a message, a function call or its output.
        Value::Object(item) => {
            let texts: u64 = ["output", "arguments"]
                .iter()
                .filter_map(|k| item.get(*k).and_then(Value::as_str))
                .map(count)
                .sum();
            TOKENS_PER_MESSAGE + count_content(item.get("content"), count) + texts
        }
        _ => 0,
    }
}

/// The completion text of a non-streamed answer (`choices[].message.content`,
/// refusals, tool-call names and arguments, or `choices[].text`), for
/// [`estimate_text_tokens`].
pub fn completion_text(response: &Value) -> String {
    let mut out = String::new();
    for c in response
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let m = c.get("message").or_else(|| c.get("delta")).unwrap_or(c);
        for key in ["content", "refusal", "text"] {
            if let Some(s) = m.get(key).and_then(Value::as_str) {
                out.push_str(s);
            }
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                for key in ["name", "arguments"] {
                    if let Some(s) = call["function"][key].as_str() {
                        out.push_str(s);
                    }
                }
            }
        }
    }
    // A Responses API answer: its output items' text parts and calls.
    for item in response
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for part in item
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for key in ["text", "refusal"] {
                if let Some(s) = part.get(key).and_then(Value::as_str) {
                    out.push_str(s);
                }
            }
        }
        for key in ["name", "arguments"] {
            if let Some(s) = item.get(key).and_then(Value::as_str) {
                out.push_str(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_strings_count_as_tiktoken_does() {
        // OpenAI's cookbook: "tiktoken is great!" is 6 tokens in cl100k_base.
        assert_eq!(estimate_text_tokens("gpt-4", "tiktoken is great!"), 6);
        assert_eq!(estimate_text_tokens("gpt-3.5-turbo", "hello world"), 2);
        assert_eq!(estimate_text_tokens("gpt-4o-mini", "hello world"), 2);
        assert_eq!(estimate_text_tokens("gpt-4o", ""), 0);
        // Special-token text is ordinary text.
        assert!(estimate_text_tokens("gpt-4", "<|endoftext|>") > 1);
    }

    /// A long run of whitespace (a padded file, a prompt of blanks) is
    /// counted, not a panic (`tiktoken-rs` unwraps its regex's failure on
    /// a run of some 10^6 characters); long text is counted in pieces, each
    /// cut costing at most a token.
    #[test]
    fn long_whitespace_is_counted_and_long_text_in_pieces() {
        let blanks = format!("{}x", " ".repeat(1 << 20));
        assert!(estimate_text_tokens("gpt-4", &blanks) > 0);
        let tabs = format!("{}x", "\t".repeat(1 << 20));
        let req = json!({"messages": [{"role": "user", "content": tabs}]});
        assert!(estimate_prompt_tokens("gpt-4o", &req) > 0);
        // Text that tiktoken counts whole: in pieces, a token more per cut
        // at most, never fewer.
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(6_000);
        assert!(prose.len() > 4 * MAX_PIECE);
        let whole = tiktoken_rs::o200k_base_singleton().count_ordinary(&prose) as u64;
        let pieces = estimate_text_tokens("gpt-4o", &prose);
        let cuts = (prose.len() / MAX_PIECE) as u64;
        assert!(
            pieces >= whole && pieces <= whole + cuts,
            "{pieces} vs {whole}"
        );
        // A cut never splits a character.
        let wide = "é".repeat(MAX_PIECE);
        assert!(estimate_text_tokens("gpt-4o", &wide) > 0);
    }

    /// Within its budget a record's estimate is the tokenizer's count; past
    /// it, the rest is counted at the ratio of what was tokenized, never
    /// below 1 token per 5 bytes (text that tokenizes cheaply first cannot
    /// make the rest nearly free).
    #[test]
    fn a_budgeted_estimate_counts_its_budget_and_extrapolates_the_rest() {
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(1_000);
        assert!(prose.len() < RECORD_PROMPT_BUDGET);
        let req = json!({"messages": [{"role": "user", "content": prose}]});
        let exact = estimate_prompt_tokens("gpt-4o", &req);
        assert_eq!(
            estimate_prompt_tokens_within("gpt-4o", &req, RECORD_PROMPT_BUDGET),
            exact
        );
        // 45 KB of prose over a 9 KB budget: its own ratio, within a
        // percent of the whole count.
        let within = estimate_prompt_tokens_within("gpt-4o", &req, 9_000);
        assert!(within.abs_diff(exact) <= exact / 100, "{within} vs {exact}");
        // Blanks first, prose after: the blanks' ratio (about 1/128) would
        // count the prose at a tenth of its tokens; the floor counts it at
        // a fifth of its bytes at least.
        let text = format!("{}{prose}", " ".repeat(9_000));
        let req = json!({"messages": [{"role": "user", "content": text}]});
        let within = estimate_prompt_tokens_within("gpt-4o", &req, 9_000);
        assert!(within >= prose.len() as u64 / 5, "{within}");
    }

    #[test]
    fn model_families_pick_their_encoding() {
        assert_eq!(encoding_for("gpt-4o-mini-2024-07-18"), Encoding::O200kBase);
        assert_eq!(encoding_for("openai/gpt-4.1"), Encoding::O200kBase);
        assert_eq!(encoding_for("o3-mini"), Encoding::O200kBase);
        assert_eq!(encoding_for("gpt-4-turbo"), Encoding::Cl100kBase);
        assert_eq!(encoding_for("text-embedding-3-small"), Encoding::Cl100kBase);
        assert_eq!(encoding_for("llama3.2"), Encoding::Cl100kBase);
    }

    #[test]
    fn a_chat_prompt_is_framed_like_openai_counts_it() {
        let req = json!({"model": "gpt-4", "messages": [
            {"role": "system", "content": "tiktoken is great!"},
            {"role": "user", "name": "bob", "content": [{"type": "text", "text": "hello world"}]},
        ]});
        let bpe = tiktoken_rs::cl100k_base_singleton();
        let c = |s: &str| bpe.count_ordinary(s) as u64;
        let want = 3 + (3 + c("system") + 6) + (3 + c("user") + c("bob") + 1 + 2);
        assert_eq!(estimate_prompt_tokens("gpt-4", &req), want);
    }

    #[test]
    fn a_messages_body_counts_its_system_tool_results_and_tool_inputs() {
        let bpe = tiktoken_rs::cl100k_base_singleton();
        let c = |s: &str| bpe.count_ordinary(s) as u64;
        let user = |content: Value| json!({"messages": [{"role": "user", "content": content}]});
        let base = estimate_prompt_tokens("claude", &user(json!("hi")));
        let framed = 3 + c("system");
        for system in [
            json!("tiktoken is great!"),
            json!([{"type": "text", "text": "tiktoken is great!", "cache_control": {"type": "ephemeral"}}]),
        ] {
            let mut req = user(json!("hi"));
            req["system"] = system;
            assert_eq!(estimate_prompt_tokens("claude", &req), base + framed + 6);
        }
        let base = estimate_prompt_tokens("claude", &user(json!([])));
        for content in [
            json!("tiktoken is great!"),
            json!([{"type": "text", "text": "tiktoken is great!"}]),
        ] {
            let req = user(
                json!([{"type": "tool_result", "tool_use_id": "toolu_1", "content": content}]),
            );
            assert_eq!(estimate_prompt_tokens("claude", &req), base + 6);
        }
        let input = json!({"city": "Paris"});
        let req = json!({"messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": input},
        ]}]});
        let want = estimate_prompt_tokens(
            "claude",
            &json!({"messages": [{"role": "assistant", "content": []}]}),
        ) + c("get_weather")
            + c(&input.to_string());
        assert_eq!(estimate_prompt_tokens("claude", &req), want);
    }

    #[test]
    fn completions_and_embeddings_inputs() {
        assert_eq!(
            estimate_prompt_tokens("gpt-3.5-turbo-instruct", &json!({"prompt": "hello world"})),
            2
        );
        assert_eq!(
            estimate_prompt_tokens(
                "text-embedding-3-small",
                &json!({"input": ["hello world", [1, 2, 3]]})
            ),
            5
        );
        let resp = json!({"choices": [{"message": {"content": "hello "}}, {"text": "world"}]});
        assert_eq!(completion_text(&resp), "hello world");
    }

    /// A Responses API request: `instructions`, and input items' content,
    /// call arguments and outputs; its answer's output text and calls.
    #[test]
    fn responses_inputs_and_outputs() {
        let count = |v: Value| estimate_prompt_tokens("gpt-4o", &v);
        assert_eq!(
            count(json!({"instructions": "hello world", "input": "hello world"})),
            4
        );
        let items = json!({"input": [
            {"role": "user", "content": "hello world"},
            {"role": "user", "content": [{"type": "input_text", "text": "hello world"}]},
            {"type": "function_call_output", "call_id": "c", "output": "hello world"},
        ]});
        assert_eq!(count(items), 3 * (TOKENS_PER_MESSAGE + 2));
        let resp = json!({"output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "hello "}]},
            {"type": "function_call", "name": "f", "arguments": "{}"},
        ]});
        assert_eq!(completion_text(&resp), "hello f{}");
    }
}
