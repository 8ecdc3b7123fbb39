//! Issue 3: bring-your-own provider keys, sealed in the configuration, unsealed per
//! request, chosen by the plan's BYOK policy, and never leaked.

use crate::support::*;
use livery::vault::{CredentialOwner, EnvKek, Keyring};
use serde_json::{json, Value};
use std::sync::Arc;

const KEK_ENV: &str = "LIVERY_TEST_MASTER_KEY";
const DENTAL_PROVIDER_KEY: &str = "sk-dental-own-Q7rT9vXw2yZ4aB6cD8eF0gH1jK3";
const REALTY_PROVIDER_KEY: &str = "sk-realty-own-M5nP7qR9sT1uV3wX5yZ7aB9cD1e";
const ACME_RESELLER_KEY: &str = "sk-acme-reseller-L2mN4oP6qR8sT0uV2wX4yZ6";

fn keyring() -> Keyring {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(KEK_ENV, livery::vault::generate_kek().unwrap()));
    let mut r = Keyring::default();
    r.add(Arc::new(EnvKek::load("test-kek", KEK_ENV).unwrap()));
    r
}

fn seal(owner: &str, provider: &str, key: &str) -> String {
    keyring()
        .seal(&CredentialOwner::parse(owner).unwrap(), provider, key)
        .unwrap()
        .to_sealed_string()
}

/// The standard configuration plus sealed keys: tenant keys for acme/dental and
/// acme/realty (if asked), a reseller key for acme (if asked), and the BYOK policy
/// of plan `pro` (dental, clinic) and `basic` (realty, office).
fn byok_config(
    mock: &MockProvider,
    pro: &str,
    basic: &str,
    realty_key: bool,
    reseller_key: bool,
) -> String {
    let mut c = standard_config(&mock.base_url(), "")
        .replace(
            "name = \"pro\"\n",
            &format!("name = \"pro\"\nbyok = \"{pro}\"\n"),
        )
        .replace(
            "name = \"basic\"\n",
            &format!("name = \"basic\"\nbyok = \"{basic}\"\n"),
        );
    let with_creds = |c: String, hash_line: String, sealed: String| {
        c.replace(
            &hash_line,
            &format!("{hash_line}\ncredentials = {{ upstream = \"{sealed}\" }}"),
        )
    };
    c = with_creds(
        c,
        format!("key_hashes = [\"{}\"]", hash(ACME_DENTAL.2)),
        seal("tenant:acme/dental", "upstream", DENTAL_PROVIDER_KEY),
    );
    if realty_key {
        c = with_creds(
            c,
            format!("key_hashes = [\"{}\"]", hash(ACME_REALTY.2)),
            seal("tenant:acme/realty", "upstream", REALTY_PROVIDER_KEY),
        );
    }
    if reseller_key {
        let line = format!("domains = [\"{ACME_HOST}\"]");
        let sealed = seal("reseller:acme", "upstream", ACME_RESELLER_KEY);
        c = c.replace(
            &line,
            &format!("{line}\ncredentials = {{ upstream = \"{sealed}\" }}"),
        );
    }
    format!("{c}\n[vault]\n[[vault.keks]]\nid = \"test-kek\"\nenv = \"{KEK_ENV}\"\n")
}

async fn chat(gw: &TestGateway, host: &str, key: &str, extra: Value) -> reqwest::Response {
    let mut body = chat_body("gpt-4o-mini");
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    post(gw, "/v1/chat/completions", Some(host), Some(key), &body).await
}

fn upstream_auth(mock: &MockProvider) -> String {
    mock.last_request().headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn each_request_carries_exactly_its_own_tenants_key() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::start(&byok_config(&mock, "preferred", "preferred", true, false)).await;
    for _ in 0..2 {
        for (key, expected, owner) in [
            (ACME_DENTAL.2, DENTAL_PROVIDER_KEY, "tenant"),
            (ACME_REALTY.2, REALTY_PROVIDER_KEY, "tenant"),
        ] {
            let resp = chat(&gw, ACME_HOST, key, json!({})).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(upstream_auth(&mock), format!("Bearer {expected}"));
            let record = gw.usage_for(&rid(&resp)).await;
            assert_eq!(record["key_owner"], owner);
        }
        // Globex's tenants bring nothing: the platform key pays.
        let resp = chat(&gw, GLOBEX_HOST, GLOBEX_CLINIC.2, json!({})).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(upstream_auth(&mock), format!("Bearer {PROVIDER_KEY}"));
        assert_eq!(gw.usage_for(&rid(&resp)).await["key_owner"], "platform");
    }
    // Streams too.
    let resp = chat(&gw, ACME_HOST, ACME_REALTY.2, json!({"stream": true})).await;
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(
        upstream_auth(&mock),
        format!("Bearer {REALTY_PROVIDER_KEY}")
    );
}

#[tokio::test]
async fn required_without_a_tenant_key_is_a_clear_400_and_nothing_goes_upstream() {
    let mock = MockProvider::start().await;
    // Realty (plan basic) must bring its own key and has none; acme has a reseller key.
    let gw = TestGateway::start(&byok_config(&mock, "preferred", "required", false, true)).await;
    let before = mock.requests().len();
    let resp = chat(&gw, ACME_HOST, ACME_REALTY.2, json!({})).await;
    let id = rid(&resp);
    assert_eq!(error_code(resp, 400).await, "provider_key_not_configured");
    assert_eq!(mock.requests().len(), before);
    let record = gw.usage_for(&id).await;
    assert_eq!(record["outcome"], "rejected");
    assert_eq!(record["error_code"], "provider_key_not_configured");
    // Dental (plan pro, preferred) is unaffected and uses its own key.
    let resp = chat(&gw, ACME_HOST, ACME_DENTAL.2, json!({})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream_auth(&mock),
        format!("Bearer {DENTAL_PROVIDER_KEY}")
    );
}

#[tokio::test]
async fn preferred_falls_back_to_the_reseller_then_the_platform_key() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::start(&byok_config(&mock, "preferred", "preferred", false, true)).await;
    let resp = chat(&gw, ACME_HOST, ACME_REALTY.2, json!({})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream_auth(&mock), format!("Bearer {ACME_RESELLER_KEY}"));
    assert_eq!(gw.usage_for(&rid(&resp)).await["key_owner"], "reseller");
    let resp = chat(&gw, GLOBEX_HOST, GLOBEX_OFFICE.2, json!({})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream_auth(&mock), format!("Bearer {PROVIDER_KEY}"));
    assert_eq!(gw.usage_for(&rid(&resp)).await["key_owner"], "platform");
}

#[tokio::test]
async fn never_ignores_the_tenants_own_key() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::start(&byok_config(&mock, "never", "preferred", false, true)).await;
    let resp = chat(&gw, ACME_HOST, ACME_DENTAL.2, json!({})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream_auth(&mock), format!("Bearer {ACME_RESELLER_KEY}"));
    assert_eq!(gw.usage_for(&rid(&resp)).await["key_owner"], "reseller");
}

#[tokio::test]
async fn a_rejected_tenant_key_says_so_without_echoing_it() {
    let mock = MockProvider::start().await;
    let gw = TestGateway::start(&byok_config(&mock, "preferred", "preferred", false, false)).await;
    let resp = chat(
        &gw,
        ACME_HOST,
        ACME_DENTAL.2,
        json!({"mock": {"status": 401}}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "provider_key_rejected", "{text}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("your own API key"));
    assert_no_key_fragment(&text, DENTAL_PROVIDER_KEY);
    // The platform's key rejected is the operator's problem, not the tenant's.
    let resp = chat(
        &gw,
        GLOBEX_HOST,
        GLOBEX_CLINIC.2,
        json!({"mock": {"status": 401}}),
    )
    .await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(text.contains("upstream_auth_failed"), "{text}");
    assert_no_key_fragment(&text, PROVIDER_KEY);
}

#[tokio::test]
async fn a_credential_copied_onto_another_tenant_refuses_to_load() {
    let mock = MockProvider::start().await;
    set_provider_key_env();
    let config = byok_config(&mock, "preferred", "preferred", false, false);
    // Move dental's sealed key onto realty.
    let sealed = seal("tenant:acme/dental", "upstream", DENTAL_PROVIDER_KEY);
    let moved = standard_config(&mock.base_url(), "").replace(
        &format!("key_hashes = [\"{}\"]", hash(ACME_REALTY.2)),
        &format!(
            "key_hashes = [\"{}\"]\ncredentials = {{ upstream = \"{sealed}\" }}",
            hash(ACME_REALTY.2)
        ),
    ) + &format!("\n[vault]\n[[vault.keks]]\nid = \"test-kek\"\nenv = \"{KEK_ENV}\"\n");
    livery::Snapshot::prepare(&livery::config::GatewayConfig::parse(&config).unwrap()).unwrap();
    let err = livery::Snapshot::prepare(&livery::config::GatewayConfig::parse(&moved).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tenant:acme/realty") && err.contains("upstream"),
        "{err}"
    );
    assert_no_key_fragment(&err, DENTAL_PROVIDER_KEY);
}

/// A KEK that cannot unwrap: a KMS or transit backend that is down (the
/// `KeyEncryptionKey` seam), under the id the credentials were sealed with.
struct UnreachableKms;

impl livery::vault::KeyEncryptionKey for UnreachableKms {
    fn id(&self) -> &str {
        "test-kek"
    }
    fn wrap(
        &self,
        _: &livery::vault::kek::DataKey,
        _: &[u8],
    ) -> Result<Vec<u8>, livery::vault::VaultError> {
        Err(self.down())
    }
    fn unwrap(
        &self,
        _: &[u8],
        _: &[u8],
    ) -> Result<livery::vault::kek::DataKey, livery::vault::VaultError> {
        Err(self.down())
    }
}

impl UnreachableKms {
    fn down(&self) -> livery::vault::VaultError {
        livery::vault::VaultError::KekMissing {
            id: "test-kek".into(),
            detail: "kms.internal:443 timed out".into(),
        }
    }
}

/// A stored tenant credential that cannot be unsealed when a request needs
/// it (the KMS down, or the KEK under its id no longer the one it was
/// sealed with: load-time checks cannot see either) is 500
/// `credential_unavailable`: nothing is forwarded, no other key pays
/// instead, nothing of the key or the KEK's trouble is in the answer, and
/// tenants whose keys are not involved are served.
#[tokio::test]
async fn a_credential_that_does_not_unseal_at_request_time_is_500_and_nothing_is_forwarded() {
    let mock = MockProvider::start().await;
    // The platform's key (not sealed, so still usable) must not pay instead.
    let config = byok_config(&mock, "preferred", "preferred", false, false);
    let gw = TestGateway::start(&config).await;
    let resp = chat(&gw, ACME_HOST, ACME_DENTAL.2, json!({})).await;
    assert_eq!(resp.status(), 200, "the credential unseals at first");
    assert_eq!(
        upstream_auth(&mock),
        format!("Bearer {DENTAL_PROVIDER_KEY}")
    );

    const OTHER_KEK_ENV: &str = "LIVERY_TEST_OTHER_MASTER_KEY";
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(OTHER_KEK_ENV, livery::vault::generate_kek().unwrap()));
    let wrong_kek: Arc<dyn livery::vault::KeyEncryptionKey> =
        Arc::new(EnvKek::load("test-kek", OTHER_KEK_ENV).unwrap());
    for (what, kek) in [
        (
            "KMS down",
            Arc::new(UnreachableKms) as Arc<dyn livery::vault::KeyEncryptionKey>,
        ),
        ("another KEK under the id", wrong_kek),
    ] {
        let mut parsed = livery::config::GatewayConfig::parse(&config).unwrap();
        parsed.usage.jsonl_path = Some(gw.usage_path.clone());
        let mut snapshot = livery::Snapshot::prepare(&parsed).unwrap();
        let mut ring = Keyring::default();
        ring.add(kek);
        snapshot.keyring = Arc::new(ring);
        gw.gateway
            .as_ref()
            .unwrap()
            .app()
            .snapshot
            .store(Arc::new(snapshot));

        let before = mock.requests().len();
        for stream in [false, true] {
            let resp = chat(&gw, ACME_HOST, ACME_DENTAL.2, json!({"stream": stream})).await;
            let id = rid(&resp);
            assert_eq!(resp.status(), 500, "{what}");
            let text = resp.text().await.unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v["error"]["code"], "credential_unavailable",
                "{what}: {text}"
            );
            assert_eq!(v["error"]["type"], "server_error", "{what}: {text}");
            for leak in ["kms.internal", "test-kek", "unseal", "KEK", "tenant:acme"] {
                assert!(!text.contains(leak), "{what}: `{leak}` in {text}");
            }
            assert_no_key_fragment(&text, DENTAL_PROVIDER_KEY);
            let record = gw.usage_for(&id).await;
            assert_eq!(record["status"], 500, "{what}: {record}");
            assert_eq!(record["error_code"], "credential_unavailable", "{record}");
            assert_ne!(record["key_owner"], "reseller", "{record}");
            assert_ne!(record["key_owner"], "platform", "{record}");
            let line = record.to_string();
            assert_no_key_fragment(&line, DENTAL_PROVIDER_KEY);
        }
        assert_eq!(
            mock.requests().len(),
            before,
            "{what}: something was forwarded"
        );

        // Globex's tenants bring no key of their own: the platform's pays.
        let resp = chat(&gw, GLOBEX_HOST, GLOBEX_CLINIC.2, json!({})).await;
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(upstream_auth(&mock), format!("Bearer {PROVIDER_KEY}"));
    }
}

/// The key, and its distinctive middle, appear nowhere in `text`.
pub fn assert_no_key_fragment(text: &str, key: &str) {
    let middle = &key[8..key.len() - 4];
    assert!(!text.contains(key), "the key leaked: {text}");
    assert!(
        !text.contains(middle),
        "the key's middle `{middle}` leaked: {text}"
    );
}

/// The leak test: a full request cycle against the real binary at
/// `RUST_LOG=trace`; every log line, response and usage record is searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_key_in_logs_responses_or_usage_at_trace_level() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let usage = dir.path().join("usage.jsonl");
    let config = byok_config(&mock, "preferred", "preferred", false, false).replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[usage]\njsonl_path = \"{}\"",
            usage.display()
        ),
    );
    // `[usage]` must come after `[server]`'s keys: move it to the end instead.
    let config = config.replacen(
        &format!("[usage]\njsonl_path = \"{}\"", usage.display()),
        "",
        1,
    ) + &format!("\n[usage]\njsonl_path = \"{}\"\n", usage.display());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &config).unwrap();
    set_provider_key_env();

    let check = Command::new(env!("CARGO_BIN_EXE_livery"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let check_out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);

    let mut child = Command::new(env!("CARGO_BIN_EXE_livery"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(a) = line.strip_prefix("livery listening on http://") {
            break a.to_owned();
        }
    };
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });

    let url = format!("http://{addr}/v1/chat/completions");
    let mut seen = String::new();
    for extra in [
        json!({}),
        json!({"mock": {"status": 401}}),
        json!({"stream": true}),
        json!({"mock": {"status": 500}}),
    ] {
        let mut body = chat_body("gpt-4o-mini");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = client()
            .post(&url)
            .header("host", ACME_HOST)
            .bearer_auth(ACME_DENTAL.2)
            .json(&body)
            .send()
            .await
            .unwrap();
        seen.push_str(&format!("{:?}\n", resp.headers()));
        seen.push_str(&resp.text().await.unwrap());
    }
    // A key the reseller does not know: refused once the reseller is known.
    let resp = client()
        .post(&url)
        .header("host", ACME_HOST)
        .bearer_auth("sk-livery-not-a-known-key")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A client that disconnects mid-stream.
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    body["mock"] = json!({"chunks": 500, "gap_ms": 20});
    let resp = client()
        .post(&url)
        .header("host", ACME_HOST)
        .bearer_auth(ACME_DENTAL.2)
        .json(&body)
        .send()
        .await
        .unwrap();
    seen.push_str(&format!("{:?}\n", resp.headers()));
    drop(resp);
    // Generous: the gateway logs every step at trace level, and a loaded host
    // took more than 3 s. Not noticed, the 10 s stream would end whole and
    // never be counted cancelled.
    mock.wait_cancelled(1, std::time::Duration::from_secs(20))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = log.join().unwrap();
    let records = std::fs::read_to_string(&usage).unwrap();

    // The upstream did receive the key, so the search below is meaningful.
    assert!(mock
        .requests()
        .iter()
        .any(|r| r.headers["authorization"] == format!("Bearer {DENTAL_PROVIDER_KEY}").as_str()));
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "RUST_LOG=trace produced no trace output"
    );
    assert_eq!(records.lines().count(), 5, "{records}");
    // Lines logged during a request carry its span: the id, the endpoint and,
    // once resolved, the reseller and the tenant.
    assert!(
        log.lines().any(|l| l.contains("request{request_id=")
            && l.contains(
                " method=POST path=/v1/chat/completions reseller=\"acme\" tenant=\"dental\"}"
            )),
        "no log line carries the request span's fields:\n{log}"
    );
    // A refused key's line carries the reseller it was refused at, no tenant.
    assert!(
        log.lines().any(|l| l.contains("request refused")
            && l.contains(" path=/v1/chat/completions reseller=\"acme\"}")
            && l.contains("code=\"invalid_api_key\"")),
        "no refusal line carries the reseller:\n{log}"
    );
    for (what, text) in [
        ("log", &log),
        ("responses", &seen),
        ("usage", &records),
        ("check-config", &check_out),
        ("config", &config),
    ] {
        for key in [DENTAL_PROVIDER_KEY, PROVIDER_KEY] {
            let middle = &key[8..key.len() - 4];
            assert!(!text.contains(middle), "{what} contains the key {key}");
        }
    }
}

fn livery_cmd(envs: &[(&str, &str)]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_livery"));
    c.env_remove("LIVERY_CONFIG")
        .env_remove("LIVERY_MASTER_KEY");
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

fn run_with_stdin(mut cmd: std::process::Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn cli_keygen_seal_rotate_verify() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = livery_cmd(&[]).args(["vault", "keygen"]).output().unwrap();
    assert!(keygen.status.success());
    let kek_a = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&kek_a)
            .unwrap()
            .len(),
        32
    );
    let kek_b = String::from_utf8(
        livery_cmd(&[])
            .args(["vault", "keygen"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert_ne!(kek_a, kek_b);

    // Seal with the implicit KEK `default` (LIVERY_MASTER_KEY); the key comes from stdin only.
    let mut seal = livery_cmd(&[("LIVERY_MASTER_KEY", &kek_a)]);
    seal.current_dir(dir.path()).args([
        "vault",
        "seal",
        "--owner",
        "tenant:demo/demo-tenant",
        "--provider",
        "mock",
    ]);
    let out = run_with_stdin(seal, &format!("{DENTAL_PROVIDER_KEY}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sealed_tenant = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        sealed_tenant.starts_with("lvk1:default:"),
        "{sealed_tenant}"
    );
    assert_no_key_fragment(&sealed_tenant, DENTAL_PROVIDER_KEY);
    assert_no_key_fragment(&String::from_utf8_lossy(&out.stderr), DENTAL_PROVIDER_KEY);
    let mut seal = livery_cmd(&[("LIVERY_MASTER_KEY", &kek_a)]);
    seal.current_dir(dir.path()).args([
        "vault",
        "seal",
        "--owner",
        "reseller:demo",
        "--provider",
        "mock",
    ]);
    let sealed_reseller = String::from_utf8(run_with_stdin(seal, ACME_RESELLER_KEY).stdout)
        .unwrap()
        .trim()
        .to_owned();

    // A configuration holding both, with KEKs `default` (old) and `next` (active).
    let base =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")).unwrap();
    let demo_hash = "key_hashes = [\"sha256:09053059fad8155dd69bb4d01cf485f4b778dd986ba5b8cd1ad92c184e504a8c\"]";
    let with_creds = base
        .replace(demo_hash, &format!("{demo_hash}\n# the tenant's own key\ncredentials = {{ mock = \"{sealed_tenant}\" }}"))
        .replace("domains = [\"localhost\", \"127.0.0.1\"]", &format!("domains = [\"localhost\", \"127.0.0.1\"]\ncredentials = {{ mock = \"{sealed_reseller}\" }}"));
    let config = format!(
        "{with_creds}\n[vault]\nactive_kek = \"next\"\n[[vault.keks]]\nid = \"default\"\nenv = \"KEK_A\"\n[[vault.keks]]\nid = \"next\"\nenv = \"KEK_B\"\n"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &config).unwrap();
    let envs = [("KEK_A", kek_a.as_str()), ("KEK_B", kek_b.as_str())];

    let verify = livery_cmd(&envs)
        .args(["vault", "verify", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("2 credential(s) unseal"));

    // A file only its owner may read stays so.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A link planted where rotation writes its new text is not followed.
    let planted = dir.path().join("planted.txt");
    std::fs::write(&planted, "untouched").unwrap();
    let tmp = path.with_extension("toml.rotating");
    std::os::unix::fs::symlink(&planted, &tmp).unwrap();
    let refused = livery_cmd(&envs)
        .args(["vault", "rotate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert_eq!(std::fs::read_to_string(&planted).unwrap(), "untouched");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), config);
    std::fs::remove_file(&tmp).unwrap();

    let rotate = livery_cmd(&envs)
        .args(["vault", "rotate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!tmp.exists());
    let rotated = std::fs::read_to_string(&path).unwrap();
    assert!(
        !rotated.contains("lvk1:default:"),
        "a sealed string still names the old KEK:\n{rotated}"
    );
    assert_eq!(rotated.matches("lvk1:next:").count(), 2);
    assert!(
        rotated.contains("# the tenant's own key"),
        "rotation lost the file's comments"
    );
    for text in [
        &rotated,
        &String::from_utf8_lossy(&rotate.stdout).into_owned(),
        &String::from_utf8_lossy(&rotate.stderr).into_owned(),
    ] {
        assert_no_key_fragment(text, DENTAL_PROVIDER_KEY);
        assert_no_key_fragment(text, ACME_RESELLER_KEY);
    }

    // The old KEK can now be retired: every credential still unseals without it.
    let only_next = rotated.replace("[[vault.keks]]\nid = \"default\"\nenv = \"KEK_A\"\n", "");
    std::fs::write(&path, &only_next).unwrap();
    let verify = livery_cmd(&[("KEK_B", &kek_b)])
        .args(["vault", "verify", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let check = livery_cmd(&[("KEK_B", &kek_b)])
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("sealed_credentials=[mock]"));

    // A credential moved to another owner is reported by owner and provider, not printed.
    let tampered = only_next.replace("id = \"demo-tenant\"", "id = \"other-tenant\"");
    std::fs::write(&path, &tampered).unwrap();
    let verify = livery_cmd(&[("KEK_B", &kek_b)])
        .args(["vault", "verify", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!verify.status.success());
    let out = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        out.contains("tenant:demo/other-tenant mock: FAILED"),
        "{out}"
    );
    assert!(out.contains("reseller:demo mock: ok"), "{out}");
    assert_no_key_fragment(&out, DENTAL_PROVIDER_KEY);
}
