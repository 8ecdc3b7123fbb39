//! The `livery` command line: parse arguments, set up logging, call the library.

use clap::{Parser, Subcommand};
use livery::config::GatewayConfig;
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
        #[arg(long, env = "LIVERY_CONFIG", default_value = "gateway.toml")]
        config: PathBuf,
        /// Listen on these addresses instead of `server.listen` (repeatable; port 0 picks a free port).
        #[arg(long)]
        listen: Vec<SocketAddr>,
    },
    /// Validate a configuration and print the resolved tenancy (no secrets).
    CheckConfig {
        #[arg(long, env = "LIVERY_CONFIG", default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Print the `sha256:` hash of a gateway key read from stdin, for gateway.toml.
    HashKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen } => serve(config, listen),
        Command::CheckConfig { config } => check_config(config),
        Command::HashKey => hash_key(),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("livery: {msg}");
    ExitCode::FAILURE
}

fn serve(path: PathBuf, listen: Vec<SocketAddr>) -> ExitCode {
    livery::telemetry::init();
    let mut config = match GatewayConfig::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if !listen.is_empty() {
        config.server.listen = listen;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => return fail(e),
        };
        for addr in gateway.local_addrs() {
            tracing::info!(%addr, "listening");
            // A stable line on stdout that scripts and tests can wait for.
            println!("livery listening on http://{addr}");
        }
        wait_for_signal().await;
        tracing::info!("shutting down");
        gateway.shutdown(Duration::from_secs(30)).await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    let config = match GatewayConfig::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let snapshot = match Snapshot::prepare(&config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    println!("{}: ok", path.display());
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
        println!(
            "  {} -> {}/{}",
            m.name,
            m.provider,
            m.upstream_model.as_deref().unwrap_or(&m.name)
        );
    }
    println!("resellers:");
    for r in snapshot.tenancy.resellers() {
        let mut hosts = r.domains.clone();
        if let Some(pd) = &config.server.platform_domain {
            hosts.push(format!("{}.{pd}", r.id));
        }
        println!("  {} [{}]", r.id, hosts.join(", "));
        for t in &r.tenants {
            println!(
                "    tenant {} plan={} status={:?} keys={} models=[{}]",
                t.id,
                t.plan.name,
                t.status,
                t.key_count,
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
