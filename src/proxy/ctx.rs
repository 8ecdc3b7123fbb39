//! [`RequestCtx`]: what is known about a request once it has been resolved, carried
//! through every later stage instead of re-reading headers; and the client's
//! [`Dialect`].

use crate::snapshot::Snapshot;
use crate::tenancy::{ResellerIdx, Tenant};
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
    pub request_id: crate::telemetry::ids::RequestId,
    pub started: Instant,
    /// The same moment by the wall clock: the usage event's `ts` and a fresh
    /// request id's time, from one clock read.
    pub started_at: std::time::SystemTime,
    /// The snapshot this request was resolved against, held for its whole life so a
    /// reload never changes the rules half-way through.
    pub snapshot: Arc<Snapshot>,
    pub reseller: Arc<str>,
    pub reseller_idx: ResellerIdx,
    pub tenant: Arc<Tenant>,
    /// The models the presented key is limited to, within its plan's
    /// (`None`: the plan's).
    pub key_models: Option<crate::tenancy::KeyModels>,
    /// The presented key's public id (`key_…`), for the usage record.
    pub key_id: crate::tenancy::KeyId,
    /// The TLS SNI of the connection (already checked against the Host).
    pub sni: Option<Arc<str>>,
    /// The API the client speaks: the shape of its errors and stream events.
    pub dialect: Dialect,
    /// A `/v1/messages` client's `anthropic-beta` header: the features it
    /// opts into, passed on to an Anthropic route with its body.
    pub anthropic_beta: Option<http::HeaderValue>,
}

impl RequestCtx {
    /// The reseller's brand, as its tenants see it.
    pub fn brand(&self) -> &Arc<crate::tenancy::Brand> {
        &self.snapshot.tenancy.reseller(self.reseller_idx).brand
    }

    /// Whether the presented key may use `model` (its plan is asked apart).
    pub fn key_allows(&self, model: &str) -> bool {
        crate::tenancy::key_allows(self.key_models.as_deref(), model)
    }
}

/// The API a client speaks, known from the path alone (so even a request refused
/// before tenancy gets its errors in the right shape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's: `{"error":{"message","type","param","code"}}`, `data:` chunks.
    #[default]
    OpenAi,
    /// Anthropic's (`POST /v1/messages`, and any path under it, such as
    /// `/v1/messages/count_tokens`, which only Anthropic's SDK sends):
    /// `{"type":"error","error":{"type","message"}}`, `event:` + `data:` events.
    Anthropic,
}

impl Dialect {
    pub fn of_path(path: &str) -> Self {
        if path
            .strip_prefix("/v1/messages")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}
