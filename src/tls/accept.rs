//! The TLS accept path of an HTTPS listener. The ClientHello is read first
//! (rustls' lazy acceptor), which lets the handshake *wait* for an on-demand
//! certificate instead of failing the first client:
//!
//! 1. ALPN `acme-tls/1` with a challenge in flight for the SNI: finish the
//!    handshake with the challenge certificate and close (RFC 8737);
//! 2. no static or cached certificate for the SNI, but the name is a
//!    registered domain: order one and wait up to `handshake_wait_secs`;
//! 3. finish the handshake with the shared configuration, whose resolver
//!    picks static → cached → nothing (an unknown name fails here).

use super::Tls;
use crate::tenancy::normalize_host;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

/// What the request path learns about a TLS connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The SNI the client sent, normalised.
    pub sni: Option<Arc<str>>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

/// A finished handshake.
pub enum Accepted {
    /// A connection to serve HTTP on.
    Stream(Box<TlsStream<TcpStream>>, TlsInfo),
    /// A CA's TLS-ALPN-01 validation, answered; nothing more to do.
    Challenge,
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The rest of the handshake, once the certificate is known.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl Tls {
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<Accepted> {
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = tokio::time::timeout(HELLO_TIMEOUT, acceptor)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no ClientHello"))??;
        let hello = start.client_hello();
        // Owned: the hello borrows the handshake, which is consumed below.
        let sni = hello
            .server_name()
            .and_then(|n| normalize_host(n).map(|n| n.into_owned()));
        let wants_challenge = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if wants_challenge {
            if let (Some(acme), Some(name), Some(config)) =
                (&self.acme, &sni, &self.challenge_config)
            {
                if acme.challenge(name).is_some() {
                    let mut s =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config.clone()))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake")
                            })??;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
                    tracing::debug!(name, "answered a tls-alpn-01 validation");
                    return Ok(Accepted::Challenge);
                }
            }
        }
        if let (Some(name), Some(acme)) = (&sni, &self.acme) {
            if self.resolver.lookup(name).is_none() {
                if let Some(reseller) = (self.eligible)(name) {
                    if let Err(e) = acme.ensure(name, reseller, self.handshake_wait).await {
                        tracing::info!(name, error = %e, "no certificate for this handshake");
                    }
                } else {
                    tracing::debug!(name, "refusing a handshake for an unregistered name");
                }
            }
        }
        let stream =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(self.config.clone()))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake")
                })??;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let info = TlsInfo {
            sni: sni.map(Arc::from),
            alpn,
        };
        Ok(Accepted::Stream(Box::new(stream), info))
    }
}
