//! The admin API's resources and what each method does to them. Paths are
//! under `/admin/v1/`:
//!
//! | path | methods |
//! |---|---|
//! | `resellers` | GET (the caller's), POST (platform) |
//! | `resellers/{r}` | GET, PATCH (`name`, `branding`; `domains`, `plan`: platform), DELETE (platform, no tenants left) |
//! | `resellers/{r}/admin_keys` | GET, POST |
//! | `resellers/{r}/admin_keys/{id}` | GET, DELETE |
//! | `resellers/{r}/credentials/{provider}` | PUT `{"api_key"}`, DELETE |
//! | `resellers/{r}/tenants` | GET, POST |
//! | `resellers/{r}/tenants/{t}` | GET, PATCH, DELETE |
//! | `resellers/{r}/tenants/{t}/keys` | GET, POST |
//! | `resellers/{r}/tenants/{t}/keys/{id}` | GET, PATCH (`name`, `expires_at` or `expires_in`, `models`; `null` clears), DELETE |
//! | `resellers/{r}/tenants/{t}/keys/{id}/rotate` | POST (`expires_in`: the old key's grace) |
//! | `resellers/{r}/tenants/{t}/credentials/{provider}` | PUT `{"api_key"}`, DELETE |
//! | `resellers/{r}/usage?month=YYYY-MM&tenant=t` | GET |
//! | `vault/rewrap` | POST (platform): the store's credentials under the active KEK |
//!
//! A reseller's key sees only its own reseller: any other is "not found", as
//! one that does not exist. What the configuration file declares is listed
//! but not changed here (409 `declared_in_config`). Keys are shown once, when
//! made; provider keys are sealed at once and never shown.

use super::keys::{key_id, new_key, Principal};
use super::{Admin, AdminError, Store};
use crate::config::{
    BrandingConfig, GatewayConfig, KeyEntry, LimitOverrides, ResellerConfig, TenantConfig,
    TenantStatus,
};
use crate::snapshot::Snapshot;
use crate::tenancy::DEFAULT_KEY_PREFIX;
use crate::vault::{CredentialOwner, Secret};
use arc_swap::ArcSwap;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

/// Prefix of the tenant keys the API makes for reseller `r`: its brand's
/// (`branding.key_prefix`), or the neutral default.
fn tenant_key_prefix(snapshot: &ArcSwap<Snapshot>, r: &str) -> String {
    snapshot.load().tenancy.reseller_by_id(r).map_or_else(
        || DEFAULT_KEY_PREFIX.to_owned(),
        |x| x.brand.key_prefix.clone(),
    )
}
/// Prefix of the resellers' admin keys the API makes.
const ADMIN_KEY_PREFIX: &str = "sk-livery-admin-";

/// One admin call, authenticated.
pub struct Request<'a> {
    pub principal: &'a Principal,
    /// The key may only read (`GET`).
    pub read_only: bool,
    pub method: &'a Method,
    /// The path after `/admin/v1/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

/// A successful answer: its status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

fn ok(body: Value) -> Result<Reply, AdminError> {
    Ok(Reply {
        status: StatusCode::OK,
        body,
    })
}

fn created(body: Value) -> Result<Reply, AdminError> {
    Ok(Reply {
        status: StatusCode::CREATED,
        body,
    })
}

/// Answers one admin call. Blocking (it may write the store, seal a key or
/// read the ledger): run it off the runtime's workers.
pub fn handle(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    req: &Request<'_>,
) -> Result<Reply, AdminError> {
    let segments: Vec<&str> = req.path.split('/').collect();
    let who = req.principal;
    let m = req.method;
    if req.read_only && *m != Method::GET {
        return Err(AdminError::Forbidden(
            "this admin key is read-only: it can only GET",
        ));
    }
    let not_allowed = || {
        Err(AdminError::Method(
            m.to_string(),
            format!("/admin/v1/{}", req.path),
        ))
    };
    match segments.as_slice() {
        ["resellers"] => match *m {
            Method::GET => list_resellers(admin, who, req.query),
            Method::POST => create_reseller(admin, snapshot, who, req.body),
            _ => not_allowed(),
        },
        ["vault", "rewrap"] => match *m {
            Method::POST => rewrap(admin, snapshot, who),
            _ => not_allowed(),
        },
        ["resellers", r, rest @ ..] => {
            visible(admin, who, r)?;
            match (rest, m) {
                ([], &Method::GET) => {
                    let state = admin.lock();
                    ok(reseller_view(&state.base, &state.merged, r)?)
                }
                ([], &Method::PATCH) => patch_reseller(admin, snapshot, who, r, req.body),
                ([], &Method::DELETE) => delete_reseller(admin, snapshot, who, r),
                (["admin_keys"], &Method::GET) => {
                    let view = {
                        let state = admin.lock();
                        reseller_view(&state.base, &state.merged, r)?
                    };
                    ok(json!({"object": "list", "data": view["admin_keys"]}))
                }
                (["admin_keys"], &Method::POST) => add_admin_key(admin, snapshot, r, req.body),
                (["admin_keys", id], &Method::GET) => {
                    let view = {
                        let state = admin.lock();
                        reseller_view(&state.base, &state.merged, r)?
                    };
                    one_key(&view["admin_keys"], id, r)
                }
                (["admin_keys", id], &Method::DELETE) => delete_admin_key(admin, snapshot, r, id),
                (["credentials", p], &Method::PUT) => {
                    let owner = CredentialOwner::Reseller((*r).into());
                    put_credential(admin, snapshot, r, None, p, &owner, req.body)
                }
                (["credentials", p], &Method::DELETE) => {
                    delete_credential(admin, snapshot, r, None, p)
                }
                (["tenants"], &Method::GET) => list_tenants(admin, r, req.query),
                (["tenants"], &Method::POST) => create_tenant(admin, snapshot, r, req.body),
                (["tenants", t], &Method::GET) => ok(tenant_view(admin, r, t)?),
                (["tenants", t], &Method::PATCH) => patch_tenant(admin, snapshot, r, t, req.body),
                (["tenants", t], &Method::DELETE) => delete_tenant(admin, snapshot, r, t),
                (["tenants", t, "keys"], &Method::GET) => {
                    let view = tenant_view(admin, r, t)?;
                    ok(json!({"object": "list", "data": view["keys"]}))
                }
                (["tenants", t, "keys"], &Method::POST) => {
                    add_tenant_key(admin, snapshot, r, t, req.body)
                }
                (["tenants", t, "keys", id], &Method::GET) => {
                    one_key(&tenant_view(admin, r, t)?["keys"], id, t)
                }
                (["tenants", t, "keys", id], &Method::DELETE) => {
                    delete_tenant_key(admin, snapshot, r, t, id)
                }
                (["tenants", t, "keys", id], &Method::PATCH) => {
                    patch_tenant_key(admin, snapshot, (r, t, id), req.body)
                }
                (["tenants", t, "keys", id, "rotate"], &Method::POST) => {
                    rotate_tenant_key(admin, snapshot, (r, t, id), req.body)
                }
                (["tenants", t, "credentials", p], &Method::PUT) => {
                    let owner = CredentialOwner::Tenant {
                        reseller: (*r).into(),
                        tenant: (*t).into(),
                    };
                    put_credential(admin, snapshot, r, Some(t), p, &owner, req.body)
                }
                (["tenants", t, "credentials", p], &Method::DELETE) => {
                    delete_credential(admin, snapshot, r, Some(t), p)
                }
                (["usage"], &Method::GET) => usage(admin, r, req.query),
                (
                    []
                    | ["admin_keys"]
                    | ["admin_keys", _]
                    | ["credentials", _]
                    | ["tenants"]
                    | ["tenants", _]
                    | ["tenants", _, "keys"]
                    | ["tenants", _, "keys", _]
                    | ["tenants", _, "credentials", _]
                    | ["usage"],
                    _,
                ) => not_allowed(),
                _ => Err(unknown_path(req.path)),
            }
        }
        _ => Err(unknown_path(req.path)),
    }
}

fn unknown_path(path: &str) -> AdminError {
    AdminError::NotFound(format!("no admin resource at /admin/v1/{path}"))
}

fn no_reseller(r: &str) -> AdminError {
    AdminError::NotFound(format!("no reseller `{r}`"))
}

fn no_tenant(r: &str, t: &str) -> AdminError {
    AdminError::NotFound(format!("no tenant `{t}` at reseller `{r}`"))
}

fn platform_only(who: &Principal, what: &'static str) -> Result<(), AdminError> {
    match who {
        Principal::Platform => Ok(()),
        Principal::Reseller(_) => Err(AdminError::Forbidden(what)),
    }
}

/// A reseller key sees its own reseller only; any other is as unknown.
fn visible(admin: &Admin, who: &Principal, r: &str) -> Result<(), AdminError> {
    let exists = admin.lock().merged.resellers.iter().any(|x| x.id == r);
    match who {
        Principal::Platform if exists => Ok(()),
        Principal::Reseller(own) if &**own == r && exists => Ok(()),
        _ => Err(no_reseller(r)),
    }
}

fn parse<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::BadBody("a JSON object is required".into()));
    }
    serde_json::from_slice(body).map_err(|e| AdminError::BadBody(e.to_string()))
}

/// [`parse`], where no body at all means every field's default.
fn parse_optional<'de, T: Deserialize<'de> + Default>(body: &'de [u8]) -> Result<T, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(body)
}

fn declared_reseller<'a>(base: &'a GatewayConfig, r: &str) -> Option<&'a ResellerConfig> {
    base.resellers.iter().find(|x| x.id == r)
}

fn source(declared: bool) -> &'static str {
    if declared {
        "config"
    } else {
        "api"
    }
}

/// Keys as listed: each as `view` shows it, and where it is declared.
fn keys_view(keys: &[KeyEntry], declared: &[KeyEntry], view: fn(&KeyEntry) -> Value) -> Value {
    Value::Array(
        keys.iter()
            .map(|k| {
                let mut v = view(k);
                v["source"] = source(declared.contains(k)).into();
                v
            })
            .collect(),
    )
}

/// One admin key as the API shows it: never the key, only its id.
fn admin_key_view(k: &KeyEntry) -> Value {
    json!({"object": "admin_key", "id": key_id(&k.hash), "name": k.name,
        "expires_at": k.expires_at, "read_only": k.read_only})
}

fn reseller_view(
    base: &GatewayConfig,
    merged: &GatewayConfig,
    r: &str,
) -> Result<Value, AdminError> {
    let x = merged
        .resellers
        .iter()
        .find(|x| x.id == r)
        .ok_or_else(|| no_reseller(r))?;
    let declared = declared_reseller(base, r);
    let declared_admin_keys = declared
        .map(|d| d.admin_key_hashes.as_slice())
        .unwrap_or(&[]);
    Ok(json!({
        "object": "reseller",
        "id": x.id,
        "name": x.name,
        "domains": x.domains,
        "plan": x.plan,
        "source": source(declared.is_some()),
        "tenants": x.tenants.len(),
        "admin_keys": keys_view(&x.admin_key_hashes, declared_admin_keys, admin_key_view),
        "credentials": x.credentials.keys().collect::<Vec<_>>(),
        "branding": x.branding,
    }))
}

/// A list's page: `?limit=N` (1-1000, default 100) items after `?after=ID`,
/// in the configuration's order, as OpenAI's lists page.
struct Page {
    limit: usize,
    after: Option<String>,
}

impl Page {
    fn of(query: Option<&str>) -> Result<Self, AdminError> {
        let mut page = Page {
            limit: 100,
            after: None,
        };
        for (k, v) in query_pairs(query) {
            match k {
                "limit" => {
                    page.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            AdminError::BadBody(format!("`limit` must be 1 to 1000, not `{v}`"))
                        })?
                }
                "after" => page.after = Some(v.to_owned()),
                _ => {}
            }
        }
        Ok(page)
    }

    /// The page of `ids` (in order) as a list, each item made by `view`.
    fn list<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        view: impl Fn(&str) -> Result<Value, AdminError>,
    ) -> Result<Reply, AdminError> {
        let mut ids = ids.peekable();
        if let Some(after) = &self.after {
            for id in ids.by_ref() {
                if id == after {
                    break;
                }
            }
        }
        let page: Vec<&str> = ids.by_ref().take(self.limit).collect();
        let data = page
            .iter()
            .map(|id| view(id))
            .collect::<Result<Vec<_>, _>>()?;
        ok(json!({
            "object": "list",
            "data": data,
            "first_id": page.first(),
            "last_id": page.last(),
            "has_more": ids.peek().is_some(),
        }))
    }
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|p| p.split_once('='))
}

fn list_resellers(
    admin: &Admin,
    who: &Principal,
    query: Option<&str>,
) -> Result<Reply, AdminError> {
    let page = Page::of(query)?;
    let state = admin.lock();
    let ids = state
        .merged
        .resellers
        .iter()
        .map(|x| x.id.as_str())
        .filter(|id| match who {
            Principal::Platform => true,
            Principal::Reseller(own) => **own == **id,
        });
    page.list(ids, |id| reseller_view(&state.base, &state.merged, id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewReseller {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    branding: BrandingConfig,
}

fn create_reseller(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    who: &Principal,
    body: &[u8],
) -> Result<Reply, AdminError> {
    platform_only(who, "only a platform admin key can create resellers")?;
    let new: NewReseller = parse(body)?;
    let (key, hash) = fresh_key(ADMIN_KEY_PREFIX)?;
    let id = new.id.clone();
    admin.change(snapshot, |store, _, merged| {
        if merged.resellers.iter().any(|x| x.id == new.id) {
            return Err(AdminError::Conflict(format!(
                "reseller `{}` already exists",
                new.id
            )));
        }
        store.resellers.push(ResellerConfig {
            id: new.id,
            name: new.name,
            domains: new.domains,
            plan: new.plan,
            tenants: Vec::new(),
            credentials: Default::default(),
            admin_key_hashes: vec![KeyEntry::digest(hash)],
            branding: new.branding,
        });
        Ok(())
    })?;
    let state = admin.lock();
    created(json!({
        "reseller": reseller_view(&state.base, &state.merged, &id)?,
        "admin_key": key.expose(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResellerPatch {
    #[serde(default, deserialize_with = "some")]
    name: Option<Option<String>>,
    #[serde(default)]
    domains: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some")]
    plan: Option<Option<String>>,
    /// Replaces the whole brand; `null` clears it. The reseller's own to set.
    #[serde(default, deserialize_with = "some")]
    branding: Option<Option<BrandingConfig>>,
}

/// A field present (even `null`) is `Some`; absent is `None`.
fn some<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The store's whole reseller `r`, or why it cannot be changed here.
fn api_reseller<'a>(
    store: &'a mut Store,
    base: &GatewayConfig,
    r: &str,
) -> Result<&'a mut ResellerConfig, AdminError> {
    if declared_reseller(base, r).is_some() {
        return Err(AdminError::Declared(format!("reseller `{r}`")));
    }
    store
        .resellers
        .iter_mut()
        .find(|x| x.id == r)
        .ok_or_else(|| no_reseller(r))
}

fn patch_reseller(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    who: &Principal,
    r: &str,
    body: &[u8],
) -> Result<Reply, AdminError> {
    let patch: ResellerPatch = parse(body)?;
    if patch.domains.is_some() || patch.plan.is_some() {
        platform_only(
            who,
            "only a platform admin key can change a reseller's domains or plan",
        )?;
    }
    admin.change(snapshot, |store, base, _| {
        let x = api_reseller(store, base, r)?;
        if let Some(name) = patch.name {
            x.name = name;
        }
        if let Some(domains) = patch.domains {
            x.domains = domains;
        }
        if let Some(plan) = patch.plan {
            x.plan = plan;
        }
        if let Some(branding) = patch.branding {
            x.branding = branding.unwrap_or_default();
        }
        Ok(())
    })?;
    let state = admin.lock();
    ok(reseller_view(&state.base, &state.merged, r)?)
}

fn delete_reseller(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    who: &Principal,
    r: &str,
) -> Result<Reply, AdminError> {
    platform_only(who, "only a platform admin key can delete resellers")?;
    admin.change(snapshot, |store, base, _| {
        let n = api_reseller(store, base, r)?.tenants.len();
        if n > 0 {
            return Err(AdminError::Conflict(format!(
                "reseller `{r}` still has {n} tenant(s): delete them first"
            )));
        }
        store.resellers.retain(|x| x.id != r);
        Ok(())
    })?;
    ok(json!({"object": "reseller", "id": r, "deleted": true}))
}

fn fresh_key(prefix: &str) -> Result<(Secret, String), AdminError> {
    new_key(prefix).map_err(|_| AdminError::Vault("the system's random source failed".into()))
}

/// A new key with `prefix`: its entry (`fill` sets the fields beside its
/// digest), and its view with the key itself, which is shown this once.
fn issue(
    prefix: &str,
    view: fn(&KeyEntry) -> Value,
    fill: impl FnOnce(KeyEntry) -> KeyEntry,
) -> Result<(KeyEntry, Value), AdminError> {
    let (key, hash) = fresh_key(prefix)?;
    let entry = fill(KeyEntry::digest(hash));
    let mut shown = view(&entry);
    shown["key"] = key.expose().into();
    Ok((entry, shown))
}

/// The key `id` of a list of keys (`keys` of `owner`), as listed.
fn one_key(keys: &Value, id: &str, owner: &str) -> Result<Reply, AdminError> {
    keys.as_array()
        .and_then(|ks| ks.iter().find(|k| k["id"] == id))
        .map_or_else(
            || Err(AdminError::NotFound(format!("no key `{id}` of `{owner}`"))),
            |k| ok(k.clone()),
        )
}

/// `POST …/admin_keys`: all optional. `read_only` keys can only `GET`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewAdminKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    read_only: bool,
}

fn add_admin_key(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    body: &[u8],
) -> Result<Reply, AdminError> {
    let new: NewAdminKey = parse_optional(body)?;
    let expires_at = expiry(new.expires_at, new.expires_in)?;
    let (entry, view) = issue(ADMIN_KEY_PREFIX, admin_key_view, |e| KeyEntry {
        name: new.name,
        expires_at,
        read_only: new.read_only,
        ..e
    })?;
    admin.change(snapshot, |store, _, _| {
        store.entry(r).admin_key_hashes.push(entry);
        Ok(())
    })?;
    created(view)
}

fn delete_admin_key(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    id: &str,
) -> Result<Reply, AdminError> {
    admin.change(snapshot, |store, base, _| {
        let declared = declared_reseller(base, r).map(|d| d.admin_key_hashes.as_slice());
        if declared.is_some_and(|d| d.iter().any(|k| key_id(&k.hash) == id)) {
            return Err(AdminError::Declared(format!("admin key `{id}`")));
        }
        let entry = store.entry(r);
        let before = entry.admin_key_hashes.len();
        entry.admin_key_hashes.retain(|k| key_id(&k.hash) != id);
        if entry.admin_key_hashes.len() == before {
            return Err(AdminError::NotFound(format!(
                "no admin key `{id}` at reseller `{r}`"
            )));
        }
        Ok(())
    })?;
    ok(json!({"object": "admin_key", "id": id, "deleted": true}))
}

/// The merged tenant `t` of reseller `r`, and whether the file declares it.
fn find_tenant<'a>(
    base: &GatewayConfig,
    merged: &'a GatewayConfig,
    r: &str,
    t: &str,
) -> Result<(&'a TenantConfig, Option<Vec<KeyEntry>>), AdminError> {
    let tenant = merged
        .resellers
        .iter()
        .find(|x| x.id == r)
        .and_then(|x| x.tenants.iter().find(|y| y.id == t))
        .ok_or_else(|| no_tenant(r, t))?;
    let declared = declared_reseller(base, r)
        .and_then(|x| x.tenants.iter().find(|y| y.id == t))
        .map(|d| d.key_hashes.clone());
    Ok((tenant, declared))
}

/// One tenant key as the API shows it: never the key, only its id.
fn tenant_key_view(k: &KeyEntry) -> Value {
    json!({"object": "key", "id": key_id(&k.hash), "name": k.name,
        "expires_at": k.expires_at, "models": k.models})
}

fn tenant_json(r: &str, t: &TenantConfig, declared: Option<&[KeyEntry]>) -> Value {
    json!({
        "object": "tenant",
        "id": t.id,
        "reseller": r,
        "name": t.name,
        "plan": t.plan,
        "status": t.status,
        "limits": t.limits,
        "keys": keys_view(&t.key_hashes, declared.unwrap_or(&[]), tenant_key_view),
        "credentials": t.credentials.keys().collect::<Vec<_>>(),
        "source": source(declared.is_some()),
    })
}

fn tenant_view(admin: &Admin, r: &str, t: &str) -> Result<Value, AdminError> {
    let state = admin.lock();
    let (tenant, declared) = find_tenant(&state.base, &state.merged, r, t)?;
    Ok(tenant_json(r, tenant, declared.as_deref()))
}

fn list_tenants(admin: &Admin, r: &str, query: Option<&str>) -> Result<Reply, AdminError> {
    let page = Page::of(query)?;
    let state = admin.lock();
    let reseller = state
        .merged
        .resellers
        .iter()
        .find(|x| x.id == r)
        .ok_or_else(|| no_reseller(r))?;
    let tenants: std::collections::HashMap<&str, &TenantConfig> = reseller
        .tenants
        .iter()
        .map(|t| (t.id.as_str(), t))
        .collect();
    let declared: std::collections::HashMap<&str, &[KeyEntry]> = declared_reseller(&state.base, r)
        .into_iter()
        .flat_map(|x| &x.tenants)
        .map(|t| (t.id.as_str(), t.key_hashes.as_slice()))
        .collect();
    page.list(reseller.tenants.iter().map(|t| t.id.as_str()), |id| {
        let tenant = tenants.get(id).ok_or_else(|| no_tenant(r, id))?;
        Ok(tenant_json(r, tenant, declared.get(id).copied()))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    #[serde(default)]
    name: Option<String>,
    plan: String,
    #[serde(default)]
    status: TenantStatus,
    #[serde(default)]
    limits: LimitOverrides,
}

/// One tenant (`{...}`), or many in one change (`[{...}, ...]`: one store
/// write and one snapshot for all, which is what makes a migration of
/// thousands feasible; all are made or none).
fn create_tenant(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    body: &[u8],
) -> Result<Reply, AdminError> {
    let value: Value = parse(body)?;
    let many = value.is_array();
    let news: Vec<NewTenant> = if many {
        serde_json::from_value(value).map_err(|e| AdminError::BadBody(e.to_string()))?
    } else {
        vec![serde_json::from_value(value).map_err(|e| AdminError::BadBody(e.to_string()))?]
    };
    if news.is_empty() {
        return Err(AdminError::BadBody("no tenant in the list".into()));
    }
    let mut made = Vec::with_capacity(news.len());
    let prefix = tenant_key_prefix(snapshot, r);
    for new in news {
        let (key, hash) = fresh_key(&prefix)?;
        made.push((new, key, hash));
    }
    let ids: Vec<String> = made.iter().map(|(n, _, _)| n.id.clone()).collect();
    let tenants: Vec<TenantConfig> = made
        .iter_mut()
        .map(|(new, _, hash)| TenantConfig {
            id: std::mem::take(&mut new.id),
            name: new.name.take(),
            plan: std::mem::take(&mut new.plan),
            status: new.status,
            key_hashes: vec![KeyEntry::digest(std::mem::take(hash))],
            credentials: Default::default(),
            limits: new.limits,
        })
        .collect();
    admin.change(snapshot, |store, _, merged| {
        let mut taken: std::collections::HashSet<&str> = merged
            .resellers
            .iter()
            .find(|x| x.id == r)
            .into_iter()
            .flat_map(|x| &x.tenants)
            .map(|t| t.id.as_str())
            .collect();
        for id in &ids {
            if !taken.insert(id) {
                return Err(AdminError::Conflict(format!(
                    "tenant `{id}` already exists at reseller `{r}`"
                )));
            }
        }
        store.entry(r).tenants.extend(tenants);
        Ok(())
    })?;
    let mut out = Vec::with_capacity(made.len());
    {
        let state = admin.lock();
        let tenants: std::collections::HashMap<&str, &TenantConfig> = state
            .merged
            .resellers
            .iter()
            .filter(|x| x.id == r)
            .flat_map(|x| &x.tenants)
            .map(|t| (t.id.as_str(), t))
            .collect();
        for (id, (_, key, _)) in ids.iter().zip(&made) {
            let tenant = tenants.get(id.as_str()).ok_or_else(|| no_tenant(r, id))?;
            // Made here, so declared nowhere.
            out.push(json!({"tenant": tenant_json(r, tenant, None), "key": key.expose()}));
        }
    }
    match (many, out.pop()) {
        (false, Some(one)) => created(one),
        (_, last) => {
            out.extend(last);
            created(json!({"object": "list", "data": out}))
        }
    }
}

/// The store's tenant `t` of reseller `r`, or why it cannot be changed here.
fn api_tenant<'a>(
    store: &'a mut Store,
    base: &GatewayConfig,
    r: &str,
    t: &str,
) -> Result<&'a mut TenantConfig, AdminError> {
    let declared = declared_reseller(base, r).is_some_and(|x| x.tenants.iter().any(|y| y.id == t));
    if declared {
        return Err(AdminError::Declared(format!("tenant `{t}`")));
    }
    store
        .resellers
        .iter_mut()
        .find(|x| x.id == r)
        .and_then(|x| x.tenants.iter_mut().find(|y| y.id == t))
        .ok_or_else(|| no_tenant(r, t))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default, deserialize_with = "some")]
    name: Option<Option<String>>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    status: Option<TenantStatus>,
    #[serde(default)]
    limits: Option<LimitOverrides>,
}

fn patch_tenant(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    t: &str,
    body: &[u8],
) -> Result<Reply, AdminError> {
    let patch: TenantPatch = parse(body)?;
    admin.change(snapshot, |store, base, _| {
        let x = api_tenant(store, base, r, t)?;
        if let Some(name) = patch.name {
            x.name = name;
        }
        if let Some(plan) = patch.plan {
            x.plan = plan;
        }
        if let Some(status) = patch.status {
            x.status = status;
        }
        if let Some(limits) = patch.limits {
            x.limits = limits;
        }
        Ok(())
    })?;
    ok(tenant_view(admin, r, t)?)
}

fn delete_tenant(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    t: &str,
) -> Result<Reply, AdminError> {
    admin.change(snapshot, |store, base, _| {
        api_tenant(store, base, r, t)?;
        store.entry(r).tenants.retain(|y| y.id != t);
        Ok(())
    })?;
    ok(json!({"object": "tenant", "id": t, "deleted": true}))
}

/// `POST …/keys`: all optional. `expires_at` (Unix seconds) or
/// `expires_in` (seconds from now), not both.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    models: Option<Vec<String>>,
}

/// A key's expiry from `expires_at` (Unix seconds) or `expires_in` (seconds
/// from now): refused in the past (a key to end now is deleted instead).
fn expiry(at: Option<u64>, within: Option<u64>) -> Result<Option<u64>, AdminError> {
    let now = crate::unix_seconds(std::time::SystemTime::now());
    let expires_at = match (at, within) {
        (Some(_), Some(_)) => {
            return Err(AdminError::BadBody(
                "give `expires_at` or `expires_in`, not both".into(),
            ))
        }
        (Some(at), None) => Some(at),
        (None, Some(secs)) => Some(now.saturating_add(secs)),
        (None, None) => None,
    };
    if expires_at.is_some_and(|at| at <= now) {
        return Err(AdminError::BadBody(
            "the key would expire before it is issued".into(),
        ));
    }
    Ok(expires_at)
}

fn add_tenant_key(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    t: &str,
    body: &[u8],
) -> Result<Reply, AdminError> {
    let new: NewKey = parse_optional(body)?;
    let expires_at = expiry(new.expires_at, new.expires_in)?;
    let prefix = tenant_key_prefix(snapshot, r);
    let (entry, view) = issue(&prefix, tenant_key_view, |e| KeyEntry {
        name: new.name,
        expires_at,
        models: new.models,
        ..e
    })?;
    admin.change(snapshot, |store, base, _| {
        api_tenant(store, base, r, t)?.key_hashes.push(entry);
        Ok(())
    })?;
    created(view)
}

/// `PATCH …/keys/{id}`: a present field is set, `null` clears it (a key
/// without `expires_at` never expires).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPatch {
    #[serde(default, deserialize_with = "some")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    expires_at: Option<Option<u64>>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "some")]
    models: Option<Option<Vec<String>>>,
}

fn patch_tenant_key(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    (r, t, id): (&str, &str, &str),
    body: &[u8],
) -> Result<Reply, AdminError> {
    let patch: KeyPatch = parse(body)?;
    let expires_at = match (patch.expires_at, patch.expires_in) {
        (Some(None), None) => Some(None),
        (at, within) if at.is_some() || within.is_some() => Some(expiry(at.flatten(), within)?),
        _ => None,
    };
    let mut view = Value::Null;
    admin.change(snapshot, |store, base, _| {
        let key = api_tenant(store, base, r, t)?
            .key_hashes
            .iter_mut()
            .find(|k| key_id(&k.hash) == id)
            .ok_or_else(|| AdminError::NotFound(format!("no key `{id}` for tenant `{t}`")))?;
        if let Some(name) = patch.name {
            key.name = name;
        }
        if let Some(at) = expires_at {
            key.expires_at = at;
        }
        if let Some(models) = patch.models {
            key.models = models;
        }
        view = tenant_key_view(key);
        Ok(())
    })?;
    ok(view)
}

/// `POST …/keys/{id}/rotate`: `expires_in`, the seconds the old key serves
/// on beside the new one (absent or 0: it is deleted at once).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotation {
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Replaces a tenant key with a new one of the same name, models and expiry,
/// in one change: the old key is deleted, or expires after the grace period
/// (never later than it would have), so that clients can move over.
fn rotate_tenant_key(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    (r, t, id): (&str, &str, &str),
    body: &[u8],
) -> Result<Reply, AdminError> {
    let rotation: Rotation = parse_optional(body)?;
    let now = crate::unix_seconds(std::time::SystemTime::now());
    let (key, hash) = fresh_key(&tenant_key_prefix(snapshot, r))?;
    let mut view = Value::Null;
    admin.change(snapshot, |store, base, _| {
        let keys = &mut api_tenant(store, base, r, t)?.key_hashes;
        let i = keys
            .iter()
            .position(|k| key_id(&k.hash) == id)
            .ok_or_else(|| AdminError::NotFound(format!("no key `{id}` for tenant `{t}`")))?;
        if keys[i].expires_at.is_some_and(|at| at <= now) {
            return Err(AdminError::BadBody(format!(
                "key `{id}` has expired: make a new key, or extend it with PATCH"
            )));
        }
        let new = KeyEntry {
            name: keys[i].name.clone(),
            expires_at: keys[i].expires_at,
            models: keys[i].models.clone(),
            ..KeyEntry::digest(hash.clone())
        };
        let old_expires_at = match rotation.expires_in.filter(|&secs| secs > 0) {
            None => {
                keys.remove(i);
                None
            }
            Some(secs) => {
                let at = now.saturating_add(secs);
                let old = &mut keys[i].expires_at;
                *old = Some(old.map_or(at, |was| was.min(at)));
                *old
            }
        };
        view = tenant_key_view(&new);
        view["key"] = key.expose().into();
        view["replaces"] = json!({"id": id, "expires_at": old_expires_at,
            "deleted": old_expires_at.is_none()});
        keys.push(new);
        Ok(())
    })?;
    created(view)
}

fn delete_tenant_key(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    t: &str,
    id: &str,
) -> Result<Reply, AdminError> {
    admin.change(snapshot, |store, base, _| {
        let x = api_tenant(store, base, r, t)?;
        let before = x.key_hashes.len();
        x.key_hashes.retain(|k| key_id(&k.hash) != id);
        if x.key_hashes.len() == before {
            return Err(AdminError::NotFound(format!(
                "no key `{id}` for tenant `{t}`"
            )));
        }
        Ok(())
    })?;
    ok(json!({"object": "key", "id": id, "deleted": true}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCredential {
    api_key: String,
}

/// The credentials map of the store's reseller `r` (whole) or its tenant `t`.
fn credentials_of<'a>(
    store: &'a mut Store,
    base: &GatewayConfig,
    r: &str,
    t: Option<&str>,
) -> Result<&'a mut std::collections::BTreeMap<String, String>, AdminError> {
    Ok(match t {
        Some(t) => &mut api_tenant(store, base, r, t)?.credentials,
        None => &mut api_reseller(store, base, r)?.credentials,
    })
}

fn put_credential(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    t: Option<&str>,
    provider: &str,
    owner: &CredentialOwner,
    body: &[u8],
) -> Result<Reply, AdminError> {
    let new: NewCredential = parse(body)?;
    let plaintext = Secret::new(new.api_key);
    if plaintext.expose().trim().is_empty() {
        return Err(AdminError::BadBody("`api_key` is empty".into()));
    }
    let sealed = snapshot
        .load()
        .keyring
        .seal(owner, provider, plaintext.expose())
        .map_err(|e| AdminError::Vault(format!("the key could not be sealed: {e}")))?
        .to_sealed_string();
    drop(plaintext);
    admin.change(snapshot, |store, base, _| {
        credentials_of(store, base, r, t)?.insert(provider.to_owned(), sealed);
        Ok(())
    })?;
    ok(
        json!({"object": "credential", "owner": owner.to_string(), "provider": provider, "sealed": true}),
    )
}

fn delete_credential(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    r: &str,
    t: Option<&str>,
    provider: &str,
) -> Result<Reply, AdminError> {
    admin.change(snapshot, |store, base, _| {
        if credentials_of(store, base, r, t)?
            .remove(provider)
            .is_none()
        {
            return Err(AdminError::NotFound(format!(
                "no credential for provider `{provider}`"
            )));
        }
        Ok(())
    })?;
    ok(json!({"object": "credential", "provider": provider, "deleted": true}))
}

fn usage(admin: &Admin, r: &str, query: Option<&str>) -> Result<Reply, AdminError> {
    let mut month = None;
    let mut tenant = None;
    let mut by_key = false;
    for (k, v) in query_pairs(query) {
        match k {
            "month" => month = Some(v.to_owned()),
            "tenant" => tenant = Some(v.to_owned()),
            // OpenAI's usage API names its per-key grouping so.
            "group_by" if v == "api_key_id" => by_key = true,
            "group_by" => {
                return Err(AdminError::BadBody(format!(
                    "`group_by` can be `api_key_id`, not `{v}`"
                )))
            }
            _ => {}
        }
    }
    let month = month.unwrap_or_else(|| crate::limits::Month::current().to_string());
    // Read under the lock rather than copying the whole tenancy out.
    let state = admin.lock();
    let config = &state.merged;
    if let Some(t) = &tenant {
        find_tenant(config, config, r, t)?;
    }
    let db = crate::usage::LedgerPaths::of(config)
        .and_then(|p| p.sqlite)
        .ok_or(AdminError::NoLedger)?;
    let report_err = |e| match e {
        crate::usage::report::ReportError::Month(m) => {
            AdminError::BadBody(format!("`month` must be YYYY-MM, not `{m}`"))
        }
        other => AdminError::Ledger(other.to_string()),
    };
    if by_key {
        let report = crate::usage::report::build_by_key(&db, config, r, tenant.as_deref(), &month)
            .map_err(report_err)?;
        let mut body =
            serde_json::to_value(&report).map_err(|e| AdminError::Ledger(e.to_string()))?;
        body["object"] = json!("usage_report");
        return ok(body);
    }
    let report = crate::usage::report::build(&db, config, r, tenant.as_deref(), &month)
        .map_err(report_err)?;
    let mut body = serde_json::to_value(&report).map_err(|e| AdminError::Ledger(e.to_string()))?;
    body["object"] = json!("usage_report");
    ok(body)
}

/// Re-wraps the data key of every credential the store holds under the
/// active KEK (as `livery vault rotate` does in the configuration file), so
/// that the previous KEK can be retired. Nothing is decrypted but data keys.
fn rewrap(
    admin: &Admin,
    snapshot: &ArcSwap<Snapshot>,
    who: &Principal,
) -> Result<Reply, AdminError> {
    platform_only(who, "only a platform admin key can re-wrap credentials")?;
    let keyring = snapshot.load().keyring.clone();
    let kek = keyring
        .active_id()
        .ok_or_else(|| AdminError::Vault("the vault has no active KEK".into()))?
        .to_owned();
    let rewrapped = admin.change(snapshot, |store, _, _| {
        let mut n = 0usize;
        for r in &mut store.resellers {
            let reseller: std::sync::Arc<str> = r.id.as_str().into();
            let owners = std::iter::once((
                CredentialOwner::Reseller(reseller.clone()),
                &mut r.credentials,
            ))
            .chain(r.tenants.iter_mut().map(|t| {
                let owner = CredentialOwner::Tenant {
                    reseller: reseller.clone(),
                    tenant: t.id.as_str().into(),
                };
                (owner, &mut t.credentials)
            }));
            for (owner, credentials) in owners {
                for (provider, text) in credentials.iter_mut() {
                    let fail = |e: crate::vault::VaultError| {
                        AdminError::Vault(format!("credential of {owner} for `{provider}`: {e}"))
                    };
                    let sealed = crate::vault::SealedKey::parse(text).map_err(fail)?;
                    if sealed.kek_id == kek {
                        continue;
                    }
                    *text = keyring
                        .rewrap(&sealed, &owner, provider)
                        .map_err(fail)?
                        .to_sealed_string();
                    n += 1;
                }
            }
        }
        Ok(n)
    })?;
    ok(json!({"object": "vault.rewrap", "active_kek": kek, "rewrapped": rewrapped}))
}
