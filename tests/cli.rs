//! The `livery` binary: `--version`, `check-config` (resolved tenancy, no secrets;
//! clear errors on broken configurations), `hash-key`, and `serve` (refuses a
//! non-loopback listener while the demo tenant is configured; stops cleanly on
//! SIGTERM). Also home of [`ServeProcess`], the real binary started on port 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_livery");
const DEMO_KEY_HASH: &str =
    "sha256:09053059fad8155dd69bb4d01cf485f4b778dd986ba5b8cd1ad92c184e504a8c";
const LISTENING: &str = "livery listening on http://";

/// The repository's embedded default configuration.
pub(crate) fn default_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml")
}

fn livery() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("LIVERY_CONFIG").stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("the livery binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Runs `livery hash-key` with `input` on stdin.
fn hash_key(input: &str) -> (Output, String, String) {
    let mut child = livery()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Waits for `child` to exit, killing it (and failing) after `within`.
fn wait_timeout(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `livery serve` running as a real process in its own temporary working
/// directory (so a relative `usage.jsonl` lands there), on the address it
/// printed. Killed when dropped.
pub(crate) struct ServeProcess {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stderr_path: PathBuf,
    /// Everything the process printed on stdout (filled by a reader thread).
    stdout: mpsc::Receiver<String>,
}

impl ServeProcess {
    /// Starts `livery serve --config CONFIG --listen LISTEN` and waits (up to
    /// 20 s) for its `livery listening on http://ADDR` line.
    pub(crate) fn start(config: &Path, listen: &str) -> Self {
        Self::start_with(livery(), Some(config), listen, tempfile::tempdir().unwrap())
    }

    /// `livery serve --listen LISTEN` without `--config`, in `dir`.
    pub(crate) fn start_in(dir: tempfile::TempDir, listen: &str) -> Self {
        Self::start_with(livery(), None, listen, dir)
    }

    /// The same, restricted to one CPU with `taskset -c CPU` (which execs
    /// livery: the PID is livery's).
    pub(crate) fn start_on_cpu(cpu: &str, config: &Path, listen: &str) -> Self {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpu, BIN])
            .env_remove("LIVERY_CONFIG")
            .stdin(Stdio::null());
        Self::start_with(cmd, Some(config), listen, tempfile::tempdir().unwrap())
    }

    fn start_with(
        mut cmd: Command,
        config: Option<&Path>,
        listen: &str,
        dir: tempfile::TempDir,
    ) -> Self {
        if let Some(config) = config {
            cmd.arg("serve").arg("--config").arg(config);
        } else {
            cmd.arg("serve");
        }
        let stderr_path = dir.path().join("livery.stderr");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = cmd
            .args(["--listen", listen])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("livery serve starts");
        let pipe = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout for the life of the process.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            stderr_path,
            stdout: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match me.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix(LISTENING) {
                        me.addr = addr.parse().unwrap_or_else(|e| {
                            panic!("bad address in {line:?}: {e}");
                        });
                        return me;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "livery serve printed no `{LISTENING}ADDR` line within 20 s; stderr:\n{}",
                    me.stderr()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_timeout(&mut me.child, Duration::from_secs(5), "serve");
                    panic!(
                        "livery serve exited ({status}) before listening; stderr:\n{}",
                        me.stderr()
                    );
                }
            }
        }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal (`HUP`, `TERM`...) with the shell's builtin `kill`.
    pub(crate) fn signal(&self, name: &str) {
        let pid = self.child.id();
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -{name} {pid}")])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid} failed");
    }

    /// Sends SIGTERM and waits (up to 20 s) for the process to exit.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id();
        // The shell's builtin `kill`: no dependency on procps or libc.
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        wait_timeout(
            &mut self.child,
            Duration::from_secs(20),
            "livery serve after SIGTERM",
        )
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 GET over a fresh connection; returns the status and the body.
fn http_get(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

// ------------------------------------------------------------------ --version

#[test]
fn version_prints_name_and_version() {
    let (out, stdout, stderr) = run(livery().arg("--version"));
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(
        stdout.trim(),
        format!("livery {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(stdout.trim(), "livery 0.1.0");
}

// --------------------------------------------------------------- check-config

#[test]
fn the_deploy_example_configuration_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gateway.example.toml");
    let (out, stdout, stderr) = run(livery()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env("OPENAI_API_KEY", "sk-example"));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("dental-clinic"), "{stdout}");
}

/// The container image builds from what its Dockerfile copies: Cargo reads
/// every target the manifest names (a `[[bench]]` without a path is
/// `benches/NAME.rs`) before it builds one, so their directories must be
/// copied too (the image once failed with "can't find `request_path` bench").
/// And the Kubernetes manifest runs one replica while the example configuration
/// issues certificates, on a volume its user may write.
#[test]
fn the_deploy_files_agree_with_the_manifest_and_the_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let dockerfile = read("deploy/Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let mut paths = Vec::new();
    for kind in ["bin", "bench", "test", "example"] {
        for t in manifest
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let path = match t.get("path").and_then(|p| p.as_str()) {
                Some(p) => p.to_owned(),
                None if kind == "bench" => format!("benches/{}.rs", t["name"].as_str().unwrap()),
                None => continue,
            };
            paths.push(path);
        }
    }
    for path in paths.iter().filter(|p| !p.starts_with("tests/")) {
        let top = path.split('/').next().unwrap();
        assert!(
            copied.contains(&top),
            "deploy/Dockerfile does not copy `{top}`, where Cargo looks for `{path}`"
        );
        assert!(root.join(path).exists(), "{path}");
    }
    let k8s = read("deploy/k8s/livery.yaml");
    let example = read("deploy/gateway.example.toml");
    if example.contains("[tls.acme]") {
        assert!(
            k8s.contains("replicas: 1"),
            "one replica while it issues its own certificates"
        );
    }
    assert!(k8s.contains("fsGroup: 10001"));
    assert!(example.contains("redirect_port = 443"));
}

/// Without a `gateway.toml` where it runs, the CLI uses the one built into
/// the binary (the quick start works from any directory); a configuration
/// named explicitly must exist.
#[test]
fn the_embedded_configuration_is_used_where_there_is_no_gateway_toml() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stdout, stderr) = run(livery().arg("check-config").current_dir(dir.path()));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("demo-tenant"), "{stdout}");
    assert_eq!(
        livery::config::EMBEDDED,
        std::fs::read_to_string(default_config()).unwrap()
    );
    let (out, _, stderr) = run(livery()
        .arg("check-config")
        .arg("--config")
        .arg(dir.path().join("gateway.toml"))
        .current_dir(dir.path()));
    assert!(!out.status.success());
    assert!(stderr.contains("cannot read"), "{stderr}");
    // Named, even as `gateway.toml`, it must exist: no demo in its place.
    let mut named = livery();
    named.args(["check-config", "--config", "gateway.toml"]);
    let mut from_env = livery();
    from_env
        .arg("check-config")
        .env("LIVERY_CONFIG", "gateway.toml");
    for mut cmd in [named, from_env] {
        let (out, stdout, stderr) = run(cmd.current_dir(dir.path()));
        assert!(!out.status.success(), "{stdout}");
        assert!(stderr.contains("cannot read gateway.toml"), "{stderr}");
    }
}

/// The configuration's source is decided at start: a `./gateway.toml` that
/// disappears is a failed reload, not a switch to the built-in demo.
#[test]
fn sighup_without_the_default_file_keeps_it_and_never_loads_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let own_key = "sk-livery-own-tenant";
    let own = std::fs::read_to_string(default_config())
        .unwrap()
        .replace(DEMO_KEY_HASH, &crate::support::hash(own_key));
    std::fs::write(dir.path().join("gateway.toml"), own).unwrap();
    let serve = ServeProcess::start_in(dir, "127.0.0.1:0");
    assert_eq!(models_status(serve.addr, own_key), 200);
    assert_eq!(models_status(serve.addr, "sk-livery-demo"), 401);

    let path = serve.dir.path().join("gateway.toml");
    std::fs::rename(&path, path.with_extension("toml.old")).unwrap();
    serve.signal("HUP");
    let start = Instant::now();
    while !serve.stderr().contains("reload refused") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(models_status(serve.addr, own_key), 200);
    assert_eq!(models_status(serve.addr, "sk-livery-demo"), 401);
}

#[test]
fn check_config_lists_the_default_tenancy_without_secrets() {
    let (out, stdout, stderr) = run(livery()
        .arg("check-config")
        .arg("--config")
        .arg(default_config()));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stdout.contains("listen: 127.0.0.1:8080"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.trim_start().starts_with("mock ")),
        "provider mock: {stdout}"
    );
    assert!(
        stdout.contains("demo -> mock/mock-1"),
        "model demo: {stdout}"
    );
    let reseller = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("demo ["))
        .unwrap_or_else(|| panic!("no reseller demo line: {stdout}"));
    assert!(reseller.contains("localhost"), "{reseller}");
    assert!(reseller.contains("demo.livery.localhost"), "{reseller}");
    let tenant = stdout
        .lines()
        .find(|l| l.contains("tenant demo-tenant"))
        .unwrap_or_else(|| panic!("no tenant demo-tenant line: {stdout}"));
    assert!(tenant.contains("plan=demo"), "{tenant}");
    assert!(tenant.contains("keys=1"), "{tenant}");
    assert!(tenant.contains("models=[demo]"), "{tenant}");

    // No key hash anywhere; the (public) demo key only in the note about it.
    let all = format!("{stdout}{stderr}");
    assert!(!all.contains("09053059"), "a key hash was printed: {all}");
    assert!(!all.contains("sha256:"), "a key hash was printed: {all}");
    for line in all.lines().filter(|l| l.contains("sk-livery-demo")) {
        assert!(
            line.starts_with("note: "),
            "the demo key outside the note: {line}"
        );
        assert!(line.contains("loopback"), "{line}");
    }
}

#[test]
fn check_config_reads_livery_config_env_and_defaults_to_gateway_toml() {
    // LIVERY_CONFIG from any working directory.
    let dir = tempfile::tempdir().unwrap();
    let (out, stdout, stderr) = run(livery()
        .arg("check-config")
        .env("LIVERY_CONFIG", default_config())
        .current_dir(dir.path()));
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stdout.contains("tenant demo-tenant"), "{stdout}");

    // No flag, no env: ./gateway.toml.
    let (out, stdout, stderr) = run(livery()
        .arg("check-config")
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stdout.starts_with("gateway.toml: ok"), "{stdout}");

    // And a missing file named by LIVERY_CONFIG is named in the error (the
    // default path falls back to the embedded configuration instead).
    let (out, stdout, stderr) = run(livery()
        .arg("check-config")
        .env("LIVERY_CONFIG", dir.path().join("missing.toml"))
        .current_dir(dir.path()));
    assert!(!out.status.success(), "stdout: {stdout}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

/// `check-config` on gateway.toml edited by `edit`: must fail, print nothing on
/// stdout, and say `expected` (each fragment) on stderr.
fn assert_config_rejected(what: &str, edit: impl Fn(&str) -> String, expected: &[&str]) {
    let original = std::fs::read_to_string(default_config()).unwrap();
    let broken = edit(&original);
    assert_ne!(broken, original, "{what}: the edit changed nothing");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, &broken).unwrap();
    let (out, stdout, stderr) = run(livery().arg("check-config").arg("--config").arg(&path));
    assert!(
        !out.status.success(),
        "{what}: check-config accepted it:\n{stdout}"
    );
    assert!(
        !stdout.contains(": ok"),
        "{what}: printed ok on stdout:\n{stdout}"
    );
    assert!(
        stderr.starts_with("livery: "),
        "{what}: unexpected stderr: {stderr}"
    );
    for e in expected {
        assert!(
            stderr.contains(e),
            "{what}: stderr does not say {e:?}: {stderr}"
        );
    }
    assert!(
        !stderr.contains("09053059"),
        "{what}: a key hash leaked: {stderr}"
    );
}

#[test]
fn check_config_rejects_an_unknown_plan() {
    assert_config_rejected(
        "unknown plan",
        |t| t.replace("plan = \"demo\"", "plan = \"gold\""),
        &["unknown plan", "gold", "demo/demo-tenant"],
    );
}

/// A key entry that cannot be used is a mistake said at load, with the
/// tenant named: a model list that serves nothing, or an admin key's field.
#[test]
fn check_config_rejects_a_tenant_key_entry_it_cannot_use() {
    let digest = "\"sha256:09053059fad8155dd69bb4d01cf485f4b778dd986ba5b8cd1ad92c184e504a8c\"";
    for (fields, says) in [
        ("models = []", "the list is empty"),
        ("models = [\"gpt-9\"]", "unknown model `gpt-9`"),
        ("read_only = true", "`read_only` is for admin keys"),
    ] {
        assert_config_rejected(
            says,
            |t| {
                t.replace(
                    &format!("key_hashes = [{digest}]"),
                    &format!("key_hashes = [{{ hash = {digest}, {fields} }}]"),
                )
            },
            &["demo/demo-tenant", says],
        );
    }
}

#[test]
fn check_config_rejects_a_domain_claimed_twice() {
    // Case and a trailing dot do not make it another domain.
    assert_config_rejected(
        "duplicate domain",
        |t| format!("{t}\n[[resellers]]\nid = \"other\"\ndomains = [\"LocalHost.\"]\n"),
        &["domain `localhost`", "demo", "other"],
    );
}

/// `{id}.{platform_domain}` is reseller `id`'s host: another reseller may not
/// list it (it would take the host over, custom domains being looked up
/// first), and a reseller may list its own.
#[test]
fn check_config_rejects_another_resellers_platform_host_as_a_custom_domain() {
    assert_config_rejected(
        "another reseller's platform host",
        |t| format!("{t}\n[[resellers]]\nid = \"other\"\ndomains = [\"Demo.Livery.Localhost.\"]\n"),
        &["domain `demo.livery.localhost`", "other", "platform host"],
    );
    // A name under the platform domain that no reseller has yet is refused
    // too: the reseller of that id, added later, would find it taken.
    assert_config_rejected(
        "a future reseller's platform host",
        |t| format!("{t}\n[[resellers]]\nid = \"other\"\ndomains = [\"later.livery.localhost\"]\n"),
        &["domain `later.livery.localhost`", "other"],
    );
    let own = format!(
        "{}\n[[resellers]]\nid = \"other\"\ndomains = [\"other.livery.localhost\", \"ai.other.livery.localhost\"]\n",
        std::fs::read_to_string(default_config()).unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.toml");
    std::fs::write(&path, own).unwrap();
    let (out, stdout, stderr) = run(livery().arg("check-config").arg("--config").arg(&path));
    assert!(out.status.success(), "{stdout}\n{stderr}");
}

/// `check-config` refuses what `serve` would refuse of `[tls]` (it said ok,
/// and `serve` then exited 1), and ACME values that parse but cannot work.
#[test]
fn check_config_checks_the_tls_section_as_serve_does() {
    for (what, tls, expected) in [
        (
            "a bad CIDR",
            "[tls]\nlisten = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"10.0.0.0/33\"]\n[tls.acme]\ncache_dir = \"x\"\n",
            "10.0.0.0/33",
        ),
        (
            "an HTTPS listener without certificates",
            "[tls]\nlisten = [\"127.0.0.1:0\"]\n",
            "need [[tls.certs]] or [tls.acme]",
        ),
        (
            "a missing certificate file",
            "[tls]\nlisten = [\"127.0.0.1:0\"]\n[[tls.certs]]\ncert = \"no-such.pem\"\nkey = \"no-such.key\"\n",
            "no-such.pem",
        ),
        (
            "a zero backoff",
            "[tls]\nlisten = [\"127.0.0.1:0\"]\n[tls.acme]\ncache_dir = \"x\"\nbackoff_base_secs = 0\n",
            "backoff_base_secs",
        ),
        (
            "a zero renewal window",
            "[tls]\nlisten = [\"127.0.0.1:0\"]\n[tls.acme]\ncache_dir = \"x\"\nrenew_before_days = 0\n",
            "renew_before_days",
        ),
    ] {
        assert_config_rejected(what, |t| format!("{t}\n{tls}"), &[expected]);
    }
}

#[test]
fn check_config_rejects_a_malformed_key_hash() {
    assert_config_rejected(
        "bad key hash",
        |t| t.replace(DEMO_KEY_HASH, "sha256:0905"),
        &["key hash", "demo/demo-tenant", "hash-key"],
    );
    assert_config_rejected(
        "plain key instead of a hash",
        |t| t.replace(DEMO_KEY_HASH, "sk-livery-demo"),
        &["key hash", "demo/demo-tenant"],
    );
}

#[test]
fn check_config_rejects_an_unknown_toml_key() {
    assert_config_rejected(
        "unknown key",
        |t| t.replace("[server]\n", "[server]\ncolour = \"blue\"\n"),
        &["colour"],
    );
    assert_config_rejected(
        "unknown key in a tenant",
        |t| t.replace("plan = \"demo\"", "plan = \"demo\"\nkeys = [\"sk-x\"]"),
        &["keys"],
    );
}

#[test]
fn check_config_rejects_a_plan_with_an_unknown_model() {
    assert_config_rejected(
        "unknown model",
        |t| t.replace("models = [\"demo\"]", "models = [\"demo\", \"gpt-5\"]"),
        &["unknown model", "gpt-5"],
    );
}

/// `check-config` refuses what `serve` refuses at start (it said ok, and
/// `serve` then exited 1).
#[test]
fn check_config_refuses_what_serve_refuses_at_start() {
    let sinks = |list: &'static str| {
        move |t: &str| {
            t.replace(
                "jsonl_path = \"usage.jsonl\"",
                &format!("jsonl_path = \"usage.jsonl\"\nsinks = {list}"),
            )
        }
    };
    assert_config_rejected(
        "no listener",
        |t| t.replace("listen = [\"127.0.0.1:8080\"]", "listen = []"),
        &["server.listen is empty"],
    );
    assert_config_rejected(
        "redis limits without a URL",
        |t| format!("{t}\n[limits]\nbackend = \"redis\"\n"),
        &["redis_url"],
    );
    assert_config_rejected(
        "no instance",
        |t| format!("{t}\n[limits]\ninstances = 0\n"),
        &["instances"],
    );
    assert_config_rejected(
        "an unknown sink",
        sinks("[\"sqlite\", \"kafka\"]"),
        &["unknown sink `kafka`"],
    );
    assert_config_rejected(
        "a webhook sink without its section",
        sinks("[\"webhook\"]"),
        &["[usage.webhook]"],
    );
    assert_config_rejected(
        "the demo tenant on a public listener",
        |t| {
            t.replace(
                "listen = [\"127.0.0.1:8080\"]",
                "listen = [\"0.0.0.0:8080\"]",
            )
        },
        &["demo tenant", "loopback"],
    );
}

/// A size or timeout of 0 would fail every request (a deadline of 0 answered
/// every request 504): refused, naming the field.
#[test]
fn check_config_rejects_zero_sizes_and_timeouts() {
    for (field, table) in [
        ("request_deadline_ms", "routing"),
        ("first_event_timeout_ms", "routing"),
        ("max_upstream_body_bytes", "server"),
        ("spool_max_bytes", "usage"),
    ] {
        // Tables the file has are edited; the others are added.
        let edit = |t: &str| {
            let head = format!("[{table}]\n");
            let zero = format!("{head}{field} = 0\n");
            match t.contains(&head) {
                true => t.replace(&head, &zero),
                false => format!("{t}\n{zero}"),
            }
        };
        assert_config_rejected(field, edit, &[&format!("{table}.{field} must be positive")]);
    }
    for field in [
        "connect_timeout_ms",
        "first_byte_timeout_ms",
        "stream_idle_timeout_ms",
    ] {
        assert_config_rejected(
            field,
            |t| {
                t.replace(
                    "kind = \"mock\"\n",
                    &format!("kind = \"mock\"\n{field} = 0\n"),
                )
            },
            &["provider `mock`", &format!("{field} must be positive")],
        );
    }
}

/// Billing and prices are read only by `usage report` and when records are
/// priced: their mistakes are refused at load, not found at invoice time.
#[test]
fn check_config_rejects_billing_and_prices_it_cannot_use() {
    for (what, extra, expected) in [
        (
            "billing of an unknown reseller",
            "[billing.acme]\nmodel = \"wholesale\"\ninput_per_million = 1\n",
            &["[billing.acme]", "no reseller has id `acme`"][..],
        ),
        (
            "revenue share without a share",
            "[billing.demo]\nmodel = \"revenue_share\"\nretail_input_per_million = 1\nretail_output_per_million = 2\n",
            &["[billing.demo]", "`share`"][..],
        ),
        (
            "revenue share without retail prices",
            "[billing.demo]\nmodel = \"revenue_share\"\nshare = \"20%\"\n",
            &["[billing.demo]", "retail_input_per_million"][..],
        ),
        (
            "platform fee without tiers",
            "[billing.demo]\nmodel = \"platform_fee\"\n",
            &["[billing.demo]", "tiers"][..],
        ),
        (
            "a price for an unknown provider",
            "[[prices.models]]\nmodel = \"demo\"\nprovider = \"openai\"\ninput_per_million = 1\noutput_per_million = 2\n",
            &["[[prices.models]]", "unknown provider `openai`"][..],
        ),
    ] {
        assert_config_rejected(what, |t| format!("{t}\n{extra}"), expected);
    }
}

/// `[limits]` takes its Redis URL from the environment as `[usage.redis]`
/// does, and a parse error never prints a URL's password from the file.
#[test]
fn the_limits_redis_url_may_come_from_the_environment_and_parse_errors_hide_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let original = std::fs::read_to_string(default_config()).unwrap();
    let check = |limits: &str, env: Option<&str>| {
        std::fs::write(&path, format!("{original}\n[limits]\n{limits}\n")).unwrap();
        let mut cmd = livery();
        cmd.arg("check-config").arg("--config").arg(&path);
        cmd.env_remove("LIVERY_TEST_LIMITS_URL");
        if let Some(url) = env {
            cmd.env("LIVERY_TEST_LIMITS_URL", url);
        }
        let (out, stdout, stderr) = run(&mut cmd);
        (out.status.success(), format!("{stdout}{stderr}"))
    };
    let from_env = "backend = \"redis\"\nredis_url_env = \"LIVERY_TEST_LIMITS_URL\"";
    let (ok, all) = check(
        from_env,
        Some("redis://:fake-test-password@127.0.0.1:6379/0"),
    );
    assert!(ok, "{all}");
    assert!(!all.contains("fake-test-password"), "{all}");
    let (ok, all) = check(from_env, None);
    assert!(!ok && all.contains("LIVERY_TEST_LIMITS_URL"), "{all}");
    let both = format!("{from_env}\nredis_url = \"redis://127.0.0.1:6379/0\"");
    let (ok, all) = check(&both, Some("redis://127.0.0.1:6379/0"));
    assert!(!ok && all.contains("not both"), "{all}");

    for broken in [
        "backend = \"redis\"\nredis_url = redis://:fake-test-password@host:6379",
        "backend = \"redis\"\nredis_url = \"redis://:fake-test-password@host:6379",
        "backend = \"redis://:fake-test-password@host:6379\"",
    ] {
        let (ok, all) = check(broken, None);
        assert!(!ok, "{broken}: accepted");
        assert!(all.contains("line "), "{broken}: no position: {all}");
        assert!(
            !all.contains("fake-test-password"),
            "{broken}: the password was printed: {all}"
        );
    }
}

/// A tenant id goes into CSV reports and credential owners: a comma shifted
/// every column after it.
#[test]
fn check_config_rejects_tenant_ids_with_separators() {
    for id in ["demo,tenant", "demo tenant", "demo/tenant", ""] {
        assert_config_rejected(
            id,
            |t| t.replace("id = \"demo-tenant\"", &format!("id = \"{id}\"")),
            &[&format!("tenant id `{id}`"), "[A-Za-z0-9._-]"],
        );
    }
    assert_config_rejected(
        "65 characters",
        |t| {
            t.replace(
                "id = \"demo-tenant\"",
                &format!("id = \"{}\"", "t".repeat(65)),
            )
        },
        &["1-64"],
    );
}

/// Settings that were ignored or clamped without a word are refused.
#[test]
fn check_config_rejects_settings_it_would_ignore_or_clamp() {
    let usage = |line: &'static str| {
        move |t: &str| {
            t.replace(
                "jsonl_path = \"usage.jsonl\"",
                &format!("jsonl_path = \"usage.jsonl\"\n{line}"),
            )
        }
    };
    assert_config_rejected(
        "downgrade_to on a rejecting plan",
        |t| {
            t.replace(
                "models = [\"demo\"]\n",
                "models = [\"demo\"]\ndowngrade_to = \"demo\"\n",
            )
        },
        &[
            "plan `demo`",
            "downgrade_to",
            "disallowed_model = \"downgrade\"",
        ],
    );
    assert_config_rejected(
        "active_kek without keks",
        |t| format!("{t}\n[vault]\nactive_kek = \"k2\"\n"),
        &["active_kek `k2`", "[[vault.keks]]"],
    );
    assert_config_rejected(
        "no fsync interval",
        usage("fsync_interval_ms = 0"),
        &["usage.fsync_interval_ms must be positive"],
    );
    assert_config_rejected(
        "tiny segments",
        usage("segment_bytes = 1000"),
        &["usage.segment_bytes must be at least 4096"],
    );
}

// ------------------------------------------------------------------- hash-key

#[test]
fn hash_key_prints_the_config_hash_of_stdin() {
    let (out, stdout, stderr) = hash_key("sk-livery-demo");
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(stdout, format!("{DEMO_KEY_HASH}\n"));
    // `echo KEY | livery hash-key` works too: the newline is not part of the key.
    let (out, stdout, _) = hash_key("sk-livery-demo\n");
    assert!(out.status.success());
    assert_eq!(stdout, format!("{DEMO_KEY_HASH}\n"));
    // Another key, another hash, same shape.
    let (out, stdout, _) = hash_key("sk-acme-dental-key");
    assert!(out.status.success());
    assert_eq!(stdout.trim(), crate::support::hash("sk-acme-dental-key"));
    assert_ne!(stdout.trim(), DEMO_KEY_HASH);
}

#[test]
fn hash_key_fails_on_empty_stdin() {
    for input in ["", "\n"] {
        let (out, stdout, stderr) = hash_key(input);
        assert!(!out.status.success(), "{input:?}: printed {stdout}");
        assert!(stdout.is_empty(), "{input:?}: {stdout}");
        assert!(stderr.contains("no key on stdin"), "{input:?}: {stderr}");
    }
}

// ---------------------------------------------------------------------- serve

#[test]
fn serve_refuses_a_public_listener_with_the_demo_tenant() {
    for listen in [
        &["0.0.0.0:0"][..],
        &["127.0.0.1:0", "0.0.0.0:0"][..],
        &["[::]:0"][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = livery();
        cmd.arg("serve").arg("--config").arg(default_config());
        for l in listen {
            cmd.args(["--listen", l]);
        }
        let mut child = cmd
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_timeout(
            &mut child,
            Duration::from_secs(20),
            "serve on a public address (it must refuse to start)",
        );
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{listen:?}: serve started: {stdout}");
        assert!(!stdout.contains("listening"), "{listen:?}: {stdout}");
        assert!(stderr.contains("loopback"), "{listen:?}: {stderr}");
        assert!(stderr.contains("demo tenant"), "{listen:?}: {stderr}");
        assert!(
            !dir.path().join("usage.jsonl").exists(),
            "{listen:?}: a refused start created the usage file"
        );
    }
}

/// `GET /v1/models` with a bearer key: the status.
fn models_status(addr: SocketAddr, key: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sighup_reloads_the_configuration_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let original = std::fs::read_to_string(default_config()).unwrap();
    std::fs::write(&path, &original).unwrap();
    let serve = ServeProcess::start(&path, "127.0.0.1:0");
    let new_key = "sk-livery-added-by-reload";
    assert_eq!(models_status(serve.addr, new_key), 401);
    assert_eq!(models_status(serve.addr, "sk-livery-demo"), 200);

    // A tenant added to the file serves after SIGHUP, without a restart.
    let added = format!(
        "{original}\n[[resellers.tenants]]\nid = \"added\"\nplan = \"demo\"\nkey_hashes = [\"{}\"]\n",
        crate::support::hash(new_key)
    );
    std::fs::write(&path, added).unwrap();
    serve.signal("HUP");
    let start = Instant::now();
    while models_status(serve.addr, new_key) != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reload never took; stderr:\n{}",
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A broken file is refused; the running configuration stays.
    std::fs::write(&path, "this is not toml [").unwrap();
    serve.signal("HUP");
    let start = Instant::now();
    while !serve.stderr().contains("reload refused") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(models_status(serve.addr, new_key), 200);
    assert_eq!(models_status(serve.addr, "sk-livery-demo"), 200);
}

/// Waits (up to 10 s) until the process's stderr says `what`.
fn wait_for_stderr(serve: &ServeProcess, what: &str) {
    let start = Instant::now();
    while !serve.stderr().contains(what) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {what:?} in stderr:\n{}",
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reload is refused for a file `serve` would not start with, and a
/// reload that changes sections read only at start says which need a restart.
#[test]
fn sighup_refuses_a_file_serve_would_refuse_and_names_start_only_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let original = std::fs::read_to_string(default_config()).unwrap();
    std::fs::write(&path, &original).unwrap();
    let serve = ServeProcess::start(&path, "127.0.0.1:0");
    let new_key = "sk-livery-added-by-reload";
    let added = format!(
        "{original}\n[[resellers.tenants]]\nid = \"added\"\nplan = \"demo\"\nkey_hashes = [\"{}\"]\n",
        crate::support::hash(new_key)
    );

    std::fs::write(&path, format!("{added}\n[limits]\ninstances = 0\n")).unwrap();
    serve.signal("HUP");
    wait_for_stderr(&serve, "reload refused");
    assert!(serve.stderr().contains("instances"), "{}", serve.stderr());
    assert_eq!(models_status(serve.addr, new_key), 401);

    let restart = added.replace("[server]\n", "[server]\nsend_timeout_ms = 1234\n");
    std::fs::write(
        &path,
        format!("{restart}\n[limits]\nredis_timeout_ms = 50\n"),
    )
    .unwrap();
    serve.signal("HUP");
    wait_for_stderr(&serve, "configuration reloaded");
    assert_eq!(models_status(serve.addr, new_key), 200);
    wait_for_stderr(&serve, "needs a restart");
    let stderr = serve.stderr();
    assert!(stderr.contains("server.send_timeout_ms"), "{stderr}");
    assert!(stderr.contains("[limits]"), "{stderr}");
    assert!(!stderr.contains("server.listen"), "{stderr}");
}

#[test]
fn on_one_cpu_serve_runs_single_threaded_answers_and_drains() {
    let mut serve = ServeProcess::start_on_cpu("0", &default_config(), "127.0.0.1:0");
    // No worker threads: the scheduler is the main thread's own.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", serve.child.id())).unwrap();
    let names: Vec<String> = tasks
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("tokio-rt-worker")),
        "threads on one CPU: {names:?}"
    );
    let mut s = TcpStream::connect(serve.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = r#"{"model":"demo","messages":[{"role":"user","content":"Hello"}]}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-livery-demo\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("chat.completion"), "{answer}");

    let exit = serve.terminate();
    assert!(
        exit.success(),
        "serve exited with {exit} on SIGTERM; stderr:\n{}",
        serve.stderr()
    );
}

#[test]
fn serve_answers_then_exits_cleanly_on_sigterm() {
    let mut serve = ServeProcess::start(&default_config(), "127.0.0.1:0");
    assert!(serve.addr.ip().is_loopback());
    assert_ne!(serve.addr.port(), 0);
    let (status, body) = http_get(serve.addr, "/healthz", "localhost");
    assert_eq!(status, 200, "healthz: {body}");
    let (status, body) = http_get(serve.addr, "/v1/models", "localhost");
    assert_eq!(status, 401, "models without a key: {body}");

    let exit = serve.terminate();
    assert!(
        exit.success(),
        "serve exited with {exit} on SIGTERM; stderr:\n{}",
        serve.stderr()
    );
}

/// With the admin API's store in a file, `check-config` checks and lists the
/// file merged with what the API made, as `serve` starts on it.
#[test]
fn check_config_merges_the_admin_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("admin-store.json");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nstore_path = \"{}\"\n\
             [[providers]]\nname = \"m\"\nkind = \"mock\"\n[[models]]\nname = \"d\"\nprovider = \"m\"\n\
             [[plans]]\nname = \"p\"\nmodels = [\"d\"]\n\
             [[resellers]]\nid = \"acme\"\n",
            store.display()
        ),
    )
    .unwrap();
    let tenant = |plan: &str| {
        serde_json::json!({"version": 1, "resellers": [{"id": "acme", "tenants": [
            {"id": "from-api", "plan": plan, "key_hashes": []}]}]})
        .to_string()
    };
    std::fs::write(&store, tenant("p")).unwrap();
    let (out, stdout, stderr) = run(livery().arg("check-config").arg("--config").arg(&config));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("tenant from-api plan=p"), "{stdout}");
    std::fs::write(&store, tenant("gold")).unwrap();
    let (out, _, stderr) = run(livery().arg("check-config").arg("--config").arg(&config));
    assert!(!out.status.success());
    assert!(stderr.contains("gold"), "{stderr}");
}
