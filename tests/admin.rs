//! The admin API (`/admin/v1/`): platform and reseller admin keys manage
//! resellers, tenants, gateway keys and sealed provider keys; each change is
//! served at once, survives a restart and a reload, and one reseller's key
//! reaches nothing of another's.

use crate::support::redis_server::RedisServer;
use crate::support::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PLATFORM_ADMIN: &str = "sk-livery-admin-FAKE-platform-test-key";
const ACME_ADMIN: &str = "sk-livery-admin-FAKE-acme-test-key";
const GLOBEX_ADMIN: &str = "sk-livery-admin-FAKE-globex-test-key";
const KEK_ENV: &str = "LIVERY_TEST_ADMIN_KEK";
const INITECH_HOST: &str = "ai.initech.test";

/// The standard configuration with the admin API on (its store in `dir`),
/// an admin key for each reseller, a KEK and the SQLite usage ledger.
fn admin_config(mock: &MockProvider, dir: &Path) -> String {
    let store = format!("store_path = \"{}\"", store_path(dir).display());
    admin_config_with(mock, dir, &store)
}

/// [`admin_config`] with `store` as the `[admin]` store's settings.
fn admin_config_with(mock: &MockProvider, dir: &Path, store: &str) -> String {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(KEK_ENV, livery::vault::generate_kek().unwrap()));
    let reseller = |id: &str, key: &str| {
        (
            format!("[[resellers]]\nid = \"{id}\"\n"),
            format!(
                "[[resellers]]\nid = \"{id}\"\nadmin_key_hashes = [\"{}\"]\n",
                hash(key)
            ),
        )
    };
    let (acme, acme_admin) = reseller("acme", ACME_ADMIN);
    let (globex, globex_admin) = reseller("globex", GLOBEX_ADMIN);
    standard_config(&mock.base_url(), "")
        .replace(&acme, &acme_admin)
        .replace(&globex, &globex_admin)
        + &format!(
            "\n[admin]\n{store}\nplatform_key_hashes = [\"{platform}\"]\n\
             \n[vault]\n[[vault.keks]]\nid = \"test-kek\"\nenv = \"{KEK_ENV}\"\n\
             \n[usage]\nspool_dir = \"{spool}\"\n",
            platform = hash(PLATFORM_ADMIN),
            spool = dir.join("spool").display(),
        )
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("admin-store.json")
}

async fn call(
    gw: &TestGateway,
    method: Method,
    host: &str,
    key: Option<&str>,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut rb = client()
        .request(method, gw.url(&format!("/admin/v1/{path}")))
        .header("host", host);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    rb.send().await.unwrap()
}

/// An admin call expected to answer `status`; returns its JSON body.
async fn expect(
    gw: &TestGateway,
    method: Method,
    host: &str,
    key: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let what = format!("{method} {path}");
    let resp = call(gw, method, host, Some(key), path, body).await;
    assert_eq!(resp.status().as_u16(), status, "{what}");
    resp.json().await.unwrap()
}

/// An admin call as acme's admin, on acme's host, expected to answer
/// `status`; returns its JSON body.
async fn as_acme(
    gw: &TestGateway,
    method: Method,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    expect(gw, method, ACME_HOST, ACME_ADMIN, path, body, status).await
}

/// The ids of acme's tenants, as its admin lists them.
async fn acme_tenants(gw: &TestGateway) -> Vec<String> {
    let list = as_acme(
        gw,
        Method::GET,
        "resellers/acme/tenants?limit=1000",
        None,
        200,
    )
    .await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn chat_as(gw: &TestGateway, host: &str, key: &str) -> reqwest::Response {
    post(
        gw,
        "/v1/chat/completions",
        Some(host),
        Some(key),
        &chat_body("gpt-4o-mini"),
    )
    .await
}

/// A platform key makes a reseller with its domain; the reseller's admin key
/// (given once) makes a tenant on its own host, whose key is served at once;
/// suspending the tenant and deleting its key take effect at once too.
#[tokio::test]
async fn a_reseller_and_tenant_made_through_the_api_are_served_at_once() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;

    let made = expect(
        &gw,
        Method::POST,
        ACME_HOST,
        PLATFORM_ADMIN,
        "resellers",
        Some(json!({"id": "initech", "name": "Initech", "domains": [INITECH_HOST]})),
        201,
    )
    .await;
    assert_eq!(made["reseller"]["source"], "api");
    let initech_admin = made["admin_key"].as_str().unwrap().to_owned();
    assert!(initech_admin.starts_with("sk-livery-admin-"));

    // Its admin key works on its own host only, and sees itself only.
    let list = expect(
        &gw,
        Method::GET,
        INITECH_HOST,
        &initech_admin,
        "resellers",
        None,
        200,
    )
    .await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["initech"]);
    let one = expect(
        &gw,
        Method::GET,
        ACME_HOST,
        PLATFORM_ADMIN,
        "resellers/initech",
        None,
        200,
    )
    .await;
    assert_eq!(
        (one["name"].as_str(), one["domains"][0].as_str()),
        (Some("Initech"), Some(INITECH_HOST))
    );
    let admin_keys = expect(
        &gw,
        Method::GET,
        INITECH_HOST,
        &initech_admin,
        "resellers/initech/admin_keys",
        None,
        200,
    )
    .await;
    assert_eq!(admin_keys["data"].as_array().unwrap().len(), 1);
    let elsewhere = call(
        &gw,
        Method::GET,
        ACME_HOST,
        Some(&initech_admin),
        "resellers",
        None,
    )
    .await;
    assert_eq!(error_code(elsewhere, 401).await, "invalid_api_key");

    let made = expect(
        &gw,
        Method::POST,
        INITECH_HOST,
        &initech_admin,
        "resellers/initech/tenants",
        Some(json!({"id": "shop", "name": "Shop", "plan": "basic"})),
        201,
    )
    .await;
    let key = made["key"].as_str().unwrap().to_owned();
    assert_eq!(made["tenant"]["keys"].as_array().unwrap().len(), 1);
    let key_id = made["tenant"]["keys"][0]["id"].as_str().unwrap().to_owned();

    let resp = chat_as(&gw, INITECH_HOST, &key).await;
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let record = gw.usage_for(&rid).await;
    assert_eq!(
        (record["reseller"].as_str(), record["tenant"].as_str()),
        (Some("initech"), Some("shop"))
    );
    // The new tenant's key is no key at another reseller.
    assert_eq!(
        error_code(chat_as(&gw, ACME_HOST, &key).await, 401).await,
        "invalid_api_key"
    );

    expect(
        &gw,
        Method::PATCH,
        INITECH_HOST,
        &initech_admin,
        "resellers/initech/tenants/shop",
        Some(json!({"status": "suspended"})),
        200,
    )
    .await;
    assert_eq!(
        error_code(chat_as(&gw, INITECH_HOST, &key).await, 403).await,
        "tenant_suspended"
    );
    expect(
        &gw,
        Method::PATCH,
        INITECH_HOST,
        &initech_admin,
        "resellers/initech/tenants/shop",
        Some(json!({"status": "active"})),
        200,
    )
    .await;
    assert_eq!(chat_as(&gw, INITECH_HOST, &key).await.status(), 200);

    // A second key, then the first deleted: only the second still works.
    let second = expect(
        &gw,
        Method::POST,
        INITECH_HOST,
        &initech_admin,
        "resellers/initech/tenants/shop/keys",
        None,
        201,
    )
    .await;
    let second_key = second["key"].as_str().unwrap().to_owned();
    expect(
        &gw,
        Method::DELETE,
        INITECH_HOST,
        &initech_admin,
        &format!("resellers/initech/tenants/shop/keys/{key_id}"),
        None,
        200,
    )
    .await;
    assert_eq!(
        error_code(chat_as(&gw, INITECH_HOST, &key).await, 401).await,
        "invalid_api_key"
    );
    assert_eq!(chat_as(&gw, INITECH_HOST, &second_key).await.status(), 200);
    let keys = expect(
        &gw,
        Method::GET,
        INITECH_HOST,
        &initech_admin,
        "resellers/initech/tenants/shop/keys",
        None,
        200,
    )
    .await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);

    // The store keeps digests, never a key.
    let stored = std::fs::read_to_string(store_path(dir.path())).unwrap();
    for k in [&key, &second_key, &initech_admin] {
        assert!(!stored.contains(k.as_str()), "a key in the store");
    }
    assert!(stored.contains(&hash(&second_key)));

    // A reseller with tenants is not deleted; without, it is, and its host goes.
    let busy = call(
        &gw,
        Method::DELETE,
        INITECH_HOST,
        Some(PLATFORM_ADMIN),
        "resellers/initech",
        None,
    )
    .await;
    assert_eq!(error_code(busy, 409).await, "conflict");
    expect(
        &gw,
        Method::DELETE,
        INITECH_HOST,
        &initech_admin,
        "resellers/initech/tenants/shop",
        None,
        200,
    )
    .await;
    expect(
        &gw,
        Method::DELETE,
        ACME_HOST,
        PLATFORM_ADMIN,
        "resellers/initech",
        None,
        200,
    )
    .await;
    assert_eq!(
        error_code(chat_as(&gw, INITECH_HOST, &second_key).await, 404).await,
        "unknown_host"
    );
    gw.shutdown().await;
}

/// What the API made is kept: a restart reads it back, and a reload of the
/// configuration file (SIGHUP) merges it again rather than dropping it.
#[tokio::test]
async fn changes_outlive_a_restart_and_a_reload() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = admin_config(&mock, dir.path());
    let gw = TestGateway::start(&config).await;
    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/tenants",
        Some(json!({"id": "bakery", "plan": "basic", "limits": {"requests_per_minute": 100}})),
        201,
    )
    .await;
    assert_eq!(made["tenant"]["source"], "api");
    assert_eq!(made["tenant"]["limits"]["requests_per_minute"], 100);
    let key = made["key"].as_str().unwrap().to_owned();
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    gw.shutdown().await;

    let gw = TestGateway::start(&config).await;
    assert_eq!(
        chat_as(&gw, ACME_HOST, &key).await.status(),
        200,
        "after a restart"
    );
    let parsed = livery::config::GatewayConfig::parse(&config).unwrap();
    gw.gateway.as_ref().unwrap().reload(&parsed).unwrap();
    assert_eq!(
        chat_as(&gw, ACME_HOST, &key).await.status(),
        200,
        "after a reload"
    );
    assert_eq!(chat_as(&gw, ACME_HOST, ACME_DENTAL.2).await.status(), 200);
    // The tenant made here is listed beside the file's, each with its source.
    let list = as_acme(&gw, Method::GET, "resellers/acme/tenants", None, 200).await;
    let sources: Vec<(String, String)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().into(),
                t["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        sources.contains(&("dental".into(), "config".into())),
        "{sources:?}"
    );
    assert!(
        sources.contains(&("bakery".into(), "api".into())),
        "{sources:?}"
    );
    gw.shutdown().await;
}

/// One reseller's admin key reaches nothing of another's: their resources are
/// "not found" as if absent, on their host it is no key at all, and neither a
/// tenant's key, the operator's token, a spoofed Host nor no key opens the API.
#[tokio::test]
async fn one_resellers_admin_key_reaches_nothing_of_anothers() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    let tenant = Some(json!({"id": "intruder", "plan": "pro"}));
    let endpoints: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "resellers/globex", None),
        (
            Method::PATCH,
            "resellers/globex",
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "resellers/globex/tenants", None),
        (Method::POST, "resellers/globex/tenants", tenant.clone()),
        (Method::GET, "resellers/globex/tenants/clinic", None),
        (
            Method::PATCH,
            "resellers/globex/tenants/clinic",
            Some(json!({"status": "suspended"})),
        ),
        (Method::DELETE, "resellers/globex/tenants/clinic", None),
        (Method::POST, "resellers/globex/tenants/clinic/keys", None),
        (
            Method::PUT,
            "resellers/globex/tenants/clinic/credentials/upstream",
            Some(json!({"api_key": "sk-x"})),
        ),
        (Method::POST, "resellers/globex/admin_keys", None),
        (Method::GET, "resellers/globex/usage", None),
    ];
    for (method, path, body) in &endpoints {
        let what = format!("{method} {path}");
        // Acme's key on acme's host: globex is not there.
        let r = call(
            &gw,
            method.clone(),
            ACME_HOST,
            Some(ACME_ADMIN),
            path,
            body.clone(),
        )
        .await;
        assert_eq!(error_code(r, 404).await, "not_found", "{what}");
        // Acme's key on globex's host, or on a host nobody serves: no key.
        for host in [GLOBEX_HOST, "spoofed.example"] {
            let r = call(
                &gw,
                method.clone(),
                host,
                Some(ACME_ADMIN),
                path,
                body.clone(),
            )
            .await;
            assert_eq!(
                error_code(r, 401).await,
                "invalid_api_key",
                "{what} at {host}"
            );
        }
        // A tenant's key (either reseller's), the operator token, no key.
        for key in [GLOBEX_CLINIC.2, ACME_DENTAL.2, OPERATOR_TOKEN] {
            let r = call(
                &gw,
                method.clone(),
                GLOBEX_HOST,
                Some(key),
                path,
                body.clone(),
            )
            .await;
            assert_eq!(
                error_code(r, 401).await,
                "invalid_api_key",
                "{what} with {key}"
            );
        }
        let r = call(&gw, method.clone(), GLOBEX_HOST, None, path, body.clone()).await;
        assert_eq!(error_code(r, 401).await, "missing_api_key", "{what}");
    }
    // Platform-only actions, with a reseller's key on its own reseller.
    let r = call(
        &gw,
        Method::POST,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers",
        Some(json!({"id": "mine"})),
    )
    .await;
    assert_eq!(error_code(r, 403).await, "permission_denied");
    let r = call(
        &gw,
        Method::PATCH,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme",
        Some(json!({"domains": [GLOBEX_HOST]})),
    )
    .await;
    assert_eq!(error_code(r, 403).await, "permission_denied");
    // An admin key is no tenant key.
    for (host, key) in [(ACME_HOST, ACME_ADMIN), (ACME_HOST, PLATFORM_ADMIN)] {
        assert_eq!(
            error_code(chat_as(&gw, host, key).await, 401).await,
            "invalid_api_key"
        );
    }
    // Nothing of globex changed: its tenants still work, none was added.
    assert_eq!(
        chat_as(&gw, GLOBEX_HOST, GLOBEX_CLINIC.2).await.status(),
        200
    );
    let list = expect(
        &gw,
        Method::GET,
        GLOBEX_HOST,
        GLOBEX_ADMIN,
        "resellers/globex/tenants",
        None,
        200,
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(
        !store_path(dir.path()).exists(),
        "a refused call wrote the store"
    );
    gw.shutdown().await;
}

/// What the file declares is read-only here; a change the configuration would
/// refuse is refused whole (nothing kept, nothing served); a store that cannot
/// be written keeps the change from being served.
#[tokio::test]
async fn refused_changes_leave_nothing_behind() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    let acme = |m: Method, path: &'static str, body: Option<Value>| {
        let gw = &gw;
        async move { call(gw, m, ACME_HOST, Some(ACME_ADMIN), path, body).await }
    };
    let r = acme(
        Method::PATCH,
        "resellers/acme/tenants/dental",
        Some(json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(error_code(r, 409).await, "declared_in_config");
    let r = acme(Method::POST, "resellers/acme/tenants/dental/keys", None).await;
    assert_eq!(error_code(r, 409).await, "declared_in_config");
    let r = acme(
        Method::POST,
        "resellers/acme/tenants",
        Some(json!({"id": "dental", "plan": "pro"})),
    )
    .await;
    assert_eq!(error_code(r, 409).await, "conflict");
    let r = acme(
        Method::POST,
        "resellers/acme/tenants",
        Some(json!({"id": "x", "plan": "gold"})),
    )
    .await;
    let v: Value = {
        assert_eq!(r.status(), 400);
        r.json().await.unwrap()
    };
    assert_eq!(v["error"]["code"], "invalid_config");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("gold"),
        "{v}"
    );
    let r = acme(
        Method::POST,
        "resellers/acme/tenants",
        Some(json!({"id": "bad id!", "plan": "pro"})),
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_config");
    let r = acme(
        Method::POST,
        "resellers/acme/tenants",
        Some(json!({"id": "y", "plan": "pro", "extra": 1})),
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_body");
    let r = client()
        .post(gw.url("/admin/v1/resellers/acme/tenants"))
        .header("host", ACME_HOST)
        .bearer_auth(ACME_ADMIN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, 400).await, "invalid_body");
    let r = acme(Method::PUT, "resellers/acme/tenants", None).await;
    assert_eq!(error_code(r, 405).await, "method_not_allowed");
    let r = acme(Method::GET, "resellers/acme/nothing", None).await;
    assert_eq!(error_code(r, 404).await, "not_found");
    // A domain another reseller serves.
    let r = call(
        &gw,
        Method::POST,
        ACME_HOST,
        Some(PLATFORM_ADMIN),
        "resellers",
        Some(json!({"id": "initech", "domains": [GLOBEX_HOST]})),
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_config");
    assert_eq!(
        chat_as(&gw, GLOBEX_HOST, GLOBEX_CLINIC.2).await.status(),
        200
    );
    assert!(
        !store_path(dir.path()).exists(),
        "a refused change wrote the store"
    );

    // The store cannot be written (its temporary file's name is taken by a
    // directory): the change is refused and not served.
    std::fs::create_dir(dir.path().join(".admin-store.json.tmp")).unwrap();
    let r = acme(
        Method::POST,
        "resellers/acme/tenants",
        Some(json!({"id": "z", "plan": "pro"})),
    )
    .await;
    assert_eq!(error_code(r, 503).await, "store_unavailable");
    let r = call(
        &gw,
        Method::POST,
        ACME_HOST,
        Some(PLATFORM_ADMIN),
        "resellers",
        Some(json!({"id": "initech", "domains": [INITECH_HOST]})),
    )
    .await;
    assert_eq!(error_code(r, 503).await, "store_unavailable");
    // Swapped in, the reseller's host would be served (a 401 for the key).
    let r = chat_as(&gw, INITECH_HOST, ACME_DENTAL.2).await;
    assert_eq!(error_code(r, 404).await, "unknown_host");
    assert!(!acme_tenants(&gw).await.contains(&"z".to_owned()));
    gw.shutdown().await;
}

/// A provider key given to the API is sealed at once, sent upstream for that
/// tenant only, never shown back nor kept in the clear; deleted, the platform's
/// key is used again.
#[tokio::test]
async fn a_provider_key_given_to_the_api_is_sealed_used_and_never_shown() {
    const OWN_KEY: &str = "sk-FAKE-bakery-own-provider-key-for-tests";
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/tenants",
        Some(json!({"id": "bakery", "plan": "pro"})),
        201,
    )
    .await;
    let key = made["key"].as_str().unwrap().to_owned();
    let put = as_acme(
        &gw,
        Method::PUT,
        "resellers/acme/tenants/bakery/credentials/upstream",
        Some(json!({"api_key": OWN_KEY})),
        200,
    )
    .await;
    assert_eq!(put["sealed"], true);
    assert!(!put.to_string().contains(OWN_KEY));

    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    let auth = mock.last_request().headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(auth, format!("Bearer {OWN_KEY}"));
    // Another tenant still pays with the platform's key.
    assert_eq!(chat_as(&gw, ACME_HOST, ACME_DENTAL.2).await.status(), 200);
    let auth = mock.last_request().headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(auth, format!("Bearer {PROVIDER_KEY}"));

    let view = as_acme(&gw, Method::GET, "resellers/acme/tenants/bakery", None, 200).await;
    assert_eq!(view["credentials"], json!(["upstream"]));
    assert!(!view.to_string().contains(OWN_KEY));
    let stored = std::fs::read_to_string(store_path(dir.path())).unwrap();
    assert!(
        !stored.contains(OWN_KEY) && stored.contains("lvk1"),
        "sealed in the store"
    );
    // An unknown provider is refused whole.
    let r = call(
        &gw,
        Method::PUT,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/tenants/bakery/credentials/nope",
        Some(json!({"api_key": "sk-1"})),
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_config");

    as_acme(
        &gw,
        Method::DELETE,
        "resellers/acme/tenants/bakery/credentials/upstream",
        None,
        200,
    )
    .await;
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    let auth = mock.last_request().headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(auth, format!("Bearer {PROVIDER_KEY}"));
    gw.shutdown().await;
}

/// A reseller reads its month from the ledger through the API.
#[tokio::test]
async fn a_reseller_reads_its_usage_through_the_api() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    for _ in 0..2 {
        assert_eq!(chat_as(&gw, ACME_HOST, ACME_DENTAL.2).await.status(), 200);
    }
    assert_eq!(
        chat_as(&gw, GLOBEX_HOST, GLOBEX_CLINIC.2).await.status(),
        200
    );
    let usage = &gw.gateway.as_ref().unwrap().app().usage;
    let start = std::time::Instant::now();
    let report = loop {
        assert!(usage.flush(Duration::from_secs(5)));
        let r = as_acme(&gw, Method::GET, "resellers/acme/usage", None, 200).await;
        if r["tenants"].as_array().is_some_and(|t| !t.is_empty())
            || start.elapsed() > Duration::from_secs(5)
        {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["object"], "usage_report");
    assert_eq!(report["reseller"], "acme");
    let tenants = report["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1, "{report}");
    assert_eq!(tenants[0]["tenant"], "dental");
    assert_eq!(tenants[0]["requests"], 2, "{report}");
    let r = call(
        &gw,
        Method::GET,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/usage?month=2026-13",
        None,
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_body");
    gw.shutdown().await;
}

/// Each usage record names the gateway key it was served under (by the id
/// the API lists it as), and `group_by=api_key_id` reads the month per tenant
/// and key, with each key's name: the rows of a tenant add up to its rollup.
#[tokio::test]
async fn a_reseller_reads_its_usage_per_key_through_the_api() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    let first = make_tenant(&gw, "bakery").await;
    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/tenants/bakery/keys",
        Some(json!({"name": "indexer"})),
        201,
    )
    .await;
    let indexer = made["key"].as_str().unwrap().to_owned();
    let listed = as_acme(
        &gw,
        Method::GET,
        "resellers/acme/tenants/bakery/keys",
        None,
        200,
    )
    .await;
    let first_id = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] != made["id"])
        .unwrap()["id"]
        .clone();
    for _ in 0..2 {
        assert_eq!(chat_as(&gw, ACME_HOST, &first).await.status(), 200);
    }
    let resp = chat_as(&gw, ACME_HOST, &indexer).await;
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(gw.usage_for(&rid).await["key_id"], made["id"]);
    assert_eq!(chat_as(&gw, ACME_HOST, ACME_DENTAL.2).await.status(), 200);

    let usage = &gw.gateway.as_ref().unwrap().app().usage;
    let start = std::time::Instant::now();
    let report = loop {
        assert!(usage.flush(Duration::from_secs(5)));
        let r = as_acme(
            &gw,
            Method::GET,
            "resellers/acme/usage?group_by=api_key_id",
            None,
            200,
        )
        .await;
        if r["data"].as_array().is_some_and(|t| t.len() == 3)
            || start.elapsed() > Duration::from_secs(5)
        {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["group_by"], "api_key_id");
    let rows: Vec<(String, String, Value, u64)> = report["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tenant"].as_str().unwrap().to_owned(),
                r["key_id"].as_str().unwrap().to_owned(),
                r["name"].clone(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut bakery: Vec<_> = rows.iter().filter(|r| r.0 == "bakery").cloned().collect();
    bakery.sort_by_key(|r| r.3);
    assert_eq!(
        bakery,
        vec![
            (
                "bakery".to_owned(),
                made["id"].as_str().unwrap().to_owned(),
                json!("indexer"),
                1
            ),
            (
                "bakery".to_owned(),
                first_id.as_str().unwrap().to_owned(),
                Value::Null,
                2
            ),
        ],
        "{report}"
    );
    assert!(rows.iter().any(|r| r.0 == "dental" && r.3 == 1), "{report}");
    let one = as_acme(
        &gw,
        Method::GET,
        "resellers/acme/usage?group_by=api_key_id&tenant=bakery",
        None,
        200,
    )
    .await;
    let keyed: u64 = one["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total_tokens"].as_u64().unwrap())
        .sum();
    let whole = as_acme(
        &gw,
        Method::GET,
        "resellers/acme/usage?tenant=bakery",
        None,
        200,
    )
    .await;
    assert_eq!(one["data"].as_array().unwrap().len(), 2, "{one}");
    assert!(keyed > 0);
    assert_eq!(json!(keyed), whole["tenants"][0]["total_tokens"], "{whole}");
    let r = call(
        &gw,
        Method::GET,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/usage?group_by=model",
        None,
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_body");
    gw.shutdown().await;
}

/// Without `[admin]`, `/admin/` is not served, whatever the key.
#[tokio::test]
async fn without_an_admin_section_there_is_no_admin_api() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::standard(&mock).await;
    for key in [OPERATOR_TOKEN, ACME_DENTAL.2] {
        let r = call(&gw, Method::GET, ACME_HOST, Some(key), "resellers", None).await;
        assert_eq!(error_code(r, 404).await, "unknown_url");
    }
    gw.shutdown().await;
}

/// Makes tenant `id` at acme through `gw`, retrying while another instance's
/// change gets in between (409 `store_conflict`); returns its key.
async fn make_tenant(gw: &TestGateway, id: &str) -> String {
    for _ in 0..50 {
        let r = call(
            gw,
            Method::POST,
            ACME_HOST,
            Some(ACME_ADMIN),
            "resellers/acme/tenants",
            Some(json!({"id": id, "plan": "basic"})),
        )
        .await;
        match r.status().as_u16() {
            201 => {
                return r.json::<Value>().await.unwrap()["key"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
            409 => {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "store_conflict", "{v}");
            }
            other => panic!("{id}: {other} {}", r.text().await.unwrap()),
        }
    }
    panic!("{id}: conflicts never ended")
}

/// Waits until `gw` serves `key` at acme (the other instance's change synced).
async fn served_within(gw: &TestGateway, key: &str, within: Duration) {
    let start = std::time::Instant::now();
    loop {
        let status = chat_as(gw, ACME_HOST, key).await.status().as_u16();
        if status == 200 {
            return;
        }
        assert_eq!(status, 401);
        assert!(start.elapsed() < within, "not served within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two instances on one store: what one makes, the other serves; changes
/// made through both at once are all kept (a stale write is refused, never
/// lost), and both end up listing the same tenants.
async fn two_instances_share_one_store(store: &str, dir: &Path) {
    let mock = MockProvider::start().await;
    let config = admin_config_with(&mock, dir, store);
    let a = TestGateway::start(&config).await;
    // Each instance has its own usage spool; only the store is shared.
    let spool = dir.join("spool").display().to_string();
    let b = TestGateway::start(&config.replace(&spool, &format!("{spool}-b"))).await;
    let key = make_tenant(&a, "first").await;
    served_within(&b, &key, Duration::from_secs(5)).await;

    let ids: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let made = futures_util::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let gw = if i % 2 == 0 { &a } else { &b };
        async move { make_tenant(gw, id).await }
    }))
    .await;
    for key in &made {
        served_within(&a, key, Duration::from_secs(5)).await;
        served_within(&b, key, Duration::from_secs(5)).await;
    }
    for gw in [&a, &b] {
        let list = as_acme(gw, Method::GET, "resellers/acme/tenants", None, 200).await;
        let n = list["data"].as_array().unwrap().len();
        assert_eq!(n, 3 + 1 + ids.len(), "{list}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn two_instances_share_a_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "store_path = \"{}\"\nsync_interval_ms = 50",
        store_path(dir.path()).display()
    );
    two_instances_share_one_store(&store, dir.path()).await;
}

#[tokio::test]
async fn two_instances_share_a_store_in_redis() {
    let Some(redis) = RedisServer::start("two_instances_share_a_store_in_redis") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redis_url = \"{}\"\nsync_interval_ms = 50", redis.url());
    two_instances_share_one_store(&store, dir.path()).await;
}

/// With Redis down, a change is refused (503, not served) and the tenants
/// already made go on being served; a start while it is down serves the last
/// copy kept in `store_path`; back up, changes go through again.
#[tokio::test]
async fn a_store_in_redis_that_goes_down_refuses_changes_and_keeps_serving() {
    let Some(mut redis) = RedisServer::start("a_store_in_redis_that_goes_down") else {
        return;
    };
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "redis_url = \"{}\"\nstore_path = \"{}\"\nsync_interval_ms = 50",
        redis.url(),
        store_path(dir.path()).display()
    );
    let config = admin_config_with(&mock, dir.path(), &store);
    let gw = TestGateway::start(&config).await;
    let key = make_tenant(&gw, "kept").await;
    redis.kill();
    let r = call(
        &gw,
        Method::POST,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/tenants",
        Some(json!({"id": "lost", "plan": "basic"})),
    )
    .await;
    assert_eq!(error_code(r, 503).await, "store_unavailable");
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    assert!(!acme_tenants(&gw).await.contains(&"lost".to_owned()));
    gw.shutdown().await;

    let gw = TestGateway::start(&config).await;
    assert_eq!(
        chat_as(&gw, ACME_HOST, &key).await.status(),
        200,
        "started from the copy"
    );
    redis.restart();
    make_tenant(&gw, "after").await;
    gw.shutdown().await;
}

/// A KEK rotation reaches the credentials the API sealed: `vault/rewrap`
/// re-wraps them under the active KEK, after which the old one can go (before
/// it, a configuration without the old KEK is refused: they would not unseal).
#[tokio::test]
async fn vault_rewrap_lets_the_old_kek_retire() {
    const OWN_KEY: &str = "sk-FAKE-rotated-own-provider-key-for-tests";
    const NEW_KEK_ENV: &str = "LIVERY_TEST_ADMIN_NEW_KEK";
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(NEW_KEK_ENV, livery::vault::generate_kek().unwrap()));
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = admin_config(&mock, dir.path());
    let old_vault = format!("[vault]\n[[vault.keks]]\nid = \"test-kek\"\nenv = \"{KEK_ENV}\"\n");
    assert!(config.contains(&old_vault));
    let new_kek = format!("[[vault.keks]]\nid = \"new-kek\"\nenv = \"{NEW_KEK_ENV}\"\n");
    let both = config.replace(
        &old_vault,
        &format!("[vault]\nactive_kek = \"new-kek\"\n[[vault.keks]]\nid = \"test-kek\"\nenv = \"{KEK_ENV}\"\n{new_kek}"),
    );
    let only_new = config.replace(
        &old_vault,
        &format!("[vault]\nactive_kek = \"new-kek\"\n{new_kek}"),
    );
    let parse = |text: &str| livery::config::GatewayConfig::parse(text).unwrap();

    let gw = TestGateway::start(&config).await;
    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/tenants",
        Some(json!({"id": "rotated", "plan": "pro"})),
        201,
    )
    .await;
    let key = made["key"].as_str().unwrap().to_owned();
    as_acme(
        &gw,
        Method::PUT,
        "resellers/acme/tenants/rotated/credentials/upstream",
        Some(json!({"api_key": OWN_KEY})),
        200,
    )
    .await;
    let gateway = gw.gateway.as_ref().unwrap();
    gateway.reload(&parse(&both)).unwrap();
    let e = gateway.reload(&parse(&only_new)).unwrap_err().to_string();
    assert!(e.contains("tenant:acme/rotated"), "{e}");

    let r = call(
        &gw,
        Method::POST,
        ACME_HOST,
        Some(ACME_ADMIN),
        "vault/rewrap",
        None,
    )
    .await;
    assert_eq!(error_code(r, 403).await, "permission_denied");
    let done = expect(
        &gw,
        Method::POST,
        ACME_HOST,
        PLATFORM_ADMIN,
        "vault/rewrap",
        None,
        200,
    )
    .await;
    assert_eq!(
        (done["active_kek"].as_str(), done["rewrapped"].as_u64()),
        (Some("new-kek"), Some(1))
    );
    gateway.reload(&parse(&only_new)).unwrap();
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    let auth = mock.last_request().headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(auth, format!("Bearer {OWN_KEY}"));
    let again = expect(
        &gw,
        Method::POST,
        ACME_HOST,
        PLATFORM_ADMIN,
        "vault/rewrap",
        None,
        200,
    )
    .await;
    assert_eq!(again["rewrapped"], 0);
    gw.shutdown().await;
}

/// Lists come in pages (`limit`, `after`), in order, saying whether more follow.
#[tokio::test]
async fn lists_come_in_pages() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    for i in 0..5 {
        make_tenant(&gw, &format!("p{i}")).await;
    }
    let mut seen = Vec::new();
    let mut path = "resellers/acme/tenants?limit=2".to_owned();
    loop {
        let page = as_acme(&gw, Method::GET, &path, None, 200).await;
        let ids: Vec<String> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 2);
        assert_eq!(page["last_id"].as_str(), ids.last().map(String::as_str));
        seen.extend(ids);
        if page["has_more"] == false {
            break;
        }
        path = format!(
            "resellers/acme/tenants?limit=2&after={}",
            page["last_id"].as_str().unwrap()
        );
    }
    assert_eq!(
        seen,
        [
            "dental",
            "realty",
            "suspended",
            "p0",
            "p1",
            "p2",
            "p3",
            "p4"
        ]
    );
    let r = call(
        &gw,
        Method::GET,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/tenants?limit=0",
        None,
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_body");
    let all = expect(
        &gw,
        Method::GET,
        ACME_HOST,
        PLATFORM_ADMIN,
        "resellers?limit=1",
        None,
        200,
    )
    .await;
    assert_eq!(
        (all["data"][0]["id"].as_str(), all["has_more"].as_bool()),
        (Some("acme"), Some(true))
    );
    gw.shutdown().await;
}

/// Many tenants in one change: all made and served, each with its own key;
/// one bad entry (a taken id, a duplicate in the list, an unknown plan) and
/// none is made.
#[tokio::test]
async fn many_tenants_are_made_in_one_change_or_none_are() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("b{i}"), "plan": "basic"}))
        .collect();
    for bad in [
        json!([{"id": "ok1", "plan": "basic"}, {"id": "dental", "plan": "pro"}]),
        json!([{"id": "ok1", "plan": "basic"}, {"id": "ok1", "plan": "basic"}]),
        json!([{"id": "ok1", "plan": "basic"}, {"id": "ok2", "plan": "gold"}]),
        json!([]),
    ] {
        let r = call(
            &gw,
            Method::POST,
            ACME_HOST,
            Some(ACME_ADMIN),
            "resellers/acme/tenants",
            Some(bad.clone()),
        )
        .await;
        assert!(r.status().is_client_error(), "{bad}");
        assert!(
            !acme_tenants(&gw).await.iter().any(|t| t.starts_with("ok")),
            "{bad}"
        );
    }
    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/tenants",
        Some(json!(batch)),
        201,
    )
    .await;
    let data = made["data"].as_array().unwrap();
    assert_eq!(data.len(), 50);
    let keys: std::collections::HashSet<&str> =
        data.iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 50, "each its own key");
    for m in [&data[0], &data[49]] {
        assert_eq!(
            chat_as(&gw, ACME_HOST, m["key"].as_str().unwrap())
                .await
                .status(),
            200
        );
    }
    assert_eq!(data[7]["tenant"]["id"], "b7");
    assert_eq!(acme_tenants(&gw).await.len(), 3 + 50);
    gw.shutdown().await;
}

/// A reseller's brand is its own to set (the platform may set it when making
/// the reseller): its new tenants' keys carry its prefix, its answers its
/// header names and its key page, at once. A brand the gateway cannot use
/// changes nothing; cleared, keys and answers name no reseller. Another
/// reseller's admin cannot touch it, and a brand the file declares is
/// changed in the file.
#[tokio::test]
async fn a_resellers_brand_is_set_through_the_api_and_served_at_once() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    let made = expect(
        &gw,
        Method::POST,
        ACME_HOST,
        PLATFORM_ADMIN,
        "resellers",
        Some(json!({"id": "initech", "domains": [INITECH_HOST],
            "branding": {"key_prefix": "sk-initech-"}})),
        201,
    )
    .await;
    assert_eq!(
        made["reseller"]["branding"],
        json!({"key_prefix": "sk-initech-"})
    );
    let admin = made["admin_key"].as_str().unwrap().to_owned();
    let as_initech = |method: Method, path: &'static str, body: Option<Value>, status: u16| {
        let (gw, admin) = (&gw, admin.clone());
        async move { expect(gw, method, INITECH_HOST, &admin, path, body, status).await }
    };
    let made = as_initech(
        Method::POST,
        "resellers/initech/tenants",
        Some(json!({"id": "shop", "plan": "pro"})),
        201,
    )
    .await;
    let shop_key = made["key"].as_str().unwrap().to_owned();
    assert!(shop_key.starts_with("sk-initech-"), "{shop_key}");

    let brand = json!({"key_prefix": "sk-init-", "header_prefix": "x-initech-",
        "keys_url": "https://initech.example/keys"});
    let view = as_initech(
        Method::PATCH,
        "resellers/initech",
        Some(json!({"branding": brand})),
        200,
    )
    .await;
    assert_eq!(view["branding"], brand);
    let resp = chat_as(&gw, INITECH_HOST, &shop_key).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-initech-model"], "gpt-4o-mini");
    assert!(resp.headers().get("x-livery-model").is_none());
    let resp = chat_as(&gw, INITECH_HOST, "sk-init-FAKE-unknown").await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "Incorrect API key provided. You can find your API key at https://initech.example/keys."
    );
    let made = as_initech(
        Method::POST,
        "resellers/initech/tenants/shop/keys",
        None,
        201,
    )
    .await;
    assert!(
        made["key"].as_str().unwrap().starts_with("sk-init-"),
        "{made}"
    );

    // Unusable: refused with the reason, and the brand served is unchanged.
    let r = call(
        &gw,
        Method::PATCH,
        INITECH_HOST,
        Some(&admin),
        "resellers/initech",
        Some(json!({"branding": {"header_prefix": "X-Initech"}})),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_config");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("branding.header_prefix"),
        "{v}"
    );
    let resp = chat_as(&gw, INITECH_HOST, &shop_key).await;
    assert_eq!(resp.headers()["x-initech-model"], "gpt-4o-mini");

    // Another reseller's admin: not found, as a reseller that does not exist.
    let r = call(
        &gw,
        Method::PATCH,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/initech",
        Some(json!({"branding": {"key_prefix": "sk-acme-"}})),
    )
    .await;
    assert_eq!(error_code(r, 404).await, "not_found");
    // A reseller the file declares is branded in the file.
    let r = call(
        &gw,
        Method::PATCH,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme",
        Some(json!({"branding": {"key_prefix": "sk-acme-"}})),
    )
    .await;
    assert_eq!(error_code(r, 409).await, "declared_in_config");

    // Cleared: the neutral defaults, which name no reseller and no platform.
    let view = as_initech(
        Method::PATCH,
        "resellers/initech",
        Some(json!({"branding": null})),
        200,
    )
    .await;
    assert_eq!(view["branding"], json!({}));
    let made = as_initech(
        Method::POST,
        "resellers/initech/tenants/shop/keys",
        None,
        201,
    )
    .await;
    let key = made["key"].as_str().unwrap();
    assert!(
        key.starts_with("sk-") && !key.contains("livery") && !key.contains("init"),
        "{key}"
    );
    let resp = chat_as(&gw, INITECH_HOST, key).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-livery-model"], "gpt-4o-mini");
    let v: Value = chat_as(&gw, INITECH_HOST, "sk-FAKE-unknown")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["message"], "Incorrect API key provided.");
    gw.shutdown().await;
}

/// A tenant key made with a name and `expires_in` is listed with both, serves
/// until it expires and is 401 `expired_api_key` from then on, while the
/// tenant's other key serves on; the expiry is kept in the store, and a
/// `PATCH` renames the key or moves or clears its expiry, served at once.
/// Bodies that cannot make or change a key change nothing.
#[tokio::test]
async fn a_tenant_key_with_an_expiry_serves_until_then() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    let first = make_tenant(&gw, "bakery").await;
    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/tenants/bakery/keys",
        Some(json!({"name": "ci runner", "expires_in": 2})),
        201,
    )
    .await;
    let key = made["key"].as_str().unwrap().to_owned();
    let expires_at = made["expires_at"].as_u64().unwrap();
    assert_eq!(made["name"], "ci runner");
    let entry = listed(&gw, "resellers/acme/tenants/bakery/keys", &made["id"]).await;
    assert_eq!(
        (entry["name"].as_str(), entry["expires_at"].as_u64()),
        (Some("ci runner"), Some(expires_at))
    );
    let stored = stored_compact(dir.path());
    assert!(
        stored.contains(&format!("\"expires_at\":{expires_at}")),
        "{stored}"
    );
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);

    sleep_until_unix(expires_at).await;
    let resp = chat_as(&gw, ACME_HOST, &key).await;
    assert_eq!(error_code(resp, 401).await, "expired_api_key");
    assert_eq!(chat_as(&gw, ACME_HOST, &first).await.status(), 200);

    // Extended (renamed, its expiry cleared), it serves again at once; given
    // an hour, it is listed with it.
    let path = format!(
        "resellers/acme/tenants/bakery/keys/{}",
        made["id"].as_str().unwrap()
    );
    let patched = expect(
        &gw,
        Method::PATCH,
        ACME_HOST,
        ACME_ADMIN,
        &path,
        Some(json!({"name": "ci runner 2", "expires_at": null})),
        200,
    )
    .await;
    assert_eq!(
        (patched["name"].as_str(), &patched["expires_at"]),
        (Some("ci runner 2"), &Value::Null)
    );
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    let patched = expect(
        &gw,
        Method::PATCH,
        ACME_HOST,
        ACME_ADMIN,
        &path,
        Some(json!({"expires_in": 3600})),
        200,
    )
    .await;
    let hour = patched["expires_at"].as_u64().unwrap();
    assert!(
        hour >= unix_now() + 3590 && patched["name"] == "ci runner 2",
        "{patched}"
    );
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    let r = call(
        &gw,
        Method::PATCH,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/tenants/bakery/keys/key_000000000000",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(error_code(r, 404).await, "not_found");
    let r = call(
        &gw,
        Method::PATCH,
        ACME_HOST,
        Some(ACME_ADMIN),
        &path,
        Some(json!({"expires_at": unix_now() - 5})),
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_body");
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);

    let before = acme_tenant_keys(&gw, "bakery").await;
    for body in [
        json!({"expires_at": unix_now() + 60, "expires_in": 60}),
        json!({"expires_at": unix_now() - 1}),
        json!({"expires": 60}),
        json!({"name": 7}),
    ] {
        let r = call(
            &gw,
            Method::POST,
            ACME_HOST,
            Some(ACME_ADMIN),
            "resellers/acme/tenants/bakery/keys",
            Some(body.clone()),
        )
        .await;
        assert_eq!(error_code(r, 400).await, "invalid_body", "{body}");
    }
    assert_eq!(acme_tenant_keys(&gw, "bakery").await, before);
    gw.shutdown().await;
}

/// A tenant key made with `models` uses only those (403 `model_not_allowed`
/// for another of its plan's), is listed and stored with them, and a `PATCH`
/// widens, narrows or clears the list, served at once. A list that serves
/// nothing (empty, or an unknown model) makes or changes nothing.
#[tokio::test]
async fn a_tenant_key_limited_to_models_is_made_and_changed_through_the_api() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    let first = make_tenant(&gw, "bakery").await;
    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/tenants/bakery/keys",
        Some(json!({"name": "indexer", "models": ["embed"]})),
        201,
    )
    .await;
    assert_eq!(made["models"], json!(["embed"]));
    let key = made["key"].as_str().unwrap().to_owned();
    let embed = || async {
        let body = json!({"model": "embed", "input": "hello"});
        post(&gw, "/v1/embeddings", Some(ACME_HOST), Some(&key), &body)
            .await
            .status()
    };
    assert_eq!(embed().await, 200);
    let resp = chat_as(&gw, ACME_HOST, &key).await;
    assert_eq!(error_code(resp, 403).await, "model_not_allowed");
    assert_eq!(chat_as(&gw, ACME_HOST, &first).await.status(), 200);
    let entry = listed(&gw, "resellers/acme/tenants/bakery/keys", &made["id"]).await;
    assert_eq!(entry["models"], json!(["embed"]), "{entry}");
    let one = format!(
        "resellers/acme/tenants/bakery/keys/{}",
        made["id"].as_str().unwrap()
    );
    assert_eq!(as_acme(&gw, Method::GET, &one, None, 200).await, entry);
    let r = call(
        &gw,
        Method::GET,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/tenants/bakery/keys/key_000000000000",
        None,
    )
    .await;
    assert_eq!(error_code(r, 404).await, "not_found");
    let stored = stored_compact(dir.path());
    assert!(stored.contains("\"models\":[\"embed\"]"), "{stored}");

    let path = format!(
        "resellers/acme/tenants/bakery/keys/{}",
        made["id"].as_str().unwrap()
    );
    let patch = |body: Value, status: u16| as_acme(&gw, Method::PATCH, &path, Some(body), status);
    let widened = patch(json!({"models": ["embed", "gpt-4o-mini"]}), 200).await;
    assert_eq!(widened["models"], json!(["embed", "gpt-4o-mini"]));
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    patch(json!({"models": ["embed"]}), 200).await;
    let resp = chat_as(&gw, ACME_HOST, &key).await;
    assert_eq!(error_code(resp, 403).await, "model_not_allowed");
    let cleared = patch(json!({"models": null}), 200).await;
    assert_eq!(
        (&cleared["models"], &cleared["name"]),
        (&Value::Null, &json!("indexer"))
    );
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);

    let before = acme_tenant_keys(&gw, "bakery").await;
    for (body, code) in [
        (json!({"models": []}), "invalid_config"),
        (json!({"models": ["gpt-9"]}), "invalid_config"),
        (json!({"models": "embed"}), "invalid_body"),
    ] {
        let r = call(
            &gw,
            Method::POST,
            ACME_HOST,
            Some(ACME_ADMIN),
            "resellers/acme/tenants/bakery/keys",
            Some(body.clone()),
        )
        .await;
        assert_eq!(error_code(r, 400).await, code, "{body}");
        let r = call(
            &gw,
            Method::PATCH,
            ACME_HOST,
            Some(ACME_ADMIN),
            &path,
            Some(body.clone()),
        )
        .await;
        assert_eq!(error_code(r, 400).await, code, "{body}");
    }
    assert_eq!(acme_tenant_keys(&gw, "bakery").await, before);
    assert_eq!(chat_as(&gw, ACME_HOST, &key).await.status(), 200);
    gw.shutdown().await;
}

/// A read-only admin key reads everything its reseller's full key reads and
/// changes nothing (403 `permission_denied`, nothing changed; it cannot make
/// itself a writing key); an admin key with an expiry is 401
/// `expired_api_key` from then on at its own hosts, and unknown elsewhere.
#[tokio::test]
async fn an_admin_key_may_only_read_and_may_expire() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    make_tenant(&gw, "bakery").await;
    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/admin_keys",
        Some(json!({"name": "dashboard", "read_only": true})),
        201,
    )
    .await;
    assert_eq!(
        (&made["name"], &made["read_only"]),
        (&json!("dashboard"), &json!(true))
    );
    let reader = made["key"].as_str().unwrap().to_owned();
    let entry = listed(&gw, "resellers/acme/admin_keys", &made["id"]).await;
    let one = format!("resellers/acme/admin_keys/{}", made["id"].as_str().unwrap());
    assert_eq!(as_acme(&gw, Method::GET, &one, None, 200).await, entry);
    assert_eq!(
        (&entry["name"], &entry["read_only"]),
        (&json!("dashboard"), &json!(true))
    );
    for path in [
        "resellers",
        "resellers/acme",
        "resellers/acme/tenants",
        "resellers/acme/tenants/bakery/keys",
        "resellers/acme/admin_keys",
    ] {
        let full = as_acme(&gw, Method::GET, path, None, 200).await;
        let read = expect(&gw, Method::GET, ACME_HOST, &reader, path, None, 200).await;
        assert_eq!(read, full, "{path}");
    }
    let tenants_before = as_acme(&gw, Method::GET, "resellers/acme/tenants", None, 200).await;
    let keys_before = as_acme(&gw, Method::GET, "resellers/acme/admin_keys", None, 200).await;
    for (method, path, body) in [
        (
            Method::POST,
            "resellers/acme/tenants",
            Some(json!({"id": "deli", "plan": "basic"})),
        ),
        (
            Method::PATCH,
            "resellers/acme/tenants/bakery",
            Some(json!({"status": "suspended"})),
        ),
        (Method::DELETE, "resellers/acme/tenants/bakery", None),
        (Method::POST, "resellers/acme/tenants/bakery/keys", None),
        (Method::POST, "resellers/acme/admin_keys", None),
        (
            Method::PATCH,
            "resellers/acme",
            Some(json!({"name": "Acme"})),
        ),
        (
            Method::PUT,
            "resellers/acme/credentials/upstream",
            Some(json!({"api_key": "sk-FAKE-x"})),
        ),
    ] {
        let r = call(&gw, method.clone(), ACME_HOST, Some(&reader), path, body).await;
        assert_eq!(
            error_code(r, 403).await,
            "permission_denied",
            "{method} {path}"
        );
    }
    assert_eq!(
        as_acme(&gw, Method::GET, "resellers/acme/tenants", None, 200).await,
        tenants_before
    );
    assert_eq!(
        as_acme(&gw, Method::GET, "resellers/acme/admin_keys", None, 200).await,
        keys_before
    );
    let r = call(
        &gw,
        Method::GET,
        GLOBEX_HOST,
        Some(&reader),
        "resellers",
        None,
    )
    .await;
    assert_eq!(error_code(r, 401).await, "invalid_api_key");

    let made = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/admin_keys",
        Some(json!({"expires_in": 1})),
        201,
    )
    .await;
    let expiring = made["key"].as_str().unwrap().to_owned();
    let expires_at = made["expires_at"].as_u64().unwrap();
    expect(
        &gw,
        Method::GET,
        ACME_HOST,
        &expiring,
        "resellers/acme",
        None,
        200,
    )
    .await;
    sleep_until_unix(expires_at).await;
    let r = call(
        &gw,
        Method::GET,
        ACME_HOST,
        Some(&expiring),
        "resellers/acme",
        None,
    )
    .await;
    assert_eq!(error_code(r, 401).await, "expired_api_key");
    let r = call(
        &gw,
        Method::GET,
        GLOBEX_HOST,
        Some(&expiring),
        "resellers",
        None,
    )
    .await;
    assert_eq!(error_code(r, 401).await, "invalid_api_key");
    as_acme(&gw, Method::GET, "resellers/acme", None, 200).await;
    let r = call(
        &gw,
        Method::POST,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/admin_keys",
        Some(json!({"models": ["embed"]})),
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_body");
    gw.shutdown().await;
}

/// Rotating a tenant key answers a new key with its name and models; with
/// `expires_in` the old key serves beside it until then (401
/// `expired_api_key` after), without it the old key is gone at once. An
/// expired or unknown key is not rotated.
#[tokio::test]
async fn a_tenant_key_is_rotated_with_a_grace_period_or_at_once() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(&admin_config(&mock, dir.path())).await;
    make_tenant(&gw, "bakery").await;
    let a = as_acme(
        &gw,
        Method::POST,
        "resellers/acme/tenants/bakery/keys",
        Some(json!({"name": "till", "models": ["gpt-4o-mini"]})),
        201,
    )
    .await;
    let rotate = |id: &Value| {
        format!(
            "resellers/acme/tenants/bakery/keys/{}/rotate",
            id.as_str().unwrap()
        )
    };
    let b = as_acme(
        &gw,
        Method::POST,
        &rotate(&a["id"]),
        Some(json!({"expires_in": 2})),
        201,
    )
    .await;
    assert_ne!(b["id"], a["id"]);
    assert_eq!(
        (&b["name"], &b["models"]),
        (&json!("till"), &json!(["gpt-4o-mini"]))
    );
    assert_eq!(b["replaces"]["id"], a["id"]);
    let grace_ends = b["replaces"]["expires_at"].as_u64().unwrap();
    let (key_a, key_b) = (a["key"].as_str().unwrap(), b["key"].as_str().unwrap());
    assert!(key_b.starts_with("sk-") && key_b != key_a);
    for key in [key_a, key_b] {
        assert_eq!(chat_as(&gw, ACME_HOST, key).await.status(), 200);
    }
    assert!(grace_ends <= unix_now() + 2);
    sleep_until_unix(grace_ends).await;
    let resp = chat_as(&gw, ACME_HOST, key_a).await;
    assert_eq!(error_code(resp, 401).await, "expired_api_key");
    assert_eq!(chat_as(&gw, ACME_HOST, key_b).await.status(), 200);
    let r = call(
        &gw,
        Method::POST,
        ACME_HOST,
        Some(ACME_ADMIN),
        &rotate(&a["id"]),
        None,
    )
    .await;
    assert_eq!(error_code(r, 400).await, "invalid_body");

    let c = as_acme(&gw, Method::POST, &rotate(&b["id"]), None, 201).await;
    assert_eq!(
        c["replaces"],
        json!({"id": b["id"], "expires_at": null, "deleted": true})
    );
    let resp = chat_as(&gw, ACME_HOST, key_b).await;
    assert_eq!(error_code(resp, 401).await, "invalid_api_key");
    let key_c = c["key"].as_str().unwrap();
    assert_eq!(chat_as(&gw, ACME_HOST, key_c).await.status(), 200);
    let embed = json!({"model": "embed", "input": "hello"});
    let resp = post(&gw, "/v1/embeddings", Some(ACME_HOST), Some(key_c), &embed).await;
    assert_eq!(error_code(resp, 403).await, "model_not_allowed");
    assert_eq!(acme_tenant_keys(&gw, "bakery").await, 3);
    let r = call(
        &gw,
        Method::POST,
        ACME_HOST,
        Some(ACME_ADMIN),
        "resellers/acme/tenants/bakery/keys/key_000000000000/rotate",
        None,
    )
    .await;
    assert_eq!(error_code(r, 404).await, "not_found");
    gw.shutdown().await;
}

/// The entry with `id` in the list at `path`, as acme's admin lists it.
async fn listed(gw: &TestGateway, path: &str, id: &Value) -> Value {
    let list = as_acme(gw, Method::GET, path, None, 200).await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == *id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
        .clone()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits for the wall clock's second `at` (a key's expiry).
async fn sleep_until_unix(at: u64) {
    while unix_now() < at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The admin store's file without its whitespace.
fn stored_compact(dir: &Path) -> String {
    std::fs::read_to_string(store_path(dir))
        .unwrap()
        .split_whitespace()
        .collect()
}

/// How many keys acme's tenant `t` has, as its admin lists them.
async fn acme_tenant_keys(gw: &TestGateway, t: &str) -> usize {
    let path = format!("resellers/acme/tenants/{t}/keys");
    let v = as_acme(gw, Method::GET, &path, None, 200).await;
    v["data"].as_array().unwrap().len()
}
