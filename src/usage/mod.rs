//! Usage records, first cut: one [`UsageRecord`] per finished tenant request,
//! emitted as a `tracing` event and appended to a JSONL file by a dedicated writer
//! thread. The channel is bounded; when it is full the record is appended
//! synchronously instead of being dropped. Issue 6 replaces this with a durable,
//! spooled ledger.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

const CHANNEL_CAPACITY: usize = 8192;

/// How a request ended, from the billing point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// The upstream answered with an error status.
    UpstreamError,
    /// The upstream could not be reached or timed out.
    UpstreamUnavailable,
    /// A stream broke off or ended without its proper end.
    Truncated,
    /// The client went away before the answer was complete.
    ClientDisconnected,
    /// The gateway refused the request (bad input, unknown model...).
    Rejected,
}

/// One try of one route.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub provider: String,
    pub model: String,
    /// `ok`, `rate_limited`, `server_error`, `timeout`, `connect_error`,
    /// `upstream_reset`, `first_event_timeout`, `stream_failed_before_content`,
    /// `client_error`, `breaker_open`, `no_credential`...
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    pub ts: String,
    pub request_id: String,
    pub reseller: String,
    pub tenant: String,
    pub endpoint: &'static str,
    pub requested_model: Option<String>,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    /// Whose provider key paid for the call (never the key).
    pub key_owner: Option<crate::vault::KeyOwner>,
    pub status: u16,
    pub outcome: Outcome,
    pub error_code: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub stream: bool,
    pub client_disconnected: bool,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub attempts: Vec<AttemptRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot open usage file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where usage records go. Cheap to clone.
#[derive(Clone)]
pub struct UsageSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    tx: Mutex<Option<mpsc::Sender<UsageRecord>>>,
    /// Used when the channel is full or closed, so that no record is dropped.
    overflow: Option<Mutex<File>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl UsageSink {
    /// Opens (creating if needed) the JSONL file and starts the writer thread.
    pub fn open(path: Option<&Path>) -> Result<Self, UsageError> {
        let (tx, mut rx) = mpsc::channel::<UsageRecord>(CHANNEL_CAPACITY);
        let (file, overflow) = match path {
            Some(p) => {
                let open = || {
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|source| UsageError::Open {
                            path: p.to_path_buf(),
                            source,
                        })
                };
                (Some(open()?), Some(Mutex::new(open()?)))
            }
            None => (None, None),
        };
        let handle = std::thread::Builder::new()
            .name("livery-usage".into())
            .spawn(move || {
                let mut file = file.map(std::io::BufWriter::new);
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    if let Some(f) = file.as_mut() {
                        for rec in &batch {
                            write_line(f, rec);
                        }
                        if let Err(e) = f.flush() {
                            tracing::error!(error = %e, "usage file write failed");
                        }
                    }
                }
            })
            .ok();
        Ok(Self {
            inner: Arc::new(SinkInner {
                tx: Mutex::new(Some(tx)),
                overflow,
                writer: Mutex::new(handle),
            }),
        })
    }

    /// Records one finished request.
    pub fn record(&self, rec: UsageRecord) {
        tracing::info!(
            target: "livery::usage",
            request_id = %rec.request_id,
            reseller = %rec.reseller,
            tenant = %rec.tenant,
            endpoint = rec.endpoint,
            model = rec.requested_model.as_deref().unwrap_or(""),
            provider = rec.provider.as_deref().unwrap_or(""),
            status = rec.status,
            outcome = ?rec.outcome,
            prompt_tokens = rec.prompt_tokens,
            completion_tokens = rec.completion_tokens,
            stream = rec.stream,
            latency_ms = rec.latency_ms,
            "usage"
        );
        let rec = {
            let guard = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(tx) => match tx.try_send(rec) {
                    Ok(()) => return,
                    Err(
                        mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r),
                    ) => r,
                },
                None => rec,
            }
        };
        if let Some(f) = &self.inner.overflow {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            write_line(&mut *f, &rec);
        }
    }

    /// Stops accepting records through the channel and waits for the writer to
    /// flush what it holds. Records arriving later are appended synchronously.
    pub fn close(&self) {
        drop(
            self.inner
                .tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn write_line(w: &mut impl Write, rec: &UsageRecord) {
    match serde_json::to_vec(rec) {
        Ok(mut line) => {
            line.push(b'\n');
            if let Err(e) = w.write_all(&line) {
                tracing::error!(error = %e, request_id = %rec.request_id, "usage record write failed");
            }
        }
        Err(e) => tracing::error!(error = %e, "usage record serialisation failed"),
    }
}

/// Current UTC time as RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
