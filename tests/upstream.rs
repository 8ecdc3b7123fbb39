//! Point 5: what goes upstream (provider key injected, gateway key never
//! forwarded, body unchanged but for `model` and `stream_options`), what comes
//! back (identifying headers stripped, errors reshaped), timeouts, and h2c.

use crate::support::*;
use serde_json::{json, Value};

#[tokio::test]
async fn provider_key_replaces_gateway_key_and_only_model_is_rewritten() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    let mut body = chat_body("gpt-4o-mini");
    body["temperature"] = json!(0.25);
    body["user"] = json!("end-user-7");
    body["tools"] =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .header("x-api-key", ACME_DENTAL.2)
        .header("openai-organization", "org-client")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = mock.last_request();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.headers.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {PROVIDER_KEY}")
    );
    let all_headers = format!("{:?}", seen.headers);
    assert!(
        !all_headers.contains(ACME_DENTAL.2),
        "gateway key leaked upstream: {all_headers}"
    );
    assert!(!all_headers.contains("org-client"));
    let mut expected = body.clone();
    expected["model"] = json!("gpt-4o-mini-2024-07-18");
    assert_eq!(seen.body, expected);
}
