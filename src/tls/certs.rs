//! Certificates as the TLS layer holds them: PEM parsing into a rustls
//! [`CertifiedKey`] with the names and expiry read from the leaf, and the table of
//! static certificates (`[[tls.certs]]`), matched by exact name first, then by a
//! one-label wildcard (`*.livery.example` serves `acme.livery.example`, never
//! `livery.example` or `a.b.livery.example`).

use super::TlsError;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A certificate chain with its key, and what the leaf says about itself.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf's subjectAltName, lowercase.
    pub names: Vec<String>,
    /// The leaf's notBefore and notAfter, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl LoadedCert {
    /// When to renew it: `renew_before_days` ahead of expiry, but no earlier
    /// than two thirds into its life (a window as long as the certificate
    /// would make it due the moment it is issued, and ordered again every
    /// renewal pass).
    pub fn renewal_due(&self, renew_before_days: u32) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0);
        let before = (i64::from(renew_before_days) * 86_400).min(lifetime / 3);
        self.not_after - before
    }
}

/// Parses a PEM chain (leaf first) and a PEM private key.
pub fn parse_pem(chain_pem: &[u8], key_pem: &[u8], what: &str) -> Result<LoadedCert, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(format!("{what}: certificate PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Cert(format!("{what}: no certificate in the PEM")));
    };
    let (names, (not_before, not_after)) =
        leaf_info(leaf).map_err(|e| TlsError::Cert(format!("{what}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Cert(format!("{what}: private key PEM: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Cert(format!("{what}: private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| TlsError::Cert(format!("{what}: key does not match certificate: {e}")))?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_before,
        not_after,
    })
}

/// Reads and parses a chain and key from files.
pub fn load_pem_files(cert: &Path, key: &Path) -> Result<LoadedCert, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    parse_pem(&read(cert)?, &read(key)?, &cert.display().to_string())
}

/// The DNS names and validity (notBefore, notAfter; Unix seconds) of a DER
/// certificate.
pub fn leaf_info(der: &CertificateDer<'_>) -> Result<(Vec<String>, (i64, i64)), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    let v = cert.validity();
    Ok((names, (v.not_before.timestamp(), v.not_after.timestamp())))
}

/// Static certificates by exact name and by wildcard parent.
#[derive(Debug, Default)]
pub struct StaticCerts {
    exact: HashMap<String, LoadedCert>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, LoadedCert>,
}

impl StaticCerts {
    /// Adds `cert` under each of `names` (`*.` prefixes are wildcards).
    pub fn insert(&mut self, names: &[String], cert: &LoadedCert) {
        for n in names {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_owned(), cert.clone()),
                None => self.exact.insert(n, cert.clone()),
            };
        }
    }

    /// The certificate for `name` (normalised, no port), if any.
    pub fn get(&self, name: &str) -> Option<&LoadedCert> {
        if let Some(c) = self.exact.get(name) {
            return Some(c);
        }
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> LoadedCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        parse_pem(c.pem().as_bytes(), key.serialize_pem().as_bytes(), "test").unwrap()
    }

    /// Renewal is due `renew_before_days` ahead of expiry, but never earlier
    /// than two thirds into the certificate's life.
    #[test]
    fn renewal_is_due_ahead_of_expiry_but_not_at_issue() {
        let c = |days: i64| LoadedCert {
            not_before: 0,
            not_after: days * 86_400,
            ..cert(&["a.test"])
        };
        assert_eq!(c(90).renewal_due(30), 60 * 86_400);
        // A 6-day certificate with a 30-day window: due after 4 days, not at once.
        assert_eq!(c(6).renewal_due(30), 4 * 86_400);
        assert_eq!(c(90).renewal_due(90), 60 * 86_400);
    }

    #[test]
    fn exact_then_one_label_wildcard() {
        let mut s = StaticCerts::default();
        let w = cert(&["*.livery.test"]);
        assert_eq!(w.names, vec!["*.livery.test"]);
        s.insert(&w.names, &w);
        let e = cert(&["ai.acme.test"]);
        s.insert(&e.names, &e);
        assert!(s.get("ai.acme.test").is_some());
        assert!(s.get("acme.livery.test").is_some());
        assert!(s.get("livery.test").is_none());
        assert!(s.get("a.b.livery.test").is_none());
        assert!(s.get("other.test").is_none());
    }
}
