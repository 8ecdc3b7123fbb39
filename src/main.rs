//! The `livery` command line: parse arguments, set up logging, call the library.

use clap::{Parser, Subcommand};
use livery::config::{ConfigSource, GatewayConfig};
use livery::tenancy::KeyDigest;
use livery::{Gateway, Snapshot};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "livery",
    version,
    about = "White-label, multi-tenant, OpenAI-compatible LLM gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Default: `gateway.toml`, or the built-in configuration where there is none.
        #[arg(long, env = "LIVERY_CONFIG")]
        config: Option<PathBuf>,
        /// Listen on these addresses instead of `server.listen` (repeatable; port 0 picks a free port).
        #[arg(long)]
        listen: Vec<SocketAddr>,
    },
    /// Validate a configuration and print the resolved tenancy (no secrets).
    CheckConfig {
        /// Default: `gateway.toml`, or the built-in configuration where there is none.
        #[arg(long, env = "LIVERY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the `sha256:` hash of a gateway key read from stdin, for gateway.toml.
    HashKey,
    /// Seal, rotate and verify bring-your-own provider keys.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Usage ledger reports.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// HTTPS certificates of reseller domains.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Each registered domain with its certificate: static, issued (expiry),
    /// pending, or failed (last error, next retry).
    Status {
        /// Default: `gateway.toml`, or the built-in configuration where there is none.
        #[arg(long, env = "LIVERY_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UsageCommand {
    /// A reseller's month from the ledger: per-tenant requests, tokens and cost,
    /// and the invoice preview under its billing model.
    Report {
        #[arg(long)]
        reseller: String,
        #[arg(long)]
        tenant: Option<String>,
        /// `YYYY-MM` (UTC).
        #[arg(long)]
        month: String,
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
        /// `api_key_id`: per tenant and gateway key instead (no invoice).
        #[arg(long, value_parser = ["api_key_id"])]
        group_by: Option<String>,
        /// Default: `gateway.toml`, or the built-in configuration where there is none.
        #[arg(long, env = "LIVERY_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Print a new random key-encryption key (base64 of 32 bytes).
    Keygen,
    /// Seal a provider key read from stdin; prints the string for gateway.toml.
    Seal {
        /// `tenant:RESELLER/TENANT`, `reseller:RESELLER` or `platform`.
        #[arg(long)]
        owner: String,
        /// The provider name, as in `[[providers]]`.
        #[arg(long)]
        provider: String,
        /// Configuration whose `[vault]` KEKs to use (default: `LIVERY_MASTER_KEY`).
        #[arg(long, env = "LIVERY_CONFIG", default_value = livery::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Re-wrap every sealed credential of the file under the active KEK, in place.
    Rotate {
        #[arg(long, env = "LIVERY_CONFIG", default_value = livery::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Unseal every credential in memory and report which fail (never printing them).
    Verify {
        #[arg(long, env = "LIVERY_CONFIG", default_value = livery::config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// mimalloc instead of glibc's malloc: a request makes about 60 allocations, and
/// glibc serves those its small per-thread cache cannot hold (more than seven of
/// a size, or over 1 KiB, such as hyper's 8 KiB read buffer) from its arena's
/// shared bins. Callgrind: 131.9k -> 121.7k instructions per request (benches/HISTORY.md,
/// "Twenty-seventh session").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    livery::tls::install_crypto_provider();
    match cli.command {
        Command::Serve { config, listen } => serve(ConfigSource::resolve(config), listen),
        Command::CheckConfig { config } => check_config(&ConfigSource::resolve(config)),
        Command::HashKey => hash_key(),
        Command::Vault(cmd) => vault(cmd),
        Command::Usage(UsageCommand::Report {
            reseller,
            tenant,
            month,
            format,
            group_by,
            config,
        }) => usage_report(
            &ConfigSource::resolve(config),
            &reseller,
            tenant.as_deref(),
            &month,
            (&format, group_by.is_some()),
        ),
        Command::Tls(TlsCommand::Status { config }) => tls_status(&ConfigSource::resolve(config)),
    }
}

fn tls_status(source: &ConfigSource) -> ExitCode {
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match livery::tls::status::report(&config) {
        Ok(rows) => {
            print!("{}", livery::tls::status::render(&rows));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("livery: {msg}");
    ExitCode::FAILURE
}

fn serve(source: ConfigSource, listen: Vec<SocketAddr>) -> ExitCode {
    livery::telemetry::init();
    if source == ConfigSource::Embedded {
        tracing::warn!(
            "no --config, no LIVERY_CONFIG and no {} here: serving the built-in demo configuration",
            livery::config::DEFAULT_PATH
        );
    }
    let mut config = match source.load() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if !listen.is_empty() {
        config.server.listen.clone_from(&listen);
    }
    if let Err(e) = livery::config::validate_static(&config) {
        return fail(e);
    }
    // One CPU (a container limit, `taskset`): a single-threaded scheduler, as
    // work stealing has no one to steal from and only costs atomics and
    // wake-ups; more CPUs: one worker per CPU.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        // Handlers go in before anything is announced: a signal that arrives
        // between "listening" and registration would otherwise take the
        // default action (SIGTERM kills without draining, SIGHUP kills).
        let stop = wait_for_signal();
        let mut hangups = Hangups::new();
        // What a reload compares its start-only sections with.
        let started = config.clone();
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => return fail(e),
        };
        for addr in gateway.local_addrs() {
            tracing::info!(%addr, "listening");
            // A stable line on stdout that scripts and tests can wait for.
            println!("livery listening on http://{addr}");
        }
        for addr in gateway.tls_addrs() {
            tracing::info!(%addr, "listening (HTTPS)");
            println!("livery listening on https://{addr}");
        }
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = hangups.next() => reload(&gateway, &source, &started, &listen),
            }
        }
        tracing::info!("shutting down");
        gateway.shutdown(Duration::from_secs(30)).await;
        ExitCode::SUCCESS
    })
}

/// `SIGHUP`: re-read the configuration file and swap its tenancy, models,
/// plans and prices in whole; a configuration that does not validate is
/// refused (as `serve` would refuse it at start) and the running one stays.
/// Listeners, `[limits]`, `[usage]` and `[tls]` are fixed at start: a change
/// to them is named in a warning. The built-in configuration has no file to
/// re-read.
fn reload(
    gateway: &Gateway,
    source: &ConfigSource,
    started: &GatewayConfig,
    listen: &[SocketAddr],
) {
    if *source == ConfigSource::Embedded {
        tracing::warn!(
            "SIGHUP ignored: the built-in configuration is in use, there is no file to reload; the running configuration stays"
        );
        return;
    }
    let config = source.load().and_then(|mut c| {
        // `--listen` overrides the file's listeners at reload as at start.
        if !listen.is_empty() {
            c.server.listen = listen.to_vec();
        }
        livery::config::validate_static(&c).map(|()| c)
    });
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration stays");
            return;
        }
    };
    match gateway.reload(&config) {
        Ok(()) => {
            for section in livery::config::start_only_changes(started, &config) {
                tracing::warn!(
                    section,
                    "changed in the file but read only at start: needs a restart"
                );
            }
            tracing::info!(path = %source, "configuration reloaded");
        }
        Err(e) => tracing::error!(error = %e, "reload refused; the running configuration stays"),
    }
}

/// The stream of `SIGHUP`s (never ends where there are none).
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn new() -> Self {
        Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.signal.as_mut() {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// Registers the SIGTERM handler now (not at the first poll) and returns a
/// future that resolves on SIGTERM or Ctrl-C.
fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check_config(source: &ConfigSource) -> ExitCode {
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // With the admin API's store in a file, what it made is checked (and
    // listed) merged over the file, as `serve` would; a store in Redis is not
    // reached from here.
    let file_store = config
        .admin
        .as_ref()
        .is_some_and(|a| a.redis_url.is_none() && a.redis_url_env.is_none());
    let config = if file_store {
        match livery::admin::Admin::open(&config, None) {
            Ok(Some((_, merged))) => merged,
            Ok(None) => config,
            Err(e) => return fail(e),
        }
    } else {
        config
    };
    let snapshot = match Snapshot::prepare(&config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // What `serve` would refuse at start, short of opening or binding anything.
    if let Err(e) = livery::config::validate_static(&config) {
        return fail(e);
    }
    println!("{source}: ok");
    println!(
        "listen: {}",
        config
            .server
            .listen
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(pd) = &config.server.platform_domain {
        println!("platform domain: {pd}");
    }
    println!("providers:");
    for p in &config.providers {
        let base = p.base_url.as_deref().unwrap_or("(built in)");
        let key = p
            .api_key_env
            .as_deref()
            .map(|v| format!(", key from ${v}"))
            .unwrap_or_default();
        println!("  {} ({:?}) {base}{key}", p.name, p.kind);
    }
    println!("models:");
    for m in &config.models {
        let routes: Vec<String> = match &m.provider {
            Some(p) => vec![format!(
                "{p}/{}",
                m.upstream_model.as_deref().unwrap_or(&m.name)
            )],
            None => m
                .routes
                .iter()
                .map(|r| {
                    format!(
                        "{}/{} (priority {}, weight {})",
                        r.provider,
                        r.model.as_deref().unwrap_or(&m.name),
                        r.priority,
                        r.weight
                    )
                })
                .collect(),
        };
        println!("  {} -> {}", m.name, routes.join(", then "));
    }
    println!("resellers:");
    for r in snapshot.tenancy.resellers() {
        let mut hosts = r.domains.clone();
        if let Some(pd) = &config.server.platform_domain {
            hosts.push(format!("{}.{pd}", r.id));
        }
        println!("  {} [{}]", r.id, hosts.join(", "));
        for t in &r.tenants {
            let mut creds: Vec<&str> = t.credentials.keys().map(String::as_str).collect();
            creds.sort_unstable();
            println!(
                "    tenant {} plan={} byok={:?} status={:?} keys={} sealed_credentials=[{}] models=[{}]",
                t.id,
                t.plan.name,
                t.plan.byok,
                t.status,
                t.key_count,
                creds.join(", "),
                t.plan
                    .models
                    .iter()
                    .map(|m| &**m)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if snapshot.tenancy.has_demo_tenant() {
        println!("note: the demo tenant (public key {}) is configured; `serve` only accepts loopback listeners", livery::DEMO_KEY);
    }
    ExitCode::SUCCESS
}

fn hash_key() -> ExitCode {
    let mut input = zeroize::Zeroizing::new(String::new());
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return fail(format!("cannot read stdin: {e}"));
    }
    let key = input.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        return fail("no key on stdin (example: printf %s \"$KEY\" | livery hash-key)");
    }
    println!("{}", KeyDigest::of(key).to_config_string());
    ExitCode::SUCCESS
}

fn vault(cmd: VaultCommand) -> ExitCode {
    use livery::vault::{
        generate_kek, rotate_config_text, verify_config_text, CredentialOwner, Keyring,
    };
    let keyring_of = |path: &PathBuf| -> Result<Keyring, String> {
        // The file may not exist when sealing with the default KEK only.
        let vault_cfg = if path.exists() {
            GatewayConfig::load(path).map_err(|e| e.to_string())?.vault
        } else {
            Default::default()
        };
        Keyring::from_config(&vault_cfg, true).map_err(|e| e.to_string())
    };
    match cmd {
        VaultCommand::Keygen => match generate_kek() {
            Ok(k) => {
                println!("{k}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        VaultCommand::Seal {
            owner,
            provider,
            config,
        } => {
            let owner = match CredentialOwner::parse(&owner) {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            let keyring = match keyring_of(&config) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let mut input = zeroize::Zeroizing::new(String::new());
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                return fail(format!("cannot read stdin: {e}"));
            }
            let key = input.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                return fail("no key on stdin (example: livery vault seal --owner tenant:acme/dental --provider openai < key.txt)");
            }
            match keyring.seal(&owner, &provider, key) {
                Ok(sealed) => {
                    println!("{}", sealed.to_sealed_string());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        VaultCommand::Rotate { config } => {
            let keyring = match keyring_of(&config) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let text = match std::fs::read_to_string(&config) {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read {}: {e}", config.display())),
            };
            let (rotated, reports) = match rotate_config_text(&text, &keyring) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let failed = print_reports(&reports, "re-wrapped");
            if failed > 0 {
                return fail(format!(
                    "{failed} credential(s) could not be re-wrapped; {} left unchanged",
                    config.display()
                ));
            }
            if let Err(e) = replace_file(&config, &rotated) {
                return fail(format!("cannot write {}: {e}", config.display()));
            }
            println!(
                "{}: {} credential(s) now wrapped under KEK `{}`",
                config.display(),
                reports.len(),
                keyring.active_id().unwrap_or("?")
            );
            ExitCode::SUCCESS
        }
        VaultCommand::Verify { config } => {
            let keyring = match keyring_of(&config) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let text = match std::fs::read_to_string(&config) {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read {}: {e}", config.display())),
            };
            let reports = match verify_config_text(&text, &keyring) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let failed = print_reports(&reports, "ok");
            if failed > 0 {
                return fail(format!(
                    "{failed} of {} credential(s) do not unseal",
                    reports.len()
                ));
            }
            println!("{} credential(s) unseal", reports.len());
            ExitCode::SUCCESS
        }
    }
}

fn usage_report(
    source: &ConfigSource,
    reseller: &str,
    tenant: Option<&str>,
    month: &str,
    (format, by_key): (&str, bool),
) -> ExitCode {
    use livery::usage::{report, LedgerPaths};
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let Some(db) = LedgerPaths::of(&config).and_then(|p| p.sqlite) else {
        return fail(
            "no sqlite usage ledger is configured ([usage] ledger = false or no `sqlite` sink)",
        );
    };
    let built = if by_key {
        report::build_by_key(&db, &config, reseller, tenant, month)
            .map_err(|e| e.to_string())
            .and_then(|r| report::render_by_key(&r, format))
    } else {
        report::build(&db, &config, reseller, tenant, month)
            .map_err(|e| e.to_string())
            .and_then(|r| report::render(&r, format))
    };
    match built {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn print_reports(reports: &[livery::vault::CredentialReport], ok: &str) -> usize {
    let mut failed = 0;
    for r in reports {
        match &r.result {
            Ok(()) => println!("  {} {}: {ok}", r.owner, r.provider),
            Err(e) => {
                failed += 1;
                println!("  {} {}: FAILED: {e}", r.owner, r.provider);
            }
        }
    }
    failed
}

/// Writes `text` beside `path` with the same permissions, then renames it over
/// `path`, so a crash never leaves a half-written configuration.
fn replace_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("toml.rotating");
    let perms = std::fs::metadata(path)?.permissions();
    // Created new (never through a file or link already there) and with the
    // original's mode from the start, not readable by others meanwhile.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(perms.mode() & 0o777);
    }
    let written = options.open(&tmp).and_then(|mut f| {
        f.set_permissions(perms)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            // A leftover would make the next rotation fail (create_new);
            // one that is not ours (it existed already) is left alone.
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                let _ = std::fs::remove_file(&tmp);
            }
            Err(e)
        }
    }
}
