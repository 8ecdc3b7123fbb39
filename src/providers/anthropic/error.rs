//! Errors of the translation layer: [`TranslateError`] (a client request the other
//! API cannot express), [`StreamError`] (a stream that fails mid-way), and
//! [`ApiError`], one provider error in terms of both APIs, behind
//! [`anthropic_error_to_openai`] and [`openai_error_to_anthropic`].

use super::type_of;
use serde_json::{json, Value};

/// A client request that cannot be translated for the route's provider. Always
/// the client's fault: answer **400** ([`TranslateError::STATUS`]) with
/// [`TranslateError::to_openai_error`] for chat-completions clients or
/// [`TranslateError::to_anthropic_error`] for `/v1/messages` clients. It is not an
/// upstream failure, so it does not trip a circuit breaker; whether a later route
/// of another provider kind may still serve the request is the router's call.
///
/// The message always names the offending field, `param` holds its path in
/// OpenAI's notation (`messages[2].content[1].type`) when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A parameter the target API has no equivalent for (`functions`, an
    /// `input_audio` content part, role `function`).
    #[error("{message}")]
    UnsupportedParameter {
        param: Option<String>,
        message: String,
    },
    /// A value the target API cannot express (`n: 2`, a `web_search` tool, a TIFF
    /// image).
    #[error("{message}")]
    UnsupportedValue {
        param: Option<String>,
        message: String,
    },
    /// A malformed value (arguments that are not JSON, a missing `tool_call_id`, a
    /// string where an array belongs).
    #[error("{message}")]
    InvalidValue {
        param: Option<String>,
        message: String,
    },
}

impl TranslateError {
    /// The HTTP status the client gets.
    pub const STATUS: u16 = 400;

    pub(crate) fn unsupported_parameter(param: impl Into<String>, message: String) -> Self {
        TranslateError::UnsupportedParameter {
            param: Some(param.into()),
            message,
        }
    }

    pub(crate) fn unsupported_value(param: impl Into<String>, message: String) -> Self {
        TranslateError::UnsupportedValue {
            param: Some(param.into()),
            message,
        }
    }

    /// A body that is JSON but not an object.
    pub(crate) fn not_an_object() -> Self {
        TranslateError::InvalidValue {
            param: None,
            message: "The request body must be a JSON object.".into(),
        }
    }

    pub(crate) fn invalid(param: impl Into<String>, message: String) -> Self {
        TranslateError::InvalidValue {
            param: Some(param.into()),
            message,
        }
    }

    /// The human-readable message (names the field).
    pub fn message(&self) -> &str {
        match self {
            TranslateError::UnsupportedParameter { message, .. }
            | TranslateError::UnsupportedValue { message, .. }
            | TranslateError::InvalidValue { message, .. } => message,
        }
    }

    /// The offending field, in OpenAI's notation, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            TranslateError::UnsupportedParameter { param, .. }
            | TranslateError::UnsupportedValue { param, .. }
            | TranslateError::InvalidValue { param, .. } => param.as_deref(),
        }
    }

    /// OpenAI's `error.code`: `unsupported_parameter`, `unsupported_value` or
    /// `invalid_value` (the codes OpenAI itself uses for such requests).
    pub fn code(&self) -> &'static str {
        match self {
            TranslateError::UnsupportedParameter { .. } => "unsupported_parameter",
            TranslateError::UnsupportedValue { .. } => "unsupported_value",
            TranslateError::InvalidValue { .. } => "invalid_value",
        }
    }

    /// `{"error":{"message","type":"invalid_request_error","param","code"}}`.
    pub fn to_openai_error(&self) -> Value {
        json!({"error": {
            "message": self.message(),
            "type": "invalid_request_error",
            "param": self.param(),
            "code": self.code(),
        }})
    }

    /// `{"type":"error","error":{"type":"invalid_request_error","message"}}`.
    pub fn to_anthropic_error(&self) -> Value {
        json!({"type": "error", "error": {
            "type": "invalid_request_error",
            "message": self.message(),
        }})
    }
}

/// A stream that cannot go on. After any of these the converter is finished and
/// ignores further input; the caller ends the client's stream with
/// [`StreamError::to_openai_error`] (as `data: {...}` and no `[DONE]`, which the
/// OpenAI SDK raises as `APIError`) or [`StreamError::to_anthropic_event`] (as
/// `event: error`, which the Anthropic SDK raises).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The provider reported an error in the stream: Anthropic's `event: error`,
    /// or an OpenAI chunk with an `error` object.
    #[error("the provider reported an error mid-stream ({}): {}", .0.anthropic_type, .0.message)]
    Upstream(Box<ApiError>),
    /// An event whose data is not the JSON its event name promises.
    #[error("malformed `{event}` event from the provider: {detail}")]
    Malformed { event: String, detail: String },
    /// The OpenAI stream ended (`[DONE]` or end of body) without a finish reason.
    #[error("the provider's stream ended before the answer was complete")]
    Truncated,
}

impl StreamError {
    /// The error in both APIs' terms (for `Malformed` and `Truncated`: a 502
    /// `api_error` / `upstream_error` of the gateway's own).
    pub fn api_error(&self) -> ApiError {
        match self {
            StreamError::Upstream(e) => (**e).clone(),
            StreamError::Malformed { .. } => ApiError {
                status: 502,
                message: "The upstream provider sent a malformed stream event.".into(),
                openai_type: "upstream_error".into(),
                openai_code: Some("stream_malformed".into()),
                param: None,
                anthropic_type: "api_error".into(),
            },
            StreamError::Truncated => ApiError {
                status: 502,
                message: "The upstream provider's stream ended before the answer was complete."
                    .into(),
                openai_type: "upstream_error".into(),
                openai_code: Some("stream_truncated".into()),
                param: None,
                anthropic_type: "api_error".into(),
            },
        }
    }

    /// OpenAI's error object, to send as `data: {...}` on a chat-completions stream.
    pub fn to_openai_error(&self) -> Value {
        self.api_error().to_openai()
    }

    /// Anthropic's error event data, to send as `event: error` on a `/v1/messages`
    /// stream.
    pub fn to_anthropic_event(&self) -> Value {
        self.api_error().to_anthropic()
    }

    /// A short label for the usage record and metrics: the OpenAI `code` when
    /// there is one, else the Anthropic error type.
    pub fn code(&self) -> String {
        let e = self.api_error();
        e.openai_code.unwrap_or(e.anthropic_type)
    }
}

/// One provider error in terms both APIs can express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status for the client. Anthropic's non-standard 529 (overloaded)
    /// becomes **503** for OpenAI clients: it is the status OpenAI itself used for
    /// "engine overloaded", and every SDK retries it.
    pub status: u16,
    pub message: String,
    /// OpenAI's `error.type`.
    pub openai_type: String,
    /// OpenAI's `error.code`.
    pub openai_code: Option<String>,
    /// OpenAI's `error.param`.
    pub param: Option<String>,
    /// Anthropic's `error.type`.
    pub anthropic_type: String,
}

impl ApiError {
    /// Reads an Anthropic error response (`{"type":"error","error":{"type","message"}}`).
    /// A body that is not Anthropic's error JSON (an HTML page from a proxy) is
    /// described by its status alone.
    pub fn from_anthropic(status: u16, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(err) if err.is_object() => Self::from_anthropic_error(Some(status), err),
            _ => Self::from_status(status, None),
        }
    }

    /// Reads Anthropic's inner `error` object; `status` is `None` inside a stream,
    /// where it is derived from the error type.
    pub fn from_anthropic_error(status: Option<u16>, err: &Value) -> Self {
        let anthropic_type = type_of(err).to_owned();
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let (type_status, openai_type, code): (u16, &str, Option<&str>) =
            match anthropic_type.as_str() {
                "invalid_request_error" => (400, "invalid_request_error", None),
                "authentication_error" => (401, "invalid_request_error", Some("invalid_api_key")),
                "billing_error" => (402, "insufficient_quota", Some("insufficient_quota")),
                "permission_error" => (403, "permission_error", Some("permission_denied")),
                "not_found_error" => (
                    404,
                    "invalid_request_error",
                    // Anthropic says `model: <name>` for an unknown model.
                    message.starts_with("model:").then_some("model_not_found"),
                ),
                "request_too_large" => (413, "invalid_request_error", Some("request_too_large")),
                "rate_limit_error" => (429, "rate_limit_error", Some("rate_limit_exceeded")),
                "api_error" => (500, "server_error", None),
                "timeout_error" => (504, "server_error", Some("timeout")),
                "overloaded_error" => (503, "server_error", Some("overloaded")),
                _ => return Self::from_status(status.unwrap_or(500), Some(message)),
            };
        let status = match status {
            Some(529) | None => type_status,
            Some(s) => s,
        };
        let message = if message.is_empty() {
            format!("The upstream provider returned HTTP {status}.")
        } else {
            message
        };
        ApiError {
            status,
            message,
            openai_type: openai_type.to_owned(),
            openai_code: code.map(str::to_owned),
            param: None,
            anthropic_type,
        }
    }

    /// Reads an OpenAI error response (`{"error":{"message","type","param","code"}}`);
    /// anything else is described by its status alone.
    pub fn from_openai(status: u16, body: &Value) -> Self {
        match body.get("error") {
            Some(err) if err.is_object() => Self::from_openai_error(Some(status), err),
            Some(Value::String(s)) => Self::from_status(status, Some(s.clone())),
            _ => Self::from_status(status, None),
        }
    }

    /// Reads OpenAI's inner `error` object; `status` is `None` inside a stream,
    /// where it is derived from the error type and code.
    pub fn from_openai_error(status: Option<u16>, err: &Value) -> Self {
        let s = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
        let openai_type = s("type");
        let code = s("code").or_else(|| {
            err.get("code")
                .and_then(Value::as_i64)
                .map(|n| n.to_string())
        });
        let quota = openai_type.as_deref() == Some("insufficient_quota")
            || code.as_deref() == Some("insufficient_quota");
        let status = status.unwrap_or(match openai_type.as_deref() {
            Some("invalid_request_error") => 400,
            Some("tokens" | "requests" | "rate_limit_error") => 429,
            Some("insufficient_quota") => 429,
            _ => 500,
        });
        let mut e = Self::from_status(status, s("message"));
        if quota {
            e.anthropic_type = "billing_error".into();
        }
        if let Some(t) = openai_type {
            e.openai_type = t;
        }
        e.openai_code = code;
        e.param = s("param");
        e
    }

    /// An error known only by its status (and maybe a message).
    fn from_status(status: u16, message: Option<String>) -> Self {
        let status = if status == 529 { 503 } else { status };
        let (anthropic_type, openai_type) = match status {
            401 => ("authentication_error", "invalid_request_error"),
            402 => ("billing_error", "insufficient_quota"),
            403 => ("permission_error", "permission_error"),
            404 => ("not_found_error", "invalid_request_error"),
            413 => ("request_too_large", "invalid_request_error"),
            429 => ("rate_limit_error", "rate_limit_error"),
            503 => ("overloaded_error", "server_error"),
            504 => ("timeout_error", "server_error"),
            s if s >= 500 => ("api_error", "server_error"),
            _ => ("invalid_request_error", "invalid_request_error"),
        };
        ApiError {
            status,
            message: message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("The upstream provider returned HTTP {status}.")),
            openai_type: openai_type.to_owned(),
            openai_code: None,
            param: None,
            anthropic_type: anthropic_type.to_owned(),
        }
    }

    /// `{"error":{"message","type","param","code"}}`.
    pub fn to_openai(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.openai_type,
            "param": self.param,
            "code": self.openai_code,
        }})
    }

    /// `{"type":"error","error":{"type","message"}}`.
    pub fn to_anthropic(&self) -> Value {
        json!({"type": "error", "error": {
            "type": self.anthropic_type,
            "message": self.message,
        }})
    }
}

/// An Anthropic error response → the status and OpenAI error JSON for an OpenAI
/// client. The status is kept except Anthropic's non-standard **529
/// `overloaded_error`, which becomes 503** (OpenAI's "engine overloaded" status;
/// the OpenAI SDK retries both). Types: `authentication_error` →
/// `invalid_request_error`/`invalid_api_key`, `rate_limit_error` →
/// `rate_limit_error`/`rate_limit_exceeded`, `overloaded_error` →
/// `server_error`/`overloaded`, `api_error` → `server_error`, `not_found_error`
/// for a model → `model_not_found`, `billing_error` → `insufficient_quota`. The
/// `request_id` is dropped; scrubbing the message is the caller's business.
pub fn anthropic_error_to_openai(status: u16, body: &[u8]) -> (u16, Value) {
    let e = ApiError::from_anthropic(status, body);
    (e.status, e.to_openai())
}

/// An OpenAI error response → Anthropic's error JSON for a `/v1/messages` client.
/// The status is kept; the type follows it (400 `invalid_request_error`, 401
/// `authentication_error`, 403 `permission_error`, 404 `not_found_error`, 413
/// `request_too_large`, 429 `rate_limit_error` or, for `insufficient_quota`,
/// `billing_error`, 503 `overloaded_error`, 504 `timeout_error`, other 5xx
/// `api_error`).
pub fn openai_error_to_anthropic(status: u16, body: &Value) -> Value {
    ApiError::from_openai(status, body).to_anthropic()
}
