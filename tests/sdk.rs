//! End to end with the real `openai` Python SDK (tests/sdk/openai_e2e.py): a chat
//! completion, streamed ones (with and without usage), an embedding (base64, as
//! the SDK asks by default, and float), `models.list()`, and a wrong key raising
//! `AuthenticationError`.
//!
//! The interpreter comes from `LIVERY_PYTHON` (tests/run.sh creates .venv with the
//! SDK and sets it). Without it these tests are skipped with a message, unless
//! `LIVERY_REQUIRE_SDK=1` (set by tests/run.sh), where they fail instead.

use crate::cli::{default_config, ServeProcess};
use crate::support::{self, MockProvider, TestGateway};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_e2e.py");
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The Python interpreter that has the `openai` SDK, or `None` to skip.
pub(crate) async fn sdk_python() -> Option<PathBuf> {
    let required = std::env::var("LIVERY_REQUIRE_SDK").is_ok_and(|v| v == "1");
    let unavailable = |why: String| {
        assert!(
            !required,
            "{why}: run tests/run.sh, which installs the openai SDK (LIVERY_REQUIRE_SDK=1)"
        );
        eprintln!(
            "SKIPPED: {why}; run tests/run.sh, which installs the openai SDK and sets LIVERY_PYTHON"
        );
        None
    };
    let Some(python) = std::env::var_os("LIVERY_PYTHON").filter(|p| !p.is_empty()) else {
        return unavailable("LIVERY_PYTHON is not set".to_owned());
    };
    let python = PathBuf::from(python);
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import openai"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await;
    match probe {
        Ok(out) if out.status.success() => Some(python),
        Ok(out) => unavailable(format!(
            "{} cannot `import openai`: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => unavailable(format!("cannot run {}: {e}", python.display())),
    }
}

/// Runs the SDK script against `base_url` and fails the test (with its output)
/// unless every check passed.
async fn run_sdk_script(python: &Path, base_url: &str, key: &str, model: &str, embed_model: &str) {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(SCRIPT)
        .args([base_url, key, model, embed_model])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // httpx honours proxy variables; the gateway is on loopback.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
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
    ] {
        cmd.env_remove(var);
    }
    let out = match tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output()).await {
        Ok(out) => out.expect("the python interpreter runs"),
        Err(_) => {
            panic!("openai_e2e.py against {base_url} did not finish within {SCRIPT_TIMEOUT:?}")
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai_e2e.py against {base_url} failed ({}):\n{stdout}\n{stderr}",
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
    r["endpoint"] == "chat.completions" || r["endpoint"] == "embeddings"
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
    // 2 chat + 1 streamed chat with usage + 1 streamed without + 2 embeddings.
    let usage_path = serve.dir.path().join("usage.jsonl");
    let records = wait_usage(&usage_path, 5).await;
    let served: Vec<_> = records
        .iter()
        .filter(|r| r["tenant"] == "demo-tenant" && r["status"] == 200 && is_inference(r))
        .collect();
    assert_eq!(
        served.len(),
        5,
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

    run_sdk_script(
        &python,
        &base_url,
        support::ACME_DENTAL.2,
        "gpt-4o-mini",
        "embed",
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
    assert_eq!(chats, 3, "chat requests the mock saw");
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

    let records = wait_usage(&gw.usage_path, 5).await;
    let dental: Vec<_> = records
        .iter()
        .filter(|r| {
            r["reseller"] == "acme"
                && r["tenant"] == "dental"
                && r["status"] == 200
                && is_inference(r)
        })
        .collect();
    assert_eq!(dental.len(), 5, "usage records: {records:#?}");
    gw.shutdown().await;
}
