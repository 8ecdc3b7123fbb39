//! The admin API's HTTP side: authenticates an `/admin/` request (an admin
//! key; a reseller's key only on that reseller's own hosts), reads its body,
//! runs [`crate::admin::handle`] off the runtime's workers and answers in
//! OpenAI's error shape like every other endpoint. Every call is logged with
//! who made it (the audit trail); no key or body is.

use super::body::{json_response, ProxyBody};
use super::error::GatewayError;
use super::handler::resolve_reseller;
use super::App;
use crate::admin::{AdminError, AdminGrant, AdminKeyRefusal, Principal};
use crate::tenancy::{presented_key, PresentedKey, TenancyError};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::SystemTime;

/// The largest admin request body read (a list of tenants made at once).
const MAX_ADMIN_BODY: usize = 4 * 1024 * 1024;

pub async fn serve<B>(
    app: &Arc<App>,
    req: Request<B>,
    sni: Option<&str>,
    request_id: &str,
) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let grant = match authenticate(app, &req, sni) {
        Ok(g) => g,
        Err(e) => {
            tracing::info!(request_id, %method, path, code = e.code(), "admin request refused");
            return e.to_response();
        }
    };
    let query = req.uri().query().map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => zeroize::Zeroizing::new(b.to_bytes().to_vec()),
        Err(e) => {
            let error = match e.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => GatewayError::BodyTooLarge(MAX_ADMIN_BODY),
                Err(e) => GatewayError::BodyRead(e.to_string()),
            };
            return error.to_response();
        }
    };
    let who = grant.principal.label();
    let task = {
        let app = app.clone();
        let (method, path) = (method.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            let Some(admin) = &app.admin else {
                return Err(AdminError::NotFound("the admin API is off".into()));
            };
            let sub = path.strip_prefix("/admin/v1/").unwrap_or_default();
            crate::admin::handle(
                admin,
                &app.snapshot,
                &crate::admin::Request {
                    principal: &grant.principal,
                    read_only: grant.read_only,
                    method: &method,
                    path: sub.trim_end_matches('/'),
                    query: query.as_deref(),
                    body: &body,
                },
            )
        })
    };
    let answer = match task.await {
        Ok(Ok(reply)) => json_response(reply.status, &reply.body),
        Ok(Err(e)) => GatewayError::Admin(e).to_response(),
        Err(_) => GatewayError::Internal.to_response(),
    };
    tracing::info!(
        request_id,
        principal = who,
        %method,
        path,
        status = answer.status().as_u16(),
        "admin request"
    );
    answer
}

/// What the admin key may do. A reseller's key is honoured only on a host of
/// that reseller (and, over TLS, an SNI of it): elsewhere it is as unknown, as
/// a tenant's key at another reseller is; an expired key is told so only there.
fn authenticate<B>(
    app: &App,
    req: &Request<B>,
    sni: Option<&str>,
) -> Result<AdminGrant, GatewayError> {
    let key = match presented_key(req.headers()) {
        PresentedKey::Key(k) => k,
        PresentedKey::Missing => return Err(TenancyError::MissingKey.into()),
        PresentedKey::Malformed => return Err(TenancyError::InvalidKey.into()),
    };
    let snapshot = app.snapshot.load();
    let (principal, grant) = match snapshot.admin_keys.grant(key, SystemTime::now()) {
        Ok(g) => (g.principal.clone(), Ok(g)),
        Err(AdminKeyRefusal::Expired(p)) => (p, Err(TenancyError::ExpiredKey)),
        Err(AdminKeyRefusal::Unknown) => return Err(TenancyError::InvalidKey.into()),
    };
    if let Principal::Reseller(own) = &principal {
        let at = resolve_reseller(&snapshot.tenancy, req).ok();
        let here = at.map(|i| &*snapshot.tenancy.reseller(i).id);
        let sni_ok = sni.is_none_or(|s| snapshot.tenancy.resolve_host(s).ok() == at);
        // Off its own hosts a reseller's key is unknown, expired or not.
        if here != Some(&**own) || !sni_ok {
            return Err(TenancyError::InvalidKey.into());
        }
    }
    Ok(grant?)
}
