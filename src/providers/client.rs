//! [`UpstreamClient`]: the HTTP client one provider sends through. hyper's
//! pooled client over an HTTPS-or-HTTP connector (rustls with the ring provider
//! and the webpki roots), HTTP/2 by ALPN over TLS or by prior knowledge (h2c)
//! when configured, Nagle off for streams, no redirects (a redirect would carry
//! the key elsewhere).
//!
//! Not reqwest: its redirect and retry layers parse the URL back from the `Uri`
//! twice per request and wrap the call in two more futures, about 25k
//! instructions per request (callgrind) for features a gateway must not use.

use super::http2::{Dialled, Http2Body, Http2Upstream};
use super::{ByteStream, IdleTimeout, ProviderError, UpstreamBody, UpstreamResponse};
use crate::config::ProviderConfig;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::{BodyDataStream, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

const USER_AGENT: &str = concat!("livery/", env!("CARGO_PKG_VERSION"));

/// One provider's client.
#[derive(Clone)]
pub struct UpstreamClient {
    /// HTTP/1.1, pooled: plain-HTTP providers without prior knowledge, and
    /// TLS providers that do not agree HTTP/2.
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// HTTP/2 on one shared connection: h2c by prior knowledge, or any https
    /// provider (HTTP/2 if ALPN agrees it).
    http2: Option<Arc<Http2Upstream>>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
}

impl UpstreamClient {
    /// The client for `cfg`, whose URLs are all on the origin of `url`.
    pub fn from_config(cfg: &ProviderConfig, url: &Uri) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        // https URLs are handed to the TLS layer, which needs them let through.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
        let tls = tls_config(cfg)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let http2 = if cfg.http2_prior_knowledge || url.scheme_str() == Some("https") {
            let mut origin = url.clone().into_parts();
            origin.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            let origin = Uri::from_parts(origin)
                .map_err(|e| format!("provider `{}`: base_url: {e}", cfg.name))?;
            Some(Arc::new(Http2Upstream::new(https.clone(), origin)))
        } else {
            None
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if cfg.http2_prior_knowledge {
            builder.http2_only(true);
        }
        Ok(Self {
            inner: builder.build(https),
            http2,
            first_byte_timeout: Duration::from_millis(cfg.first_byte_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.stream_idle_timeout_ms),
        })
    }

    /// A JSON `POST` to `uri` with `accept` and the request id; the caller adds
    /// the provider's own headers (key, version).
    pub fn post(
        &self,
        uri: Uri,
        body: Bytes,
        accept: &'static str,
        request_id: &crate::telemetry::ids::RequestId,
    ) -> Request<Bytes> {
        // From text: `HeaderValue::from(usize)` builds a 20-byte buffer and
        // then a second allocation to share it.
        let length = HeaderValue::from_str(itoa::Buffer::new().format(body.len()))
            .unwrap_or_else(|_| HeaderValue::from(body.len()));
        let mut req = Request::new(body);
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        // hyper adds it for HTTP/1.1; the HTTP/2 path writes headers as given.
        headers.insert(header::CONTENT_LENGTH, length);
        let mut v = request_id.header_value();
        // A new value on every request: HTTP/2 sends it as a literal never
        // put in the HPACK table. Indexed, each would evict the oldest
        // entry, and in turn the headers that repeat (type, accept,
        // agent, authority, path) would be sent as literals again.
        v.set_sensitive(true);
        headers.insert(crate::telemetry::ids::REQUEST_ID_HEADER, v);
        req
    }

    /// Sends `req`, waiting at most the first-byte timeout for the response
    /// head; the body streams with the idle timeout between chunks.
    pub async fn send(&self, req: Request<Bytes>) -> Result<UpstreamResponse, ProviderError> {
        let timeout_ms = u64::try_from(self.first_byte_timeout.as_millis()).unwrap_or(u64::MAX);
        match tokio::time::timeout(self.first_byte_timeout, self.send_head(req)).await {
            Err(_) => Err(ProviderError::FirstByteTimeout(timeout_ms)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((status, headers, body))) => Ok(UpstreamResponse {
                status,
                headers,
                body: UpstreamBody::Stream(IdleTimeout::wrap(body, self.idle_timeout)),
            }),
        }
    }

    /// Sends `req` and waits for the response head.
    async fn send_head(
        &self,
        req: Request<Bytes>,
    ) -> Result<(http::StatusCode, http::HeaderMap, ByteStream), ProviderError> {
        let req = match &self.http2 {
            Some(http2) => match http2.send(req).await? {
                Dialled::Http2(resp, slot) => {
                    let (parts, body) = resp.into_parts();
                    return Ok((
                        parts.status,
                        parts.headers,
                        Box::pin(Http2Body::new(body, slot)),
                    ));
                }
                Dialled::Http1(req) => req,
            },
            None => req,
        };
        let resp = match self.inner.request(req.map(Full::new)).await {
            Err(e) if e.is_connect() => return Err(connect_failure(&e)),
            // Connected, then the connection closed or broke before a response.
            Err(e) => return Err(ProviderError::Body(error_chain(&e))),
            Ok(r) => r,
        };
        let (parts, body) = resp.into_parts();
        let body: ByteStream =
            Box::pin(BodyDataStream::new(body).map_err(|e| ProviderError::Body(error_chain(&e))));
        Ok((parts.status, parts.headers, body))
    }
}

/// rustls on `ring` with the public web roots (webpki-roots), plus the
/// provider's own `ca_file` if it has one.
fn tls_config(cfg: &ProviderConfig) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &cfg.ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("provider `{}`: ca_file {}: {e}", cfg.name, path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "provider `{}`: ca_file {} holds no certificate",
                cfg.name,
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("provider `{}`: ca_file {}: {e}", cfg.name, path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("provider `{}`: TLS set-up: {e}", cfg.name))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// `url` (the provider's `base_url` plus a path) as an absolute http(s) `Uri`.
pub(super) fn upstream_uri(provider: &str, base_url: &str, url: &str) -> Result<Uri, String> {
    // Paths are appended to the base: a query or fragment there would end
    // up before them (`…?api-version=X/chat/completions`).
    if base_url.contains(['?', '#']) {
        return Err(format!(
            "provider `{provider}`: base_url `{base_url}` must not have a query or fragment (paths are appended to it)"
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("provider `{provider}`: base_url `{base_url}`: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "provider `{provider}`: base_url must be http or https"
        ));
    }
    Ok(uri)
}

/// A failure to connect: a timeout says so, anything else gives its causes.
pub(super) fn connect_failure(e: &(dyn std::error::Error + 'static)) -> ProviderError {
    if timed_out(e) {
        ProviderError::Connect("connect timed out".into())
    } else {
        ProviderError::Connect(error_chain(e))
    }
}

/// `e` and its causes, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The error and its causes, one line (hyper's own message is only the top).
/// No URL is part of it: the base URL can identify the platform's upstream
/// account (Azure resource names) and must stay out of client-visible text.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    causes(e)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}
