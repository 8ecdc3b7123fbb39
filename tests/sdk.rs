//! End to end with the real `openai` Python SDK (tests/sdk/openai_e2e.py): a chat
//! completion, streamed ones (with and without usage), an embedding (base64, as
//! the SDK asks by default, and float), `models.list()`, a structured output
//! parsed into a pydantic model (streamed and not), the Responses API
//! (`responses.create`, `.stream`, `.parse`), and a wrong key raising
//! `AuthenticationError`; also through an Anthropic route (without
//! embeddings and the Responses API). And with the real
//! `anthropic` SDK (tests/sdk/anthropic_e2e.py) on `/v1/messages` through an
//! OpenAI route: a message, streams (the SDK's helper and raw events), a
//! structured output parsed into a pydantic model, a wrong key and an unknown
//! model raising the SDK's errors.
//!
//! The interpreter comes from `LIVERY_PYTHON` (tests/run.sh creates .venv with the
//! SDKs and sets it). Without it these tests are skipped with a message, unless
//! `LIVERY_REQUIRE_SDK=1` (set by tests/run.sh), where they fail instead.

use crate::cli::{default_config, ServeProcess};
use crate::support::anthropic_mock::AnthropicMock;
use crate::support::{self, MockProvider, TestGateway};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_e2e.py");
const ANTHROPIC_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/anthropic_e2e.py");
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The Python interpreter that has the `openai` SDK, or `None` to skip.
pub(crate) async fn sdk_python() -> Option<PathBuf> {
    sdk_python_with("openai").await
}

/// The Python interpreter that can `import {module}`, or `None` to skip.
async fn sdk_python_with(module: &str) -> Option<PathBuf> {
    let required = std::env::var("LIVERY_REQUIRE_SDK").is_ok_and(|v| v == "1");
    let unavailable = |why: String| {
        assert!(
            !required,
            "{why}: run tests/run.sh, which installs the openai and anthropic SDKs (LIVERY_REQUIRE_SDK=1)"
        );
        eprintln!(
            "SKIPPED: {why}; run tests/run.sh, which installs the SDKs and sets LIVERY_PYTHON"
        );
        None
    };
    let Some(python) = std::env::var_os("LIVERY_PYTHON").filter(|p| !p.is_empty()) else {
        return unavailable("LIVERY_PYTHON is not set".to_owned());
    };
    let python = PathBuf::from(python);
    let probe = tokio::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await;
    match probe {
        Ok(out) if out.status.success() => Some(python),
        Ok(out) => unavailable(format!(
            "{} cannot `import {module}`: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => unavailable(format!("cannot run {}: {e}", python.display())),
    }
}

/// Runs the SDK script against `base_url` and fails the test (with its output)
/// unless every check passed.
async fn run_sdk_script(python: &Path, base_url: &str, key: &str, model: &str, embed_model: &str) {
    run_script_with(python, SCRIPT, &[base_url, key, model, embed_model], &[]).await;
}

/// Runs `script` with `args` (the first is the base URL) under `python`.
async fn run_script(python: &Path, script: &str, args: &[&str]) {
    run_script_with(python, script, args, &[]).await;
}

/// [`run_script`] with `env` set for the script.
async fn run_script_with(python: &Path, script: &str, args: &[&str], env: &[(&str, &str)]) {
    let base_url = args.first().copied().unwrap_or_default();
    let name = Path::new(script)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // httpx honours proxy variables; the gateway is on loopback.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.envs(env.iter().copied());
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
    ] {
        cmd.env_remove(var);
    }
    let out = match tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output()).await {
        Ok(out) => out.expect("the python interpreter runs"),
        Err(_) => {
            panic!("{name} against {base_url} did not finish within {SCRIPT_TIMEOUT:?}")
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{name} against {base_url} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("SDK checks passed"), "{stdout}");
}

/// Runs tests/sdk/openai_tls.py: a chat completion and a streamed one over
/// HTTPS at `base_url`, whose `host` the script resolves to 127.0.0.1, trusting
/// only the CA in `ca_file`.
pub(crate) async fn run_sdk_tls_script(
    python: &Path,
    base_url: &str,
    key: &str,
    model: &str,
    ca_file: &Path,
    host: &str,
) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_tls.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script)
        .args([base_url, key, model])
        .arg(ca_file)
        .arg(host)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "SSL_CERT_FILE",
        "OPENAI_BASE_URL",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output())
        .await
        .expect("openai_tls.py finishes")
        .expect("the python interpreter runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SDK over HTTPS passed"),
        "openai_tls.py against {base_url} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A usage record of a chat completion or an embedding (the SDK script sends 3
/// and 2), as opposed to `models.list()` or the wrong-key request.
fn is_inference(r: &serde_json::Value) -> bool {
    ["chat.completions", "completions", "embeddings", "responses"]
        .contains(&r["endpoint"].as_str().unwrap_or(""))
}

/// Usage records in `path`, waiting until at least `n` are there.
async fn wait_usage(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let records = support::read_usage(path);
        if records.len() >= n || start.elapsed() > Duration::from_secs(5) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The acceptance test: the real binary on the repository's gateway.toml, the
/// SDK at `http://localhost:PORT/v1` with the demo key and model `demo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_against_default_gateway_toml() {
    let Some(python) = sdk_python().await else {
        return;
    };
    let mut serve =
        tokio::task::spawn_blocking(|| ServeProcess::start(&default_config(), "127.0.0.1:0"))
            .await
            .unwrap();
    let base_url = format!("http://localhost:{}/v1", serve.addr.port());
    run_sdk_script(&python, &base_url, "sk-livery-demo", "demo", "demo").await;

    // The relative `usage.jsonl` of gateway.toml lands in the working directory:
    // 1 chat + 1 streamed chat with usage + 1 streamed without + 2 embeddings
    // + 1 raw-response chat + 2 structured (parsed, streamed) + 3 responses
    // (created, streamed, parsed).
    let usage_path = serve.dir.path().join("usage.jsonl");
    let records = wait_usage(&usage_path, 11).await;
    let served: Vec<_> = records
        .iter()
        .filter(|r| r["tenant"] == "demo-tenant" && r["status"] == 200 && is_inference(r))
        .collect();
    assert_eq!(
        served.len(),
        11,
        "usage records of the demo tenant: {records:#?}"
    );
    assert!(served.iter().all(|r| r["reseller"] == "demo"));

    let (serve, status) = tokio::task::spawn_blocking(move || {
        let status = serve.terminate();
        (serve, status)
    })
    .await
    .unwrap();
    assert!(
        status.success(),
        "serve exited with {status}; stderr:\n{}",
        serve.stderr()
    );
}

/// The SDK through the gateway to an HTTP (`kind = "openai"`) upstream: the
/// standard tenancy, with acme also reachable at Host 127.0.0.1 (the SDK sets
/// Host from `base_url`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_against_http_mock_upstream() {
    let Some(python) = sdk_python().await else {
        return;
    };
    let mock = MockProvider::start().await;
    let acme_domains = format!("domains = [\"{}\"]", support::ACME_HOST);
    let config = support::standard_config(&mock.base_url(), "");
    assert!(config.contains(&acme_domains), "standard config changed");
    let config = config.replace(
        &acme_domains,
        &format!("domains = [\"{}\", \"127.0.0.1\"]", support::ACME_HOST),
    );
    let gw = TestGateway::start(&config).await;
    let base_url = format!("http://127.0.0.1:{}/v1", gw.addr.port());

    // The HTTP mock obeys fault directives: the SDK also meets a provider's
    // 400 and a stream broken off mid-way.
    run_script_with(
        &python,
        SCRIPT,
        &[&base_url, support::ACME_DENTAL.2, "gpt-4o-mini", "embed"],
        &[("LIVERY_SDK_FAULTS", "1")],
    )
    .await;

    // Every SDK request reached the upstream mapped, with the platform key only.
    let requests = mock.requests();
    let chats = requests
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count();
    let embeddings = requests
        .iter()
        .filter(|r| r.path.ends_with("/embeddings"))
        .count();
    let completions = requests
        .iter()
        .filter(|r| r.path.ends_with("/v1/completions"))
        .count();
    // Chat: plain, streamed, streamed with usage, raw response, structured
    // (parsed and streamed), the 400 and the broken stream.
    assert_eq!(chats, 8, "chat requests the mock saw");
    let structured = requests
        .iter()
        .filter(|r| r.body["response_format"]["type"] == "json_schema")
        .count();
    assert_eq!(structured, 2, "structured requests the mock saw");
    // Responses: created, streamed, parsed.
    let responses = requests
        .iter()
        .filter(|r| r.path.ends_with("/v1/responses"))
        .count();
    assert_eq!(responses, 3, "Responses API requests the mock saw");
    assert_eq!(completions, 2, "legacy completion requests the mock saw");
    assert_eq!(embeddings, 2, "embedding requests the mock saw");
    for r in &requests {
        let auth = r.headers.get("authorization").and_then(|v| v.to_str().ok());
        assert_eq!(
            auth,
            Some(format!("Bearer {}", support::PROVIDER_KEY).as_str()),
            "{} {}",
            r.method,
            r.path
        );
        if r.method != "POST" {
            continue;
        }
        let model = r.body["model"].as_str().unwrap_or_default();
        assert!(
            model == "gpt-4o-mini-2024-07-18" || model == "text-embedding-3-small",
            "upstream model {model}"
        );
    }

    let records = wait_usage(&gw.usage_path, 15).await;
    let dental: Vec<_> = records
        .iter()
        .filter(|r| {
            r["reseller"] == "acme"
                && r["tenant"] == "dental"
                && r["status"] == 200
                && is_inference(r)
        })
        .collect();
    assert_eq!(dental.len(), 14, "usage records: {records:#?}");
    gw.shutdown().await;
}

/// The standard tenancy plus the Anthropic provider and models of
/// tests/anthropic.rs, with acme also reachable at Host 127.0.0.1 (the SDKs set
/// Host from their base URL); tests/responses.rs uses it too.
pub(crate) async fn anthropic_gateway() -> (TestGateway, MockProvider, AnthropicMock) {
    let openai = MockProvider::start().await;
    let claude = AnthropicMock::start(support::PROVIDER_KEY).await;
    let key_line = format!("api_key_env = \"{}\"", support::PROVIDER_KEY_ENV);
    let acme_domains = format!("domains = [\"{}\"]", support::ACME_HOST);
    let config =
        crate::anthropic::anthropic_config(&openai.base_url(), &claude.base_url(), &key_line);
    assert!(config.contains(&acme_domains), "standard config changed");
    let config = config.replace(
        &acme_domains,
        &format!("domains = [\"{}\", \"127.0.0.1\"]", support::ACME_HOST),
    );
    (TestGateway::start(&config).await, openai, claude)
}

/// The `openai` SDK, streamed and not, through an Anthropic route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_through_an_anthropic_route() {
    let Some(python) = sdk_python().await else {
        return;
    };
    let (gw, _openai, claude) = anthropic_gateway().await;
    let base_url = format!("http://127.0.0.1:{}/v1", gw.addr.port());
    run_script(
        &python,
        SCRIPT,
        &[&base_url, support::ACME_DENTAL.2, "claude-sonnet", "-"],
    )
    .await;
    let requests = claude.requests();
    // Plain, streamed, streamed with usage, raw response, structured (parsed
    // and streamed), and the Responses API's create, stream and parse.
    assert_eq!(requests.len(), 9, "requests the Anthropic mock saw");
    let structured = requests
        .iter()
        .filter(|r| r.body["output_config"]["format"]["type"] == "json_schema")
        .count();
    assert_eq!(structured, 3, "structured requests the Anthropic mock saw");
    assert!(requests
        .iter()
        .all(|r| r.body["model"] == "claude-sonnet-4-5"));
    let records = wait_usage(&gw.usage_path, 9).await;
    let served: Vec<_> = records
        .iter()
        .filter(|r| r["provider"] == "claude" && r["status"] == 200)
        .collect();
    assert_eq!(served.len(), 9, "usage records: {records:#?}");
    let responses = served
        .iter()
        .filter(|r| r["endpoint"] == "responses")
        .count();
    assert_eq!(responses, 3, "usage records: {records:#?}");
    assert!(served
        .iter()
        .all(|r| r["completion_tokens"].as_u64() > Some(0)));
    gw.shutdown().await;
}

/// The `anthropic` SDK on `/v1/messages` through an OpenAI route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_through_an_openai_route() {
    let Some(python) = sdk_python_with("anthropic").await else {
        return;
    };
    let (gw, openai, _claude) = anthropic_gateway().await;
    let base_url = format!("http://127.0.0.1:{}", gw.addr.port());
    run_script(
        &python,
        ANTHROPIC_SCRIPT,
        &[&base_url, support::ACME_DENTAL.2, "gpt-4o-mini"],
    )
    .await;
    let chats = openai
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count();
    // Created, streamed twice, parsed (a structured output).
    assert_eq!(chats, 4, "chat requests the OpenAI mock saw");
    let strict = openai
        .requests()
        .iter()
        .filter(|r| r.body["response_format"]["json_schema"]["strict"] == true)
        .count();
    assert_eq!(strict, 1, "structured requests the OpenAI mock saw");
    let records = wait_usage(&gw.usage_path, 5).await;
    let served: Vec<_> = records
        .iter()
        .filter(|r| r["endpoint"] == "messages" && r["status"] == 200)
        .collect();
    assert_eq!(served.len(), 4, "usage records: {records:#?}");
    assert!(served.iter().all(|r| r["provider"] == "upstream"));
    gw.shutdown().await;
}
