//! The `openai` provider kind: OpenAI itself or any server that speaks its API
//! (Ollama, vLLM, Groq, Together...). One pooled keep-alive client per provider,
//! since connections are per upstream host anyway; this also lets each provider
//! keep its own connect timeout.

use super::{
    ByteStream, Endpoint, IdleTimeout, ProviderError, UpstreamBody, UpstreamRequest,
    UpstreamResponse,
};
use crate::config::{ProviderConfig, ProviderKind};
use crate::vault::{platform_key_from_env, Secret};
use futures_util::TryStreamExt;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Duration;

/// Where requests go and how the key is sent.
#[derive(Debug, Clone)]
enum Flavor {
    /// `{base_url}/chat/completions`, `Authorization: Bearer`.
    OpenAi,
    /// `{base_url}/openai/deployments/{model}/chat/completions?api-version=…`, `api-key`.
    Azure { api_version: String },
}

pub struct OpenAiProvider {
    name: Arc<str>,
    flavor: Flavor,
    base_url: String,
    /// `{base_url}{path}` per endpoint, parsed once (OpenAI flavour; Azure's
    /// URLs name the deployment and are built per request).
    endpoint_urls: Box<[reqwest::Url; 4]>,
    key: Option<Secret>,
    client: reqwest::Client,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
}

/// Where `endpoint`'s URL sits in `OpenAiProvider::endpoint_urls`.
fn url_slot(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::ChatCompletions => 0,
        Endpoint::Completions => 1,
        Endpoint::Embeddings => 2,
        Endpoint::Messages => 3,
    }
}

/// The HTTP client of one provider: pooled keep-alive connections, no
/// redirects (a redirect would carry the key elsewhere), Nagle off for
/// streams, and HTTP/2 without negotiation when configured.
pub(super) fn upstream_client(cfg: &ProviderConfig) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("livery/", env!("CARGO_PKG_VERSION")));
    if cfg.http2_prior_knowledge {
        builder = builder.http2_prior_knowledge();
    }
    builder
        .build()
        .map_err(|e| format!("provider `{}`: {e}", cfg.name))
}

impl OpenAiProvider {
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, String> {
        let base_url = cfg
            .base_url
            .as_deref()
            .ok_or_else(|| {
                format!(
                    "provider `{}`: `base_url` is required for kind openai",
                    cfg.name
                )
            })?
            .trim_end_matches('/')
            .to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|e| format!("provider `{}`: base_url `{base_url}`: {e}", cfg.name))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "provider `{}`: base_url must be http or https",
                cfg.name
            ));
        }
        let key = match &cfg.api_key_env {
            Some(var) => Some(platform_key_from_env(&cfg.name, var).map_err(|e| e.to_string())?),
            None => None,
        };
        let client = upstream_client(cfg)?;
        let flavor = match cfg.kind {
            ProviderKind::AzureOpenai => Flavor::Azure {
                api_version: cfg
                    .api_version
                    .clone()
                    .unwrap_or_else(|| "2024-10-21".into()),
            },
            _ => Flavor::OpenAi,
        };
        let endpoint_url = |e: Endpoint| {
            reqwest::Url::parse(&format!("{base_url}{}", e.path()))
                .map_err(|err| format!("provider `{}`: base_url `{base_url}`: {err}", cfg.name))
        };
        // In `url_slot` order.
        let endpoint_urls = Box::new([
            endpoint_url(Endpoint::ChatCompletions)?,
            endpoint_url(Endpoint::Completions)?,
            endpoint_url(Endpoint::Embeddings)?,
            endpoint_url(Endpoint::Messages)?,
        ]);
        Ok(Self {
            name: cfg.name.as_str().into(),
            flavor,
            endpoint_urls,
            base_url,
            key,
            client,
            first_byte_timeout: Duration::from_millis(cfg.first_byte_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.stream_idle_timeout_ms),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &'static str {
        match self.flavor {
            Flavor::OpenAi => "openai",
            Flavor::Azure { .. } => "azure_openai",
        }
    }

    /// The platform's own key for this provider, if configured.
    pub fn platform_key(&self) -> Option<&Secret> {
        self.key.as_ref()
    }

    /// Sends `req` with `key` (the credential chosen for this request) in the
    /// `Authorization: Bearer` header; no key, no header.
    pub async fn send(
        &self,
        req: UpstreamRequest,
        key: Option<&Secret>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let url = match &self.flavor {
            Flavor::OpenAi => self.endpoint_urls[url_slot(req.endpoint)].clone(),
            Flavor::Azure { api_version } => reqwest::Url::parse(&format!(
                "{}/openai/deployments/{}{}?api-version={}",
                self.base_url,
                utf8_percent_encode_path(&req.model),
                req.endpoint.path(),
                api_version
            ))
            .map_err(|e| ProviderError::Misconfigured(e.to_string()))?,
        };
        let accept = if req.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut builder = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, accept)
            .header("x-request-id", req.request_id.as_str())
            .body(req.body);
        if let Some(key) = key {
            let (header, value) = match self.flavor {
                Flavor::OpenAi => (
                    http::header::AUTHORIZATION,
                    zeroize::Zeroizing::new(format!("Bearer {}", key.expose())),
                ),
                Flavor::Azure { .. } => (
                    http::HeaderName::from_static("api-key"),
                    zeroize::Zeroizing::new(key.expose().to_owned()),
                ),
            };
            builder = builder.header(header, key_header_value(&self.name, &value)?);
        }
        send_timed(builder, self.first_byte_timeout, self.idle_timeout).await
    }
}

/// A credential as a header value, marked sensitive (kept out of `Debug`
/// output and HPACK tables).
pub(super) fn key_header_value(provider: &str, value: &str) -> Result<HeaderValue, ProviderError> {
    let mut hv = HeaderValue::from_str(value).map_err(|_| {
        ProviderError::Misconfigured(format!(
            "provider `{provider}`: key is not a valid header value"
        ))
    })?;
    hv.set_sensitive(true);
    Ok(hv)
}

/// Sends a request, waiting at most `first_byte_timeout` for the response
/// head, and classifies reqwest's failures; the body streams with
/// `idle_timeout` between chunks.
pub(super) async fn send_timed(
    builder: reqwest::RequestBuilder,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
) -> Result<UpstreamResponse, ProviderError> {
    let timeout_ms = u64::try_from(first_byte_timeout.as_millis()).unwrap_or(u64::MAX);
    let resp = match tokio::time::timeout(first_byte_timeout, builder.send()).await {
        Err(_) => return Err(ProviderError::FirstByteTimeout(timeout_ms)),
        Ok(Err(e)) if e.is_timeout() && e.is_connect() => {
            return Err(ProviderError::Connect("connect timed out".into()))
        }
        Ok(Err(e)) if e.is_timeout() => return Err(ProviderError::FirstByteTimeout(timeout_ms)),
        Ok(Err(e)) if e.is_connect() => return Err(ProviderError::Connect(without_url(e))),
        // Connected, then the connection closed or broke before a response.
        Ok(Err(e)) => return Err(ProviderError::Body(without_url(e))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body: ByteStream = Box::pin(
        resp.bytes_stream()
            .map_err(|e| ProviderError::Body(without_url(e))),
    );
    Ok(UpstreamResponse {
        status,
        headers,
        body: UpstreamBody::Stream(IdleTimeout::wrap(body, idle_timeout)),
    })
}

/// reqwest errors name the URL; the base URL can identify the platform's upstream
/// account (Azure resource names), so it stays out of client-visible messages.
pub(super) fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Deployment names are DNS-ish, but a route's model is configuration, not
/// trusted input: anything outside the unreserved set is percent-encoded.
fn utf8_percent_encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
