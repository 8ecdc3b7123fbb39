//! TLS termination for reseller domains (issue 8). [`Tls`] is built once at
//! start from `[tls]`: rustls with the `ring` provider (TLS 1.2 and 1.3, ALPN
//! `h2` and `http/1.1`), an SNI resolver ([`resolver`]: static → ACME cache →
//! nothing), on-demand ACME ([`acme`], TLS-ALPN-01 via `instant-acme`) for names
//! that are registered domains of the current tenancy snapshot, and the policy
//! of the plain listeners ([`forwarded`]: serve, or redirect to HTTPS).
//! [`status`] is the operators' view (`livery tls status`).

pub mod accept;
pub mod acme;
pub mod certs;
pub mod forwarded;
pub mod resolver;
pub mod status;

pub use accept::{Accepted, TlsInfo};

use crate::config::{PlainPolicy, TlsConfig};
use acme::Acme;
use certs::StaticCerts;
use forwarded::TrustedProxies;
use resolver::{ChallengeResolver, SniResolver};
use rustls::ServerConfig;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Whether a name may have an on-demand certificate: the reseller owning it in
/// the current snapshot, or `None`. Must be an in-memory lookup.
pub type Eligibility = Arc<dyn Fn(&str) -> Option<Arc<str>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate {0}")]
    Cert(String),
    #[error("invalid [tls] configuration: {0}")]
    Config(String),
    #[error("ACME: {0}")]
    Acme(String),
}

/// Installs `ring` as the process's rustls crypto provider (once; later calls
/// and a provider installed by someone else are fine).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The HTTPS side of a running gateway.
pub struct Tls {
    config: Arc<ServerConfig>,
    challenge_config: Option<Arc<ServerConfig>>,
    resolver: Arc<SniResolver>,
    acme: Option<Arc<Acme>>,
    eligible: Eligibility,
    handshake_wait: Duration,
    plain: PlainPolicy,
    trusted: TrustedProxies,
    https_port: Option<u16>,
    /// `https_port` is the configured `redirect_port`, not a bound port.
    redirect_port_set: bool,
}

/// What a plain listener does with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainAction {
    Serve,
    /// 308 to this URL.
    Redirect(String),
}

/// Loads the static certificates of `[[tls.certs]]`, `{platform_domain}` in
/// their names replaced.
pub fn load_static_certs(
    config: &TlsConfig,
    platform_domain: Option<&str>,
) -> Result<StaticCerts, TlsError> {
    let mut statics = StaticCerts::default();
    for c in &config.certs {
        let loaded = certs::load_pem_files(&c.cert, &c.key)?;
        let names: Vec<String> = if c.names.is_empty() {
            loaded.names.clone()
        } else {
            c.names
                .iter()
                .map(|n| {
                    if n.contains("{platform_domain}") {
                        platform_domain
                            .map(|pd| n.replace("{platform_domain}", pd))
                            .ok_or_else(|| {
                                TlsError::Config(format!(
                                    "`{n}` needs server.platform_domain to be set"
                                ))
                            })
                    } else {
                        Ok(n.clone())
                    }
                })
                .collect::<Result<_, _>>()?
        };
        if names.is_empty() {
            return Err(TlsError::Cert(format!(
                "{}: no DNS names in the certificate and none configured",
                c.cert.display()
            )));
        }
        statics.insert(&names, &loaded);
    }
    Ok(statics)
}

/// `[tls.acme]` values that parse but cannot work: a backoff of zero orders
/// again at once after every failure (until the budget is spent and the CA's
/// failed-validation limit is hit), a renewal window of zero renews nothing.
fn check_acme(a: &crate::config::AcmeConfig) -> Result<(), TlsError> {
    let bad = |m: &str| Err(TlsError::Config(format!("[tls.acme] {m}")));
    if a.backoff_base_secs == 0 {
        return bad("backoff_base_secs must be at least 1");
    }
    if a.backoff_max_secs < a.backoff_base_secs {
        return bad("backoff_max_secs must be at least backoff_base_secs");
    }
    if a.renew_before_days == 0 {
        return bad("renew_before_days must be at least 1");
    }
    Ok(())
}

impl Tls {
    /// What [`Tls::build`] checks, without opening the ACME cache or binding
    /// anything (`livery check-config`): certificates load, names resolve,
    /// ACME values can work, trusted proxies parse, HTTPS listeners have a
    /// certificate source.
    pub fn check(config: &TlsConfig, platform_domain: Option<&str>) -> Result<(), TlsError> {
        Self::checked_statics(config, platform_domain).map(drop)
    }

    /// [`Tls::check`]'s checks, and the static certificates they loaded.
    fn checked_statics(
        config: &TlsConfig,
        platform_domain: Option<&str>,
    ) -> Result<StaticCerts, TlsError> {
        install_crypto_provider();
        let statics = load_static_certs(config, platform_domain)?;
        if let Some(a) = &config.acme {
            check_acme(a)?;
        }
        if statics.is_empty() && config.acme.is_none() && !config.listen.is_empty() {
            return Err(TlsError::Config(
                "HTTPS listeners need [[tls.certs]] or [tls.acme]".into(),
            ));
        }
        TrustedProxies::parse(&config.trusted_proxies).map_err(TlsError::Config)?;
        Ok(statics)
    }

    /// Builds the TLS side: certificates loaded, ACME cache opened. Nothing is
    /// ordered until a handshake asks.
    pub fn build(
        config: &TlsConfig,
        platform_domain: Option<&str>,
        eligible: Eligibility,
    ) -> Result<Self, TlsError> {
        let statics = Arc::new(Self::checked_statics(config, platform_domain)?);
        let acme = match &config.acme {
            Some(a) => Some(Arc::new(Acme::open(a)?)),
            None => None,
        };
        let trusted = TrustedProxies::parse(&config.trusted_proxies).map_err(TlsError::Config)?;
        let resolver = Arc::new(SniResolver {
            statics,
            acme: acme.clone(),
            eligible: eligible.clone(),
        });
        let mut server = server_config(resolver.clone())?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let challenge_config = match &acme {
            Some(a) => {
                let mut c = server_config(Arc::new(ChallengeResolver(a.clone())))?;
                c.alpn_protocols = vec![accept::ACME_TLS_ALPN.to_vec()];
                Some(Arc::new(c))
            }
            None => None,
        };
        Ok(Self {
            config: Arc::new(server),
            challenge_config,
            resolver,
            handshake_wait: Duration::from_secs(
                config.acme.as_ref().map_or(0, |a| a.handshake_wait_secs),
            ),
            acme,
            eligible,
            plain: config.plain,
            trusted,
            https_port: config
                .redirect_port
                .or_else(|| config.listen.first().map(|a| a.port())),
            redirect_port_set: config.redirect_port.is_some(),
        })
    }

    /// Sets the port redirects point at (once the HTTPS listener is bound),
    /// unless `redirect_port` names the one clients reach.
    pub fn set_https_port(&mut self, port: u16) {
        if !self.redirect_port_set {
            self.https_port = Some(port);
        }
    }

    pub fn acme(&self) -> Option<&Arc<Acme>> {
        self.acme.as_ref()
    }

    pub fn eligibility(&self) -> Eligibility {
        self.eligible.clone()
    }

    /// The decision for a request that arrived on a plain listener from `peer`.
    pub fn plain_action<B>(&self, peer: IpAddr, req: &http::Request<B>) -> PlainAction {
        if self.plain == PlainPolicy::Serve {
            return PlainAction::Serve;
        }
        let path = req.uri().path();
        if path == "/healthz" || path == "/readyz" {
            return PlainAction::Serve;
        }
        if self.trusted.contains(peer) && forwarded::forwarded_https(req.headers()) {
            return PlainAction::Serve;
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        match host.and_then(|h| forwarded::https_url(&h, self.https_port, pq)) {
            Some(url) => PlainAction::Redirect(url),
            // No usable host: let the request path answer (it will refuse it).
            None => PlainAction::Serve,
        }
    }
}

fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(resolver))
}
