//! Why a request was not admitted ([`LimitRejection`]), with everything its
//! answer needs: status, OpenAI error `type` and `code`, message, `Retry-After`
//! and the rate-limit headers; and why a limiter could not be built.

use super::headers::RateHeaders;
use super::plan::Level;
use http::{HeaderName, HeaderValue, StatusCode};
use std::time::Duration;

/// A request over a limit (429), or the shared counter out of reach under
/// `fail_closed` (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitRejection {
    #[error("requests per minute: limit {limit} reached")]
    Requests {
        level: Level,
        limit: u64,
        retry_after: Duration,
        headers: RateHeaders,
    },
    #[error("tokens per minute: limit {limit} reached ({requested} requested)")]
    Tokens {
        level: Level,
        limit: u64,
        requested: u64,
        retry_after: Duration,
        headers: RateHeaders,
    },
    #[error("concurrent requests: limit {limit} reached")]
    Concurrency {
        level: Level,
        limit: u64,
        retry_after: Duration,
        headers: RateHeaders,
    },
    #[error("tokens per month: quota {limit} used up")]
    MonthlyQuota {
        level: Level,
        limit: u64,
        used: u64,
        /// Until the month (UTC) is over.
        retry_after: Duration,
        headers: RateHeaders,
    },
    /// The month is not used up, but what it has left is reserved by
    /// requests in flight (their estimates: prompt and `max_tokens`). They
    /// settle at their real usage and give the rest back, so this one may
    /// pass in a while: OpenAI's retryable `rate_limit_exceeded`, not the
    /// final `insufficient_quota`, which SDKs do not retry.
    #[error("tokens per month: quota {limit} held by requests in flight ({requested} requested)")]
    MonthlyQuotaHeld {
        level: Level,
        limit: u64,
        requested: u64,
        /// The request reserves more than the month has left (not settled):
        /// it passes only once nothing else holds any of it.
        more_than_left: bool,
        retry_after: Duration,
        headers: RateHeaders,
    },
    #[error("the shared rate limiter is unavailable")]
    BackendUnavailable,
}

impl LimitRejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Requests { .. }
            | Self::Tokens { .. }
            | Self::Concurrency { .. }
            | Self::MonthlyQuota { .. }
            | Self::MonthlyQuotaHeld { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// OpenAI's error `type`: the limit that was hit (OpenAI itself sends
    /// `requests` and `tokens`), or, for the monthly quota used up, OpenAI's
    /// own `insufficient_quota`, which SDKs and clients already treat as
    /// final (a quota only held by requests in flight is not final).
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Requests { .. } => "requests",
            Self::Tokens { .. } => "tokens",
            Self::Concurrency { .. } => "concurrent_requests",
            Self::MonthlyQuota { .. } => "insufficient_quota",
            Self::MonthlyQuotaHeld { .. } => "tokens_per_month",
            Self::BackendUnavailable => "server_error",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Requests { .. }
            | Self::Tokens { .. }
            | Self::Concurrency { .. }
            | Self::MonthlyQuotaHeld { .. } => "rate_limit_exceeded",
            Self::MonthlyQuota { .. } => "insufficient_quota",
            Self::BackendUnavailable => "rate_limiter_unavailable",
        }
    }

    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Requests { .. } => "requests",
            Self::Tokens { .. } => "tokens",
            Self::Concurrency { .. } => "concurrency",
            Self::MonthlyQuota { .. } => "monthly_quota",
            Self::MonthlyQuotaHeld { .. } => "monthly_quota_held",
            Self::BackendUnavailable => "backend_unavailable",
        }
    }

    pub fn level(&self) -> Option<Level> {
        match self {
            Self::Requests { level, .. }
            | Self::Tokens { level, .. }
            | Self::Concurrency { level, .. }
            | Self::MonthlyQuota { level, .. }
            | Self::MonthlyQuotaHeld { level, .. } => Some(*level),
            Self::BackendUnavailable => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Requests { retry_after, .. }
            | Self::Tokens { retry_after, .. }
            | Self::Concurrency { retry_after, .. }
            | Self::MonthlyQuota { retry_after, .. }
            | Self::MonthlyQuotaHeld { retry_after, .. } => Some(*retry_after),
            Self::BackendUnavailable => Some(Duration::from_secs(1)),
        }
    }

    pub fn rate_headers(&self) -> RateHeaders {
        match self {
            Self::Requests { headers, .. }
            | Self::Tokens { headers, .. }
            | Self::Concurrency { headers, .. }
            | Self::MonthlyQuota { headers, .. }
            | Self::MonthlyQuotaHeld { headers, .. } => *headers,
            Self::BackendUnavailable => RateHeaders::default(),
        }
    }

    /// The message for the client. A tenant is told when the cap it hit is
    /// shared with others, never whose.
    pub fn message(&self) -> String {
        let whose = |level: &Level| match level {
            Level::Tenant => "",
            Level::Reseller => " shared by this service's accounts",
        };
        let wait = |d: &Duration| super::headers::go_duration(*d);
        match self {
            Self::Requests {
                level,
                limit,
                retry_after,
                ..
            } => format!(
                "Rate limit reached on requests per min (RPM){}: Limit {limit}. Please try again in {}.",
                whose(level),
                wait(retry_after)
            ),
            Self::Tokens {
                level,
                limit,
                requested,
                retry_after,
                ..
            } => format!(
                "Rate limit reached on tokens per min (TPM){}: Limit {limit}, Requested {requested}. Please try again in {}.{}",
                whose(level),
                wait(retry_after),
                if requested > limit {
                    // Else the client reads a wait it cannot make sense
                    // of, and a lower `max_tokens` would have helped.
                    " This request reserves more tokens than the limit (its prompt and max_tokens): it is admitted only when the whole limit is available. Lower max_tokens to be admitted sooner."
                } else {
                    ""
                }
            ),
            Self::Concurrency { level, limit, .. } => format!(
                "Too many concurrent requests{}: Limit {limit}. Please try again when a request has finished.",
                whose(level)
            ),
            Self::MonthlyQuota { level, limit, .. } => format!(
                "You exceeded your monthly token quota{}: Limit {limit}. It renews at the start of the next month (UTC).",
                whose(level)
            ),
            Self::MonthlyQuotaHeld {
                level,
                limit,
                requested,
                more_than_left,
                retry_after,
                ..
            } => format!(
                "The rest of this month's token quota{} is reserved by requests in flight: Limit {limit}, Requested {requested}. They give back what they do not use when they finish. Please try again in {}.{}",
                whose(level),
                wait(retry_after),
                if *more_than_left {
                    " This request reserves more tokens than the month has left (its prompt and max_tokens): it is admitted only when no other request holds any of it. Lower max_tokens to be admitted sooner."
                } else {
                    ""
                }
            ),
            Self::BackendUnavailable => {
                "Rate limits cannot be checked right now. Please try again shortly.".into()
            }
        }
    }

    /// Every header of the answer: `retry-after` (whole seconds, at least 1),
    /// `retry-after-ms` (read first by OpenAI's SDKs), `x-should-retry: false`
    /// for the monthly quota (waiting seconds cannot fix it), and the
    /// rate-limit headers.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = self.rate_headers().to_headers();
        if let Some(d) = self.retry_after() {
            let secs = d.as_millis().div_ceil(1000).max(1);
            out.push((
                http::header::RETRY_AFTER,
                HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)),
            ));
            if !matches!(self, Self::MonthlyQuota { .. }) {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
                out.push((
                    HeaderName::from_static("retry-after-ms"),
                    HeaderValue::from(ms),
                ));
            }
        }
        if matches!(self, Self::MonthlyQuota { .. }) {
            out.push((
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            ));
        }
        out
    }
}

/// Why a limiter could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("limits: {0}")]
    Invalid(String),
    #[error("limits: redis_url: {0}")]
    RedisUrl(String),
}
