//! Branding (`[resellers.branding]`): what a reseller's tenants see names
//! that reseller — its response headers, its key page in a 401 — and never
//! another reseller; an unbranded reseller's tenants see what they always did.

use crate::support::*;
use serde_json::{json, Value};

const ACME_KEYS_URL: &str = "https://acme.example/account/keys";

/// The standard configuration with acme branded and plan `basic` (realty's)
/// downgrading a model outside it to `gpt-4o-mini`.
fn branded_config(mock: &MockProvider) -> String {
    let config = standard_config(&mock.base_url(), "");
    let acme = format!("domains = [\"{ACME_HOST}\"]\n");
    let basic = "name = \"basic\"\n";
    assert!(config.contains(&acme) && config.contains(basic));
    config
        .replacen(
            &acme,
            &format!(
                "{acme}\n[resellers.branding]\nkey_prefix = \"sk-acme-\"\n\
                 keys_url = \"{ACME_KEYS_URL}\"\nheader_prefix = \"x-acme-\"\n"
            ),
            1,
        )
        .replacen(
            basic,
            &format!("{basic}disallowed_model = \"downgrade\"\ndowngrade_to = \"gpt-4o-mini\"\n"),
            1,
        )
}

/// Every header name and value of `resp`, lowercased, as `name: value` lines.
fn header_text(resp: &reqwest::Response) -> String {
    resp.headers()
        .iter()
        .map(|(n, v)| format!("{n}: {}\n", v.to_str().unwrap_or("")).to_lowercase())
        .collect()
}

async fn chat_from_browser(
    gw: &TestGateway,
    host: &str,
    key: &str,
    model: &str,
) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .header("host", host)
        .header("origin", "https://app.tenant.example")
        .bearer_auth(key)
        .json(&chat_body(model))
        .send()
        .await
        .unwrap()
}

/// The gateway's own headers (served model, downgrade, estimated count, and
/// CORS's list of them) carry acme's prefix on acme's answers, and nothing
/// in them names the platform; globex, unbranded, keeps `x-livery-`.
#[tokio::test]
async fn a_resellers_answers_carry_its_header_names_and_not_the_platforms() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::start(&branded_config(&mock)).await;

    let resp = chat_from_browser(&gw, ACME_HOST, ACME_DENTAL.2, "gpt-4o-mini").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-acme-model"], "gpt-4o-mini");
    let exposed: Vec<&str> = resp
        .headers()
        .get_all("access-control-expose-headers")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(str::trim)
        .collect();
    for name in ["x-acme-model", "x-acme-downgraded-from", "x-request-id"] {
        assert!(exposed.contains(&name), "{exposed:?}");
    }
    let headers = header_text(&resp);
    assert!(!headers.contains("livery"), "{headers}");

    // Realty's plan lacks `premium`: downgraded, under acme's names.
    let resp = chat_from_browser(&gw, ACME_HOST, ACME_REALTY.2, "premium").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-acme-model"], "gpt-4o-mini");
    assert_eq!(resp.headers()["x-acme-downgraded-from"], "premium");
    let headers = header_text(&resp);
    assert!(!headers.contains("livery"), "{headers}");

    // A count on a model with only an OpenAI route is the gateway's estimate.
    let count = json!({"model": "gpt-4o-mini", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Count me."}]});
    let resp = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .header("host", ACME_HOST)
        .header("x-api-key", ACME_DENTAL.2)
        .header("anthropic-version", "2023-06-01")
        .json(&count)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-acme-estimated"], "true");
    assert_eq!(resp.headers()["x-acme-model"], "gpt-4o-mini");
    let headers = header_text(&resp);
    assert!(!headers.contains("livery"), "{headers}");

    // Globex sets no brand: its tenants' clients read what they always read,
    // and nothing of acme's brand reaches them.
    let resp = chat_from_browser(&gw, GLOBEX_HOST, GLOBEX_CLINIC.2, "gpt-4o-mini").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-livery-model"], "gpt-4o-mini");
    let headers = header_text(&resp);
    assert!(
        headers.contains("x-livery-model, x-livery-downgraded-from"),
        "{headers}"
    );
    assert!(!headers.contains("acme"), "{headers}");
    gw.shutdown().await;
}

async fn refusal(gw: &TestGateway, path: &str, host: &str, key: Option<&str>) -> (u16, Value) {
    let mut rb = client()
        .post(gw.url(path))
        .header("host", host)
        .json(&chat_body("gpt-4o-mini"));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let resp = rb.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// A missing or wrong key at acme is told where acme's tenants find theirs,
/// in either dialect; at globex (no brand), or at a host no reseller
/// serves, the message names no page, and acme's key at globex is refused
/// exactly as any unknown key there: nothing of acme's brand leaks.
#[tokio::test]
async fn a_refused_key_is_sent_to_the_resellers_key_page_and_nowhere_else() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::start(&branded_config(&mock)).await;
    let tail = format!(" You can find your API key at {ACME_KEYS_URL}.");

    let (status, body) = refusal(
        &gw,
        "/v1/chat/completions",
        ACME_HOST,
        Some("sk-acme-FAKE-wrong"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        format!("Incorrect API key provided.{tail}")
    );
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (status, body) = refusal(&gw, "/v1/chat/completions", ACME_HOST, None).await;
    assert_eq!(status, 401);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("You didn't provide an API key.") && message.ends_with(&tail),
        "{message}"
    );
    // Anthropic's dialect: its own words, then the page.
    let (status, body) = refusal(&gw, "/v1/messages", ACME_HOST, None).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        format!("x-api-key header is required.{tail}")
    );
    let (status, body) = refusal(&gw, "/v1/messages", ACME_HOST, Some("sk-acme-FAKE-wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        format!("Incorrect API key provided.{tail}")
    );

    // Globex: no brand, no page; acme's key there is any unknown key.
    for key in [Some("sk-FAKE-wrong"), Some(ACME_DENTAL.2)] {
        let (status, body) = refusal(&gw, "/v1/chat/completions", GLOBEX_HOST, key).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["message"], "Incorrect API key provided.");
    }
    let (_, body) = refusal(&gw, "/v1/messages", GLOBEX_HOST, None).await;
    assert_eq!(body["error"]["message"], "x-api-key header is required");
    // A host no reseller serves learns of no reseller.
    let (status, body) = refusal(
        &gw,
        "/v1/chat/completions",
        "ai.spoofed.test",
        Some(ACME_DENTAL.2),
    )
    .await;
    assert_eq!(status, 404);
    assert!(!body.to_string().contains("acme"), "{body}");
    // Past the key, errors are the same for every reseller.
    let (status, body) = refusal(
        &gw,
        "/v1/chat/completions",
        ACME_HOST,
        Some(ACME_SUSPENDED_KEY),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.to_string().contains(ACME_KEYS_URL), "{body}");
    gw.shutdown().await;
}

/// A brand the gateway cannot use is refused at start with the field named,
/// and a reload carrying one is refused while the running brand serves on.
#[tokio::test]
async fn a_bad_brand_is_refused_with_its_field() {
    let mock = MockProvider::start().await;
    let good = branded_config(&mock);
    for (from, to, field) in [
        (
            "header_prefix = \"x-acme-\"",
            "header_prefix = \"X-Acme\"",
            "branding.header_prefix",
        ),
        (
            &*format!("keys_url = \"{ACME_KEYS_URL}\""),
            "keys_url = \"acme.example/keys\"",
            "branding.keys_url",
        ),
        (
            "key_prefix = \"sk-acme-\"",
            "key_prefix = \"sk acme\"",
            "branding.key_prefix",
        ),
        (
            "key_prefix = \"sk-acme-\"",
            "key_prefix = \"sk-acme-\"\nlogo = \"x.png\"",
            "logo",
        ),
    ] {
        assert!(good.contains(from));
        let bad = good.replacen(from, to, 1);
        let err = match livery::config::GatewayConfig::parse(&bad) {
            Err(e) => e.to_string(),
            Ok(config) => match livery::Gateway::start(config).await {
                Err(e) => format!("{e:#}"),
                Ok(_) => panic!("a bad brand ({to}) was accepted"),
            },
        };
        assert!(err.contains(field), "{to}: {err}");
    }

    let gw = TestGateway::start(&good).await;
    let bad = good.replacen(
        "header_prefix = \"x-acme-\"",
        "header_prefix = \"x-\u{e9}-\"",
        1,
    );
    let mut bad = livery::config::GatewayConfig::parse(&bad).unwrap();
    bad.usage.jsonl_path = Some(gw.usage_path.clone());
    let err = gw
        .gateway
        .as_ref()
        .unwrap()
        .reload(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("branding.header_prefix"), "{err}");
    let resp = chat_from_browser(&gw, ACME_HOST, ACME_DENTAL.2, "gpt-4o-mini").await;
    assert_eq!(resp.headers()["x-acme-model"], "gpt-4o-mini");
    gw.shutdown().await;
}
