//! Unit tests: plan resolution, estimates, header formats, rejection answers,
//! bucket arithmetic and settlement. The scenario tests (exact counts,
//! neighbours, reseller caps, Redis) are in `tests/limits.rs`.

use super::headers::{BucketView, LevelView};
use super::*;
use crate::config::LimitOverrides;
use serde_json::json;

/// A body as the estimator sees it on the request path.
fn fields(v: &serde_json::Value) -> crate::proxy::RequestBody {
    crate::proxy::RequestBody::parse(serde_json::to_vec(v).unwrap().into()).unwrap()
}

fn limiter() -> Limiter {
    Limiter::new(LimiterSettings::default(), Arc::new(NoMonthlyUsage)).unwrap()
}

/// Two months on either side of a year's turn.
const DEC_2026: Month = Month {
    year: 2026,
    month: 12,
};
const JAN_2027: Month = Month {
    year: 2027,
    month: 1,
};

fn key() -> LimitKey {
    LimitKey::new("acme", "dental")
}

#[test]
fn overrides_replace_single_fields_and_zero_is_refused() {
    let plan = PlanLimits {
        requests_per_minute: Some(60),
        tokens_per_minute: Some(1000),
        ..PlanLimits::default()
    };
    let o = LimitOverrides {
        tokens_per_minute: Some(5000),
        max_concurrent: Some(2),
        ..LimitOverrides::default()
    };
    let t = plan.overridden_by(&o).unwrap();
    assert_eq!(t.requests_per_minute, Some(60));
    assert_eq!(t.tokens_per_minute, Some(5000));
    assert_eq!(t.max_concurrent, Some(2));
    assert!(t.tokens_per_month.is_none());
    let zero = LimitOverrides {
        max_concurrent: Some(0),
        ..LimitOverrides::default()
    };
    assert!(plan
        .overridden_by(&zero)
        .unwrap_err()
        .contains("max_concurrent"));
}

#[test]
fn the_fail_open_share_rounds_up_and_keeps_the_month_whole() {
    let p = PlanLimits {
        requests_per_minute: Some(10),
        tokens_per_minute: Some(1),
        tokens_per_month: Some(1000),
        max_concurrent: Some(5),
        default_completion_tokens: None,
    };
    let s = p.share(3);
    assert_eq!(s.requests_per_minute, Some(4));
    assert_eq!(s.tokens_per_minute, Some(1));
    assert_eq!(s.max_concurrent, Some(2));
    assert_eq!(s.tokens_per_month, Some(1000));
    assert_eq!(p.share(0), p);
}

#[test]
fn go_durations_look_like_openais() {
    let d = |ms| go_duration(Duration::from_millis(ms));
    assert_eq!(d(0), "0s");
    assert_eq!(d(120), "120ms");
    assert_eq!(d(1000), "1s");
    assert_eq!(d(6596), "6.596s");
    assert_eq!(d(1500), "1.5s");
    assert_eq!(d(360_000), "6m0s");
    assert_eq!(d(3_723_000), "1h2m3s");
    assert_eq!(go_duration(Duration::from_micros(1)), "1ms");
}

/// The formatting `go_duration` had before it stopped using `format!`: the
/// headers must not change by a byte.
fn go_duration_by_format(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000);
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[test]
fn go_durations_are_what_format_wrote() {
    let mut micros: Vec<u64> = (0..70_000u64).map(|ms| ms * 1000).collect();
    micros.extend((0..5000u64).map(|i| i * 997_001));
    micros.extend([
        1,
        999,
        1001,
        59_999_001,
        3_599_999_999,
        86_400_000_000,
        u64::MAX / 2,
    ]);
    for us in micros {
        let d = Duration::from_micros(us);
        assert_eq!(go_duration(d), go_duration_by_format(d), "{us} us");
    }
}

#[test]
fn estimates_read_escaped_text_odd_messages_and_tool_calls() {
    let limits = EffectiveLimits::default();
    // "é\"x" is 3 characters however it is escaped; a message that is not an
    // object still costs its overhead; tool calls count their compact JSON.
    let chat = json!({"messages": [
        {"role": "user", "content": "\u{e9}\"x", "name": "abcd"},
        "not a message",
        {"role": "assistant", "content": null, "tool_calls": [{"id": "a"}]},
    ], "max_tokens": 7, "n": -1});
    let tool_json = r#"[{"id":"a"}]"#.len() as u64;
    assert_eq!(
        estimate_prompt_tokens(&fields(&chat)),
        (3 + 4 + tool_json).div_ceil(4) + 3 + 3 * 4
    );
    // A negative `n` is not a count: one choice.
    assert_eq!(
        estimate_request_tokens(&fields(&chat), &limits),
        (3 + 4 + tool_json).div_ceil(4) + 15 + 7
    );
    let escaped = crate::proxy::RequestBody::parse(bytes::Bytes::from_static(
        br#"{"messages":[{"content":"\u00e9\"x"}]}"#,
    ))
    .unwrap();
    assert_eq!(estimate_prompt_tokens(&escaped), 1 + 3 + 4);
}

#[test]
fn estimates_count_text_and_reserve_the_completion() {
    let limits = EffectiveLimits::default();
    let chat = json!({"messages": [
        {"role": "system", "content": "abcd".repeat(10)},
        {"role": "user", "content": [{"type": "text", "text": "abcd".repeat(5)}]},
    ]});
    // 60 characters / 4 + 3 + 2 × 4.
    assert_eq!(estimate_prompt_tokens(&fields(&chat)), 15 + 11);
    assert_eq!(
        estimate_request_tokens(&fields(&chat), &limits),
        26 + DEFAULT_COMPLETION_TOKENS
    );
    let mut capped = chat.clone();
    capped["max_tokens"] = json!(100);
    capped["n"] = json!(2);
    assert_eq!(estimate_request_tokens(&fields(&capped), &limits), 26 + 200);
    capped["max_completion_tokens"] = json!(10);
    assert_eq!(estimate_request_tokens(&fields(&capped), &limits), 26 + 20);
    let embed = json!({"model": "e", "input": ["abcdabcd", "abcd"]});
    assert_eq!(estimate_request_tokens(&fields(&embed), &limits), 3);
    let completion = json!({"prompt": "abcdabcd", "max_tokens": 5});
    assert_eq!(
        estimate_request_tokens(&fields(&completion), &limits),
        2 + 5
    );
    assert_eq!(estimate_prompt_tokens(&fields(&json!({}))), 0);
}

#[test]
fn headers_show_the_tenants_limit_and_the_binding_remaining() {
    let tenant = LevelView {
        requests: Some(BucketView {
            limit: 60,
            level: 40.5,
            reset_ms: 20_000.0,
        }),
        tokens: None,
    };
    let reseller = LevelView {
        requests: Some(BucketView {
            limit: 1000,
            level: 3.2,
            reset_ms: 59_000.0,
        }),
        tokens: Some(BucketView {
            limit: 5000,
            level: -20.0,
            reset_ms: 61_000.0,
        }),
    };
    let h = RateHeaders::combine(&tenant, &reseller);
    let r = h.requests.unwrap();
    assert_eq!((r.limit, r.remaining), (60, 3));
    // The tenant has its 60 again once its own bucket is full (20 s), the
    // reseller's refilling past 60 long before (3.4 s): not when the
    // reseller's 1000 are back (59 s).
    assert_eq!(r.reset, Duration::from_secs(20));
    // Its own bucket nearly full, the tenant waits for the reseller's to
    // hold 60: 56.8 of the 996.8 it lacks, of its 59 s.
    let nearly_full = LevelView {
        requests: Some(BucketView {
            limit: 60,
            level: 59.5,
            reset_ms: 500.0,
        }),
        tokens: None,
    };
    let r = RateHeaders::combine(&nearly_full, &reseller)
        .requests
        .unwrap();
    assert_eq!((r.limit, r.remaining), (60, 3));
    assert_eq!(r.reset, Duration::from_millis(3362));
    let t = h.tokens.unwrap();
    assert_eq!((t.limit, t.remaining), (5000, 0));
    let names: Vec<String> = h
        .to_headers()
        .into_iter()
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            "x-ratelimit-limit-requests: 60",
            "x-ratelimit-remaining-requests: 3",
            "x-ratelimit-reset-requests: 20s",
            "x-ratelimit-limit-tokens: 5000",
            "x-ratelimit-remaining-tokens: 0",
            "x-ratelimit-reset-tokens: 1m1s",
        ]
    );
    // Set straight into an answer's headers: the same six, replacing any
    // the upstream sent under those names.
    let mut map = http::HeaderMap::new();
    map.insert(
        "x-ratelimit-remaining-tokens",
        http::HeaderValue::from_static("999"),
    );
    map.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    h.insert_into(&mut map);
    let mut set: Vec<String> = map
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-ratelimit-"))
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
        .collect();
    set.sort();
    let mut listed = names.clone();
    listed.sort();
    assert_eq!(set, listed);
    assert_eq!(map.len(), 7);
}

#[test]
fn rejections_answer_in_openais_terms() {
    let r = LimitRejection::Tokens {
        level: Level::Reseller,
        limit: 1000,
        requested: 1500,
        retry_after: Duration::from_millis(1500),
        headers: RateHeaders::default(),
    };
    assert_eq!(r.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        (r.error_type(), r.code()),
        ("tokens", "rate_limit_exceeded")
    );
    assert!(r.message().contains("shared by this service's accounts"));
    assert!(r.message().contains("Limit 1000, Requested 1500"));
    let h: Vec<(String, String)> = r
        .headers()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    assert!(h.contains(&("retry-after".into(), "2".into())));
    assert!(h.contains(&("retry-after-ms".into(), "1500".into())));

    let q = LimitRejection::MonthlyQuota {
        level: Level::Tenant,
        limit: 10,
        used: 12,
        retry_after: Duration::from_secs(86_400),
        headers: RateHeaders::default(),
    };
    assert_eq!(
        (q.error_type(), q.code()),
        ("insufficient_quota", "insufficient_quota")
    );
    assert!(!q.message().contains("shared"));
    let b = LimitRejection::BackendUnavailable;
    assert_eq!(b.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.code(), "rate_limiter_unavailable");
}

#[tokio::test]
async fn settle_is_idempotent_and_an_unsettled_drop_keeps_the_estimate() {
    let l = limiter();
    let limits = EffectiveLimits::new(
        &PlanLimits {
            tokens_per_minute: Some(1000),
            tokens_per_month: Some(1_000_000),
            ..PlanLimits::default()
        },
        &PlanLimits::default(),
    );
    let month = Month::current();
    let remaining = |a: &Admission| a.rate_headers().tokens.unwrap().remaining;

    let mut a = l.admit(&key(), &limits, 300).await.unwrap();
    assert_eq!(remaining(&a), 700);
    a.settle(100);
    a.settle(900);
    drop(a);
    assert_eq!(l.month_used(&key(), Level::Tenant, month), 100);

    // Dropped unsettled (say, a stream that lost its usage): 300 stay charged.
    drop(l.admit(&key(), &limits, 300).await.unwrap());
    assert_eq!(l.month_used(&key(), Level::Tenant, month), 400);
    let probe = l.admit(&key(), &limits, 0).await.unwrap();
    assert!((599..=601).contains(&remaining(&probe)));
}

#[tokio::test]
async fn a_request_larger_than_the_bucket_passes_when_it_is_full() {
    let l = limiter();
    let limits = EffectiveLimits::new(
        &PlanLimits {
            tokens_per_minute: Some(100),
            ..PlanLimits::default()
        },
        &PlanLimits::default(),
    );
    // Needs only a full bucket, then leaves it in debt.
    assert!(l.admit(&key(), &limits, 500).await.is_ok());
    let e = l.admit(&key(), &limits, 1).await.unwrap_err();
    let LimitRejection::Tokens { retry_after, .. } = e else {
        panic!("{e:?}")
    };
    // 400 in debt + 1 needed, at 100 per minute: about four minutes.
    assert!(retry_after > Duration::from_secs(240) && retry_after < Duration::from_secs(242));
    assert!(!e.message().contains("more tokens than the limit"));
    // Another large one is told why it waits and what would help.
    let e = l.admit(&key(), &limits, 500).await.unwrap_err();
    let m = e.message();
    assert!(m.contains("Limit 100, Requested 500"), "{m}");
    assert!(
        m.contains("reserves more tokens than the limit") && m.contains("Lower max_tokens"),
        "{m}"
    );
}

#[tokio::test]
async fn buckets_refill_over_the_window() {
    let settings = LimiterSettings {
        window: Duration::from_millis(200),
        ..LimiterSettings::default()
    };
    let l = Limiter::new(settings, Arc::new(NoMonthlyUsage)).unwrap();
    let limits = EffectiveLimits::new(
        &PlanLimits {
            requests_per_minute: Some(2),
            ..PlanLimits::default()
        },
        &PlanLimits::default(),
    );
    assert!(l.admit(&key(), &limits, 0).await.is_ok());
    assert!(l.admit(&key(), &limits, 0).await.is_ok());
    let e = l.admit(&key(), &limits, 0).await.unwrap_err();
    let wait = e.retry_after().unwrap();
    assert!(wait <= Duration::from_millis(101), "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert!(l.admit(&key(), &limits, 0).await.is_ok());
}

#[test]
fn months_roll_over_in_utc() {
    let m = Month {
        year: 2025,
        month: 12,
    };
    assert_eq!(
        m.next(),
        Month {
            year: 2026,
            month: 1
        }
    );
    assert_eq!(m.to_string(), "2025-12");
    assert_eq!(m.remaining(), Duration::ZERO);
    assert!(Month::current().remaining() <= Duration::from_secs(31 * 86_400));
}

/// A Redis admission of December settled in January, after this instance's
/// view had moved on to January (a stream across midnight), and one settled
/// for a level whose month is not counted here: the correction is counted in
/// no month, so its job, once done, must not take it out of the seeds either.
/// It did: the seed then exceeded the count by the correction, Redis took
/// that seed, this instance read the raised count back, and every admission
/// after raised the month by the correction again until the quota was gone.
#[test]
fn a_correction_counted_in_no_month_leaves_the_seeds_alone() {
    let local = super::local::LocalBackend::new(Duration::from_secs(60));
    let k = key();
    let limits = EffectiveLimits::new(
        &PlanLimits {
            tokens_per_month: Some(1_000_000),
            ..PlanLimits::default()
        },
        &PlanLimits {
            tokens_per_minute: Some(100_000),
            ..PlanLimits::default()
        },
    );
    let (dec, jan) = (DEC_2026, JAN_2027);
    local.seed_months(&k, &limits, jan, &NoMonthlyUsage);
    let tenant = local.existing(&k, Level::Tenant).unwrap();
    tenant.observe_month(jan, 1000);
    // The reseller's entry, as the fallback leaves it: no month counted.
    let reseller = local.reseller(&k.reseller);
    // The real usage was 500 above December's estimate.
    drop(super::local::UnsentCorrection::settle(
        &local, &k, &limits, 500, dec,
    ));
    assert_eq!(tenant.month_used(jan), 1000);
    assert_eq!(tenant.month_seed(jan), 1000);
    assert_eq!(reseller.month_seed(jan), 0);
    // Within the month it is counted, left out of the seed until sent.
    let unsent = super::local::UnsentCorrection::settle(&local, &k, &limits, 500, jan);
    assert_eq!(
        (tenant.month_used(jan), tenant.month_seed(jan)),
        (1500, 1000)
    );
    drop(unsent);
    assert_eq!(tenant.month_seed(jan), 1500);
    assert_eq!(reseller.month_seed(jan), 0);
}

fn quota(tokens_per_month: u64) -> PlanLimits {
    PlanLimits {
        tokens_per_month: Some(tokens_per_month),
        ..PlanLimits::default()
    }
}

fn header_of(e: &LimitRejection, name: &str) -> Option<String> {
    e.headers()
        .into_iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v.to_str().unwrap().to_owned())
}

/// Asserts `e` is the retryable refusal of a month held by reservations, at
/// the reseller's level, told `requested`: OpenAI's `rate_limit_exceeded`
/// (SDKs retry it), a wait of seconds, not the month's end. (Read through the
/// answer, not the variant: the same assertions ran against the code before
/// it existed, which answered the final `insufficient_quota`.)
fn assert_held(e: &LimitRejection, requested: u64) {
    assert_eq!(e.label(), "monthly_quota_held", "{e:?}");
    assert_eq!(e.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        (e.error_type(), e.code()),
        ("tokens_per_month", "rate_limit_exceeded")
    );
    assert_eq!(e.level(), Some(Level::Reseller));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(header_of(e, "retry-after").as_deref(), Some("5"));
    assert_eq!(header_of(e, "retry-after-ms").as_deref(), Some("5000"));
    assert_eq!(header_of(e, "x-should-retry"), None);
    let m = e.message();
    assert!(
        m.contains("reserved by requests in flight")
            && m.contains("shared by this service's accounts")
            && m.contains(&format!("Requested {requested}")),
        "{m}"
    );
}

/// One tenant's request with a huge `max_tokens` in flight reserves more than
/// its reseller's month has left. Its neighbours were told the month was
/// used up (`insufficient_quota`, retry when the month ends), which SDKs do
/// not retry, though nothing was used; they are told to retry in seconds, and
/// are admitted once it settles with its real usage. Settled usage at the
/// quota is still the final answer.
#[tokio::test]
async fn a_month_held_by_a_request_in_flight_is_a_retryable_refusal() {
    let l = limiter();
    let limits = EffectiveLimits::new(&quota(100_000), &quota(1000));
    let (dental, realty) = (LimitKey::new("acme", "dental"), key_of("realty"));
    let month = Month::current();

    // Larger than the month: admitted while nothing else holds any of it.
    let mut huge = l.admit(&dental, &limits, 5000).await.unwrap();
    let e = l.admit(&realty, &limits, 26).await.unwrap_err();
    assert_held(&e, 26);
    assert_eq!(l.month_used(&key_of("realty"), Level::Tenant, month), 0);
    huge.settle(30);
    drop(huge);
    let small = l.admit(&realty, &limits, 26).await.unwrap();
    assert_eq!(l.month_used(&realty, Level::Reseller, month), 30);
    drop(small);

    // Settled usage at the quota: final, as before.
    let mut big = l.admit(&dental, &limits, 900).await.unwrap();
    big.settle(944);
    drop(big);
    assert_eq!(l.month_used(&realty, Level::Reseller, month), 1000);
    let e = l.admit(&realty, &limits, 1).await.unwrap_err();
    assert_eq!(e.label(), "monthly_quota", "{e:?}");
    assert_eq!(
        (e.error_type(), e.code()),
        ("insufficient_quota", "insufficient_quota")
    );
    assert_eq!(header_of(&e, "x-should-retry").as_deref(), Some("false"));
    assert!(e.retry_after().unwrap() >= Month::current().remaining() - Duration::from_secs(5));
}

fn key_of(tenant: &str) -> LimitKey {
    LimitKey::new("acme", tenant)
}

/// The hard cap on reservations: a request whose estimate does not fit beside
/// the others' waits for them (it passed while anything was left, and the
/// reservations together went past the quota); one larger than all the month
/// has left passes only when nothing else holds any of it, and is told why.
#[tokio::test]
async fn reservations_never_add_up_past_the_quota() {
    let l = limiter();
    let limits = EffectiveLimits::new(&PlanLimits::default(), &quota(1000));
    let month = Month::current();
    let mut first = l.admit(&key_of("dental"), &limits, 600).await.unwrap();
    let e = l.admit(&key_of("realty"), &limits, 401).await.unwrap_err();
    assert_held(&e, 401);
    assert!(!e.message().contains("Lower max_tokens"), "{}", e.message());
    let fits = l.admit(&key_of("realty"), &limits, 400).await.unwrap();
    let e = l.admit(&key_of("office"), &limits, 5000).await.unwrap_err();
    assert_held(&e, 5000);
    assert!(
        e.message().contains("more tokens than the month has left")
            && e.message().contains("Lower max_tokens"),
        "{}",
        e.message()
    );
    first.settle(100);
    drop(first);
    drop(fits);
    // `fits` dropped unsettled: its estimate is counted, as used.
    assert_eq!(l.month_used(&key_of("x"), Level::Reseller, month), 500);
    let e = l.admit(&key_of("office"), &limits, 5000).await;
    assert!(e.is_ok(), "{e:?}");
}

/// A settle gives back what its own admission reserved, at the levels it
/// reserved at: an admission made before a reload gave the tenant a quota
/// reserved nothing there, and its settle must not free what later
/// admissions hold (it took its whole estimate off the month's count, which
/// then let a request past the quota).
#[tokio::test]
async fn a_settle_from_before_a_quota_frees_nothing_it_did_not_reserve() {
    let l = limiter();
    let before = EffectiveLimits::new(
        &PlanLimits {
            requests_per_minute: Some(100),
            ..PlanLimits::default()
        },
        &PlanLimits::default(),
    );
    let after = EffectiveLimits::new(&quota(1000), &PlanLimits::default());
    let k = key();
    let month = Month::current();
    let mut old = l.admit(&k, &before, 500).await.unwrap();
    let _held = l.admit(&k, &after, 100).await.unwrap();
    old.settle(20);
    drop(old);
    assert_eq!(l.month_used(&k, Level::Tenant, month), 20);
    // 20 settled, 100 held: 900 do not fit.
    let e = l.admit(&k, &after, 900).await.unwrap_err();
    assert_eq!(e.label(), "monthly_quota_held", "{e:?}");
    assert_eq!(e.level(), Some(Level::Tenant));
    assert!(l.admit(&k, &after, 880).await.is_ok());
}

/// Reservations leave the month on every exit, once, into the month they
/// were made in: a settle (twice: once), a drop unsettled (cancelled, or
/// served without a count: the estimate is counted as used), and a request
/// of December that ends in January, whose usage is December's and whose
/// reservation never held January's quota.
#[tokio::test]
async fn reservations_leave_their_own_month_once_on_every_exit() {
    let l = limiter();
    let k = key();
    let limits = EffectiveLimits::new(&quota(1000), &quota(10_000));
    let month = Month::current();
    let at = |level| {
        (
            l.month_used(&k, level, month),
            l.month_held(&k, level, month),
        )
    };
    let mut a = l.admit(&k, &limits, 300).await.unwrap();
    let b = l.admit(&k, &limits, 200).await.unwrap();
    assert_eq!(at(Level::Tenant), (0, 500));
    assert_eq!(at(Level::Reseller), (0, 500));
    a.settle(40);
    a.settle(400);
    assert_eq!(at(Level::Tenant), (40, 200));
    drop(a);
    drop(b);
    assert_eq!(at(Level::Tenant), (240, 0));
    assert_eq!(at(Level::Reseller), (240, 0));

    let local = super::local::LocalBackend::new(Duration::from_secs(60));
    let (dec, jan) = (DEC_2026, JAN_2027);
    let g = local.admit(&k, &limits, 800, dec, &NoMonthlyUsage).unwrap();
    let t = g.tenant.clone().unwrap();
    assert_eq!((t.month_used(dec), t.month_held(dec)), (0, 800));
    // January's first admission: nothing of December's holds it.
    let _jan = local.admit(&k, &limits, 900, jan, &NoMonthlyUsage).unwrap();
    assert_eq!((t.month_used(jan), t.month_held(jan)), (0, 900));
    t.settle(&limits.tenant, 50, 800, dec, 60_000.0, 0.0, false);
    assert_eq!((t.month_used(jan), t.month_held(jan)), (0, 900));
    t.settle(&limits.tenant, 70, 900, jan, 60_000.0, 0.0, false);
    assert_eq!((t.month_used(jan), t.month_held(jan)), (70, 0));
}

/// A request that reserves nothing (a token count, admitted for 0) takes
/// nothing of the month, so reservations cannot hold it out: one admitted
/// for more than the month had left held every other request back, the
/// count too, with "reserved by requests in flight, Requested 0", though
/// the README promises a count nothing of the month and refuses it only
/// once the month is used up.
#[tokio::test]
async fn a_request_reserving_nothing_is_not_held_out_of_the_month() {
    let l = limiter();
    let limits = EffectiveLimits::new(&quota(100_000), &quota(1000));
    let mut huge = l.admit(&key_of("dental"), &limits, 5000).await.unwrap();
    assert_held(
        &l.admit(&key_of("realty"), &limits, 1).await.unwrap_err(),
        1,
    );
    let count = l.admit(&key_of("realty"), &limits, 0).await;
    assert!(count.is_ok(), "{count:?}");
    drop(count);
    // Used up for real: final, for a count as for any request.
    huge.settle(1000);
    drop(huge);
    let e = l.admit(&key_of("realty"), &limits, 0).await.unwrap_err();
    assert_eq!(e.label(), "monthly_quota", "{e:?}");
}

/// An admission that read the clock just before the month's turn and locks
/// its entries after a January admission counted January there (its ledger
/// read, or a Redis timeout, in between) leaves January alone: it replaced
/// January's count with a December one (nothing settled, its own estimate
/// held), so January's next admission seeded January afresh and the
/// reservations of January's requests in flight were forgotten (let past
/// the quota).
#[test]
fn an_admission_of_the_month_before_leaves_the_new_month_alone() {
    let local = super::local::LocalBackend::new(Duration::from_secs(60));
    let k = key();
    let limits = EffectiveLimits::new(&quota(1000), &PlanLimits::default());
    let (dec, jan) = (DEC_2026, JAN_2027);
    let t = local.tenant(&k);
    t.observe_month(jan, 40);
    let _jan = local.admit(&k, &limits, 900, jan, &NoMonthlyUsage).unwrap();
    let late = local.admit(&k, &limits, 300, dec, &NoMonthlyUsage);
    assert!(late.is_ok());
    assert_eq!((t.month_used(jan), t.month_held(jan)), (40, 900));
    // January's month still holds 900 of its 960 left.
    let e = local.admit(&k, &limits, 100, jan, &NoMonthlyUsage);
    assert_eq!(e.err().map(|e| e.label()), Some("monthly_quota_held"));
}

/// A Responses API body: `instructions` and `input` (a string, or items
/// whose content, arguments and outputs are text) are the prompt;
/// `max_output_tokens`, else the plan's default, the completion.
#[test]
fn responses_estimates_read_instructions_input_items_and_max_output_tokens() {
    let limits = EffectiveLimits::default();
    let plain = json!({"model": "m", "instructions": "abcd".repeat(2), "input": "abcd".repeat(3)});
    // 20 characters / 4 + 3.
    assert_eq!(
        estimate_response_tokens(&fields(&plain), &limits),
        5 + 3 + DEFAULT_COMPLETION_TOKENS
    );
    let items = json!({"model": "m", "max_output_tokens": 50, "input": [
        {"role": "user", "content": "abcd".repeat(4)},
        {"role": "user", "content": [{"type": "input_text", "text": "abcd"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "c", "output": "abcd".repeat(2)},
    ]});
    // (16 + 4 + 7 + 8) characters / 4, rounded up, + 3 + 4 × 4, + 50.
    assert_eq!(
        estimate_response_tokens(&fields(&items), &limits),
        9 + 3 + 16 + 50
    );
}
