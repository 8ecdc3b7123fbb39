//! The `openai` provider kind: OpenAI itself or any server that speaks its API
//! (Ollama, vLLM, Groq, Together...). One pooled keep-alive client per provider,
//! since connections are per upstream host anyway; this also lets each provider
//! keep its own connect timeout.

use super::anthropic::MaxTokensField;
use super::client::{upstream_uri, UpstreamClient};
use super::{Endpoint, ProviderError, UpstreamRequest, UpstreamResponse};
use crate::config::{ProviderConfig, ProviderKind};
use crate::vault::{platform_key_from_env, Secret};
use http::{HeaderValue, Uri};
use std::sync::Arc;

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
    endpoint_urls: Box<[Uri; 5]>,
    key: Option<Secret>,
    client: UpstreamClient,
    /// What a `/v1/messages` request's `max_tokens` becomes here.
    pub(crate) max_tokens_field: MaxTokensField,
}

/// Where `endpoint`'s URL sits in `OpenAiProvider::endpoint_urls`.
fn url_slot(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::ChatCompletions => 0,
        Endpoint::Completions => 1,
        Endpoint::Embeddings => 2,
        // A count is never sent to a route that speaks OpenAI (the proxy
        // answers it from the gateway's tokenizer): that slot is not used.
        Endpoint::Messages | Endpoint::CountTokens => 3,
        Endpoint::Responses => 4,
    }
}

/// The first Azure OpenAI `api-version` taking `stream_options`, which every
/// stream is sent with (its usage is counted from it): older versions refuse
/// every streamed request with a 400.
const AZURE_STREAM_USAGE_SINCE: &str = "2024-09-01";

/// An Azure provider's `api-version`, checked against what the gateway sends,
/// and its `base_url` against the path the gateway appends.
fn azure_api_version(cfg: &ProviderConfig, base_url: &str) -> Result<String, String> {
    let path = base_url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    if path == "/openai" || path.starts_with("/openai/") {
        return Err(format!(
            "provider `{}`: base_url is the resource's address without `/openai` (the gateway appends `/openai/deployments/…`)",
            cfg.name
        ));
    }
    let version = cfg
        .api_version
        .clone()
        .unwrap_or_else(|| "2024-10-21".into());
    let date = version.get(..10).unwrap_or("");
    let is_date = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if is_date && date < AZURE_STREAM_USAGE_SINCE {
        return Err(format!(
            "provider `{}`: api_version `{version}` predates `stream_options` ({AZURE_STREAM_USAGE_SINCE}-preview), which streams are sent with to count their usage; use 2024-10-21 or later",
            cfg.name
        ));
    }
    Ok(version)
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
        let endpoint_url =
            |e: Endpoint| upstream_uri(&cfg.name, &base_url, &format!("{base_url}{}", e.path()));
        // In `url_slot` order.
        let endpoint_urls = Box::new([
            endpoint_url(Endpoint::ChatCompletions)?,
            endpoint_url(Endpoint::Completions)?,
            endpoint_url(Endpoint::Embeddings)?,
            endpoint_url(Endpoint::Messages)?,
            endpoint_url(Endpoint::Responses)?,
        ]);
        let key = match &cfg.api_key_env {
            Some(var) => Some(platform_key_from_env(&cfg.name, var).map_err(|e| e.to_string())?),
            None => None,
        };
        let client = UpstreamClient::from_config(cfg, &endpoint_urls[0])?;
        let flavor = match cfg.kind {
            ProviderKind::AzureOpenai => Flavor::Azure {
                api_version: azure_api_version(cfg, &base_url)?,
            },
            _ => Flavor::OpenAi,
        };
        Ok(Self {
            name: cfg.name.as_str().into(),
            flavor,
            endpoint_urls,
            base_url,
            key,
            client,
            max_tokens_field: match cfg.max_tokens_field {
                crate::config::MaxTokensField::MaxTokens => MaxTokensField::MaxTokens,
                crate::config::MaxTokensField::MaxCompletionTokens => {
                    MaxTokensField::MaxCompletionTokens
                }
            },
        })
    }

    pub fn name(&self) -> &Arc<str> {
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
            // Azure serves the Responses API on its v1 API only, which takes
            // the deployment as the body's `model` and no `api-version`.
            Flavor::Azure { .. } if req.endpoint == Endpoint::Responses => {
                format!("{}/openai/v1/responses", self.base_url)
                    .parse::<Uri>()
                    .map_err(|e| ProviderError::Misconfigured(e.to_string()))?
            }
            Flavor::Azure { api_version } => format!(
                "{}/openai/deployments/{}{}?api-version={}",
                self.base_url,
                utf8_percent_encode_path(&req.model),
                req.endpoint.path(),
                api_version
            )
            .parse::<Uri>()
            .map_err(|e| ProviderError::Misconfigured(e.to_string()))?,
        };
        let accept = if req.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut upstream = self.client.post(url, req.body, accept, &req.request_id);
        if let Some(key) = key {
            let (header, prefix) = match self.flavor {
                Flavor::OpenAi => (http::header::AUTHORIZATION, "Bearer "),
                Flavor::Azure { .. } => (http::HeaderName::from_static("api-key"), ""),
            };
            upstream
                .headers_mut()
                .insert(header, key_header_value(&self.name, prefix, key)?);
        }
        self.client.send(upstream).await
    }
}

/// A credential (after `prefix`) as a header value, marked sensitive (kept
/// out of `Debug` output and HPACK tables). The value owns its bytes in a
/// `Zeroizing` buffer, wiped when the last reference (h2's, once it has
/// encoded the header) is dropped: the copy of the key outside `Secret`.
pub(super) fn key_header_value(
    provider: &str,
    prefix: &str,
    key: &Secret,
) -> Result<HeaderValue, ProviderError> {
    let key = key.expose();
    let mut text = zeroize::Zeroizing::new(Vec::with_capacity(prefix.len() + key.len()));
    text.extend_from_slice(prefix.as_bytes());
    text.extend_from_slice(key.as_bytes());
    let mut hv = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text)).map_err(|_| {
        ProviderError::Misconfigured(format!(
            "provider `{provider}`: key is not a valid header value"
        ))
    })?;
    hv.set_sensitive(true);
    Ok(hv)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_header_is_the_prefixed_key_marked_sensitive_and_a_bad_key_is_refused() {
        let key = Secret::new("sk-test-123".into());
        let v = key_header_value("openai", "Bearer ", &key).unwrap();
        assert_eq!(v, "Bearer sk-test-123");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("sk-test"));
        assert_eq!(key_header_value("azure", "", &key).unwrap(), "sk-test-123");
        let bad = Secret::new("sk-\nx".into());
        assert!(matches!(
            key_header_value("openai", "Bearer ", &bad),
            Err(ProviderError::Misconfigured(m)) if m.contains("openai") && !m.contains("sk-")
        ));
    }

    fn provider(table: &str) -> Result<OpenAiProvider, String> {
        let cfg: ProviderConfig = toml::from_str(table).unwrap();
        OpenAiProvider::from_config(&cfg)
    }

    #[test]
    fn base_urls_and_api_versions_that_would_build_wrong_requests_are_refused() {
        let azure = |base: &str, version: &str| {
            provider(&format!(
                "name = \"az\"\nkind = \"azure_openai\"\nbase_url = \"{base}\"\napi_version = \"{version}\"\n"
            ))
        };
        let res = "https://res.openai.azure.com";
        assert!(azure(res, "2024-10-21").is_ok());
        assert!(azure(&format!("{res}/"), "2025-04-01-preview").is_ok());
        assert!(azure(res, "2024-09-01-preview").is_ok());
        let old = azure(res, "2024-06-01").map(|_| ()).unwrap_err();
        assert!(old.contains("stream_options"), "{old}");
        assert!(azure(res, "2024-02-15-preview").is_err());
        for base in [format!("{res}/openai"), format!("{res}/openai/v1")] {
            let e = azure(&base, "2024-10-21").map(|_| ()).unwrap_err();
            assert!(e.contains("without `/openai`"), "{e}");
        }
        let openai = |base: &str| {
            provider(&format!(
                "name = \"o\"\nkind = \"openai\"\nbase_url = \"{base}\"\n"
            ))
        };
        assert!(openai("http://127.0.0.1:11434/v1").is_ok());
        let e = openai("https://models.example/v1?api-version=2024-05-01")
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("query"), "{e}");
        assert!(openai("https://x.example/v1#frag").is_err());
    }
}
