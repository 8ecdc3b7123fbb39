//! The `anthropic` provider kind: `POST {base_url}/v1/messages` with `x-api-key`
//! and `anthropic-version`. It answers in the wire format of the endpoint asked
//! for: a chat-completions request is translated to a Messages request
//! ([`chat_to_messages`]) and the answer, streamed or not, back to OpenAI's format,
//! errors included (status kept, so the proxy still sees a 529 as "overloaded");
//! a Responses request goes through the chat translation once more
//! ([`super::responses_bridge`]);
//! a `/v1/messages` request goes through natively, body and answer untouched,
//! and so does a `/v1/messages/count_tokens` one, to the provider's own.
//! One pooled keep-alive client per provider, as for `openai`.

use super::anthropic::{
    anthropic_error_to_openai, chat_to_messages, message_to_chat, MessagesStreamToChat,
    ANTHROPIC_VERSION,
};
use super::client::{upstream_uri, UpstreamClient};
use super::openai::key_header_value;
use super::translate::{
    synthetic, translate_json, translate_sse, translated_headers, unix_now, AnthropicToChat,
    MAX_ERROR_BODY, MAX_TRANSLATED_BODY,
};
use super::{Endpoint, ProviderError, UpstreamBody, UpstreamRequest, UpstreamResponse};
use crate::config::ProviderConfig;
use crate::vault::{platform_key_from_env, Secret};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

/// `max_tokens` for chat requests that set none (`default_max_tokens`).
const DEFAULT_MAX_TOKENS: u64 = 4096;
// Header names as constants, not `&str`: http copies a string key into a new
// allocation on every insert.
const ANTHROPIC_VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

pub struct AnthropicProvider {
    name: Arc<str>,
    /// `{base_url}/v1/messages`.
    url: http::Uri,
    /// `{base_url}/v1/messages/count_tokens`.
    count_url: http::Uri,
    version: HeaderValue,
    default_max_tokens: u64,
    key: Option<Secret>,
    client: UpstreamClient,
}

impl AnthropicProvider {
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, String> {
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or("https://api.anthropic.com")
            .trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let url = upstream_uri(&cfg.name, base, &format!("{base}/v1/messages"))?;
        let count_url = upstream_uri(&cfg.name, base, &format!("{base}/v1/messages/count_tokens"))?;
        let version = cfg.api_version.as_deref().unwrap_or(ANTHROPIC_VERSION);
        let version = HeaderValue::from_str(version)
            .map_err(|_| format!("provider `{}`: api_version is not a header value", cfg.name))?;
        let key = match &cfg.api_key_env {
            Some(var) => Some(platform_key_from_env(&cfg.name, var).map_err(|e| e.to_string())?),
            None => None,
        };
        let default_max_tokens = cfg.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if default_max_tokens == 0 {
            return Err(format!(
                "provider `{}`: default_max_tokens must be at least 1",
                cfg.name
            ));
        }
        let client = UpstreamClient::from_config(cfg, &url)?;
        Ok(Self {
            name: cfg.name.as_str().into(),
            url,
            count_url,
            version,
            default_max_tokens,
            key,
            client,
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The platform's own key for this provider, if configured.
    pub fn platform_key(&self) -> Option<&Secret> {
        self.key.as_ref()
    }

    /// Sends `req`, authenticated with `key` in `x-api-key`, and answers in the
    /// wire format of `req.endpoint`.
    pub async fn send(
        &self,
        req: UpstreamRequest,
        key: Option<&Secret>,
    ) -> Result<UpstreamResponse, ProviderError> {
        match req.endpoint {
            Endpoint::Messages => {
                let beta = req.anthropic_beta.as_ref();
                self.post(req.body, req.stream, &req.request_id, key, beta)
                    .await
            }
            Endpoint::CountTokens => {
                let beta = req.anthropic_beta.as_ref();
                let url = self.count_url.clone();
                self.post_to(url, req.body, false, &req.request_id, key, beta)
                    .await
            }
            Endpoint::ChatCompletions => self.send_chat(req, key).await,
            // Boxed: inline, the bridge's state would size every request's future.
            Endpoint::Responses => {
                Box::pin(super::responses_bridge::send_via_chat(req, |chat| {
                    self.send_chat(chat, key)
                }))
                .await
            }
            Endpoint::Completions | Endpoint::Embeddings => Ok(synthetic(
                StatusCode::BAD_REQUEST,
                &json!({"error": {
                    "message": format!(
                        "The model `{}` does not support /v1{}.",
                        req.model,
                        req.endpoint.path()
                    ),
                    "type": "invalid_request_error",
                    "param": null,
                    "code": "unsupported_endpoint",
                }}),
            )),
        }
    }

    /// A chat-completions request, translated both ways.
    async fn send_chat(
        &self,
        req: UpstreamRequest,
        key: Option<&Secret>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let chat: Value = serde_json::from_slice(&req.body)
            .map_err(|e| ProviderError::Misconfigured(e.to_string()))?;
        let messages = match chat_to_messages(&chat, &req.model, self.default_max_tokens) {
            Ok(m) => m,
            Err(e) => return Ok(synthetic(StatusCode::BAD_REQUEST, &e.to_openai_error())),
        };
        let body = Bytes::from(
            serde_json::to_vec(&messages)
                .map_err(|e| ProviderError::Misconfigured(e.to_string()))?,
        );
        let resp = self
            .post(body, req.stream, &req.request_id, key, None)
            .await?;
        let UpstreamBody::Stream(body) = resp.body;
        let status = resp.status;
        let created = unix_now();
        if !status.is_success() {
            // The status stays (a 529 is still "overloaded" to the proxy); the
            // body becomes OpenAI's error JSON.
            let body = translate_json(body, MAX_ERROR_BODY, move |bytes| {
                let (_, err) = anthropic_error_to_openai(status.as_u16(), bytes);
                Ok(serde_json::to_vec(&err).unwrap_or_default())
            });
            return Ok(UpstreamResponse {
                status,
                headers: translated_headers(resp.headers, "application/json"),
                body: UpstreamBody::Stream(body),
            });
        }
        let is_sse = super::is_event_stream(&resp.headers);
        if req.stream && is_sse {
            let conv = AnthropicToChat::new(MessagesStreamToChat::new(&req.model, created, true));
            return Ok(UpstreamResponse {
                status,
                headers: translated_headers(resp.headers, "text/event-stream; charset=utf-8"),
                body: UpstreamBody::Stream(translate_sse(body, conv)),
            });
        }
        let model = req.model;
        let body = translate_json(body, MAX_TRANSLATED_BODY, move |bytes| {
            let v: Value = serde_json::from_slice(bytes).map_err(|e| {
                ProviderError::Body(format!("the provider's answer is not JSON: {e}"))
            })?;
            let served = v.get("model").and_then(Value::as_str).unwrap_or(&model);
            Ok(serde_json::to_vec(&message_to_chat(&v, served, created)).unwrap_or_default())
        });
        Ok(UpstreamResponse {
            status,
            headers: translated_headers(resp.headers, "application/json"),
            body: UpstreamBody::Stream(body),
        })
    }

    /// `POST /v1/messages` with `body` as is (and the client's beta features:
    /// a body using one is refused without its header). Not an async fn: that
    /// would nest `post_to`'s future in one of its own, copied with it.
    fn post<'a>(
        &'a self,
        body: Bytes,
        stream: bool,
        request_id: &'a crate::telemetry::ids::RequestId,
        key: Option<&'a Secret>,
        beta: Option<&'a http::HeaderValue>,
    ) -> impl std::future::Future<Output = Result<UpstreamResponse, ProviderError>> + Send + 'a
    {
        self.post_to(self.url.clone(), body, stream, request_id, key, beta)
    }

    /// `POST` of `body` to `url`, one of the provider's endpoints, with the
    /// headers every one of them requires.
    async fn post_to(
        &self,
        url: http::Uri,
        body: Bytes,
        stream: bool,
        request_id: &crate::telemetry::ids::RequestId,
        key: Option<&Secret>,
        beta: Option<&http::HeaderValue>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut upstream = self.client.post(url, body, accept, request_id);
        let headers = upstream.headers_mut();
        headers.insert(ANTHROPIC_VERSION_HEADER, self.version.clone());
        if let Some(beta) = beta {
            headers.insert(ANTHROPIC_BETA, beta.clone());
        }
        if let Some(key) = key {
            headers.insert(X_API_KEY, key_header_value(&self.name, "", key)?);
        }
        self.client.send(upstream).await
    }
}
