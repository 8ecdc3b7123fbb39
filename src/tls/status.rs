//! `livery tls status`: every registered domain (custom domains and
//! `{reseller}.{platform_domain}`) with the state of its certificate, read from
//! the configuration, the static certificates and the ACME cache on disk (which
//! a running gateway keeps current), without contacting anyone.

use super::acme::{NameState, OrderPhase, Store};
use super::TlsError;
use crate::config::GatewayConfig;
use crate::tenancy::normalize_host;
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertState {
    Static {
        not_after: i64,
    },
    Issued {
        not_after: i64,
        renewal_error: Option<String>,
    },
    Pending,
    Failed {
        last_error: String,
        next_retry: Option<i64>,
    },
    /// No certificate yet; one is ordered on the first handshake.
    OnDemand,
    /// No certificate and no ACME: HTTPS handshakes for it fail.
    None,
}

#[derive(Debug, Clone)]
pub struct DomainStatus {
    pub domain: String,
    pub reseller: String,
    pub state: CertState,
}

/// The state of every registered domain, in configuration order.
pub fn report(config: &GatewayConfig) -> Result<Vec<DomainStatus>, TlsError> {
    let tls = config.tls.as_ref();
    let platform = config
        .server
        .platform_domain
        .as_deref()
        .and_then(normalize_host);
    let statics = match tls {
        Some(t) => super::load_static_certs(t, platform.as_deref())?,
        None => Default::default(),
    };
    let acme = tls.and_then(|t| t.acme.as_ref());
    let store = acme.map(|a| Store::new(&a.cache_dir));
    let states = store.as_ref().map(Store::load_state).unwrap_or_default();
    let mut out = Vec::new();
    for r in &config.resellers {
        let mut names: Vec<String> = r
            .domains
            .iter()
            .filter_map(|d| normalize_host(d).map(|n| n.into_owned()))
            .collect();
        if let Some(pd) = &platform {
            names.push(format!("{}.{pd}", r.id));
        }
        for name in names {
            let state = if let Some(c) = statics.get(&name) {
                CertState::Static {
                    not_after: c.not_after,
                }
            } else if let Some(store) = &store {
                acme_state(store, states.get(&name), &name)
            } else {
                CertState::None
            };
            out.push(DomainStatus {
                domain: name,
                reseller: r.id.clone(),
                state,
            });
        }
    }
    Ok(out)
}

fn acme_state(store: &Store, state: Option<&NameState>, name: &str) -> CertState {
    let failed = state.filter(|s| s.phase == OrderPhase::Failed);
    if let Ok(c) = store.load_cert(name) {
        return CertState::Issued {
            not_after: c.not_after,
            renewal_error: failed.and_then(|s| s.last_error.clone()),
        };
    }
    match state {
        Some(s) if s.phase == OrderPhase::Pending => CertState::Pending,
        Some(s) => CertState::Failed {
            last_error: s.last_error.clone().unwrap_or_default(),
            next_retry: s.next_retry,
        },
        None => CertState::OnDemand,
    }
}

fn when(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// One line per domain: `DOMAIN  RESELLER  STATE  DETAIL`.
pub fn render(rows: &[DomainStatus]) -> String {
    let width = rows
        .iter()
        .map(|r| r.domain.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let rwidth = rows
        .iter()
        .map(|r| r.reseller.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut s = format!(
        "{:width$}  {:rwidth$}  {:9}  DETAIL\n",
        "DOMAIN", "RESELLER", "STATE"
    );
    for r in rows {
        let (state, detail) = match &r.state {
            CertState::Static { not_after } => ("static", format!("expires {}", when(*not_after))),
            CertState::Issued {
                not_after,
                renewal_error,
            } => (
                "issued",
                match renewal_error {
                    Some(e) => format!("expires {}; last renewal failed: {e}", when(*not_after)),
                    None => format!("expires {}", when(*not_after)),
                },
            ),
            CertState::Pending => ("pending", "order in progress".to_owned()),
            CertState::Failed {
                last_error,
                next_retry,
            } => (
                "failed",
                format!(
                    "{last_error}; next retry {}",
                    next_retry.map_or_else(|| "on next handshake".to_owned(), when)
                ),
            ),
            CertState::OnDemand => ("none", "ordered on first handshake".to_owned()),
            CertState::None => ("none", "no certificate (no [tls.acme])".to_owned()),
        };
        let _ = writeln!(
            s,
            "{:width$}  {:rwidth$}  {state:9}  {detail}",
            r.domain, r.reseller
        );
    }
    s
}
