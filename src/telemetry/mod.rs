//! Logging set-up: `tracing` with an env filter (`RUST_LOG`, default `info`),
//! human-readable by default or JSON lines with `LIVERY_LOG_FORMAT=json`;
//! panics are logged through it too.

pub mod fields;
pub mod ids;
pub mod metrics;

use tracing_subscriber::EnvFilter;

pub fn init() {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LIVERY_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colour codes only for a person at a terminal: a log file or a
    // collector gets plain text, and formatting the escapes costs ~10k
    // instructions per request (the request span's fields).
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().try_init()
    } else if ansi {
        builder.try_init()
    } else {
        builder.fmt_fields(fields::PlainFields).try_init()
    };
    // A panic (a bug; `proxy::serve` answers the request 500) goes to the log
    // like any other failure, in the format collectors parse and in the span
    // it happened in (a request's, with its id), not as raw text on stderr.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic without a message)");
        tracing::error!(
            panic = message,
            location = info.location().map(tracing::field::display),
            "panicked"
        );
    }));
}
