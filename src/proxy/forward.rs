//! One attempt on one route ([`attempt`]), classified as commit, retry or final,
//! and the client's answer built from the outcome: buffered JSON for plain
//! requests, [`SseRelay`](super::relay::SseRelay) for streams, and provider errors reshaped into OpenAI's error JSON with provider-identifying
//! details (account ids, request ids, key fragments, provider URLs) scrubbed. For
//! `/v1/messages` clients ([`Dialect::Anthropic`]) the same steps read and write
//! Anthropic's formats through [`super::messages`].

use super::body::{full, ProxyBody};
use super::ctx::Dialect;
use super::error::GatewayError;
use super::record::{PendingRecord, TokenUsage, UsagePeek};
use crate::config::StreamCommit;
use crate::providers::sse::{self, Event, EventStream};
use crate::providers::{
    ByteStream, Provider, ProviderError, StreamFormat, UpstreamBody, UpstreamRequest,
};
use crate::usage::spool::Ticket;
use crate::usage::Outcome;
use crate::vault::{KeyOwner, Secret};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::time::{Duration, Instant};

/// Upstream error bodies are small; read at most this much of one.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What one attempt on one route produced.
pub enum AttemptResult {
    /// A usable answer: the request commits to this route.
    Commit(Committed),
    /// A failure another attempt (same route later, or the next route) may fix.
    Retry(Failure),
    /// A failure no retry can fix (the client's own error): answer with it.
    Final(Failure),
}

pub enum Committed {
    /// `headers` holds only the upstream's content type (see [`answer_headers`]).
    Json {
        status: StatusCode,
        headers: HeaderMap,
        bytes: Bytes,
    },
    /// A stream whose first content event has arrived; `held` are the events
    /// read so far (lifecycle frames included), to be sent first. `headers` is
    /// the upstream's map, emptied (see [`answer_headers`]).
    Stream {
        events: EventStream,
        held: Vec<Event>,
        headers: HeaderMap,
    },
}

/// Why an attempt failed.
pub struct Failure {
    /// Low-cardinality label for the attempt list and metrics.
    pub cause: &'static str,
    pub kind: FailureKind,
    pub retry_after: Option<Duration>,
}

pub enum FailureKind {
    /// The provider answered with an error status and this body.
    Upstream {
        status: StatusCode,
        body: Bytes,
    },
    Gateway(GatewayError),
}

/// The cause label of an attempt whose HTTP/2 connection went away under it.
const GONE_AWAY: &str = "upstream_goaway";

/// The cause label of an attempt whose HTTP/2 stream the provider refused.
const REFUSED: &str = "upstream_refused";

/// A constant, not a `&str`: http copies a string key on every insert.
const X_ACCEL_BUFFERING: http::HeaderName = http::HeaderName::from_static("x-accel-buffering");

impl Failure {
    /// Whether this failure says the route is unhealthy. A refused stream
    /// does not (see [`ProviderError::Refused`]), nor does a GOAWAY: a
    /// server closes connections to restart or to shed a burst of resets (which
    /// a gateway's own cancelled requests can be), and counting the requests
    /// that were in flight on it opened the breaker for everyone (issue 7's
    /// load runs).
    pub fn counts_against_breaker(&self) -> bool {
        match &self.kind {
            FailureKind::Gateway(GatewayError::Provider(
                ProviderError::GoneAway(_) | ProviderError::Refused(_),
            )) => false,
            // A model the provider does not serve is one route's setup, not
            // the provider's health (its other models answer).
            FailureKind::Upstream { status, .. } => *status != StatusCode::NOT_FOUND,
            _ => true,
        }
    }

    /// Whether this failure is the route's own setup, answered the same to
    /// every request: the gateway's credentials refused (401/403), a model
    /// the provider does not serve (404), its account out of credit (429
    /// `insufficient_quota`). Not the client's doing, so another route may
    /// serve; and not worth sending again to this one. With the tenant's own
    /// key, each of these is the tenant's to fix, and answered as it is.
    pub fn is_route_fault(&self, owner: KeyOwner) -> bool {
        match &self.kind {
            FailureKind::Upstream { status, body } => route_fault(*status, body, owner).is_some(),
            FailureKind::Gateway(_) => false,
        }
    }

    /// Whether the provider refused the request unprocessed (see
    /// [`ProviderError::Refused`]): safe to send again at once.
    pub fn was_refused(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Gateway(GatewayError::Provider(ProviderError::Refused(_)))
        )
    }

    fn gateway(cause: &'static str, e: impl Into<GatewayError>) -> Self {
        Self {
            cause,
            kind: FailureKind::Gateway(e.into()),
            retry_after: None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            FailureKind::Upstream { status, .. } => Some(status.as_u16()),
            FailureKind::Gateway(_) => None,
        }
    }
}

/// OpenAI's error for an account out of credit (a 429 no wait cures).
fn is_insufficient_quota(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"insufficient_quota").is_some()
}

/// What the client is told of a failure of a route's own setup under a
/// reseller's or the platform's key (see [`Failure::is_route_fault`]): not
/// the provider's words, which would tell the tenant its gateway key is wrong,
/// name the route's upstream model, or send it to its own billing.
pub(super) struct RouteFault {
    pub status: StatusCode,
    pub message: &'static str,
    pub code: &'static str,
}

/// The route fault a provider's error stands for, if any: the gateway's key
/// refused (401/403), a model or deployment the provider does not serve under
/// it (404), its account out of credit (429 `insufficient_quota`). With the
/// tenant's own key each of these is the tenant's to fix: `None`.
pub(super) fn route_fault(status: StatusCode, body: &[u8], owner: KeyOwner) -> Option<RouteFault> {
    if owner == KeyOwner::Tenant {
        return None;
    }
    let (status, message, code) = match status.as_u16() {
        401 | 403 => (
            StatusCode::BAD_GATEWAY,
            GATEWAY_KEY_REJECTED,
            "upstream_auth_failed",
        ),
        404 => (
            StatusCode::BAD_GATEWAY,
            ROUTE_MODEL_MISSING,
            "upstream_model_unavailable",
        ),
        429 if is_insufficient_quota(body) => (
            StatusCode::SERVICE_UNAVAILABLE,
            GATEWAY_QUOTA_EXHAUSTED,
            "upstream_quota_exhausted",
        ),
        _ => return None,
    };
    Some(RouteFault {
        status,
        message,
        code,
    })
}

/// Whether a provider status is worth another attempt: timeouts, rate limits,
/// server errors and Anthropic's 529 "overloaded".
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 425 | 429 | 500..=599)
}

/// How a streamed attempt is judged before it is committed to.
#[derive(Debug, Clone, Copy)]
pub struct StreamPolicy {
    /// The first event (or, under `first_content`, the first content) must
    /// arrive within this.
    pub first_event_timeout: Duration,
    pub commit: StreamCommit,
}

/// Sends one attempt and reads enough of the answer to decide: the whole body for
/// plain requests, the first content event for streams.
pub async fn attempt(
    provider: &Provider,
    req: UpstreamRequest,
    key: Option<&Secret>,
    max_body: usize,
    policy: StreamPolicy,
    record: &mut PendingRecord,
) -> AttemptResult {
    let StreamPolicy {
        first_event_timeout,
        commit,
    } = policy;
    let stream = req.stream;
    let format = req.endpoint.stream_format();
    let upstream = match provider.send(req, key).await {
        Ok(u) => u,
        Err(e) => {
            let cause = match e {
                ProviderError::Connect(_) => "connect_error",
                ProviderError::FirstByteTimeout(_) => "timeout",
                ProviderError::GoneAway(_) => GONE_AWAY,
                ProviderError::Refused(_) => REFUSED,
                ProviderError::Misconfigured(_) => {
                    return AttemptResult::Final(Failure::gateway("misconfigured", e))
                }
                _ => "upstream_reset",
            };
            return AttemptResult::Retry(Failure::gateway(cause, e));
        }
    };
    let UpstreamBody::Stream(body) = upstream.body;
    let status = upstream.status;
    if !status.is_success() {
        let retry_after = upstream
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // What of the body arrives: the status decides (a 400 stays the
        // client's error however long or broken its explanation).
        let bytes = collect_prefix(body, MAX_ERROR_BODY, &mut record.first_byte).await;
        let failure = Failure {
            cause: match status.as_u16() {
                429 => "rate_limited",
                408 => "timeout",
                529 => "overloaded",
                500..=599 => "server_error",
                _ => "client_error",
            },
            kind: FailureKind::Upstream {
                status,
                body: bytes,
            },
            retry_after,
        };
        return if retryable_status(status) {
            AttemptResult::Retry(failure)
        } else {
            AttemptResult::Final(failure)
        };
    }
    let is_sse = crate::providers::is_event_stream(&upstream.headers);
    if stream && is_sse {
        let mut events = sse::events(body);
        let mut held = Vec::new();
        let peek = async {
            while let Some(ev) = events.next().await {
                let ev = ev.map_err(sse::EventError::into_provider)?;
                let verdict = match (commit, format) {
                    (_, StreamFormat::Responses) => super::responses_relay::verdict(
                        &ev.event,
                        &ev.data,
                        commit == StreamCommit::FirstContent,
                    ),
                    (StreamCommit::FirstEvent, _) => first_event_verdict(&ev),
                    (StreamCommit::FirstContent, StreamFormat::Chunks) => {
                        first_content_verdict(&ev)
                    }
                    (StreamCommit::FirstContent, StreamFormat::Messages) => {
                        super::messages::verdict(&ev.event, &ev.data)
                    }
                };
                held.push(ev);
                match verdict {
                    Verdict::Hold => {}
                    Verdict::Content => return Ok(true),
                    Verdict::InBandError => return Ok(false),
                }
            }
            Err(ProviderError::Body(
                "the stream ended before any content".into(),
            ))
        };
        return match tokio::time::timeout(first_event_timeout, peek).await {
            Ok(Ok(true)) => AttemptResult::Commit(Committed::Stream {
                events,
                held,
                headers: answer_headers(upstream.headers, false),
            }),
            Ok(Ok(false)) => {
                // An error event before any content: the client has seen nothing
                // yet, so it gets the error as an answer with the status the
                // error stands for, and another route may still serve it.
                let body = match held.last() {
                    Some(e) if format == StreamFormat::Responses => {
                        super::responses_relay::error_body(&e.data)
                    }
                    Some(e) => Bytes::from(e.data.clone()),
                    None => Bytes::new(),
                };
                let status = in_band_error_status(&body);
                let failure = Failure {
                    cause: match status.as_u16() {
                        429 => "rate_limited",
                        529 => "overloaded",
                        500..=599 => "server_error",
                        _ => "client_error",
                    },
                    kind: FailureKind::Upstream { status, body },
                    retry_after: None,
                };
                if retryable_status(status) {
                    AttemptResult::Retry(failure)
                } else {
                    AttemptResult::Final(failure)
                }
            }
            Ok(Err(e)) => AttemptResult::Retry(Failure::gateway("stream_failed_before_content", e)),
            Err(_) => AttemptResult::Retry(Failure::gateway(
                "first_event_timeout",
                ProviderError::FirstByteTimeout(
                    u64::try_from(first_event_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
            )),
        };
    }
    match collect(body, max_body, &mut record.first_byte).await {
        Ok(bytes) => AttemptResult::Commit(Committed::Json {
            status,
            headers: answer_headers(upstream.headers, true),
            bytes,
        }),
        Err(e @ ProviderError::BodyTooLarge(_)) => {
            AttemptResult::Final(Failure::gateway("response_too_large", e))
        }
        // A success's head came (OpenAI and Azure send it once the answer is
        // generated), then its body broke: the provider has done, and billed,
        // the work. Sending the request again would have it done and billed
        // twice with one record; the client decides (its SDK retries a 502).
        Err(e) => AttemptResult::Final(Failure::gateway(ANSWER_BROKEN, e)),
    }
}

/// The cause label of a success whose body broke off.
pub const ANSWER_BROKEN: &str = "answer_broken";

pub enum Verdict {
    Hold,
    Content,
    InBandError,
}

/// Any event commits, except an in-band error (the client has seen nothing
/// yet, so another route may still serve it).
fn first_event_verdict(ev: &Event) -> Verdict {
    // Cheap pre-check: only an event mentioning "error" is parsed.
    if !ev.data.contains("\"error\"") {
        return Verdict::Content;
    }
    match serde_json::from_str::<Value>(ev.data.trim()) {
        Ok(v) if v.get("error").is_some_and(|e| !e.is_null()) => Verdict::InBandError,
        _ => Verdict::Content,
    }
}

/// Lifecycle frames (an OpenAI role-only first chunk, a keep-alive) are held back;
/// anything carrying content, a finish, usage or `[DONE]` commits the stream.
fn first_content_verdict(ev: &Event) -> Verdict {
    let data = ev.data.trim();
    if data == "[DONE]" {
        return Verdict::Content;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return Verdict::Content;
    };
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Verdict::InBandError;
    }
    if v.get("usage").is_some_and(|u| !u.is_null()) {
        return Verdict::Content;
    }
    let choices = v.get("choices").and_then(Value::as_array);
    let carries = choices.into_iter().flatten().any(|c| {
        let finish = c.get("finish_reason").is_some_and(|f| !f.is_null());
        let text = c
            .get("text")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        let delta = c.get("delta");
        let content = delta
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        let tools = delta
            .and_then(|d| d.get("tool_calls"))
            .is_some_and(|t| !t.is_null());
        let text_of = |field: &str| {
            delta
                .and_then(|d| d.get(field))
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty())
        };
        // Reasoning models on OpenAI-compatible servers (DeepSeek, vLLM:
        // `reasoning_content`; OpenRouter, Ollama: `reasoning`) think aloud
        // first: held back, the client saw nothing until the first event
        // timeout cut a generation the provider was billing for.
        let refusal = text_of("refusal") || text_of("reasoning_content") || text_of("reasoning");
        finish || text || content || tools || refusal
    });
    if carries {
        Verdict::Content
    } else {
        Verdict::Hold
    }
}

/// The HTTP status an error event stands for (Anthropic's `error.type`, or
/// OpenAI's `type` and `code`), as the provider answers that error outside a
/// stream: an overloaded provider 529, a rate limit 429. Unknown: 502.
fn in_band_error_status(data: &[u8]) -> StatusCode {
    let v: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    let field = |k: &str| {
        v.get("error")
            .and_then(|e| e.get(k))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    };
    let status = match (field("type"), field("code")) {
        ("overloaded_error", _) | (_, "overloaded") => 529,
        ("rate_limit_error" | "tokens" | "requests", _) | (_, "rate_limit_exceeded") => 429,
        ("timeout_error", _) | (_, "timeout") => 504,
        ("api_error" | "server_error", _) => 500,
        ("invalid_request_error", _) => 400,
        ("authentication_error", _) => 401,
        ("permission_error", _) => 403,
        ("not_found_error", _) => 404,
        ("request_too_large", _) => 413,
        _ => 502,
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY)
}

/// `retry-after` as seconds (OpenAI, Anthropic) or an HTTP date (rare; ignored).
/// A value beyond `Duration` (`1e20`) reads as 31 years, longer than any cap:
/// `from_secs_f64` would panic on it.
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(1e9)))
}

/// Headers an answer ends up with at most (content type, served model, the
/// model it was downgraded from, six rate-limit headers, request id, and for
/// a stream cache control and `x-accel-buffering`): reserved at once, not
/// grown twice. Twelve fit the 16-slot table that the upstream's map (a dozen
/// headers from OpenAI) already has, so a recycled map does not grow.
const ANSWER_HEADERS: usize = 12;

/// The upstream's header map, emptied (none of its headers reach the client;
/// a JSON answer keeps its content type, `application/json` if it had none)
/// and sized for [`ANSWER_HEADERS`], to carry the client's answer: its table
/// already fits them. A new map of that size is over 1 KiB, which glibc
/// serves outside its per-thread cache (merging its fast bins first):
/// allocating and freeing one per request was 3% of the request thread's CPU
/// at maximum throughput.
fn answer_headers(mut upstream: HeaderMap, keep_content_type: bool) -> HeaderMap {
    let content_type = keep_content_type.then(|| {
        upstream
            .remove(http::header::CONTENT_TYPE)
            .unwrap_or(HeaderValue::from_static("application/json"))
    });
    upstream.clear();
    upstream.reserve(ANSWER_HEADERS);
    if let Some(ct) = content_type {
        upstream.insert(http::header::CONTENT_TYPE, ct);
    }
    upstream
}

/// An answer's `usage` and `model` read with serde: for answers that
/// [`super::answer_scan`] leaves alone. The third value is the answer's tree
/// when one was parsed (`Some(None)`: it is not JSON), kept for estimating.
pub(super) fn read_answer_with_serde(
    bytes: &[u8],
) -> (
    Option<TokenUsage>,
    Option<Cow<'_, str>>,
    Option<Option<Value>>,
) {
    // Only `usage` and `model` are read (borrowed, no tree built).
    #[derive(serde::Deserialize)]
    struct AnswerPeek<'a> {
        #[serde(default)]
        usage: Option<UsagePeek>,
        #[serde(default, borrow, deserialize_with = "crate::usage::event::opt_text")]
        model: Option<Cow<'a, str>>,
    }
    // The tree is parsed only for an odd shape (`usage` or `model` of another
    // type), and then only once.
    // From a `str` when the body is UTF-8 (JSON must be): serde_json then
    // skips its UTF-8 check of every key and string it reads.
    let peek = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<AnswerPeek>(text),
        Err(_) => serde_json::from_slice::<AnswerPeek>(bytes),
    };
    match peek {
        Ok(peek) => (peek.usage.map(TokenUsage::from), peek.model, None),
        Err(_) => {
            let tree = serde_json::from_slice::<Value>(bytes).ok();
            let field = |k: &str| tree.as_ref().and_then(|v| v.get(k));
            let usage = field("usage").and_then(TokenUsage::from_json);
            let model = field("model")
                .and_then(Value::as_str)
                .map(|m| Cow::Owned(m.to_owned()));
            (usage, model, Some(tree))
        }
    }
}

/// The client's answer for a committed plain (non-streamed) response. Its
/// usage line is only staged: await [`crate::usage::UsageSink::spooled`] with the ticket
/// before the answer leaves.
pub fn json_answer(
    committed_status: StatusCode,
    headers: HeaderMap,
    bytes: Bytes,
    record: &mut PendingRecord,
    dialect: Dialect,
) -> (Response<ProxyBody>, Option<Ticket>) {
    if dialect == Dialect::Anthropic {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            if let Some(u) = super::messages::usage_of_message(&v) {
                record.tokens = u;
            }
            if let Some(m) = v.get("model").and_then(Value::as_str) {
                record.set_served_model(m);
            }
        }
    } else {
        // Only `usage` and `model` are read, in one pass over the bytes; the
        // whole body is parsed only when usage is missing and must be estimated.
        let (usage, model, tree) = match super::answer_scan::scan(&bytes) {
            Some(facts) => (facts.usage, facts.model.map(Cow::Borrowed), None),
            None => read_answer_with_serde(&bytes),
        };
        match usage {
            Some(u) => record.tokens = u,
            None => {
                let tree = tree.unwrap_or_else(|| serde_json::from_slice::<Value>(&bytes).ok());
                if let Some(v) = tree {
                    record.add_completion_from_response(&v);
                }
            }
        }
        if let Some(m) = model {
            record.set_served_model(&m);
        }
    }
    let staged = record.finish_staged(committed_status.as_u16(), Outcome::Ok, None);
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = committed_status;
    *resp.headers_mut() = headers;
    (resp, staged)
}

/// The client's answer for a committed stream ([`SseRelay`](super::relay::SseRelay) or
/// [`MessagesRelay`](super::messages_relay::MessagesRelay)).
pub fn stream_answer<R>(relay: R, headers: HeaderMap) -> Response<ProxyBody>
where
    R: futures_util::Stream<Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>>
        + Send
        + Unpin
        + 'static,
{
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(
        super::body::FirstFrameAlone::new(relay),
    )));
    *resp.headers_mut() = headers;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    // Tells nginx-style proxies in front of us not to buffer the stream.
    h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    resp
}

/// The client's answer for a failure, finishing the record.
pub fn failure_answer(
    failure: Failure,
    key_owner: Option<KeyOwner>,
    record: &mut PendingRecord,
    dialect: Dialect,
) -> Response<ProxyBody> {
    match failure.kind {
        FailureKind::Upstream { status, body } => {
            let owner = key_owner.unwrap_or(KeyOwner::Platform);
            let (client_status, payload, code) = match dialect {
                Dialect::OpenAi => reshape_error(status, &body, owner),
                Dialect::Anthropic => super::messages::reshape_error(status, &body, owner),
            };
            record.finish(client_status.as_u16(), Outcome::UpstreamError, Some(&code));
            let mut resp = Response::new(full(payload));
            *resp.status_mut() = client_status;
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(ra) = failure.retry_after {
                if let Ok(v) = HeaderValue::from_str(&ra.as_secs().max(1).to_string()) {
                    h.insert(http::header::RETRY_AFTER, v);
                }
            }
            resp
        }
        FailureKind::Gateway(err) => {
            let outcome = match err {
                // The provider did the work (see ANSWER_BROKEN): it is
                // recorded as served, its usage estimated.
                GatewayError::Provider(_) if failure.cause == ANSWER_BROKEN => Outcome::Truncated,
                GatewayError::Provider(_) => Outcome::UpstreamUnavailable,
                _ => Outcome::Rejected,
            };
            record.finish(err.status().as_u16(), outcome, Some(err.code()));
            err.to_response_for(dialect)
        }
    }
}

/// Up to `cap` bytes of an error body: what came before the cap, the end or
/// a failure to read on.
async fn collect_prefix(
    mut body: ByteStream,
    cap: usize,
    first_byte: &mut Option<Instant>,
) -> Bytes {
    let mut buf = BytesMut::new();
    while let Some(Ok(chunk)) = body.next().await {
        first_byte.get_or_insert_with(Instant::now);
        let room = cap - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() == cap {
            break;
        }
    }
    buf.freeze()
}

async fn collect(
    mut body: ByteStream,
    cap: usize,
    first_byte: &mut Option<Instant>,
) -> Result<Bytes, ProviderError> {
    // An answer that arrives in one chunk (one HTTP/2 DATA frame: most do) is
    // passed on as that chunk, without a copy into a buffer of its own.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        first_byte.get_or_insert_with(Instant::now);
        let held = first.as_ref().map_or(buf.len(), Bytes::len);
        if held + chunk.len() > cap {
            return Err(ProviderError::BodyTooLarge(cap));
        }
        if let Some(f) = first.take() {
            buf.reserve(f.len() + chunk.len());
            buf.extend_from_slice(&f);
            buf.extend_from_slice(&chunk);
        } else if buf.is_empty() {
            first = Some(chunk);
        } else {
            buf.extend_from_slice(&chunk);
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// What the client is told when the provider refused the tenant's own key.
pub const TENANT_KEY_REJECTED: &str = "The provider rejected your own API key for this model; update the provider key configured for your account.";
/// What the client is told when the provider does not serve a route's model
/// under a reseller's or the platform's key.
pub const ROUTE_MODEL_MISSING: &str = "The upstream provider does not serve this model under the gateway's account; the operator must fix the route.";
/// What the client is told when a reseller's or the platform's provider
/// account is out of credit.
pub const GATEWAY_QUOTA_EXHAUSTED: &str =
    "The upstream provider account serving this model is out of quota; the operator must fix it.";
/// What the client is told when the provider refused a reseller's or the
/// platform's key.
pub const GATEWAY_KEY_REJECTED: &str = "The upstream provider refused the gateway's credentials for this model; the operator must fix the provider key.";

/// Reshapes a provider error body into OpenAI's error JSON. Returns the status for
/// the client, the body and the error code for the usage record.
///
/// A 401/403 from the provider is never passed on as such: it would tell the
/// tenant its *gateway* key is wrong. If the tenant's own provider key was refused
/// it becomes 400 `provider_key_rejected`; a reseller's or the platform's key,
/// 502 `upstream_auth_failed`. Anthropic's non-standard 529 (overloaded) becomes
/// 503, the status OpenAI clients know (and retry).
pub fn reshape_error(
    status: StatusCode,
    body: &[u8],
    key_owner: KeyOwner,
) -> (StatusCode, Bytes, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let (mut message, mut typ, param, mut code) = match err {
        Some(Value::Object(o)) => (
            o.get("message").and_then(Value::as_str).map(str::to_owned),
            o.get("type").and_then(Value::as_str).map(str::to_owned),
            o.get("param").cloned().unwrap_or(Value::Null),
            o.get("code").and_then(|c| {
                c.as_str()
                    .map(str::to_owned)
                    .or_else(|| c.as_i64().map(|n| n.to_string()))
            }),
        ),
        Some(Value::String(s)) => (Some(s.clone()), None, Value::Null, None),
        _ => (
            parsed
                .as_ref()
                .and_then(|v| v.get("message").or_else(|| v.get("detail")))
                .and_then(Value::as_str)
                .map(str::to_owned),
            None,
            Value::Null,
            None,
        ),
    };
    let mut client_status = if status.as_u16() == 529 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        status
    };
    if let Some(fault) = route_fault(status, body, key_owner) {
        client_status = fault.status;
        message = Some(fault.message.into());
        typ = Some("upstream_error".into());
        code = Some(fault.code.into());
    } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        // The tenant's own provider key: the tenant can and must fix it.
        client_status = StatusCode::BAD_REQUEST;
        message = Some(TENANT_KEY_REJECTED.into());
        typ = Some("invalid_request_error".into());
        code = Some("provider_key_rejected".into());
    }
    let message = message
        .map(|m| scrub(&m))
        .unwrap_or_else(|| format!("The upstream provider returned HTTP {}.", status.as_u16()));
    let typ = typ.unwrap_or_else(|| default_type(status).to_owned());
    let code_value = code.clone().map_or(Value::Null, Value::String);
    let mut payload =
        json!({"error": {"message": message, "type": typ, "param": param, "code": code_value}});
    // Azure's content filter says which category stopped the prompt; apps
    // read it (it names nothing of the account).
    if code.as_deref() == Some("content_filter") {
        if let Some(inner) = err.and_then(|e| e.get("innererror")) {
            payload["error"]["innererror"] = inner.clone();
        }
    }
    let bytes = Bytes::from(serde_json::to_vec(&payload).unwrap_or_default());
    (
        client_status,
        bytes,
        code.unwrap_or_else(|| format!("upstream_{}", status.as_u16())),
    )
}

fn default_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "upstream_error",
    }
}

/// Removes words that identify the provider or the platform's account there:
/// key fragments, organisation/project/request ids (Anthropic names its
/// organisation by a bare UUID: `(org: a22cf6e6-…,`) and provider URLs.
pub fn scrub(message: &str) -> String {
    const PREFIXES: &[&str] = &[
        "sk-", "sk_", "org-", "org_", "proj_", "req_", "user-", "http://", "https://",
    ];
    const HOSTS: &[&str] = &["openai.com", "anthropic.com", "azure.com", "azure.net"];
    let mut out = String::with_capacity(message.len());
    for (i, word) in message.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core = word.trim_start_matches(['(', '[', '"', '\'', '`']);
        let lower = core.to_ascii_lowercase();
        // `***` marks a masked key fragment (`sk-ab***yz`), whatever its prefix.
        if PREFIXES.iter().any(|p| lower.starts_with(p))
            || HOSTS.iter().any(|h| lower.contains(h))
            || lower.contains("***")
            || is_uuid(core.trim_end_matches(['.', ',', ')', ']', ';', ':']))
        {
            let trailing: String = word
                .chars()
                .rev()
                .take_while(|c| matches!(c, '.' | ',' | ')' | ']' | ';' | ':'))
                .collect();
            out.push_str("[redacted]");
            out.extend(trailing.chars().rev());
        } else {
            out.push_str(word);
        }
    }
    out
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(word: &str) -> bool {
    let groups: Vec<&str> = word.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_event_stands_for_the_status_of_its_type() {
        let status = |data: &str| in_band_error_status(data.as_bytes()).as_u16();
        let anthropic =
            |t: &str| format!(r#"{{"type":"error","error":{{"type":"{t}","message":"x"}}}}"#);
        assert_eq!(status(&anthropic("overloaded_error")), 529);
        assert_eq!(status(&anthropic("rate_limit_error")), 429);
        assert_eq!(status(&anthropic("api_error")), 500);
        assert_eq!(status(&anthropic("invalid_request_error")), 400);
        // OpenAI's shape, and Anthropic's translated into it.
        assert_eq!(
            status(r#"{"error":{"message":"x","type":"server_error","code":"overloaded"}}"#),
            529
        );
        assert_eq!(
            status(r#"{"error":{"message":"x","type":"tokens","code":"rate_limit_exceeded"}}"#),
            429
        );
        assert_eq!(
            status(r#"{"error":{"message":"x","type":"server_error","code":null}}"#),
            500
        );
        assert_eq!(status("not json"), 502);
    }

    #[test]
    fn retry_after_reads_seconds_and_survives_any_number() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        for huge in ["1e20", "18446744073709551615", "1e308"] {
            assert!(parse_retry_after(huge).unwrap() > Duration::from_secs(365 * 86_400));
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, ProviderError>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    #[test]
    fn a_stream_answer_flushes_its_first_event_before_reading_on() {
        use http_body::Body;
        use std::pin::Pin;
        use std::task::{Context, Poll, Waker};
        let frames = (0..3).map(|i| {
            Ok(http_body::Frame::data(Bytes::from(format!(
                "data: {i}\n\n"
            ))))
        });
        let resp = stream_answer(futures_util::stream::iter(frames), HeaderMap::new());
        let mut body = resp.into_body();
        let mut cx = Context::from_waker(Waker::noop());
        let mut next = || {
            Pin::new(&mut body)
                .poll_frame(&mut cx)
                .map(|f| f.map(|f| f.map(|f| f.into_data().ok())))
        };
        // Every event is ready at once, as when a short answer arrives in one
        // read; hyper would write them all in one go unless the body yields
        // after the first (it flushes whenever the body is pending).
        assert!(matches!(next(), Poll::Ready(Some(Ok(Some(b)))) if b == "data: 0\n\n"));
        assert!(next().is_pending());
        assert!(matches!(next(), Poll::Ready(Some(Ok(Some(b)))) if b == "data: 1\n\n"));
        assert!(matches!(next(), Poll::Ready(Some(Ok(Some(_))))));
        assert!(matches!(next(), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn an_answer_is_collected_whole_and_held_to_its_cap() {
        let mut first = None;
        // One chunk is passed on as it is, not copied.
        let one: &'static [u8] = b"{\"id\":1}";
        let got = collect(chunks(&[one]), 64, &mut first).await.unwrap();
        assert_eq!(got.as_ptr(), one.as_ptr());
        assert!(first.is_some());
        // Several are joined in order.
        let got = collect(chunks(&[b"ab", b"", b"cd", b"e"]), 5, &mut None)
            .await
            .unwrap();
        assert_eq!(&got[..], b"abcde");
        let got = collect(chunks(&[]), 5, &mut None).await.unwrap();
        assert!(got.is_empty());
        // One byte over the cap, in the first chunk or in a later one.
        for parts in [
            &[&b"abcdef"[..]][..],
            &[b"abc", b"def"],
            &[b"ab", b"cd", b"ef"],
        ] {
            let err = collect(chunks(parts), 5, &mut None).await.unwrap_err();
            assert!(
                matches!(err, ProviderError::BodyTooLarge(5)),
                "{parts:?}: {err}"
            );
        }
    }

    #[test]
    fn only_a_gone_away_connection_is_not_held_against_the_breaker() {
        use crate::providers::ProviderError as P;
        let gone = Failure::gateway(GONE_AWAY, P::GoneAway("GOAWAY ENHANCE_YOUR_CALM".into()));
        assert!(!gone.counts_against_breaker());
        for e in [
            P::Body("reset".into()),
            P::Connect("refused".into()),
            P::FirstByteTimeout(1),
        ] {
            assert!(Failure::gateway("x", e).counts_against_breaker());
        }
    }

    #[test]
    fn scrubs_provider_identifiers() {
        let m = "Rate limit reached for gpt-4o-mini in organization org-uVqpjtJiKqvVJMVfvpaounIh on tokens. Visit https://platform.openai.com/account/rate-limits to learn more. (Please include the request ID req_0123.)";
        let s = scrub(m);
        assert!(!s.contains("org-uV"), "{s}");
        assert!(!s.contains("openai.com"), "{s}");
        assert!(!s.contains("req_0123"), "{s}");
        let anthropic = scrub("rate limit (org: a22cf6e6-a940-4fff-8c4c-1580816ac7be, model: x).");
        assert_eq!(anthropic, "rate limit (org: [redacted], model: x).");
        let masked = scrub("Invalid key 0123abcd****************wxyz given.");
        assert_eq!(masked, "Invalid key [redacted] given.");
        assert!(s.starts_with(
            "Rate limit reached for gpt-4o-mini in organization [redacted] on tokens."
        ));
    }

    #[test]
    fn upstream_auth_failure_is_not_a_client_401() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-proj-****wXyZ","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let (status, payload, code) =
            reshape_error(StatusCode::UNAUTHORIZED, body, KeyOwner::Platform);
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(code, "upstream_auth_failed");
        assert!(!String::from_utf8_lossy(&payload).contains("sk-proj"));
    }

    #[test]
    fn non_openai_errors_are_reshaped() {
        let (status, payload, _) = reshape_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":"messages: field required"}"#,
            KeyOwner::Platform,
        );
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["error"]["message"], "messages: field required");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let (_, payload, _) = reshape_error(
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
            KeyOwner::Platform,
        );
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v["error"]["message"],
            "The upstream provider returned HTTP 502."
        );
        assert_eq!(v["error"]["type"], "server_error");
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::*;

    fn event(data: &str) -> Event {
        Event {
            event: "message".into(),
            data: data.to_owned(),
            last_event_id: None,
        }
    }

    #[test]
    fn reasoning_deltas_are_content_and_a_role_chunk_is_not() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert!(matches!(first_content_verdict(&event(role)), Verdict::Hold));
        for field in ["reasoning_content", "reasoning"] {
            let chunk =
                format!(r#"{{"choices":[{{"index":0,"delta":{{"{field}":"Let me think"}}}}]}}"#);
            assert!(
                matches!(first_content_verdict(&event(&chunk)), Verdict::Content),
                "{field}"
            );
        }
    }
}
