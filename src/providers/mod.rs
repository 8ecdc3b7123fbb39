//! Speaking to upstream LLM providers. Each provider kind turns an
//! [`UpstreamRequest`] into an [`UpstreamResponse`] whose body is a byte stream in
//! the wire format of the request's [`Endpoint`], whatever the provider speaks:
//! OpenAI's for the OpenAI endpoints, Anthropic's for [`Endpoint::Messages`].
//! Where the two differ, the body is translated on the way
//! ([`anthropic_http`] for Anthropic routes, [`messages_bridge`] for `/v1/messages`
//! on OpenAI-speaking routes). Interpreting that body (usage, SSE events, errors)
//! is the proxy's business.

pub mod anthropic;
mod anthropic_http;
mod client;
mod http2;
mod idle;
mod messages_bridge;
pub mod mock;
mod openai;
mod responses_bridge;
pub mod responses_chat;
pub mod sse;
mod translate;

pub use idle::IdleTimeout;

pub use anthropic_http::AnthropicProvider;
pub use openai::OpenAiProvider;

use crate::config::{ProviderConfig, ProviderKind};
use crate::vault::Secret;
use anthropic::MaxTokensField;
use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, StatusCode};
use std::pin::Pin;
use std::sync::Arc;

/// The endpoints the gateway forwards: OpenAI's, and Anthropic's Messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's `POST /v1/messages`.
    Messages,
    /// OpenAI's Responses API, `POST /v1/responses`: sent to routes that
    /// speak OpenAI's API (OpenAI, Azure's v1 API, compatible servers);
    /// refused on Anthropic routes.
    Responses,
    /// Anthropic's `POST /v1/messages/count_tokens`: sent to Anthropic
    /// routes only ([`Provider::counts_tokens`]); on OpenAI-speaking ones,
    /// whose API has no such endpoint, the gateway's tokenizer answers
    /// ([`estimate_input_tokens`]) and nothing is sent.
    CountTokens,
}

/// The event stream a provider answers a streamed request with: every
/// provider answers in the wire format of the request's endpoint, whatever
/// it speaks itself (the translators see to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// OpenAI's `data:` chunks ending with `[DONE]` (chat and legacy completions).
    Chunks,
    /// Anthropic's named Messages events.
    Messages,
    /// The Responses API's named events.
    Responses,
}

impl Endpoint {
    pub fn stream_format(self) -> StreamFormat {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => StreamFormat::Messages,
            Endpoint::Responses => StreamFormat::Responses,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
                StreamFormat::Chunks
            }
        }
    }

    /// Path below the provider's `/v1` base.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Messages => "/messages",
            Endpoint::CountTokens => "/messages/count_tokens",
            Endpoint::Responses => "/responses",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "messages.count_tokens",
            Endpoint::Responses => "responses",
        }
    }

    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/chat/completions" => Some(Endpoint::ChatCompletions),
            "/completions" => Some(Endpoint::Completions),
            "/embeddings" => Some(Endpoint::Embeddings),
            "/messages" => Some(Endpoint::Messages),
            "/messages/count_tokens" => Some(Endpoint::CountTokens),
            "/responses" => Some(Endpoint::Responses),
            _ => None,
        }
    }
}

/// Why an upstream call failed before a usable response arrived, or mid-body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("could not connect to the provider: {0}")]
    Connect(String),
    #[error("the provider did not answer within {0} ms")]
    FirstByteTimeout(u64),
    #[error("the provider's response broke off: {0}")]
    Body(String),
    /// The provider's HTTP/2 connection went away (GOAWAY) under the request:
    /// the server closing gracefully, or protecting itself (`ENHANCE_YOUR_CALM`
    /// after a burst of stream resets, which this gateway's own cancelled
    /// requests can cause). Retried like any broken response, but not held
    /// against the route's breaker: it says nothing about the provider's health.
    #[error("the provider's connection went away: {0}")]
    GoneAway(String),
    /// The provider refused the HTTP/2 stream (`REFUSED_STREAM`): by RFC 9113
    /// section 8.7 it did not process the request, so sending it again is
    /// safe. Sent again at once on the same route, and not held against the
    /// route's breaker (a server refuses streams while it starts or sheds load).
    #[error("the provider refused the request's stream: {0}")]
    Refused(String),
    #[error("the provider's response is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("provider misconfigured: {0}")]
    Misconfigured(String),
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>;

pub enum UpstreamBody {
    Stream(ByteStream),
}

/// True if a response's headers declare a server-sent event stream.
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

/// A request ready to go upstream: the body already carries the upstream model.
pub struct UpstreamRequest {
    pub endpoint: Endpoint,
    /// The upstream model (Azure puts it, as the deployment, in the URL).
    pub model: Arc<str>,
    pub body: Bytes,
    pub stream: bool,
    pub request_id: crate::telemetry::ids::RequestId,
    /// The client's `anthropic-beta` (`/v1/messages` on an Anthropic route).
    pub anthropic_beta: Option<http::HeaderValue>,
}

/// The input tokens of a Messages body by the gateway's tokenizer, as
/// `model` (the route's upstream model) would count them: the prompt as
/// usage estimates count it, plus the tool definitions' JSON, which the
/// model reads too (the usage estimate leaves them out: their billing is
/// model-specific; here leaving them out would under-count every agent's
/// prompt).
pub fn estimate_input_tokens(model: &str, body: &serde_json::Value) -> u64 {
    use crate::usage::estimate::{estimate_prompt_tokens, estimate_text_tokens};
    let tools = body
        .get("tools")
        .and_then(serde_json::Value::as_array)
        .map_or(0, |tools| {
            tools
                .iter()
                .map(|t| estimate_text_tokens(model, &t.to_string()))
                .sum()
        });
    estimate_prompt_tokens(model, body).saturating_add(tools)
}

/// One configured provider.
pub enum Provider {
    Mock { name: Arc<str> },
    OpenAi(OpenAiProvider),
    Anthropic(AnthropicProvider),
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({})", self.name())
    }
}

impl Provider {
    /// Builds a provider from its configuration (reading its platform key, if any).
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, String> {
        match cfg.kind {
            ProviderKind::Mock => Ok(Provider::Mock {
                name: cfg.name.as_str().into(),
            }),
            ProviderKind::Openai | ProviderKind::AzureOpenai => {
                OpenAiProvider::from_config(cfg).map(Provider::OpenAi)
            }
            ProviderKind::Anthropic => AnthropicProvider::from_config(cfg).map(Provider::Anthropic),
        }
    }

    /// The name as the snapshot holds it: records that keep it clone a
    /// reference count, not the text.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Provider::Mock { name } => name,
            Provider::OpenAi(p) => p.name(),
            Provider::Anthropic(p) => p.name(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Mock { .. } => "mock",
            Provider::OpenAi(p) => p.kind(),
            Provider::Anthropic(_) => "anthropic",
        }
    }

    /// Whether the provider's API counts a prompt's tokens
    /// ([`Endpoint::CountTokens`]): Anthropic's does, OpenAI's has no way to.
    pub fn counts_tokens(&self) -> bool {
        matches!(self, Provider::Anthropic(_))
    }

    /// The platform's own key for this provider, if any.
    pub fn platform_key(&self) -> Option<&Secret> {
        match self {
            Provider::Mock { .. } => None,
            Provider::OpenAi(p) => p.platform_key(),
            Provider::Anthropic(p) => p.platform_key(),
        }
    }

    /// Sends `req` upstream, authenticated with `key` in the provider's own
    /// header, and answers in the wire format of `req.endpoint`.
    pub async fn send(
        &self,
        req: UpstreamRequest,
        key: Option<&Secret>,
    ) -> Result<UpstreamResponse, ProviderError> {
        // The Anthropic API and the Messages bridge are boxed: inline, their
        // futures (2.4 and 2.9 KiB) would size every request's future, and a
        // future is copied whole each time it is moved into the one that
        // awaits it, up the whole request path.
        match (self, req.endpoint) {
            (Provider::Anthropic(p), _) => Box::pin(p.send(req, key)).await,
            // Never sent: the proxy answers a count on such a route itself.
            (_, Endpoint::CountTokens) => Err(ProviderError::Misconfigured(format!(
                "provider `{}` cannot count tokens",
                self.name()
            ))),
            (_, Endpoint::Messages) => {
                let field = match self {
                    Provider::OpenAi(p) => p.max_tokens_field,
                    _ => MaxTokensField::MaxTokens,
                };
                Box::pin(messages_bridge::send_via_chat(req, field, |chat| {
                    self.send_openai_wire(chat, key)
                }))
                .await
            }
            _ => self.send_openai_wire(req, key).await,
        }
    }

    /// An OpenAI endpoint on a provider that speaks OpenAI's API.
    async fn send_openai_wire(
        &self,
        req: UpstreamRequest,
        key: Option<&Secret>,
    ) -> Result<UpstreamResponse, ProviderError> {
        match self {
            Provider::Mock { .. } => {
                let body: serde_json::Value = serde_json::from_slice(&req.body)
                    .map_err(|e| ProviderError::Misconfigured(e.to_string()))?;
                #[cfg(feature = "mock-server")]
                mock::panic_if_asked(&body);
                mock::MockReply::for_request(req.endpoint, &body)
                    .into_response()
                    .await
            }
            Provider::OpenAi(p) => p.send(req, key).await,
            // Not reached through `send`, which takes Anthropic first; boxed
            // so that it does not size the OpenAI path's future.
            Provider::Anthropic(p) => Box::pin(p.send(req, key)).await,
        }
    }
}
