//! The `openai` provider kind: OpenAI itself or any server that speaks its API
//! (Ollama, vLLM, Groq, Together...). One pooled keep-alive client per provider,
//! since connections are per upstream host anyway; this also lets each provider
//! keep its own connect timeout.

use super::{
    ByteStream, IdleTimeout, ProviderError, UpstreamBody, UpstreamRequest, UpstreamResponse,
};
use crate::config::ProviderConfig;
use crate::vault::{platform_key_from_env, Secret};
use futures_util::TryStreamExt;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Duration;

pub struct OpenAiProvider {
    name: Arc<str>,
    base_url: String,
    key: Option<Secret>,
    client: reqwest::Client,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
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
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("livery/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("provider `{}`: {e}", cfg.name))?;
        Ok(Self {
            name: cfg.name.as_str().into(),
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
        let url = format!("{}{}", self.base_url, req.endpoint.path());
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
            let value = zeroize::Zeroizing::new(format!("Bearer {}", key.expose()));
            let mut hv = HeaderValue::from_str(&value).map_err(|_| {
                ProviderError::Misconfigured(format!(
                    "provider `{}`: key is not a valid header value",
                    self.name
                ))
            })?;
            hv.set_sensitive(true);
            builder = builder.header(http::header::AUTHORIZATION, hv);
        }
        let timeout_ms = u64::try_from(self.first_byte_timeout.as_millis()).unwrap_or(u64::MAX);
        let resp = match tokio::time::timeout(self.first_byte_timeout, builder.send()).await {
            Err(_) => return Err(ProviderError::FirstByteTimeout(timeout_ms)),
            Ok(Err(e)) if e.is_timeout() && e.is_connect() => {
                return Err(ProviderError::Connect("connect timed out".into()))
            }
            Ok(Err(e)) if e.is_timeout() => {
                return Err(ProviderError::FirstByteTimeout(timeout_ms))
            }
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
        let body = IdleTimeout::wrap(body, self.idle_timeout);
        Ok(UpstreamResponse {
            status,
            headers,
            body: UpstreamBody::Stream(body),
        })
    }
}

/// reqwest errors name the URL; the base URL can identify the platform's upstream
/// account (Azure resource names), so it stays out of client-visible messages.
fn without_url(e: reqwest::Error) -> String {
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
