//! Logging set-up: `tracing` with an env filter (`RUST_LOG`, default `info`),
//! human-readable by default or JSON lines with `LIVERY_LOG_FORMAT=json`.

pub mod ids;
pub mod metrics;

use tracing_subscriber::EnvFilter;

pub fn init() {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LIVERY_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: a log file or a
        // collector gets plain text, and formatting the escapes costs ~10k
        // instructions per request (the request span's fields).
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
