//! The request pipeline. [`handle`] runs these stages in order:
//!
//! 1. request id: the client's sane `x-request-id` or a new UUIDv7 (added to every response),
//!    made by `proxy::serve` so that its answer to a panic carries it too;
//! 2. endpoint: path and method (`/v1/messages` sets the Anthropic dialect: its
//!    errors and events take Anthropic's shapes), 404/405 for anything else;
//! 3. snapshot: one `ArcSwap` load, held for the whole request;
//! 4. reseller: from the Host / `:authority` (→ `RequestCtx::reseller`); over
//!    TLS the SNI must name the same reseller, else 421 (→ `RequestCtx::sni`);
//! 5. tenant: from the presented key, constant-time (→ `RequestCtx::tenant`);
//! 6. body: size-limited read, JSON object with a string `model`
//!    (`/v1/messages`: [`super::messages::prepare_body`]; `/v1/messages/count_tokens`:
//!    [`super::count_tokens::prepare_body`], admitted for 0 tokens, its
//!    estimate answered by [`super::count_tokens`] at an OpenAI route);
//! 7. route: plan check and model table (→ provider + upstream model);
//!    then limits: tenant and reseller buckets, concurrency, monthly quota;
//! 8. upstream: body rewritten (`model`, `stream_options.include_usage`), sent;
//! 9. answer: buffered JSON or the SSE relay; usage recorded exactly once.

use super::body::{json_response, ProxyBody};
use super::ctx::{Dialect, RequestCtx};
use super::error::GatewayError;
use super::fallback::{self, Prepared};
use super::record::PendingRecord;
use super::request_body::RequestBody;
use super::App;
use crate::limits::{
    estimate_request_tokens, estimate_response_tokens, EffectiveLimits, LimitKey, RateHeaders,
    RequestFields,
};
use crate::providers::Endpoint;
use crate::routing::{ModelChoice, RoutingError};
use crate::telemetry::ids::RequestId;
use crate::tenancy::{normalize_host, presented_key, PresentedKey, ResellerIdx, TenancyError};
use crate::usage::Outcome;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

const ANTHROPIC_BETA: http::HeaderName = http::HeaderName::from_static("anthropic-beta");

/// A client's `anthropic-beta` features: the header's values, joined with
/// `, ` when it came more than once (the SDK sends one list; a client that
/// sends one header per feature lost all but the first).
fn anthropic_beta(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let mut values = headers.get_all(ANTHROPIC_BETA).iter();
    let first = values.next()?;
    let rest: Vec<&[u8]> = values.map(http::HeaderValue::as_bytes).collect();
    if rest.is_empty() {
        return Some(first.clone());
    }
    let joined = std::iter::once(first.as_bytes())
        .chain(rest)
        .collect::<Vec<_>>()
        .join(&b", "[..]);
    http::HeaderValue::from_bytes(&joined).ok()
}

enum Api {
    Models,
    /// `GET /v1/models/{id}` (the SDK's `models.retrieve`).
    Model(String),
    Forward(Endpoint),
}

/// Answers one request; `sni` is the connection's TLS server name, normalised
/// (`None` on a plain listener); `rid` is the request's id (stage 1), made
/// with the wall clock's `started_at`, which the record's `ts` shares.
pub async fn handle<B>(
    app: Arc<App>,
    req: Request<B>,
    sni: Option<Arc<str>>,
    rid: &RequestId,
    started_at: std::time::SystemTime,
) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    if app.admin.is_some() && req.uri().path().starts_with("/admin/") {
        // Boxed: inline, its state would grow this future, which every
        // request allocates and moves.
        let mut resp = Box::pin(super::admin_http::serve(
            &app,
            req,
            sni.as_deref(),
            &rid.to_string(),
        ))
        .await;
        resp.headers_mut()
            .insert(crate::telemetry::ids::REQUEST_ID_HEADER, rid.header_value());
        app.metrics.response(resp.status().as_u16());
        return resp;
    }
    let dialect = Dialect::of_path(req.uri().path());
    // Browsers only (server-side clients send no `Origin`).
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    if origin.is_some() {
        if let Some(headers) = app
            .snapshot
            .load()
            .cors
            .preflight(req.method(), req.headers())
        {
            let mut resp = Response::new(super::body::full(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            *resp.headers_mut() = headers;
            resp.headers_mut()
                .insert(crate::telemetry::ids::REQUEST_ID_HEADER, rid.header_value());
            return resp;
        }
    }
    // Stages 2-5 are synchronous and log nothing, so they run first and the
    // request's span is created once with every field: recording the reseller
    // and tenant into an existing span cost a subscriber round trip that
    // formats them again (about 1.6k instructions).
    let resolved = resolve(&app, &req, sni, rid, (started, started_at), dialect);
    let (reseller, tenant) = match &resolved {
        Ok(Resolved::Api(_, ctx)) => (Some(&*ctx.reseller), Some(&*ctx.tenant.id)),
        Ok(Resolved::Answered(_)) => (None, None),
        Err(refusal) => (refusal.reseller.as_deref(), None),
    };
    // Only a browser's answer names the gateway's headers in CORS.
    let brand = origin.as_ref().and_then(|_| match &resolved {
        Ok(Resolved::Api(_, ctx)) => Some(Arc::clone(ctx.brand())),
        Ok(Resolved::Answered(_)) => None,
        Err(refusal) => refusal
            .reseller
            .as_deref()
            .and_then(|id| brand_of(&app, id)),
    });
    let span = tracing::info_span!(
        "request",
        request_id = %rid,
        method = %req.method(),
        path = %req.uri().path(),
        reseller,
        tenant,
    );
    let mut resp = match resolved {
        Ok(Resolved::Answered(resp)) => resp,
        Ok(Resolved::Api(Api::Models, ctx)) => list_models(&ctx),
        Ok(Resolved::Api(Api::Model(id), ctx)) => span
            .in_scope(|| retrieve_model(&ctx, &id).unwrap_or_else(|e| e.to_response_for(dialect))),
        Ok(Resolved::Api(Api::Forward(endpoint), ctx)) => {
            // Boxed apart from this future, which `proxy::serve` boxes too:
            // built inline, the pipeline's state would be copied with it on
            // every move (about 4 KiB), where this future is about 1 KiB.
            // A failure's answer is made inside the span, which it logs in.
            Box::pin(async {
                forward(&app, &ctx, endpoint, req.into_body())
                    .await
                    .unwrap_or_else(|e| e.to_response_for(dialect))
            })
            .instrument(span)
            .await
        }
        Err(refusal) => {
            app.metrics.refusal(refusal.error.code());
            // Looked up again rather than carried: a refusal is rare, and
            // every request's result would grow by the pointer.
            let brand = refusal
                .reseller
                .as_deref()
                .and_then(|id| brand_of(&app, id));
            let keys_url = brand.as_ref().and_then(|b| b.keys_url.as_deref());
            span.in_scope(|| refusal.error.to_response_branded(dialect, keys_url))
        }
    };
    resp.headers_mut()
        .insert(crate::telemetry::ids::REQUEST_ID_HEADER, rid.header_value());
    if let Some(origin) = &origin {
        let names = brand
            .as_ref()
            .map_or(&crate::tenancy::DEFAULT_EXPOSED, |b| &b.headers.exposed);
        app.snapshot
            .load()
            .cors
            .mark(origin, resp.headers_mut(), names);
    }
    app.metrics.response(resp.status().as_u16());
    resp
}

/// Reseller `id`'s brand in the current snapshot.
fn brand_of(app: &App, id: &str) -> Option<Arc<crate::tenancy::Brand>> {
    let snapshot = app.snapshot.load();
    snapshot
        .tenancy
        .reseller_by_id(id)
        .map(|r| Arc::clone(&r.brand))
}

/// What the synchronous stages made of a request.
enum Resolved {
    /// Answered without a tenant: health, readiness, metrics.
    Answered(Response<ProxyBody>),
    /// A tenant's call to an API endpoint.
    Api(Api, RequestCtx),
}

/// A request refused before it reached a tenant; the reseller, when known,
/// is named on its log line.
struct Refusal {
    error: GatewayError,
    reseller: Option<Arc<str>>,
}

impl From<GatewayError> for Refusal {
    fn from(error: GatewayError) -> Self {
        Self {
            error,
            reseller: None,
        }
    }
}

/// Stages 2-5: the endpoint, the snapshot, the reseller and the tenant.
fn resolve<B>(
    app: &Arc<App>,
    req: &Request<B>,
    sni: Option<Arc<str>>,
    rid: &RequestId,
    (started, started_at): (Instant, std::time::SystemTime),
    dialect: Dialect,
) -> Result<Resolved, Refusal> {
    let path = req.uri().path();
    let method = req.method();
    let api = match path {
        "/healthz" | "/readyz" if method == Method::GET || method == Method::HEAD => {
            let detail = path == "/readyz"
                && req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "detail=1"))
                && is_operator(app, req.headers());
            return Ok(Resolved::Answered(health(app, path == "/readyz", detail)));
        }
        "/metrics" if method == Method::GET => {
            if !is_operator(app, req.headers()) {
                return Err(
                    GatewayError::UnknownEndpoint(method.to_string(), path.to_owned()).into(),
                );
            }
            return Ok(Resolved::Answered(metrics(app)));
        }
        "/v1/models" if method == Method::GET => Api::Models,
        _ if method == Method::GET && path.starts_with("/v1/models/") => {
            let id = percent_encoding::percent_decode_str(&path["/v1/models/".len()..])
                .decode_utf8_lossy()
                .into_owned();
            Api::Model(id)
        }
        _ => match path.strip_prefix("/v1").and_then(Endpoint::from_path) {
            Some(e) if method == Method::POST => Api::Forward(e),
            Some(_) => {
                return Err(
                    GatewayError::MethodNotAllowed(method.to_string(), path.to_owned()).into(),
                )
            }
            None if matches!(path, "/v1/models" | "/healthz" | "/readyz") => {
                return Err(
                    GatewayError::MethodNotAllowed(method.to_string(), path.to_owned()).into(),
                )
            }
            None => {
                return Err(
                    GatewayError::UnknownEndpoint(method.to_string(), path.to_owned()).into(),
                )
            }
        },
    };

    let snapshot = app.snapshot.load_full();
    let reseller_idx = resolve_reseller(&snapshot.tenancy, req).map_err(GatewayError::from)?;
    if let Some(sni) = &sni {
        // One reseller's certificate must not reach another's tenants (HTTP/2
        // connection coalescing, or a client sending any Host it likes).
        if snapshot.tenancy.resolve_host(sni) != Ok(reseller_idx) {
            return Err(GatewayError::MisdirectedRequest.into());
        }
    }
    let reseller = snapshot.tenancy.reseller(reseller_idx).id.clone();
    let tenant = match presented_key(req.headers()) {
        PresentedKey::Missing => Err(TenancyError::MissingKey),
        PresentedKey::Malformed => Err(TenancyError::InvalidKey),
        PresentedKey::Key(k) => snapshot.tenancy.authenticate(reseller_idx, k, started_at),
    };
    let holder = match tenant {
        Ok(h) => h,
        Err(e) => {
            return Err(Refusal {
                error: e.into(),
                reseller: Some(reseller),
            })
        }
    };
    let ctx = RequestCtx {
        request_id: rid.clone(),
        started,
        started_at,
        snapshot,
        reseller,
        reseller_idx,
        tenant: holder.tenant,
        key_models: holder.models,
        key_id: holder.id,
        sni,
        dialect,
        anthropic_beta: match dialect {
            Dialect::Anthropic => anthropic_beta(req.headers()),
            Dialect::OpenAi => None,
        },
    };
    Ok(Resolved::Api(api, ctx))
}

/// The reseller addressed by the request. HTTP/2 carries the authority in the
/// URI; HTTP/1.1 in the Host header. Both present and different, or Host
/// repeated, is refused rather than guessed.
pub(super) fn resolve_reseller<B>(
    tenancy: &crate::tenancy::Tenancy,
    req: &Request<B>,
) -> Result<ResellerIdx, TenancyError> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(TenancyError::AmbiguousHost);
    }
    let header = match header {
        Some(h) => Some(h.to_str().map_err(|_| TenancyError::AmbiguousHost)?),
        None => None,
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    let host = match (authority, header) {
        (Some(a), Some(h)) => {
            let a = normalize_host(a);
            if a != normalize_host(h) {
                return Err(TenancyError::AmbiguousHost);
            }
            a
        }
        (Some(a), None) => normalize_host(a),
        (None, Some(h)) => normalize_host(h),
        (None, None) => return Err(TenancyError::UnknownHost),
    }
    .ok_or(TenancyError::UnknownHost)?;
    tenancy.resolve_host(&host)
}

fn health(app: &App, ready: bool, detail: bool) -> Response<ProxyBody> {
    let (status, word) = if ready && app.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    };
    if detail {
        return json_response(
            status,
            &json!({"status": word, "breakers": app.breakers.view()}),
        );
    }
    json_response(status, &json!({"status": word}))
}

fn metrics(app: &App) -> Response<ProxyBody> {
    let breakers = app.breakers.view();
    let mut text =
        app.metrics.render(
            breakers
                .iter()
                .map(|b| crate::telemetry::metrics::BreakerSample {
                    provider: &b.provider,
                    owner: &b.owner,
                    open: b.state == "open",
                    opened_total: b.opened_total,
                }),
        );
    app.limiter.render_prometheus(&mut text);
    app.usage.render_prometheus(&mut text);
    let mut resp = Response::new(super::body::full(text));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// True if the request carries one of the configured operator keys.
fn is_operator(app: &App, headers: &http::HeaderMap) -> bool {
    let PresentedKey::Key(k) = presented_key(headers) else {
        return false;
    };
    let digest = crate::tenancy::KeyDigest::of(k);
    let snapshot = app.snapshot.load();
    snapshot
        .operator_keys
        .iter()
        .any(|d| subtle::ConstantTimeEq::ct_eq(&d.0[..], &digest.0[..]).into())
}

/// The models of the tenant's plan that the snapshot serves and the key may use.
fn plan_models(ctx: &RequestCtx) -> impl Iterator<Item = &str> {
    ctx.tenant
        .plan
        .models
        .iter()
        .map(|m| &**m)
        .filter(|m| ctx.snapshot.models.contains(m) && ctx.key_allows(m))
}

fn list_models(ctx: &RequestCtx) -> Response<ProxyBody> {
    let data: Vec<Value> = plan_models(ctx).map(|m| model_object(ctx, m)).collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// One model of the tenant's plan, as the list gives it; a model outside the
/// plan (or unknown) is 404 `model_not_found`, as OpenAI answers.
fn retrieve_model(ctx: &RequestCtx, id: &str) -> Result<Response<ProxyBody>, GatewayError> {
    if !plan_models(ctx).any(|m| m == id) {
        return Err(GatewayError::Routing(RoutingError::ModelNotFound(
            id.to_owned(),
        )));
    }
    Ok(json_response(StatusCode::OK, &model_object(ctx, id)))
}

fn model_object(ctx: &RequestCtx, id: &str) -> Value {
    json!({"id": id, "object": "model", "created": ctx.snapshot.created, "owned_by": &*ctx.reseller})
}

async fn forward<B>(
    app: &Arc<App>,
    ctx: &RequestCtx,
    endpoint: Endpoint,
    // The body, not the request: an async fn keeps its arguments for its
    // whole life (twice, as upvar and local), and the head is 264 bytes.
    body: B,
) -> Result<Response<ProxyBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Two futures in turn: what reading and admitting the request keep
    // across their awaits (the record, the limits, the body) would otherwise
    // stay in this future's state, about 700 bytes, while the upstream answers.
    let (prepared, record, rate_headers) = admit(app, ctx, endpoint, body).await?;
    let mut resp = fallback::serve(app, ctx, endpoint, prepared, record).await;
    if let Some(rate_headers) = rate_headers {
        rate_headers.insert_into(resp.headers_mut());
    }
    Ok(resp)
}

/// Reads the body, prepares it under the tenant's plan and admits it under
/// the limits; a refusal is recorded and returned.
async fn admit<B>(
    app: &Arc<App>,
    ctx: &RequestCtx,
    endpoint: Endpoint,
    body: B,
) -> Result<(Prepared, PendingRecord, Option<RateHeaders>), GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = ctx.snapshot.limits.max_request_bytes;
    let mut record = PendingRecord::new(ctx, app.usage.clone(), endpoint);
    // The declared `Content-Length`, as hyper parsed it to frame the body.
    if http_body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n > limit as u64)
    {
        return Err(reject(&mut record, GatewayError::BodyTooLarge(limit)));
    }
    let body = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let err = if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                GatewayError::BodyTooLarge(limit)
            } else {
                GatewayError::BodyRead(e.to_string())
            };
            return Err(reject(&mut record, err));
        }
    };
    record.set_request_body(body.clone());
    let prepared = match endpoint {
        Endpoint::Messages => super::messages::prepare_body(ctx, body, &mut record),
        Endpoint::CountTokens => super::count_tokens::prepare_body(ctx, body, &mut record),
        _ => prepare_body(ctx, endpoint, body, &mut record),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return Err(reject(&mut record, e)),
    };
    let limits = EffectiveLimits::of(ctx.snapshot.tenancy.reseller(ctx.reseller_idx), &ctx.tenant);
    let admission = if limits.is_unlimited() {
        None
    } else {
        let key = LimitKey::new(ctx.reseller.clone(), ctx.tenant.id.clone());
        // A token count consumes none: it takes a request and a slot only.
        let estimate = match endpoint {
            Endpoint::CountTokens => 0,
            Endpoint::Responses => estimate_response_tokens(&prepared.body, &limits),
            _ => estimate_request_tokens(&prepared.body, &limits),
        };
        match app.limiter.admit(&key, &limits, estimate).await {
            Ok(a) => Some(a),
            Err(e) => return Err(reject(&mut record, GatewayError::Limit(e))),
        }
    };
    // The rate-limit headers go on every answer of an admitted request, as
    // OpenAI sends them.
    // The admission moves into the record whole (not out of an `Option`
    // that would stay in this future's state, 320 bytes, across the upstream
    // call).
    let rate_headers = admission.map(|a| {
        let headers = *a.rate_headers();
        record.hold_admission(a);
        headers
    });
    // The requested model is recorded by `read_body`.
    record.update(|r| r.stream = prepared.stream);
    Ok((prepared, record, rate_headers))
}

fn reject(record: &mut PendingRecord, err: GatewayError) -> GatewayError {
    record.finish(err.status().as_u16(), Outcome::Rejected, Some(err.code()));
    err
}

/// What every forwarded body must be, whatever its API: a JSON object with a
/// non-empty string `model` (chosen here under the plan's policy) and an
/// optional boolean `stream`. Returns the body, the choice and `stream`.
pub(super) fn read_body(
    ctx: &RequestCtx,
    body: Bytes,
    record: &mut PendingRecord,
) -> Result<(RequestBody, ModelChoice, bool), GatewayError> {
    let body = RequestBody::parse(body)?;
    let requested_model = body.model()?;
    let choice = match ctx.snapshot.models.choose(
        &ctx.tenant.plan,
        ctx.key_models.as_deref(),
        &requested_model,
    ) {
        Ok(choice) => choice,
        Err(e) => {
            record.update(|r| r.requested_model = Some(Arc::from(&*requested_model)));
            return Err(e.into());
        }
    };
    // The table's own name for what the client asked for.
    let requested = choice.downgraded_from.as_ref().unwrap_or(&choice.model);
    record.update(|r| r.requested_model = Some(requested.clone()));
    let stream = body.stream()?;
    Ok((body, choice, stream))
}

/// Validates the body and prepares what the gateway owns: the model (after the
/// plan's policy) and, for streams, `stream_options.include_usage` (so usage is
/// always counted). The upstream `model` is written per route.
fn prepare_body(
    ctx: &RequestCtx,
    endpoint: Endpoint,
    body: Bytes,
    record: &mut PendingRecord,
) -> Result<Prepared, GatewayError> {
    let (mut body, choice, stream) = read_body(ctx, body, record)?;
    let stream = stream && endpoint != Endpoint::Embeddings;
    if endpoint == Endpoint::Responses && RequestFields::field(&body, "background") == Some("true")
    {
        return Err(GatewayError::UnsupportedParameter(
            "background",
            "a background response is fetched later with GET /v1/responses/{id}, which the gateway cannot route (it does not know which provider and key stored it); send the request without `background` and keep the connection open, streamed if it is long",
        ));
    }
    // A Responses stream always ends with its usage (`response.completed`),
    // and the API refuses `stream_options.include_usage`.
    let client_wants_usage = if endpoint == Endpoint::Responses {
        true
    } else if stream {
        body.require_stream_usage()?
    } else {
        false
    };
    Ok(Prepared {
        model: choice.model,
        downgraded_from: choice.downgraded_from,
        body,
        stream,
        client_wants_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_beta_sent_twice_keeps_every_feature() {
        let mut h = http::HeaderMap::new();
        assert!(anthropic_beta(&h).is_none());
        h.append(ANTHROPIC_BETA, http::HeaderValue::from_static("a-2025"));
        assert_eq!(anthropic_beta(&h).unwrap(), "a-2025");
        h.append(
            ANTHROPIC_BETA,
            http::HeaderValue::from_static("b-2025, c-2025"),
        );
        assert_eq!(anthropic_beta(&h).unwrap(), "a-2025, b-2025, c-2025");
    }
}
