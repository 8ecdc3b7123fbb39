//! Golden tests on the captured wire formats in `tests/fixtures/wire/`, round
//! trips, and the edge cases of each mapping.

use super::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const A_REQUEST: &str =
    include_str!("../../../tests/fixtures/wire/anthropic/messages_request.json");
const A_REQUEST_TOOL_RESULT: &str =
    include_str!("../../../tests/fixtures/wire/anthropic/messages_request_tool_result.json");
const A_RESPONSE: &str =
    include_str!("../../../tests/fixtures/wire/anthropic/messages_response.json");
const A_RESPONSE_TOOL_USE: &str =
    include_str!("../../../tests/fixtures/wire/anthropic/messages_response_tool_use.json");
const A_STREAM: &str = include_str!("../../../tests/fixtures/wire/anthropic/messages_stream.sse");
const A_STREAM_TOOL_USE: &str =
    include_str!("../../../tests/fixtures/wire/anthropic/messages_stream_tool_use.sse");
const A_STREAM_SDK_TOOL_USE: &str = include_str!(
    "../../../tests/fixtures/wire/anthropic/recorded/sdk_fixture_tool_use_response.sse"
);
const A_STREAM_ERROR: &str =
    include_str!("../../../tests/fixtures/wire/anthropic/stream_error.sse");
const A_ERROR_OVERLOADED: &str =
    include_str!("../../../tests/fixtures/wire/anthropic/error_overloaded.json");
const A_ERROR_429: &str = include_str!("../../../tests/fixtures/wire/anthropic/error_429.json");
const A_ERROR_401: &str = include_str!("../../../tests/fixtures/wire/anthropic/error_401.json");

const O_REQUEST: &str = include_str!("../../../tests/fixtures/wire/openai/chat_request.json");
const O_RESPONSE: &str = include_str!("../../../tests/fixtures/wire/openai/chat_response.json");
const O_RESPONSE_TOOL_CALLS: &str =
    include_str!("../../../tests/fixtures/wire/openai/chat_response_tool_calls.json");
const O_STREAM: &str = include_str!("../../../tests/fixtures/wire/openai/chat_stream.sse");
const O_STREAM_TOOL_CALLS: &str =
    include_str!("../../../tests/fixtures/wire/openai/chat_stream_tool_calls.sse");
const O_STREAM_PARALLEL: &str = include_str!(
    "../../../tests/fixtures/wire/openai/recorded/chat_stream_parallel_tool_calls_gpt4o_2024-09.sse"
);
const O_STREAM_LENGTH: &str = include_str!(
    "../../../tests/fixtures/wire/openai/recorded/chat_stream_include_usage_gpt5nano_2025-08.sse"
);
const O_STREAM_GPT4O: &str =
    include_str!("../../../tests/fixtures/wire/openai/recorded/chat_stream_gpt4o_2024-09.sse");
const O_ERROR_400: &str = include_str!("../../../tests/fixtures/wire/openai/error_400.json");
const O_ERROR_401: &str = include_str!("../../../tests/fixtures/wire/openai/error_401.json");
const O_ERROR_429: &str = include_str!("../../../tests/fixtures/wire/openai/error_429.json");
const O_ERROR_QUOTA: &str =
    include_str!("../../../tests/fixtures/wire/openai/error_429_insufficient_quota.json");
const O_ERROR_500: &str = include_str!("../../../tests/fixtures/wire/openai/error_500.json");

const MODEL: &str = "claude-sonnet-4-5-20250929";
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// Splits an SSE body into `(event, data)` pairs (`event` empty when absent).
fn sse_events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = String::new();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
                }
            }
            (event, data.join("\n"))
        })
        .collect()
}

/// The anthropic fixtures' system prompt carries `cache_control`, which has no
/// OpenAI source; the translation cannot produce it.
fn without_cache_control(mut v: Value) -> Value {
    if let Some(blocks) = v.get_mut("system").and_then(Value::as_array_mut) {
        for b in blocks {
            b.as_object_mut().unwrap().remove("cache_control");
        }
    }
    v
}

/// The OpenAI request a client would send for the conversation of
/// `messages_request_tool_result.json` (its first `turns` turns).
fn openai_conversation(turns: usize) -> Value {
    let messages = [
        json!({"role": "system", "content": "You are a concise travel assistant. Use tools when they help."}),
        json!({"role": "user", "content": "I'm going to Paris next week."}),
        json!({"role": "assistant", "content": "Lovely! What would you like help with?"}),
        json!({"role": "user", "content": [
            {"type": "text", "text": "What's the weather like there right now? Here is the forecast screenshot I have."},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}"), "detail": "auto"}},
        ]}),
        json!({"role": "assistant", "content": "I'll check the current weather in Paris for you.", "tool_calls": [
            {"id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}},
        ], "refusal": null}),
        json!({"role": "tool", "tool_call_id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
               "content": "{\"temp_c\":18,\"conditions\":\"light rain\"}"}),
    ];
    json!({
        "model": "smart",
        "messages": messages[..turns],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
            "strict": false,
        }}],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "temperature": 0.2,
        "stop": "</answer>",
        "max_completion_tokens": 1024,
        "user": "user-1234",
        "stream": false,
        "seed": 7,
        "n": 1,
    })
}

// ---------------------------------------------------------------------------
// Accumulators: what an SDK makes of a stream.

/// An OpenAI stream folded like the OpenAI SDK's `ChatCompletionStreamState`.
#[derive(Debug, Default)]
struct ChatAcc {
    ids: Vec<String>,
    role: Option<String>,
    text: String,
    /// index → (id, name, arguments)
    tools: BTreeMap<u64, (String, String, String)>,
    finish: Option<String>,
    usage: Option<Value>,
    usage_chunk_last: bool,
}

fn accumulate_chat<S: AsRef<str>>(chunks: &[S]) -> ChatAcc {
    let mut acc = ChatAcc::default();
    for (n, c) in chunks.iter().enumerate() {
        let c = c.as_ref();
        if c == "[DONE]" {
            continue;
        }
        let v = parse(c);
        assert_eq!(v["object"], "chat.completion.chunk", "{c}");
        acc.ids.push(v["id"].as_str().unwrap().to_owned());
        for ch in v["choices"].as_array().unwrap() {
            let d = &ch["delta"];
            if let Some(r) = d["role"].as_str() {
                acc.role = Some(r.to_owned());
            }
            if let Some(t) = d["content"].as_str() {
                acc.text.push_str(t);
            }
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let e = acc.tools.entry(tc["index"].as_u64().unwrap()).or_default();
                if let Some(id) = tc["id"].as_str() {
                    e.0 = id.to_owned();
                }
                if let Some(name) = tc["function"]["name"].as_str() {
                    e.1 = name.to_owned();
                }
                if let Some(a) = tc["function"]["arguments"].as_str() {
                    e.2.push_str(a);
                }
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                acc.finish = Some(f.to_owned());
            }
        }
        if v["usage"].is_object() {
            acc.usage = Some(v["usage"].clone());
            acc.usage_chunk_last = n + 1 == chunks.len()
                || (n + 2 == chunks.len() && chunks[n + 1].as_ref() == "[DONE]");
            assert_eq!(v["choices"], json!([]));
        }
    }
    acc
}

fn openai_chunks(sse: &str) -> Vec<String> {
    sse_events(sse).into_iter().map(|(_, d)| d).collect()
}

fn replay_anthropic(sse: &str, include_usage: bool) -> (MessagesStreamToChat, Vec<String>) {
    let mut conv = MessagesStreamToChat::new("smart", 1_755_000_000, include_usage);
    let mut out = Vec::new();
    for (event, data) in sse_events(sse) {
        out.extend(conv.on_event(&event, &data).unwrap());
    }
    (conv, out)
}

/// An Anthropic stream folded like the Anthropic SDK's message accumulator.
#[derive(Debug, Default)]
struct MessageAcc {
    names: Vec<String>,
    id: String,
    /// (type, text or tool id, tool name, json buffer)
    blocks: BTreeMap<u64, (String, String, String, String)>,
    stop_reason: Option<String>,
    usage: Value,
}

fn accumulate_message(events: &[(String, String)]) -> MessageAcc {
    let mut acc = MessageAcc::default();
    for (name, data) in events {
        let v = parse(data);
        assert_eq!(v["type"].as_str(), Some(name.as_str()), "{data}");
        acc.names.push(name.clone());
        match name.as_str() {
            "message_start" => {
                acc.id = v["message"]["id"].as_str().unwrap().to_owned();
                acc.usage = v["message"]["usage"].clone();
            }
            "content_block_start" => {
                let b = &v["content_block"];
                let entry = (
                    b["type"].as_str().unwrap().to_owned(),
                    b["text"]
                        .as_str()
                        .or(b["id"].as_str())
                        .unwrap_or("")
                        .to_owned(),
                    b["name"].as_str().unwrap_or("").to_owned(),
                    String::new(),
                );
                let prev = acc.blocks.insert(v["index"].as_u64().unwrap(), entry);
                assert!(prev.is_none(), "block index reused: {data}");
            }
            "content_block_delta" => {
                let b = acc.blocks.get_mut(&v["index"].as_u64().unwrap()).unwrap();
                let d = &v["delta"];
                match d["type"].as_str().unwrap() {
                    "text_delta" => b.1.push_str(d["text"].as_str().unwrap()),
                    "input_json_delta" => b.3.push_str(d["partial_json"].as_str().unwrap()),
                    _ => {}
                }
            }
            "message_delta" => {
                acc.stop_reason = v["delta"]["stop_reason"].as_str().map(str::to_owned);
                for (k, val) in v["usage"].as_object().unwrap() {
                    acc.usage[k] = val.clone();
                }
            }
            _ => {}
        }
    }
    acc
}

impl MessageAcc {
    fn text(&self) -> String {
        self.blocks
            .values()
            .filter(|b| b.0 == "text")
            .map(|b| b.1.as_str())
            .collect()
    }

    fn tools(&self) -> Vec<(String, String, Value)> {
        self.blocks
            .values()
            .filter(|b| b.0 == "tool_use")
            .map(|b| {
                let input = if b.3.is_empty() {
                    json!({})
                } else {
                    parse(&b.3)
                };
                (b.1.clone(), b.2.clone(), input)
            })
            .collect()
    }
}

fn replay_openai(chunks: &[String]) -> (ChatStreamToMessages, Vec<(String, String)>) {
    let mut conv = ChatStreamToMessages::new(MODEL);
    let mut out = Vec::new();
    for c in chunks {
        for (e, d) in conv.on_chunk(c).unwrap() {
            out.push((e.to_owned(), d));
        }
    }
    (conv, out)
}

// ---------------------------------------------------------------------------
// Request: OpenAI → Anthropic

#[test]
fn golden_request_with_tool_result_matches_the_anthropic_fixture() {
    let out = chat_to_messages(&openai_conversation(6), MODEL, 4096).unwrap();
    let expected = without_cache_control(parse(A_REQUEST_TOOL_RESULT));
    // Byte-equal, so the key order is Anthropic's too.
    assert_eq!(out.to_string(), expected.to_string());
}

#[test]
fn golden_request_with_system_image_and_tools_matches_the_anthropic_fixture() {
    let out = chat_to_messages(&openai_conversation(4), MODEL, 4096).unwrap();
    let expected = without_cache_control(parse(A_REQUEST));
    assert_eq!(out.to_string(), expected.to_string());
}

#[test]
fn golden_openai_chat_request_fixture() {
    let req = parse(O_REQUEST);
    let out = chat_to_messages(&req, MODEL, 4096).unwrap();
    let expected = json!({
        "model": MODEL,
        "max_tokens": 256,
        "system": [{"type": "text", "text": "You are a concise travel assistant. Use tools when they help."}],
        "messages": [{"role": "user", "content": "What's the weather like in Paris right now?"}],
        "tools": [{
            "name": "get_weather",
            "description": "Get the current weather in a given city",
            "input_schema": req["tools"][0]["function"]["parameters"].clone(),
        }],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": false},
        "temperature": 0.2,
        "metadata": {"user_id": "user-1234"},
        "stream": true,
    });
    assert_eq!(out.to_string(), expected.to_string());
}

#[test]
fn system_and_developer_messages_are_hoisted_in_order() {
    let req = json!({"messages": [
        {"role": "system", "content": "one"},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": ""}]},
        {"role": "user", "content": "again"},
    ]});
    let out = chat_to_messages(&req, MODEL, 100).unwrap();
    assert_eq!(
        out["system"],
        json!([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}])
    );
    // The two user messages, no longer separated, merge into one turn.
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "text", "text": "again"}
        ]}])
    );
    assert_eq!(out["max_tokens"], 100);
    assert!(out.get("tools").is_none() && out.get("stream").is_none());
}

#[test]
fn parallel_tool_results_merge_into_one_user_turn_with_results_first() {
    let req = json!({"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "Thanks, and which is warmer?"},
    ], "tools": [{"type": "function", "function": {"name": "w"}}]});
    let out = chat_to_messages(&req, MODEL, 100).unwrap();
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "w", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "w", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                {"type": "text", "text": "Thanks, and which is warmer?"},
            ]},
        ])
    );
    // A tool without parameters gets an empty object schema.
    assert_eq!(
        out["tools"],
        json!([{"name": "w", "input_schema": {"type": "object", "properties": {}}}])
    );
}

/// A tool that printed nothing: OpenAI takes an empty (or absent) tool message
/// content, Anthropic refuses a `tool_result` whose content is empty, so the
/// result says `(no output)`; a non-empty result is untouched.
#[test]
fn empty_tool_results_are_not_sent_empty() {
    let call = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c4", "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
    let req = json!({"messages": [
        {"role": "user", "content": "x"},
        call,
        {"role": "tool", "tool_call_id": "c1", "content": ""},
        {"role": "tool", "tool_call_id": "c2"},
        {"role": "tool", "tool_call_id": "c3", "content": [{"type": "text", "text": ""}]},
        {"role": "tool", "tool_call_id": "c4", "content": "ok"},
    ]});
    let out = chat_to_messages(&req, MODEL, 1).unwrap();
    let contents: Vec<&Value> = out["messages"][2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["content"])
        .collect();
    assert_eq!(
        contents,
        [
            &json!("(no output)"),
            &json!("(no output)"),
            &json!("(no output)"),
            &json!("ok")
        ]
    );
}

#[test]
fn tool_results_go_first_even_after_user_text() {
    let req = json!({"messages": [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "by the way"},
        {"role": "tool", "tool_call_id": "c", "content": "done"},
    ]});
    let out = chat_to_messages(&req, MODEL, 100).unwrap();
    assert_eq!(
        out["messages"][1]["content"],
        json!([
            {"type": "tool_result", "tool_use_id": "c", "content": "done"},
            {"type": "text", "text": "by the way"},
        ])
    );
}

#[test]
fn invalid_tool_arguments_are_refused_naming_the_field() {
    for (args, what) in [
        ("{\"city\": ", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("42", "JSON object"),
    ] {
        let req = json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]},
        ]});
        let err = chat_to_messages(&req, MODEL, 100).unwrap_err();
        assert!(
            matches!(err, TranslateError::InvalidValue { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.param(),
            Some("messages[1].tool_calls[0].function.arguments")
        );
        assert!(err
            .message()
            .contains("messages[1].tool_calls[0].function.arguments"));
        assert!(err.message().contains(what), "{}", err.message());
        let body = err.to_openai_error();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_value");
        assert_eq!(
            body["error"]["param"],
            "messages[1].tool_calls[0].function.arguments"
        );
    }
}

#[test]
fn n_other_than_one_is_refused() {
    let mut req = openai_conversation(2);
    req["n"] = json!(2);
    let err = chat_to_messages(&req, MODEL, 100).unwrap_err();
    assert_eq!(err.param(), Some("n"));
    assert_eq!(err.code(), "unsupported_value");
    assert_eq!(TranslateError::STATUS, 400);
    assert_eq!(
        err.to_openai_error(),
        json!({"error": {
            "message": err.message(),
            "type": "invalid_request_error",
            "param": "n",
            "code": "unsupported_value",
        }})
    );
    assert_eq!(
        err.to_anthropic_error()["error"]["type"],
        "invalid_request_error"
    );
    req["n"] = json!(1);
    assert!(chat_to_messages(&req, MODEL, 100).is_ok());
    req["n"] = Value::Null;
    assert!(chat_to_messages(&req, MODEL, 100).is_ok());
}

#[test]
fn audio_file_parts_function_role_and_legacy_functions_are_refused() {
    let audio = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "listen"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]}]});
    let err = chat_to_messages(&audio, MODEL, 100).unwrap_err();
    assert_eq!(err.param(), Some("messages[0].content[1].type"));
    assert!(err.message().contains("input_audio"), "{}", err.message());

    let file = json!({"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc"}}]}]});
    let err = chat_to_messages(&file, MODEL, 100).unwrap_err();
    assert_eq!(err.param(), Some("messages[0].content[0].type"));
    assert!(err.message().contains("`file`"), "{}", err.message());

    let function = json!({"messages": [{"role": "function", "name": "f", "content": "x"}]});
    let err = chat_to_messages(&function, MODEL, 100).unwrap_err();
    assert_eq!(err.param(), Some("messages[0].role"));
    assert_eq!(err.code(), "unsupported_parameter");

    let legacy =
        json!({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]});
    assert_eq!(
        chat_to_messages(&legacy, MODEL, 100).unwrap_err().param(),
        Some("functions")
    );

    let web =
        json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]});
    assert_eq!(
        chat_to_messages(&web, MODEL, 100).unwrap_err().param(),
        Some("tools[0].type")
    );

    let bad_role = json!({"messages": [{"role": "robot", "content": "x"}]});
    assert!(chat_to_messages(&bad_role, MODEL, 100).is_err());
    assert!(chat_to_messages(&json!({"messages": "hi"}), MODEL, 100).is_err());
    assert!(chat_to_messages(&json!([1]), MODEL, 100).is_err());
    let no_id = json!({"messages": [{"role": "tool", "content": "x"}]});
    assert_eq!(
        chat_to_messages(&no_id, MODEL, 100).unwrap_err().param(),
        Some("messages[0].tool_call_id")
    );
}

#[test]
fn images_data_urls_and_https_urls() {
    let req = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AA=="}},
        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/AA=="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/paper.PDF?x=1"}},
        {"type": "image_url", "image_url": {"url": "data:application/pdf;base64,JVBERi0="}},
    ]}]});
    let out = chat_to_messages(&req, MODEL, 100).unwrap();
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/AA=="}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/AA=="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.webp"}},
            {"type": "document", "source": {"type": "url", "url": "https://example.com/paper.PDF?x=1"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
        ])
    );
    for (url, code) in [
        ("data:image/tiff;base64,AAAA", "unsupported_value"),
        ("data:image/png,rawbytes", "invalid_value"),
        ("ftp://example.com/x.png", "invalid_value"),
        ("data:image/png;base64", "invalid_value"),
    ] {
        let req = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}]});
        let err = chat_to_messages(&req, MODEL, 100).unwrap_err();
        assert_eq!(err.code(), code, "{url}");
        assert_eq!(err.param(), Some("messages[0].content[0].image_url.url"));
    }
}

#[test]
fn image_data_url_survives_both_directions() {
    let url = format!("data:image/png;base64,{PNG}");
    let chat = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}]});
    let messages = chat_to_messages(&chat, MODEL, 100).unwrap();
    assert_eq!(
        messages["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}})
    );
    let back = messages_to_chat(&messages, "gpt-4o").unwrap();
    assert_eq!(back["messages"], chat["messages"]);
    // And an Anthropic client's URL image.
    let a = json!({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]});
    assert_eq!(
        messages_to_chat(&a, "gpt-4o").unwrap()["messages"][0]["content"],
        json!([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    );
}

#[test]
fn sampling_limits_and_tool_choice() {
    let base = || {
        json!({"messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
    };
    let with = |k: &str, v: Value| {
        let mut r = base();
        r[k] = v;
        chat_to_messages(&r, MODEL, 4096).unwrap()
    };
    // Temperature: OpenAI's 0-2 clamped to Anthropic's 0-1.
    assert_eq!(with("temperature", json!(1.7))["temperature"], json!(1.0));
    assert_eq!(with("temperature", json!(0.5))["temperature"], json!(0.5));
    assert_eq!(with("top_p", json!(0.9))["top_p"], json!(0.9));
    // max_tokens: max_completion_tokens ?? max_tokens ?? default.
    assert_eq!(base_max_tokens(&base()), 4096);
    assert_eq!(with("max_tokens", json!(77))["max_tokens"], 77);
    let mut both = base();
    both["max_tokens"] = json!(77);
    both["max_completion_tokens"] = json!(88);
    assert_eq!(base_max_tokens(&both), 88);
    // stop
    assert_eq!(with("stop", json!("END"))["stop_sequences"], json!(["END"]));
    assert_eq!(
        with("stop", json!(["a", "b"]))["stop_sequences"],
        json!(["a", "b"])
    );
    assert!(with("stop", json!([])).get("stop_sequences").is_none());
    // user / safety_identifier
    assert_eq!(
        with("safety_identifier", json!("h-1"))["metadata"],
        json!({"user_id": "h-1"})
    );
    // tool_choice
    assert_eq!(
        with("tool_choice", json!("auto"))["tool_choice"],
        json!({"type": "auto"})
    );
    assert_eq!(
        with("tool_choice", json!("required"))["tool_choice"],
        json!({"type": "any"})
    );
    assert_eq!(
        with("tool_choice", json!("none"))["tool_choice"],
        json!({"type": "none"})
    );
    assert_eq!(
        with(
            "tool_choice",
            json!({"type": "function", "function": {"name": "f"}})
        )["tool_choice"],
        json!({"type": "tool", "name": "f"})
    );
    assert_eq!(
        with("parallel_tool_calls", json!(false))["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert!(with("parallel_tool_calls", json!(true))
        .get("tool_choice")
        .is_none());
    let mut r = base();
    r["tool_choice"] = json!("required");
    r["parallel_tool_calls"] = json!(false);
    assert_eq!(
        chat_to_messages(&r, MODEL, 1).unwrap()["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    // Without tools, no tool_choice.
    let r = json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required", "parallel_tool_calls": false});
    assert!(chat_to_messages(&r, MODEL, 1)
        .unwrap()
        .get("tool_choice")
        .is_none());
    // Ignored OpenAI-only parameters.
    let mut r = base();
    for (k, v) in [
        ("seed", json!(1)),
        ("logprobs", json!(true)),
        ("presence_penalty", json!(0.5)),
        ("response_format", json!({"type": "text"})),
        ("stream_options", json!({"include_usage": true})),
    ] {
        r[k] = v;
    }
    let out = chat_to_messages(&r, MODEL, 1).unwrap();
    let keys: Vec<&str> = out
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["model", "max_tokens", "messages", "tools"]);
}

/// OpenAI accepts a function schema without a top-level `type` (`{}` for a
/// tool without parameters, or bare `properties`); Anthropic refuses the whole
/// request without `input_schema.type`, so `object` is added, and nothing else
/// of the schema changes.
#[test]
fn tool_schemas_without_a_type_become_object_schemas() {
    let tool = |parameters: Value| json!({"type": "function", "function": {"name": "f", "parameters": parameters}});
    let req = json!({"messages": [{"role": "user", "content": "x"}], "tools": [
        tool(json!({})),
        tool(json!({"properties": {"q": {"type": "string"}}, "required": ["q"]})),
        tool(json!({"type": "object", "properties": {}, "additionalProperties": false})),
    ]});
    let out = chat_to_messages(&req, MODEL, 1).unwrap();
    let schemas: Vec<&Value> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["input_schema"])
        .collect();
    assert_eq!(*schemas[0], json!({"type": "object"}));
    assert_eq!(
        *schemas[1],
        json!({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
    );
    assert_eq!(
        *schemas[2],
        json!({"type": "object", "properties": {}, "additionalProperties": false})
    );
}

fn base_max_tokens(req: &Value) -> u64 {
    chat_to_messages(req, MODEL, 4096).unwrap()["max_tokens"]
        .as_u64()
        .unwrap()
}

#[test]
fn assistant_refusal_and_empty_turns() {
    let req = json!({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        {"role": "user", "content": "y"},
        {"role": "assistant", "content": null},
        {"role": "user", "content": "z"},
    ]});
    let out = chat_to_messages(&req, MODEL, 1).unwrap();
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "I can't."},
            {"role": "user", "content": [{"type": "text", "text": "y"}, {"type": "text", "text": "z"}]},
        ])
    );
}

// ---------------------------------------------------------------------------
// Response: Anthropic → OpenAI

#[test]
fn golden_text_response() {
    let out = message_to_chat(&parse(A_RESPONSE), "smart", 1_755_133_833);
    let expected = json!({
        "id": "chatcmpl-01UUPT9QdZnZSRzcQJkjG25U",
        "object": "chat.completion",
        "created": 1_755_133_833,
        "model": "smart",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "It's 18 °C with light rain in Paris right now, so pack an umbrella and a light jacket.",
                "refusal": null,
                "annotations": [],
            },
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": 187 + 418 + 1111,
            "completion_tokens": 33,
            "total_tokens": 187 + 418 + 1111 + 33,
            "prompt_tokens_details": {"cached_tokens": 1111, "cache_write_tokens": 418},
        },
    });
    assert_eq!(out.to_string(), expected.to_string());
    // The same keys, in the same order, as a real OpenAI response.
    let real = parse(O_RESPONSE);
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&out), keys(&real)[..6]);
    assert_eq!(keys(&out["choices"][0]), keys(&real["choices"][0]));
    assert_eq!(
        keys(&out["choices"][0]["message"]),
        keys(&real["choices"][0]["message"])
    );
    assert_eq!(keys(&out["usage"])[..4], keys(&real["usage"])[..4]);
}

#[test]
fn golden_tool_use_response() {
    let out = message_to_chat(&parse(A_RESPONSE_TOOL_USE), "smart", 1);
    let msg = &out["choices"][0]["message"];
    assert_eq!(
        msg["content"],
        "I'll check the current weather in Paris for you."
    );
    assert_eq!(
        msg["tool_calls"],
        json!([{"id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}}])
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(out["usage"]["prompt_tokens"], 377);
    assert_eq!(out["usage"]["completion_tokens"], 65);
    assert_eq!(out["usage"]["total_tokens"], 442);
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // Same message shape as OpenAI's own tool-call response.
    let real = parse(O_RESPONSE_TOOL_CALLS);
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(msg), keys(&real["choices"][0]["message"]));
    assert_eq!(
        keys(&msg["tool_calls"][0]),
        keys(&real["choices"][0]["message"]["tool_calls"][0])
    );

    // Only a tool_use block: content is null, as OpenAI sends it.
    let mut only_tool = parse(A_RESPONSE_TOOL_USE);
    only_tool["content"].as_array_mut().unwrap().remove(0);
    let out = message_to_chat(&only_tool, "smart", 1);
    assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["id"],
        "toolu_01NRLabsLyVHZPKxbKvkfSMn"
    );
}

#[test]
fn every_stop_reason_maps_both_ways() {
    for (stop, finish, back) in [
        ("end_turn", "stop", "end_turn"),
        ("stop_sequence", "stop", "end_turn"),
        ("pause_turn", "stop", "end_turn"),
        ("max_tokens", "length", "max_tokens"),
        ("model_context_window_exceeded", "length", "max_tokens"),
        ("tool_use", "tool_calls", "tool_use"),
        ("refusal", "content_filter", "refusal"),
        ("something_new", "stop", "end_turn"),
    ] {
        let mut resp = parse(A_RESPONSE);
        resp["stop_reason"] = json!(stop);
        let chat = message_to_chat(&resp, "smart", 1);
        assert_eq!(chat["choices"][0]["finish_reason"], finish, "{stop}");
        assert_eq!(chat_to_message(&chat, MODEL)["stop_reason"], back, "{stop}");

        // Streamed too.
        let mut conv = MessagesStreamToChat::new("smart", 1, false);
        let data = json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 3}});
        let chunks = conv.on_event("message_delta", &data.to_string()).unwrap();
        assert_eq!(
            accumulate_chat(&chunks).finish.as_deref(),
            Some(finish),
            "{stop}"
        );
    }
    assert_eq!(stop_reason("function_call"), "tool_use");
}

#[test]
fn thinking_blocks_are_dropped() {
    let resp = json!({"id": "msg_1", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xx"},
        {"type": "text", "text": "Hi"},
    ], "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 2}});
    let out = message_to_chat(&resp, "m", 1);
    assert_eq!(out["choices"][0]["message"]["content"], "Hi");
    assert_eq!(out["usage"]["total_tokens"], 3);
}

// ---------------------------------------------------------------------------
// Stream: Anthropic → OpenAI

#[test]
fn golden_text_stream() {
    let (conv, chunks) = replay_anthropic(A_STREAM, true);
    let acc = accumulate_chat(&chunks);
    assert_eq!(acc.role.as_deref(), Some("assistant"));
    assert_eq!(acc.text, "2");
    assert_eq!(acc.finish.as_deref(), Some("stop"));
    assert!(acc
        .ids
        .iter()
        .all(|id| id == "chatcmpl-018E1hg8GoVTGEKQY3ovMcSJ"));
    let usage = acc.usage.unwrap();
    assert_eq!(usage["prompt_tokens"], 20);
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(usage["total_tokens"], 25);
    assert!(acc.usage_chunk_last);
    assert!(conv.is_finished() && conv.saw_finish());
    assert_eq!(conv.usage(), Some((20, 5)));
    assert_eq!(conv.upstream_model(), Some(MODEL));
    // role, "2", finish, usage: and in OpenAI's order.
    assert_eq!(chunks.len(), 4);
    let first = parse(&chunks[0]);
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    let keys: Vec<String> = first.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["id", "object", "created", "model", "choices"]);
    assert_eq!(parse(&chunks[2])["choices"][0]["delta"], json!({}));
}

#[test]
fn golden_tool_use_stream() {
    let (conv, chunks) = replay_anthropic(A_STREAM_TOOL_USE, true);
    let acc = accumulate_chat(&chunks);
    assert_eq!(acc.text, "I'll check the current weather in Paris for you.");
    assert_eq!(acc.tools.len(), 1);
    let (id, name, args) = &acc.tools[&0];
    assert_eq!(id, "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(name, "get_weather");
    assert_eq!(parse(args), json!({"city": "Paris", "unit": "celsius"}));
    assert_eq!(acc.finish.as_deref(), Some("tool_calls"));
    assert_eq!(acc.usage.unwrap()["completion_tokens"], 71);
    assert_eq!(conv.usage(), Some((412, 71)));
    // The tool-call start chunk has OpenAI's shape.
    let start = chunks
        .iter()
        .map(|c| parse(c))
        .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_string())
        .unwrap();
    assert_eq!(
        start["choices"][0]["delta"]["tool_calls"][0],
        json!({"index": 0, "id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}})
    );
    // The start chunk and three fragments: the empty first `partial_json` made none.
    let tool_chunks = chunks
        .iter()
        .filter(|c| parse(c)["choices"][0]["delta"]["tool_calls"].is_array())
        .count();
    assert_eq!(tool_chunks, 4);
}

#[test]
fn golden_recorded_sdk_tool_use_stream_agrees_with_the_unstreamed_response() {
    let (conv, chunks) = replay_anthropic(A_STREAM_SDK_TOOL_USE, false);
    let acc = accumulate_chat(&chunks);
    assert_eq!(acc.text, "I'll check the current weather in Paris for you.");
    let (id, name, args) = &acc.tools[&0];
    assert_eq!(id, "toolu_01NRLabsLyVHZPKxbKvkfSMn");
    assert_eq!(name, "get_weather");
    assert_eq!(parse(args), json!({"location": "Paris"}));
    assert_eq!(acc.finish.as_deref(), Some("tool_calls"));
    // No usage chunk unless asked for, but the gateway still learns the usage.
    assert!(acc.usage.is_none());
    assert_eq!(conv.usage(), Some((377, 65)));
    // The unstreamed twin of this stream has the same id, text, tool id and usage.
    let whole = message_to_chat(&parse(A_RESPONSE_TOOL_USE), "smart", 1);
    assert_eq!(acc.ids[0], whole["id"]);
    assert_eq!(acc.text, whole["choices"][0]["message"]["content"]);
    assert_eq!(*id, whole["choices"][0]["message"]["tool_calls"][0]["id"]);
    assert_eq!(conv.openai_usage().unwrap(), whole["usage"]);
}

#[test]
fn stream_error_event_becomes_a_stream_error() {
    let mut conv = MessagesStreamToChat::new("smart", 1, true);
    let mut chunks = Vec::new();
    let mut error = None;
    for (event, data) in sse_events(A_STREAM_ERROR) {
        match conv.on_event(&event, &data) {
            Ok(c) => chunks.extend(c),
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(
        accumulate_chat(&chunks).text,
        "Paris in late summer is usually"
    );
    let err = error.unwrap();
    let StreamError::Upstream(api) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(api.anthropic_type, "overloaded_error");
    assert_eq!(api.message, "Overloaded");
    assert_eq!(api.status, 503);
    assert_eq!(
        err.to_openai_error(),
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}})
    );
    assert_eq!(
        err.to_anthropic_event(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    assert_eq!(err.code(), "overloaded");
    assert!(conv.is_finished());
    assert!(!conv.saw_finish());
    assert_eq!(conv.usage(), Some((25, 1)));
    // Nothing after the end.
    assert!(conv
        .on_event("message_stop", "{\"type\":\"message_stop\"}")
        .unwrap()
        .is_empty());
}

#[test]
fn stream_edge_cases() {
    // ping, unknown events, and events without an `event:` name.
    let mut conv = MessagesStreamToChat::new("m", 1, false);
    assert!(conv
        .on_event("ping", "{\"type\": \"ping\"}")
        .unwrap()
        .is_empty());
    assert!(conv
        .on_event("brand_new_event", "not json at all")
        .unwrap()
        .is_empty());
    let start = json!({"type": "message_start", "message": {"id": "msg_X", "model": "claude", "usage": {
        "input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1}}});
    assert_eq!(conv.on_event("", &start.to_string()).unwrap().len(), 1);
    // Thinking blocks and their deltas are dropped; the tool index counts tool calls only.
    let events = [
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "a", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "t2", "name": "b", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"x\":1}"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        json!({"type": "message_stop"}),
    ];
    let mut chunks = Vec::new();
    for e in &events {
        chunks.extend(
            conv.on_event(e["type"].as_str().unwrap(), &e.to_string())
                .unwrap(),
        );
    }
    let acc = accumulate_chat(&chunks);
    assert_eq!(acc.text, "");
    assert_eq!(acc.tools[&0], ("t1".into(), "a".into(), "{}".into()));
    assert_eq!(acc.tools[&1], ("t2".into(), "b".into(), "{\"x\":1}".into()));
    // Cache reads and writes count as prompt tokens.
    assert_eq!(conv.usage(), Some((115, 9)));
    let usage = conv.openai_usage().unwrap();
    assert_eq!(
        usage["prompt_tokens_details"],
        json!({"cached_tokens": 100, "cache_write_tokens": 5})
    );
    assert!(conv.is_finished());
    // A known event with broken data is an error.
    let mut conv = MessagesStreamToChat::new("m", 1, false);
    let err = conv.on_event("content_block_delta", "{broken").unwrap_err();
    assert!(matches!(err, StreamError::Malformed { .. }));
    assert_eq!(err.to_openai_error()["error"]["code"], "stream_malformed");
}

/// A tool without parameters: Anthropic streams an empty `input` and only an
/// empty `partial_json`. OpenAI clients parse the accumulated `arguments`, so
/// it must be `"{}"` (as OpenAI streams it and the unstreamed translation gives),
/// not `""`; a tool whose input came whole at the start gets nothing more.
#[test]
fn a_streamed_tool_call_without_arguments_has_empty_object_arguments() {
    let mut conv = MessagesStreamToChat::new("m", 1, false);
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_X", "model": "claude", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t1", "name": "snooze", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t2", "name": "f", "input": {"x": 1}}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "t3", "name": "g", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"y\":"}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "2}"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        json!({"type": "message_stop"}),
    ];
    let mut chunks = Vec::new();
    for e in &events {
        chunks.extend(
            conv.on_event(e["type"].as_str().unwrap(), &e.to_string())
                .unwrap(),
        );
    }
    let acc = accumulate_chat(&chunks);
    assert_eq!(acc.tools[&0], ("t1".into(), "snooze".into(), "{}".into()));
    assert_eq!(acc.tools[&1], ("t2".into(), "f".into(), "{\"x\":1}".into()));
    assert_eq!(acc.tools[&2], ("t3".into(), "g".into(), "{\"y\":2}".into()));
    assert_eq!(acc.finish.as_deref(), Some("tool_calls"));
}

// ---------------------------------------------------------------------------
// Front door: Anthropic client → OpenAI route

#[test]
fn golden_messages_request_to_chat() {
    let out = messages_to_chat(&parse(A_REQUEST_TOOL_RESULT), "gpt-4o-mini").unwrap();
    let expected = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a concise travel assistant. Use tools when they help."},
            {"role": "user", "content": "I'm going to Paris next week."},
            {"role": "assistant", "content": "Lovely! What would you like help with?"},
            {"role": "user", "content": [
                {"type": "text", "text": "What's the weather like there right now? Here is the forecast screenshot I have."},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}},
            ]},
            {"role": "assistant", "content": "I'll check the current weather in Paris for you.", "tool_calls": [
                {"id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
             "content": "{\"temp_c\":18,\"conditions\":\"light rain\"}"},
        ],
        "max_tokens": 1024,
        "stop": ["</answer>"],
        "temperature": 0.2,
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given city",
            "parameters": parse(A_REQUEST)["tools"][0]["input_schema"].clone(),
        }}],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "user": "user-1234",
        "stream": false,
    });
    assert_eq!(out.to_string(), expected.to_string());
}

#[test]
fn request_round_trips_preserve_meaning() {
    // Anthropic → OpenAI → Anthropic: identical but for cache_control.
    for fixture in [A_REQUEST, A_REQUEST_TOOL_RESULT] {
        let original = parse(fixture);
        let chat = messages_to_chat(&original, "gpt-4o").unwrap();
        let back = chat_to_messages(&chat, MODEL, 1).unwrap();
        assert_eq!(
            back.to_string(),
            without_cache_control(original).to_string()
        );
    }
    // OpenAI → Anthropic → OpenAI: the same conversation and settings.
    let original = openai_conversation(6);
    let back = messages_to_chat(&chat_to_messages(&original, MODEL, 1).unwrap(), "gpt-4o").unwrap();
    let mut expected_messages = original["messages"].clone();
    // `detail` and `refusal: null` have no Anthropic equivalent.
    expected_messages[3]["content"][1]["image_url"]
        .as_object_mut()
        .unwrap()
        .remove("detail");
    expected_messages[4]
        .as_object_mut()
        .unwrap()
        .remove("refusal");
    assert_eq!(back["messages"], expected_messages);
    assert_eq!(back["max_tokens"], original["max_completion_tokens"]);
    assert_eq!(back["stop"], json!([original["stop"]]));
    for k in [
        "temperature",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "stream",
    ] {
        assert_eq!(back[k], original[k], "{k}");
    }
    let mut tools = original["tools"].clone();
    tools[0]["function"]
        .as_object_mut()
        .unwrap()
        .remove("strict");
    assert_eq!(back["tools"], tools);

    // The streaming OpenAI fixture request too.
    let original = parse(O_REQUEST);
    let back = messages_to_chat(
        &chat_to_messages(&original, MODEL, 1).unwrap(),
        "gpt-4o-mini",
    )
    .unwrap();
    assert_eq!(back["messages"], original["messages"]);
    assert_eq!(back["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        back["tools"][0]["function"]["parameters"],
        original["tools"][0]["function"]["parameters"]
    );
}

#[test]
fn messages_request_options() {
    let req = json!({
        "model": "claude", "max_tokens": 300, "stream": true, "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 100},
        "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "...", "signature": "s"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "is_error": true, "content": [
                    {"type": "text", "text": "failed"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ]},
                {"type": "text", "text": "see the screenshot"},
            ]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
    });
    let out = messages_to_chat_with(&req, "o3", MaxTokensField::MaxCompletionTokens).unwrap();
    assert_eq!(out["max_completion_tokens"], 300);
    assert!(
        out.get("max_tokens").is_none()
            && out.get("top_k").is_none()
            && out.get("thinking").is_none()
    );
    assert_eq!(out["stream"], true);
    assert_eq!(out["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        out["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(out["parallel_tool_calls"], false);
    assert_eq!(
        out["messages"],
        json!([
            {"role": "system", "content": "a\nb"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "failed"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "see the screenshot"},
            ]},
        ])
    );
    for (choice, expected) in [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
    ] {
        let mut r = req.clone();
        r["tool_choice"] = choice;
        assert_eq!(messages_to_chat(&r, "x").unwrap()["tool_choice"], expected);
    }
    // Server tools and unknown blocks are refused, naming the field.
    let mut r = req.clone();
    r["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"}]);
    assert_eq!(
        messages_to_chat(&r, "x").unwrap_err().param(),
        Some("tools.0.type")
    );
    let r = json!({"max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "search_result", "source": "x", "title": "t", "content": []}]}]});
    let err = messages_to_chat(&r, "x").unwrap_err();
    assert_eq!(err.param(), Some("messages.0.content.0.type"));
    assert_eq!(
        err.to_anthropic_error()["error"]["type"],
        "invalid_request_error"
    );
}

/// `metadata.user_id` → `user`: kept when OpenAI accepts it (at most 64
/// characters); Claude Code's long structured id, which OpenAI refuses with a
/// 400, becomes a stable 64-character digest that still separates users.
#[test]
fn a_long_metadata_user_id_fits_openais_user_limit() {
    let with_user = |id: &str| {
        let req = json!({"max_tokens": 8, "metadata": {"user_id": id},
            "messages": [{"role": "user", "content": "Hi"}]});
        messages_to_chat(&req, "gpt-4o").unwrap()["user"].clone()
    };
    assert_eq!(with_user("user-42"), json!("user-42"));
    let max = "u".repeat(64);
    assert_eq!(with_user(&max), json!(max));
    let claude_code = format!(
        "user_{}_account_0f3c2d1e-8a9b-4c5d-9e8f-7a6b5c4d3e2f_session_1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "ab12".repeat(16)
    );
    let user = with_user(&claude_code);
    let user = user.as_str().unwrap();
    assert_eq!(user.chars().count(), 64, "{user}");
    assert_eq!(with_user(&claude_code), json!(user));
    assert_ne!(with_user(&format!("{claude_code}x")), json!(user));
}

#[test]
fn golden_chat_response_to_message() {
    let out = chat_to_message(&parse(O_RESPONSE), MODEL);
    let expected = json!({
        "id": "msg_C4Gm9xikLXbgE8He0BHWeoM03aa72",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Paris is usually mild in late summer: expect highs around 24 °C and lows near 15 °C. Pack a light jacket for the evenings."}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 1418 - 1280, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1280, "output_tokens": 31},
    });
    assert_eq!(out.to_string(), expected.to_string());

    let out = chat_to_message(&parse(O_RESPONSE_TOOL_CALLS), MODEL);
    assert_eq!(
        out["content"],
        json!([{"type": "tool_use", "id": "call_8fxy20OEu9ulvvaa5b5CzVA4", "name": "get_weather",
            "input": {"city": "Paris", "unit": "celsius"}}])
    );
    assert_eq!(out["stop_reason"], "tool_use");
    assert_eq!(out["usage"]["input_tokens"], 92);
    assert_eq!(out["usage"]["output_tokens"], 19);
}

#[test]
fn response_round_trips_preserve_meaning() {
    for fixture in [A_RESPONSE, A_RESPONSE_TOOL_USE] {
        let original = parse(fixture);
        let back = chat_to_message(&message_to_chat(&original, "smart", 1), MODEL);
        for k in [
            "id",
            "type",
            "role",
            "model",
            "content",
            "stop_reason",
            "stop_sequence",
        ] {
            assert_eq!(back[k], original[k], "{k}");
        }
        for k in [
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
        ] {
            assert_eq!(back["usage"][k], original["usage"][k], "{k}");
        }
    }
    for fixture in [O_RESPONSE, O_RESPONSE_TOOL_CALLS] {
        let original = parse(fixture);
        let back = message_to_chat(&chat_to_message(&original, MODEL), "gpt-4o-mini", 7);
        assert_eq!(back["id"], original["id"]);
        let (b, o) = (&back["choices"][0], &original["choices"][0]);
        assert_eq!(b["finish_reason"], o["finish_reason"]);
        assert_eq!(b["message"]["content"], o["message"]["content"]);
        let calls = |v: &Value| -> Vec<(Value, Value, Value)> {
            v["message"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["id"].clone(),
                        c["function"]["name"].clone(),
                        parse(c["function"]["arguments"].as_str().unwrap()),
                    )
                })
                .collect()
        };
        assert_eq!(calls(b), calls(o));
        for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(back["usage"][k], original["usage"][k], "{k}");
        }
        assert_eq!(
            back["usage"]["prompt_tokens_details"]["cached_tokens"],
            original["usage"]["prompt_tokens_details"]["cached_tokens"]
        );
    }
}

#[test]
fn invalid_arguments_from_an_openai_model_are_kept_raw() {
    let resp = json!({"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": ""}},
        ]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}});
    let out = chat_to_message(&resp, "m");
    assert_eq!(
        out["content"][0]["input"],
        json!({"_raw_arguments": "{\"x\": 1"})
    );
    assert_eq!(out["content"][1]["input"], json!({}));
    assert_eq!(out["usage"]["input_tokens"], 10);
    // A refusal becomes text.
    let refusal = json!({"id": "chatcmpl-2", "choices": [{"index": 0, "message": {"role": "assistant",
        "content": null, "refusal": "I can't help with that."}, "finish_reason": "content_filter"}]});
    let out = chat_to_message(&refusal, "m");
    assert_eq!(
        out["content"],
        json!([{"type": "text", "text": "I can't help with that."}])
    );
    assert_eq!(out["stop_reason"], "refusal");
}

#[test]
fn golden_openai_streams_to_anthropic_events() {
    // Text, with the usage chunk.
    let (conv, events) = replay_openai(&openai_chunks(O_STREAM));
    let acc = accumulate_message(&events);
    assert_eq!(
        acc.names,
        ["message_start", "content_block_start"]
            .into_iter()
            .chain(std::iter::repeat_n("content_block_delta", 7))
            .chain(["content_block_stop", "message_delta", "message_stop"])
            .collect::<Vec<_>>()
    );
    assert_eq!(acc.id, "msg_C42qMU7kWb5oGqYt3hZ8aLrN1vXeD");
    assert_eq!(acc.text(), "The capital of France is Paris.");
    assert_eq!(acc.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(acc.usage["input_tokens"], 24);
    assert_eq!(acc.usage["output_tokens"], 8);
    assert!(conv.is_finished() && conv.saw_finish());
    assert_eq!(conv.usage(), Some((24, 8)));
    let start = parse(&events[0].1);
    assert_eq!(start["message"]["model"], MODEL);
    assert_eq!(start["message"]["content"], json!([]));

    // One tool call: a text-less tool_use block at index 0.
    let (_, events) = replay_openai(&openai_chunks(O_STREAM_TOOL_CALLS));
    let acc = accumulate_message(&events);
    assert_eq!(acc.text(), "");
    assert_eq!(
        acc.tools(),
        [(
            "call_4XzlGBLtUe9dy3GVNV4jhq7h".into(),
            "get_weather".into(),
            json!({"city": "Paris", "unit": "celsius"})
        )]
    );
    assert_eq!(acc.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(acc.usage["input_tokens"], 92);
    assert_eq!(acc.usage["output_tokens"], 19);

    // Two parallel tool calls (recorded): two tool_use blocks, in order.
    let (_, events) = replay_openai(&openai_chunks(O_STREAM_PARALLEL));
    let acc = accumulate_message(&events);
    let tools = acc.tools();
    assert_eq!(tools.len(), 2);
    assert_eq!(tools[0].0, "call_JMW1whyEaYG438VE1OIflxA2");
    assert_eq!(tools[0].1, "GetWeatherArgs");
    assert_eq!(tools[0].2["city"], "Edinburgh");
    assert_eq!(tools[1].0, "call_DNYTawLBoN8fj3KN6qU9N1Ou");
    assert_eq!(tools[1].1, "get_stock_price");
    assert!(tools[1].2.is_object());
    assert_eq!(acc.stop_reason.as_deref(), Some("tool_use"));

    // Length without visible text (recorded reasoning model).
    let (_, events) = replay_openai(&openai_chunks(O_STREAM_LENGTH));
    let acc = accumulate_message(&events);
    assert!(acc.blocks.is_empty());
    assert_eq!(acc.stop_reason.as_deref(), Some("max_tokens"));
    assert_eq!(acc.usage["input_tokens"], 12);
    assert_eq!(acc.usage["output_tokens"], 100);

    // Recorded gpt-4o text stream.
    let chunks = openai_chunks(O_STREAM_GPT4O);
    let expected = accumulate_chat(&chunks);
    let (_, events) = replay_openai(&chunks);
    assert_eq!(accumulate_message(&events).text(), expected.text);
}

#[test]
fn openai_stream_without_usage_and_truncated_and_error() {
    // Without a usage chunk, the end comes at [DONE].
    let chunks: Vec<String> = openai_chunks(O_STREAM)
        .into_iter()
        .filter(|c| !c.contains("\"choices\":[]"))
        .collect();
    let mut conv = ChatStreamToMessages::new("m");
    let mut names = Vec::new();
    for c in &chunks[..chunks.len() - 1] {
        names.extend(conv.on_chunk(c).unwrap().into_iter().map(|(e, _)| e));
    }
    assert_eq!(names.last(), Some(&"content_block_stop"));
    assert!(!conv.is_finished());
    let end = conv.on_chunk("[DONE]").unwrap();
    assert_eq!(
        end.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        ["message_delta", "message_stop"]
    );
    assert_eq!(parse(&end[0].1)["usage"]["output_tokens"], 0);
    assert!(conv.on_chunk("[DONE]").unwrap().is_empty());

    // Cut before the finish reason.
    let mut conv = ChatStreamToMessages::new("m");
    for c in &chunks[..3] {
        conv.on_chunk(c).unwrap();
    }
    assert_eq!(conv.finish().unwrap_err(), StreamError::Truncated);
    assert_eq!(
        StreamError::Truncated.to_anthropic_event()["error"]["type"],
        "api_error"
    );

    // An error chunk mid-stream.
    let mut conv = ChatStreamToMessages::new("m");
    conv.on_chunk(&chunks[0]).unwrap();
    let err = conv
        .on_chunk(r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#)
        .unwrap_err();
    assert_eq!(
        err.to_anthropic_event(),
        json!({"type": "error", "error": {"type": "api_error", "message": "The server had an error"}})
    );
    assert!(conv.is_finished());

    // Full chain: Anthropic stream → OpenAI chunks → Anthropic events.
    for sse in [A_STREAM, A_STREAM_TOOL_USE, A_STREAM_SDK_TOOL_USE] {
        let original = accumulate_message(
            &sse_events(sse)
                .into_iter()
                .filter(|(e, _)| e != "ping")
                .collect::<Vec<_>>(),
        );
        let (_, mut chunks) = replay_anthropic(sse, true);
        chunks.push("[DONE]".into());
        let (_, events) = replay_openai(&chunks);
        let back = accumulate_message(&events);
        assert_eq!(back.text(), original.text());
        assert_eq!(back.tools(), original.tools());
        assert_eq!(back.stop_reason, original.stop_reason);
        assert_eq!(back.usage["output_tokens"], original.usage["output_tokens"]);
        assert_eq!(back.usage["input_tokens"], original.usage["input_tokens"]);
        assert_eq!(back.id, original.id);
    }
}

#[test]
fn sse_frame() {
    assert_eq!(
        anthropic_sse_frame("message_stop", "{\"type\":\"message_stop\"}"),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    );
    // Data of several lines: a `data:` field per line, as sse::frame writes it.
    let data = "{\"type\":\"ping\",\n \"n\":1\n}";
    let framed = anthropic_sse_frame("ping", data);
    assert_eq!(
        framed,
        "event: ping\ndata: {\"type\":\"ping\",\ndata:  \"n\":1\ndata: }\n\n"
    );
    assert_eq!(
        framed.as_bytes(),
        &crate::providers::sse::frame("ping", data, b"")[..]
    );
}

// ---------------------------------------------------------------------------
// Errors

#[test]
fn anthropic_errors_for_openai_clients() {
    let (status, body) = anthropic_error_to_openai(529, A_ERROR_OVERLOADED.as_bytes());
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}})
    );
    let (status, body) = anthropic_error_to_openai(429, A_ERROR_429.as_bytes());
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        body["error"]["message"],
        parse(A_ERROR_429)["error"]["message"]
    );
    let (status, body) = anthropic_error_to_openai(401, A_ERROR_401.as_bytes());
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["message"], "invalid x-api-key");
    let keys: Vec<&String> = body["error"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["message", "type", "param", "code"]);

    let nf = br#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}"#;
    assert_eq!(
        anthropic_error_to_openai(404, nf).1["error"]["code"],
        "model_not_found"
    );
    let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
    let (status, body) = anthropic_error_to_openai(400, bad);
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    // Not Anthropic's JSON (a proxy's HTML page): the status decides.
    let (status, body) = anthropic_error_to_openai(502, b"<html>Bad gateway</html>");
    assert_eq!(status, 502);
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(
        body["error"]["message"],
        "The upstream provider returned HTTP 502."
    );
    assert_eq!(anthropic_error_to_openai(529, b"").0, 503);
}

#[test]
fn openai_errors_for_anthropic_clients() {
    let cases = [
        (400, O_ERROR_400, "invalid_request_error"),
        (401, O_ERROR_401, "authentication_error"),
        (429, O_ERROR_429, "rate_limit_error"),
        (429, O_ERROR_QUOTA, "billing_error"),
        (500, O_ERROR_500, "api_error"),
    ];
    for (status, body, kind) in cases {
        let body = parse(body);
        let out = openai_error_to_anthropic(status, &body);
        assert_eq!(
            out,
            json!({"type": "error", "error": {"type": kind, "message": body["error"]["message"]}}),
            "{status} {kind}"
        );
    }
    for (status, kind) in [
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (502, "api_error"),
        (422, "invalid_request_error"),
    ] {
        let out = openai_error_to_anthropic(status, &json!({"detail": "x"}));
        assert_eq!(out["error"]["type"], kind, "{status}");
        assert_eq!(
            out["error"]["message"],
            format!("The upstream provider returned HTTP {status}.")
        );
    }
}

/// Cache writes for an hour are priced apart from the default five minutes:
/// their count is read from `usage.cache_creation`, and kept when a later
/// `message_delta` repeats the total of the writes without the breakdown;
/// an answer without one (older API versions, OpenAI's usage) has none.
#[test]
fn the_one_hour_share_of_cache_writes_is_read_and_kept() {
    let start = json!({"input_tokens": 20, "cache_creation_input_tokens": 500,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 100},
        "output_tokens": 1});
    let mut t = Tokens::from_anthropic(Some(&start));
    assert_eq!((t.cache_creation, t.cache_creation_1h), (500, Some(100)));
    let delta = json!({"input_tokens": 20, "cache_creation_input_tokens": 500,
        "cache_read_input_tokens": 0, "output_tokens": 5});
    t.update_from_anthropic(Some(&delta));
    assert_eq!(
        (t.cache_creation, t.cache_creation_1h, t.output),
        (500, Some(100), 5)
    );
    let older = json!({"input_tokens": 20, "cache_creation_input_tokens": 500, "output_tokens": 5});
    assert_eq!(Tokens::from_anthropic(Some(&older)).cache_creation_1h, None);
    let openai = json!({"prompt_tokens": 520, "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 500}});
    let t = Tokens::from_openai(&openai);
    assert_eq!(
        (t.input, t.cache_creation, t.cache_creation_1h),
        (20, 500, None)
    );
}

/// A JSON schema as the OpenAI SDK's `parse()` sends it (strict: closed,
/// every property required).
fn strict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
        },
        "required": ["name", "tags"],
        "additionalProperties": false,
        "$defs": {"Tag": {
            "type": "object",
            "properties": {"label": {"type": "string"}},
            "required": ["label"],
            "additionalProperties": false,
        }},
    })
}

/// `response_format: json_schema` is Anthropic's structured output, with the
/// schema as it was; `text` and `json_object` send nothing (Anthropic has no
/// JSON mode without a schema), and a format without a schema, or of an
/// unknown type, is refused naming the field.
#[test]
fn response_format_json_schema_becomes_output_config_format() {
    let mut r = json!({"messages": [{"role": "user", "content": "x"}]});
    r["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": strict_schema()}});
    let out = chat_to_messages(&r, MODEL, 1).unwrap();
    assert_eq!(
        out["output_config"],
        json!({"format": {"type": "json_schema", "schema": strict_schema()}})
    );
    for ignored in [json!({"type": "text"}), json!({"type": "json_object"})] {
        r["response_format"] = ignored;
        let out = chat_to_messages(&r, MODEL, 1).unwrap();
        assert!(out.get("output_config").is_none(), "{out}");
    }
    for (format, param) in [
        (
            json!({"type": "json_schema", "json_schema": {"name": "p"}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "p", "schema": "object"}}),
            "response_format.json_schema.schema",
        ),
        (json!({"type": "yaml"}), "response_format.type"),
        (json!("json_object"), "response_format.type"),
    ] {
        r["response_format"] = format;
        let err = chat_to_messages(&r, MODEL, 1).unwrap_err();
        assert_eq!(err.param(), Some(param), "{err:?}");
        assert_eq!(
            err.to_openai_error()["error"]["type"],
            "invalid_request_error"
        );
    }
}

/// The other way, a structured output asked of an OpenAI route: the schema
/// goes into `response_format`, strict when OpenAI's strict mode takes it.
#[test]
fn output_config_format_becomes_response_format_json_schema() {
    let base =
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    let format = json!({"type": "json_schema", "schema": strict_schema()});
    let want = json!({"type": "json_schema", "json_schema": {"name": "output", "schema": strict_schema(), "strict": true}});
    let mut r = base.clone();
    r["output_config"] = json!({"format": format, "effort": "low"});
    let out = messages_to_chat(&r, "gpt-4o").unwrap();
    assert_eq!(out["response_format"], want);
    assert!(out.get("output_config").is_none() && out.get("reasoning_effort").is_none());
    // The beta's parameter.
    let mut r = base.clone();
    r["output_format"] = format.clone();
    assert_eq!(
        messages_to_chat(&r, "gpt-4o").unwrap()["response_format"],
        want
    );
    // An optional property, an open nested object: not strict.
    for (path, value) in [
        ("/required", json!(["name"])),
        ("/$defs/Tag/additionalProperties", json!(true)),
    ] {
        let mut schema = strict_schema();
        *schema.pointer_mut(path).unwrap() = value;
        let mut r = base.clone();
        r["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
        let out = messages_to_chat(&r, "gpt-4o").unwrap();
        assert_eq!(
            out["response_format"]["json_schema"]["strict"], false,
            "{path}"
        );
        assert_eq!(out["response_format"]["json_schema"]["schema"], schema);
    }
    // No format, or effort alone: no response_format.
    let mut r = base.clone();
    r["output_config"] = json!({"effort": "high"});
    assert!(messages_to_chat(&r, "gpt-4o")
        .unwrap()
        .get("response_format")
        .is_none());
    // Refused: another type, no schema.
    for (format, param) in [
        (json!({"type": "json_object"}), "output_config.format.type"),
        (
            json!({"type": "json_schema"}),
            "output_config.format.schema",
        ),
    ] {
        let mut r = base.clone();
        r["output_config"] = json!({ "format": format });
        let err = messages_to_chat(&r, "gpt-4o").unwrap_err();
        assert_eq!(err.param(), Some(param), "{err:?}");
    }
}
