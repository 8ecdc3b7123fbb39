//! [`RequestCtx`]: what is known about a request once it has been resolved, carried
//! through every later stage instead of re-reading headers; the client's
//! [`Dialect`]; and request ids.

use crate::snapshot::Snapshot;
use crate::tenancy::{ResellerIdx, Tenant};
use http::HeaderMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What is known about the connection a request arrived on, put in each
/// request's extensions by the listener.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `None` on a plain listener.
    pub tls: Option<crate::tls::TlsInfo>,
}

pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    /// The snapshot this request was resolved against, held for its whole life so a
    /// reload never changes the rules half-way through.
    pub snapshot: Arc<Snapshot>,
    pub reseller: Arc<str>,
    pub reseller_idx: ResellerIdx,
    pub tenant: Arc<Tenant>,
    /// The TLS SNI of the connection (already checked against the Host).
    pub sni: Option<Arc<str>>,
    /// The API the client speaks: the shape of its errors and stream events.
    pub dialect: Dialect,
}

/// The API a client speaks, known from the path alone (so even a request refused
/// before tenancy gets its errors in the right shape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's: `{"error":{"message","type","param","code"}}`, `data:` chunks.
    #[default]
    OpenAi,
    /// Anthropic's (`POST /v1/messages`): `{"type":"error","error":{"type","message"}}`,
    /// `event:` + `data:` events.
    Anthropic,
}

impl Dialect {
    pub fn of_path(path: &str) -> Self {
        if path == "/v1/messages" {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// The client's `x-request-id` if it is sane (1–128 visible ASCII characters
/// from a conservative set), else a fresh UUIDv7.
pub fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers
        .get(crate::telemetry::ids::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        let ok = !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            return v.to_owned();
        }
    }
    crate::telemetry::ids::uuid_v7_text()
}
