//! CORS for browser clients (the OpenAI SDK with `dangerouslyAllowBrowser`, a
//! plain `fetch` with a bearer key): a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered 204 before any tenant is
//! resolved (it carries no key), and every answer to a request with an
//! allowed `Origin` says so and exposes the headers clients read (the request
//! id, the rate-limit headers). `[server] cors_origins`: `["*"]` (default, as
//! OpenAI answers: keys are bearer tokens, not cookies), a list of origins, or
//! `[]` for none. A request without `Origin` (every server-side client) pays one
//! header lookup.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, VARY,
};
use http::{HeaderMap, HeaderValue, Method};

/// Which origins may call from a browser.
#[derive(Debug, Clone, Default)]
pub enum CorsPolicy {
    #[default]
    Any,
    Listed(Vec<HeaderValue>),
    Off,
}

const EXPOSED: HeaderValue = HeaderValue::from_static(
    "x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-limit-tokens, \
     x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens, x-ratelimit-reset-requests, \
     x-ratelimit-reset-tokens",
);
const METHODS: HeaderValue = HeaderValue::from_static("GET, POST, OPTIONS");
const DEFAULT_ALLOWED_HEADERS: HeaderValue = HeaderValue::from_static(
    "authorization, content-type, x-api-key, api-key, anthropic-version, anthropic-beta, x-request-id",
);
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");
const ANY: HeaderValue = HeaderValue::from_static("*");

impl CorsPolicy {
    /// From `[server] cors_origins`.
    pub fn from_origins(origins: &[String]) -> Result<Self, String> {
        if origins.iter().any(|o| o == "*") {
            return Ok(Self::Any);
        }
        if origins.is_empty() {
            return Ok(Self::Off);
        }
        origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| format!("server.cors_origins: `{o}` is not an origin"))
            })
            .collect::<Result<_, _>>()
            .map(Self::Listed)
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match self {
            Self::Any => Some(ANY),
            Self::Listed(list) => list.iter().any(|o| o == origin).then(|| origin.clone()),
            Self::Off => None,
        }
    }

    /// A preflight's answer headers, or `None` if this is not a preflight
    /// from an allowed origin (it is then answered like any request).
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<HeaderMap> {
        if method != Method::OPTIONS || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let allow = self.allow(headers.get(http::header::ORIGIN)?)?;
        let mut out = HeaderMap::with_capacity(6);
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, METHODS);
        out.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            headers
                .get(ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or(DEFAULT_ALLOWED_HEADERS),
        );
        out.insert(ACCESS_CONTROL_MAX_AGE, MAX_AGE);
        if matches!(self, Self::Listed(_)) {
            out.insert(VARY, HeaderValue::from_static("origin"));
        }
        Some(out)
    }

    /// Marks an answer to a request from `origin` readable by it, with the
    /// gateway's own headers under the reseller's names (`brand_names`).
    /// Browsers join repeated `Access-Control-Expose-Headers` fields into
    /// one list, so the brand's names are a second field, prepared once.
    pub fn mark(&self, origin: &HeaderValue, answer: &mut HeaderMap, brand_names: &HeaderValue) {
        if let Some(allow) = self.allow(origin) {
            answer.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            answer.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
            answer.append(ACCESS_CONTROL_EXPOSE_HEADERS, brand_names.clone());
            if matches!(self, Self::Listed(_)) {
                answer.append(VARY, HeaderValue::from_static("origin"));
            }
        }
    }
}
