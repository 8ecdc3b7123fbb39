//! Certificate selection by SNI, in the order of issue 8: a static certificate
//! for the name (exact, then wildcard), then a cached ACME certificate if the
//! name is a registered domain of the current snapshot, then nothing: rustls
//! fails the handshake. There is no default certificate for unknown names.
//! A separate resolver serves TLS-ALPN-01 challenge certificates, used only for
//! connections that offer ALPN `acme-tls/1`.

use super::acme::Acme;
use super::certs::StaticCerts;
use super::Eligibility;
use crate::tenancy::normalize_host;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

pub struct SniResolver {
    pub statics: Arc<StaticCerts>,
    pub acme: Option<Arc<Acme>>,
    pub eligible: Eligibility,
}

impl SniResolver {
    /// The certificate for a normalised name, without ordering anything.
    pub fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(c) = self.statics.get(name) {
            return Some(c.key.clone());
        }
        let acme = self.acme.as_ref()?;
        (self.eligible)(name)?;
        acme.cached(name)
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("acme", &self.acme)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(hello.server_name()?)?;
        self.lookup(&name)
    }
}

/// Serves the TLS-ALPN-01 certificate of a name under validation.
#[derive(Debug)]
pub struct ChallengeResolver(pub Arc<Acme>);

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(hello.server_name()?)?;
        self.0.challenge(&name)
    }
}
