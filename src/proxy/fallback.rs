//! The fallback loop: tries a request's routes in order, retrying each with
//! exponential backoff and full jitter (honouring `retry-after` up to a cap),
//! skipping routes whose circuit breaker is open, all within the request's total
//! deadline. A route is committed to once it produced a usable answer (for a
//! stream: its first content event), so a failure before that never reaches the
//! client; after it, no retry happens. Every attempt is listed in the usage record.

use super::ctx::RequestCtx;
use super::error::GatewayError;
use super::forward::{
    attempt, failure_answer, json_answer, stream_answer, AttemptResult, Committed, Failure,
    FailureKind, StreamPolicy,
};
use super::messages_relay::MessagesRelay;
use super::record::PendingRecord;
use super::relay::{SseRelay, UpstreamEvents};
use super::request_body::RequestBody;
use super::responses_relay::ResponsesRelay;
use super::{App, ProxyBody};
use crate::providers::{Endpoint, StreamFormat, UpstreamRequest};
use crate::routing::breaker::{Admission, BreakerKey, BreakerSettings};
use crate::routing::{Route, RoutingError};
use crate::tenancy::{BrandHeaders, X_LIVERY_MODEL};
use crate::usage::AttemptRecord;
use crate::vault::{
    select_credential, CredentialOwner, KeyOwner, ProviderCredential, StoredCredential, VaultError,
};
use http::{HeaderMap, HeaderValue, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A validated request, ready to be sent to any route.
pub struct Prepared {
    /// The tenant-facing model that serves the request (after a downgrade).
    pub model: Arc<str>,
    pub downgraded_from: Option<Arc<str>>,
    /// The request body; its `model` is written per route.
    pub body: RequestBody,
    pub stream: bool,
    pub client_wants_usage: bool,
}

#[allow(clippy::manual_async_fn)] // see the comment on the async block
pub fn serve<'a>(
    app: &'a Arc<App>,
    ctx: &'a RequestCtx,
    endpoint: Endpoint,
    prepared: Prepared,
    mut record: PendingRecord,
) -> impl std::future::Future<Output = Response<ProxyBody>> + Send + 'a {
    // An async block, not an async fn: an async fn copies its arguments into
    // locals and keeps both in its state (rust-lang/rust#62958), and this
    // future is nested in every one above it.
    async move {
        let settings = &ctx.snapshot.routing;
        let deadline = ctx.started + Duration::from_millis(settings.request_deadline_ms);
        let breaker = BreakerSettings {
            failures: settings.breaker_failures.max(1),
            window: Duration::from_millis(settings.breaker_window_ms),
            cooldown: Duration::from_millis(settings.breaker_cooldown_ms),
        };
        let routes = match ctx.snapshot.models.routes(&prepared.model) {
            Ok(r) => r,
            Err(e) => {
                return failure_answer(
                    gateway_failure("no_route", e),
                    None,
                    &mut record,
                    ctx.dialect,
                )
            }
        };
        let mut last: Option<(Failure, Option<KeyOwner>, Arc<str>)> = None;
        let mut skipped_open = 0usize;
        let mut refusals = 0u32;

        'routes: for route in &routes {
            if endpoint == Endpoint::CountTokens && !route.provider.counts_tokens() {
                // A route that speaks OpenAI has nothing to count with: the
                // gateway's tokenizer answers. No provider is called, so it
                // is no attempt: no key unsealed, no breaker probed, closed
                // or refusing, nothing named in the record. Boxed: its
                // state would size every request's future.
                let answer = super::count_tokens::estimate_answer(
                    app,
                    &prepared,
                    route,
                    record,
                    &ctx.brand().headers,
                );
                return Box::pin(answer).await;
            }
            let provider_name = Arc::clone(route.provider.name());
            let credential = match credential_for(ctx, route) {
                Ok(c) => c,
                Err(e) => {
                    push_attempt(
                        app,
                        &mut record,
                        route,
                        "no_credential",
                        None,
                        Instant::now(),
                    );
                    last = Some((
                        gateway_failure("no_credential", e),
                        None,
                        provider_name.clone(),
                    ));
                    continue;
                }
            };
            // Built only once some breaker has seen a failure (two allocations
            // and a map lookup per request otherwise).
            let mut key = app
                .breakers
                .tracking()
                .then(|| breaker_key(&provider_name, credential.owner, ctx));
            let mut try_no = 0;
            loop {
                let admission = match &key {
                    Some(key) => app.breakers.admit(key, breaker),
                    None => Admission::Closed,
                };
                match admission {
                    Admission::Open => {
                        push_attempt(
                            app,
                            &mut record,
                            route,
                            "breaker_open",
                            None,
                            Instant::now(),
                        );
                        skipped_open += 1;
                        continue 'routes;
                    }
                    Admission::Closed | Admission::Probe => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    break 'routes;
                }
                // The provider is named while the attempt is in flight: a
                // client that leaves now leaves a call the provider may bill,
                // so the record estimates it instead of refunding it all.
                record.update(|r| r.provider = Some(provider_name.clone()));
                let body = prepared.body.upstream(&route.upstream_model);
                let req = UpstreamRequest {
                    endpoint,
                    model: route.upstream_model.clone(),
                    body,
                    stream: prepared.stream,
                    request_id: ctx.request_id.clone(),
                    anthropic_beta: ctx.anthropic_beta.clone(),
                };
                // The clock was just read: each read is ~20 ns, and
                // `timeout` would read it again to turn a duration back
                // into the deadline.
                let started = now;
                let first_event = Duration::from_millis(settings.first_event_timeout_ms);
                let result = tokio::time::timeout_at(
                    deadline.into(),
                    attempt(
                        &route.provider,
                        req,
                        credential.key.as_ref(),
                        ctx.snapshot.limits.max_upstream_bytes,
                        StreamPolicy {
                            first_event_timeout: first_event,
                            commit: settings.stream_commit,
                        },
                        &mut record,
                    ),
                )
                .await
                .unwrap_or_else(|_| {
                    AttemptResult::Retry(gateway_failure(
                        "deadline",
                        crate::providers::ProviderError::FirstByteTimeout(
                            settings.request_deadline_ms,
                        ),
                    ))
                });
                let (failure, retry) = match result {
                    AttemptResult::Commit(committed) => {
                        if let Some(key) = &key {
                            app.breakers.on_success(key);
                        }
                        push_attempt(app, &mut record, route, "ok", None, started);
                        // The provider was named when the attempt was sent.
                        record.update(|r| {
                            r.served_model = Some(route.upstream_model.clone());
                            r.key_owner = Some(credential.owner);
                        });
                        drop(credential);
                        let (mut resp, staged) = match committed {
                            Committed::Json {
                                status,
                                headers,
                                bytes,
                            } => json_answer(status, headers, bytes, &mut record, ctx.dialect),
                            Committed::Stream {
                                events,
                                held,
                                headers,
                            } => {
                                let upstream = UpstreamEvents::new(
                                    events,
                                    held,
                                    tokio::time::Instant::from_std(deadline),
                                    app.stream_cut.watch(),
                                );
                                let resp = match endpoint.stream_format() {
                                    StreamFormat::Responses => stream_answer(
                                        ResponsesRelay::new(upstream, record),
                                        headers,
                                    ),
                                    StreamFormat::Chunks => stream_answer(
                                        SseRelay::new(
                                            upstream,
                                            record,
                                            prepared.client_wants_usage,
                                        ),
                                        headers,
                                    ),
                                    StreamFormat::Messages => {
                                        stream_answer(MessagesRelay::new(upstream, record), headers)
                                    }
                                };
                                (resp, None)
                            }
                        };
                        served_headers(resp.headers_mut(), &prepared, &ctx.brand().headers);
                        if let Some(ticket) = staged {
                            // A plain answer's usage line is staged; it must
                            // be in the kernel before the answer leaves.
                            app.usage.spooled(ticket).await;
                        }
                        return resp;
                    }
                    AttemptResult::Final(failure) => (failure, false),
                    AttemptResult::Retry(failure) => (failure, true),
                };
                // The route's own setup failed (the gateway's key refused, a
                // model it does not serve, its account out of credit): the
                // next route, without this one's retries.
                let route_fault = failure.is_route_fault(credential.owner);
                let retry = retry || route_fault;
                push_attempt(
                    app,
                    &mut record,
                    route,
                    failure.cause,
                    failure.status(),
                    started,
                );
                if !retry {
                    // The client's own error (or the tenant's key refused): the
                    // provider answered, so it is healthy; a probe that got
                    // this closes its breaker. The provider stays named.
                    if let Some(key) = &key {
                        app.breakers.on_success(key);
                    }
                    record.update(|r| r.key_owner = Some(credential.owner));
                    return failure_answer(
                        failure,
                        Some(credential.owner),
                        &mut record,
                        ctx.dialect,
                    );
                }
                // No call in flight until the next attempt.
                record.update(|r| r.provider = None);
                let key =
                    key.get_or_insert_with(|| breaker_key(&provider_name, credential.owner, ctx));
                // A refusal is the server shedding load, not failing, until
                // it has refused the same request MAX_REFUSALS times: then it
                // is an ordinary failure, as the route's retries count it.
                let refused_again = failure.was_refused() && refusals >= MAX_REFUSALS;
                if failure.counts_against_breaker() || refused_again {
                    app.breakers.on_failure(key, breaker);
                } else {
                    // Nothing learned of the provider's health (a GOAWAY, a
                    // refusal): a probe's slot is given back, or the breaker
                    // stayed open another cool-down after this.
                    app.breakers.probe_inconclusive(key);
                }
                tracing::info!(provider = %provider_name, model = %route.upstream_model, cause = failure.cause, "attempt failed");
                let retry_after = failure.retry_after;
                let refused = failure.was_refused();
                last = Some((failure, Some(credential.owner), provider_name.clone()));
                if route_fault {
                    break;
                }
                if refused && refusals < MAX_REFUSALS {
                    // Not processed (RFC 9113 section 8.7): sent again at
                    // once, without spending one of the route's retries.
                    refusals += 1;
                    continue;
                }
                if try_no == settings.retries_per_route {
                    break;
                }
                let wait = match retry_after {
                    Some(ra) if ra > Duration::from_millis(settings.retry_after_cap_ms) => {
                        // The provider asks for longer than we may wait: next route.
                        break;
                    }
                    Some(ra) => ra.max(backoff(
                        settings.backoff_base_ms,
                        settings.backoff_max_ms,
                        try_no,
                    )),
                    None => backoff(settings.backoff_base_ms, settings.backoff_max_ms, try_no),
                };
                if Instant::now() + wait >= deadline {
                    // Not this route again; the next may still answer in time
                    // (each attempt checks the deadline before it starts).
                    break;
                }
                tokio::time::sleep(wait).await;
                try_no += 1;
            }
        }
        match last {
            Some((failure, owner, provider)) => {
                record.update(|r| {
                    r.provider = Some(provider);
                    r.key_owner = owner;
                });
                failure_answer(failure, owner, &mut record, ctx.dialect)
            }
            None if skipped_open > 0 => failure_answer(
                gateway_failure(
                    "breaker_open",
                    RoutingError::AllRoutesOpen(prepared.model.to_string()),
                ),
                None,
                &mut record,
                ctx.dialect,
            ),
            None => failure_answer(
                gateway_failure(
                    "deadline",
                    crate::providers::ProviderError::FirstByteTimeout(settings.request_deadline_ms),
                ),
                None,
                &mut record,
                ctx.dialect,
            ),
        }
    }
}

fn gateway_failure(cause: &'static str, e: impl Into<GatewayError>) -> Failure {
    Failure {
        cause,
        kind: FailureKind::Gateway(e.into()),
        retry_after: None,
    }
}

/// Full jitter: a random wait in `[0, min(max, base * 2^try)]`.
fn backoff(base_ms: u64, max_ms: u64, try_no: u32) -> Duration {
    let cap = base_ms.saturating_mul(1u64 << try_no.min(20)).min(max_ms);
    Duration::from_millis(fastrand::u64(0..=cap))
}

fn push_attempt(
    app: &App,
    record: &mut PendingRecord,
    route: &Route,
    outcome: &'static str,
    status: Option<u16>,
    started: Instant,
) {
    app.metrics.attempt(route.provider.name(), outcome);
    let latency_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let a = AttemptRecord {
        provider: Arc::clone(route.provider.name()),
        model: Arc::clone(&route.upstream_model),
        outcome,
        status,
        latency_ms,
    };
    record.update(|r| {
        // Most requests make one attempt; the default growth would reserve
        // room for four in every open stream's record.
        r.attempts.reserve_exact(1);
        r.attempts.push(a);
    });
}

/// How many refused streams (`REFUSED_STREAM`) one request sends again before
/// a refusal counts as a failed attempt: a server that keeps refusing is
/// overloaded, and the route's retries and the next routes take over.
const MAX_REFUSALS: u32 = 2;

/// Tells the client which tenant-facing model served it, and that it was
/// downgraded if so, under the reseller's header names.
pub(super) fn served_headers(headers: &mut HeaderMap, prepared: &Prepared, names: &BrandHeaders) {
    if let Ok(v) = HeaderValue::from_str(&prepared.model) {
        if names.branded {
            headers.insert(names.model.clone(), v);
        } else {
            headers.insert(X_LIVERY_MODEL, v);
        }
    }
    if let Some(from) = &prepared.downgraded_from {
        if let Ok(v) = HeaderValue::from_str(from) {
            headers.insert(names.downgraded_from.clone(), v);
        }
    }
}

fn breaker_key(provider: &str, owner: KeyOwner, ctx: &RequestCtx) -> BreakerKey {
    let who = match owner {
        KeyOwner::Tenant => format!("tenant:{}/{}", ctx.reseller, ctx.tenant.id),
        KeyOwner::Reseller => format!("reseller:{}", ctx.reseller),
        KeyOwner::Platform => "platform".to_owned(),
        KeyOwner::None => "none".to_owned(),
    };
    (provider.to_owned(), who)
}

/// Picks and unseals the provider key for `route` under the plan's policy.
fn credential_for(ctx: &RequestCtx, route: &Route) -> Result<ProviderCredential, VaultError> {
    let provider: &str = route.provider.name();
    let tenant = ctx
        .tenant
        .credentials
        .get(provider)
        .map(|sealed| StoredCredential {
            owner: CredentialOwner::Tenant {
                reseller: ctx.reseller.clone(),
                tenant: ctx.tenant.id.clone(),
            },
            sealed,
        });
    let reseller = ctx
        .snapshot
        .tenancy
        .reseller(ctx.reseller_idx)
        .credentials
        .get(provider)
        .map(|sealed| StoredCredential {
            owner: CredentialOwner::Reseller(ctx.reseller.clone()),
            sealed,
        });
    select_credential(
        ctx.tenant.plan.byok,
        provider,
        &ctx.snapshot.keyring,
        tenant,
        reseller,
        route.provider.platform_key(),
    )
}
