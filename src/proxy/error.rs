//! [`GatewayError`]: every way a request can fail, gathered from the stages'
//! own error enums, and the one exhaustive mapping from an error to an HTTP status
//! and OpenAI's error JSON (`{"error":{"message","type","param","code"}}`), or,
//! for clients of `/v1/messages`, Anthropic's
//! (`{"type":"error","error":{"type","message"}}`, the type following the status:
//! [`anthropic_error_type`]). The `code` values are stable and listed in the README.

use super::body::{json_response, ProxyBody};
use super::ctx::Dialect;
use crate::admin::AdminError;
use crate::limits::LimitRejection;
use crate::providers::ProviderError;
use crate::routing::RoutingError;
use crate::tenancy::TenancyError;
use crate::vault::VaultError;
use http::StatusCode;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Tenancy(#[from] TenancyError),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Limit(#[from] LimitRejection),
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("you must provide a model parameter")]
    MissingModel,
    #[error("invalid type for `{0}`: expected {1}")]
    InvalidField(&'static str, &'static str),
    /// A parameter the gateway cannot honour: its name and why.
    #[error("`{0}` is not supported here: {1}")]
    UnsupportedParameter(&'static str, &'static str),
    #[error("Invalid URL ({0} {1})")]
    UnknownEndpoint(String, String),
    #[error("method {0} is not allowed on {1}")]
    MethodNotAllowed(String, String),
    #[error("This connection is for another host: its TLS server name and the Host header name different resellers. Open a new connection to this host.")]
    MisdirectedRequest,
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The handler panicked (a bug): answered by `proxy::serve`.
    #[error("The server had an error while processing your request.")]
    Internal,
}

/// Who caused an error: drives the status family and log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Tenancy(e) => match e {
                TenancyError::UnknownHost => StatusCode::NOT_FOUND,
                TenancyError::AmbiguousHost => StatusCode::BAD_REQUEST,
                TenancyError::MissingKey | TenancyError::InvalidKey | TenancyError::ExpiredKey => {
                    StatusCode::UNAUTHORIZED
                }
                TenancyError::TenantSuspended => StatusCode::FORBIDDEN,
            },
            GatewayError::Routing(RoutingError::ModelNotFound(_)) => StatusCode::NOT_FOUND,
            GatewayError::Routing(
                RoutingError::ModelNotAllowed { .. } | RoutingError::KeyModelNotAllowed { .. },
            ) => StatusCode::FORBIDDEN,
            GatewayError::Limit(l) => l.status(),
            GatewayError::Routing(RoutingError::AllRoutesOpen(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Provider(e) => match e {
                ProviderError::Connect(_)
                | ProviderError::Refused(_)
                | ProviderError::Body(_)
                | ProviderError::GoneAway(_)
                | ProviderError::BodyTooLarge(_) => StatusCode::BAD_GATEWAY,
                ProviderError::FirstByteTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
                ProviderError::Misconfigured(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            GatewayError::Vault(VaultError::ProviderKeyNotConfigured(_)) => StatusCode::BAD_REQUEST,
            GatewayError::Vault(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyRead(_)
            | GatewayError::BadJson(_)
            | GatewayError::NotAnObject
            | GatewayError::MissingModel
            | GatewayError::InvalidField(..)
            | GatewayError::UnsupportedParameter(..) => StatusCode::BAD_REQUEST,
            GatewayError::UnknownEndpoint(..) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Admin(e) => match e {
                AdminError::NotFound(_) => StatusCode::NOT_FOUND,
                AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
                AdminError::Conflict(_)
                | AdminError::Declared(_)
                | AdminError::NoLedger
                | AdminError::StoreConflict => StatusCode::CONFLICT,
                AdminError::Invalid(_) | AdminError::BadBody(_) => StatusCode::BAD_REQUEST,
                AdminError::Method(..) => StatusCode::METHOD_NOT_ALLOWED,
                AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                AdminError::Vault(_) | AdminError::Ledger(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// OpenAI's `type` field.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::Tenancy(e) => match e {
                TenancyError::UnknownHost | TenancyError::AmbiguousHost => "invalid_request_error",
                TenancyError::MissingKey | TenancyError::InvalidKey | TenancyError::ExpiredKey => {
                    "authentication_error"
                }
                TenancyError::TenantSuspended => "permission_error",
            },
            GatewayError::Provider(ProviderError::Misconfigured(_)) => "server_error",
            GatewayError::Provider(_) => "upstream_error",
            GatewayError::Vault(VaultError::ProviderKeyNotConfigured(_)) => "invalid_request_error",
            GatewayError::Vault(_) => "server_error",
            GatewayError::Limit(l) => l.error_type(),
            GatewayError::Routing(
                RoutingError::ModelNotAllowed { .. } | RoutingError::KeyModelNotAllowed { .. },
            ) => "permission_error",
            GatewayError::Routing(RoutingError::AllRoutesOpen(_)) | GatewayError::Internal => {
                "server_error"
            }
            GatewayError::Routing(RoutingError::ModelNotFound(_))
            | GatewayError::BodyTooLarge(_)
            | GatewayError::BodyRead(_)
            | GatewayError::BadJson(_)
            | GatewayError::NotAnObject
            | GatewayError::MissingModel
            | GatewayError::InvalidField(..)
            | GatewayError::UnsupportedParameter(..)
            | GatewayError::UnknownEndpoint(..)
            | GatewayError::MethodNotAllowed(..)
            | GatewayError::MisdirectedRequest => "invalid_request_error",
            GatewayError::Admin(e) => match e {
                AdminError::Forbidden(_) => "permission_error",
                AdminError::Store(_) | AdminError::Vault(_) | AdminError::Ledger(_) => {
                    "server_error"
                }
                _ => "invalid_request_error",
            },
        }
    }

    /// The stable, low-cardinality `code` (also the metrics label).
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Tenancy(e) => match e {
                TenancyError::UnknownHost => "unknown_host",
                TenancyError::AmbiguousHost => "invalid_host",
                TenancyError::MissingKey => "missing_api_key",
                TenancyError::InvalidKey => "invalid_api_key",
                TenancyError::ExpiredKey => "expired_api_key",
                TenancyError::TenantSuspended => "tenant_suspended",
            },
            GatewayError::Routing(RoutingError::ModelNotFound(_)) => "model_not_found",
            GatewayError::Routing(
                RoutingError::ModelNotAllowed { .. } | RoutingError::KeyModelNotAllowed { .. },
            ) => "model_not_allowed",
            GatewayError::Routing(RoutingError::AllRoutesOpen(_)) => "routes_unavailable",
            GatewayError::Limit(l) => l.code(),
            GatewayError::Provider(e) => match e {
                ProviderError::Connect(_) | ProviderError::Refused(_) => "upstream_unreachable",
                ProviderError::FirstByteTimeout(_) => "upstream_timeout",
                ProviderError::Body(_) | ProviderError::GoneAway(_) => "upstream_incomplete",
                ProviderError::BodyTooLarge(_) => "upstream_response_too_large",
                ProviderError::Misconfigured(_) => "provider_misconfigured",
            },
            GatewayError::Vault(VaultError::ProviderKeyNotConfigured(_)) => {
                "provider_key_not_configured"
            }
            GatewayError::Vault(_) => "credential_unavailable",
            GatewayError::BodyTooLarge(_) => "request_too_large",
            GatewayError::BodyRead(_) => "body_read_failed",
            GatewayError::BadJson(_) => "invalid_json",
            GatewayError::NotAnObject => "invalid_body",
            GatewayError::MissingModel => "missing_model",
            GatewayError::InvalidField(..) => "invalid_field",
            GatewayError::UnsupportedParameter(..) => "unsupported_parameter",
            GatewayError::UnknownEndpoint(..) => "unknown_url",
            GatewayError::MethodNotAllowed(..) => "method_not_allowed",
            GatewayError::MisdirectedRequest => "misdirected_request",
            GatewayError::Internal => "internal_error",
            GatewayError::Admin(e) => match e {
                AdminError::NotFound(_) => "not_found",
                AdminError::Forbidden(_) => "permission_denied",
                AdminError::Conflict(_) => "conflict",
                AdminError::Declared(_) => "declared_in_config",
                AdminError::Invalid(_) => "invalid_config",
                AdminError::BadBody(_) => "invalid_body",
                AdminError::Method(..) => "method_not_allowed",
                AdminError::Store(_) => "store_unavailable",
                AdminError::StoreConflict => "store_conflict",
                AdminError::Vault(_) => "vault_unavailable",
                AdminError::NoLedger => "usage_ledger_off",
                AdminError::Ledger(_) => "usage_ledger_unreadable",
            },
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::Provider(ProviderError::Misconfigured(_)) => Fault::Gateway,
            GatewayError::Provider(_) => Fault::Upstream,
            GatewayError::Vault(VaultError::ProviderKeyNotConfigured(_)) => Fault::Client,
            GatewayError::Vault(_) => Fault::Gateway,
            GatewayError::Limit(LimitRejection::BackendUnavailable) => Fault::Gateway,
            GatewayError::Internal => Fault::Gateway,
            GatewayError::Admin(
                AdminError::Store(_) | AdminError::Vault(_) | AdminError::Ledger(_),
            ) => Fault::Gateway,
            _ => Fault::Client,
        }
    }

    /// How loudly answering this error is logged: by who is at fault, but a
    /// rate limiter outage only at debug, since the limiter logs it once when
    /// it starts and once when it ends and a line per refused request would
    /// flood the log at error for as long as it lasts; and a request refused
    /// before it reached a tenant (host, key, account, path) at info, since no
    /// usage record is written for it and this line (in the request's span,
    /// with its id) is its only trace.
    fn log_level(&self) -> tracing::Level {
        match self {
            GatewayError::Limit(LimitRejection::BackendUnavailable) => tracing::Level::DEBUG,
            GatewayError::Tenancy(_)
            | GatewayError::UnknownEndpoint(..)
            | GatewayError::MethodNotAllowed(..)
            | GatewayError::MisdirectedRequest => tracing::Level::INFO,
            _ => match self.fault() {
                Fault::Client => tracing::Level::DEBUG,
                Fault::Upstream => tracing::Level::WARN,
                Fault::Gateway => tracing::Level::ERROR,
            },
        }
    }

    /// The client-facing message. Tenancy errors stay neutral on purpose: they must
    /// not reveal whether a key or a host exists elsewhere.
    pub fn message(&self) -> String {
        match self {
            GatewayError::Tenancy(TenancyError::UnknownHost) => {
                "No API is served at this address.".into()
            }
            GatewayError::Tenancy(TenancyError::MissingKey) => {
                "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).".into()
            }
            GatewayError::Tenancy(TenancyError::InvalidKey) => "Incorrect API key provided.".into(),
            GatewayError::Tenancy(TenancyError::ExpiredKey) => "This API key has expired.".into(),
            GatewayError::Provider(ProviderError::Misconfigured(_)) => {
                "The gateway is misconfigured for this model; the operator has been notified.".into()
            }
            GatewayError::Provider(ProviderError::Connect(_)) => {
                "The upstream provider could not be reached.".into()
            }
            GatewayError::Provider(ProviderError::Body(_)) => {
                "The upstream provider's response broke off.".into()
            }
            // h2's text carries the provider's GOAWAY debug data, which is the
            // provider's to log (hosts, internal reasons), not the tenant's to read.
            GatewayError::Provider(ProviderError::GoneAway(_)) => {
                "The upstream provider closed its connection before the response was complete."
                    .into()
            }
            GatewayError::Provider(ProviderError::Refused(_)) => {
                "The upstream provider could not be reached.".into()
            }
            GatewayError::Vault(VaultError::ProviderKeyNotConfigured(_)) => self.to_string(),
            GatewayError::Limit(l) => l.message(),
            GatewayError::Vault(_) => {
                "The provider credential for this request is unavailable; the operator has been notified.".into()
            }
            other => other.to_string(),
        }
    }

    /// A refusal of the credential itself (none, unknown, expired): the
    /// answer asks for a bearer key and may say where to find one.
    fn refuses_the_key(&self) -> bool {
        matches!(
            self,
            GatewayError::Tenancy(
                TenancyError::MissingKey | TenancyError::InvalidKey | TenancyError::ExpiredKey
            )
        )
    }

    pub fn to_response(&self) -> http::Response<ProxyBody> {
        self.to_response_for(Dialect::OpenAi)
    }

    /// The response in the client's dialect (same status and headers).
    pub fn to_response_for(&self, dialect: Dialect) -> http::Response<ProxyBody> {
        self.to_response_branded(dialect, None)
    }

    /// As [`Self::to_response_for`]; a missing or refused key's message also
    /// says where the reseller's tenants find theirs (`keys_url`), as
    /// OpenAI's points to its own key page.
    pub fn to_response_branded(
        &self,
        dialect: Dialect,
        keys_url: Option<&str>,
    ) -> http::Response<ProxyBody> {
        let keys_url = keys_url.filter(|_| self.refuses_the_key());
        let branded = |mut message: String| {
            if let Some(url) = keys_url {
                if !message.ends_with('.') {
                    message.push('.');
                }
                message.push_str(" You can find your API key at ");
                message.push_str(url);
                message.push('.');
            }
            message
        };
        let code = self.code();
        match self.log_level() {
            tracing::Level::ERROR => tracing::error!(code, error = %self, "gateway failure"),
            tracing::Level::WARN => tracing::warn!(code, error = %self, "upstream failure"),
            tracing::Level::INFO => tracing::info!(code, error = %self, "request refused"),
            _ => tracing::debug!(code, error = %self, "request refused"),
        }
        let body = match dialect {
            Dialect::OpenAi => json!({"error": {
                "message": branded(self.message()),
                "type": self.error_type(),
                "param": match self {
                    GatewayError::MissingModel => json!("model"),
                    GatewayError::UnsupportedParameter(p, _) => json!(p),
                    _ => json!(null),
                },
                "code": self.code(),
            }}),
            Dialect::Anthropic => json!({"type": "error", "error": {
                "type": anthropic_error_type(self.status()),
                "message": branded(match self {
                    GatewayError::Tenancy(TenancyError::MissingKey) => {
                        "x-api-key header is required".to_owned()
                    }
                    other => other.message(),
                }),
            }}),
        };
        let mut resp = json_response(self.status(), &body);
        if let GatewayError::Limit(l) = self {
            for (name, value) in l.headers() {
                resp.headers_mut().insert(name, value);
            }
        }
        if let GatewayError::MethodNotAllowed(_, path) = self {
            let allow = match path.as_str() {
                "/v1/models" => "GET",
                "/healthz" | "/readyz" => "GET, HEAD",
                _ => "POST",
            };
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
        }
        if self.refuses_the_key() {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Anthropic's `error.type` for a status, as its API documents them (a status it
/// does not list gets `invalid_request_error` below 500, `api_error` above).
pub fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// The level of every event logged.
    #[derive(Clone, Default)]
    struct Levels(Arc<Mutex<Vec<tracing::Level>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Levels {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.lock().unwrap().push(*event.metadata().level());
        }
    }

    /// The levels of what answering `e` logs.
    fn levels_logged(e: &GatewayError) -> Vec<tracing::Level> {
        let levels = Levels::default();
        let subscriber = tracing_subscriber::registry().with(levels.clone());
        tracing::subscriber::with_default(subscriber, || drop(e.to_response()));
        let out = levels.0.lock().unwrap().clone();
        out
    }

    /// Requests refused before a tenant is known get no usage record, so
    /// they are logged at the default level (info), without the key.
    #[test]
    fn refusals_before_a_tenant_are_logged_at_info() {
        for e in [
            TenancyError::UnknownHost,
            TenancyError::AmbiguousHost,
            TenancyError::MissingKey,
            TenancyError::InvalidKey,
            TenancyError::TenantSuspended,
            TenancyError::ExpiredKey,
        ] {
            let e = GatewayError::Tenancy(e);
            assert_eq!(levels_logged(&e), [tracing::Level::INFO], "{e:?}");
        }
        let e = GatewayError::UnknownEndpoint("POST".into(), "/v1/files".into());
        assert_eq!(levels_logged(&e), [tracing::Level::INFO]);
        assert_eq!(
            levels_logged(&GatewayError::MisdirectedRequest),
            [tracing::Level::INFO]
        );
        // Once a tenant is known, a forwarded request's refusal has its
        // usage record.
        let e = GatewayError::Routing(RoutingError::ModelNotFound("gpt-9".into()));
        assert_eq!(levels_logged(&e), [tracing::Level::DEBUG]);
    }

    /// Under `fail_closed` every request is refused while Redis is down: the
    /// limiter logs the outage, each refusal only at debug.
    #[test]
    fn a_rate_limiter_outage_is_not_logged_per_request() {
        let e = GatewayError::Limit(LimitRejection::BackendUnavailable);
        assert_eq!(levels_logged(&e), [tracing::Level::DEBUG]);
        // A fault of the gateway's own still is an error.
        let e = GatewayError::Provider(ProviderError::Misconfigured("no base_url".into()));
        assert_eq!(levels_logged(&e), [tracing::Level::ERROR]);
    }

    async fn body_text(resp: http::Response<ProxyBody>) -> String {
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// An HTTP/2 failure's text (with the provider's GOAWAY debug data) stays
    /// in the log; the client reads a fixed message, in either dialect.
    #[tokio::test]
    async fn goaway_and_refused_stream_texts_do_not_reach_the_client() {
        const DEBUG: &str = "drain node gpu-17.internal.example";
        for e in [
            ProviderError::GoneAway(format!("GOAWAY ENHANCE_YOUR_CALM: {DEBUG}")),
            ProviderError::Refused(format!("REFUSED_STREAM: {DEBUG}")),
        ] {
            let e = GatewayError::Provider(e);
            assert!(!e.message().contains("gpu-17"), "{}", e.message());
            for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
                let text = body_text(e.to_response_for(dialect)).await;
                assert!(!text.contains("gpu-17"), "{text}");
            }
        }
    }
}
