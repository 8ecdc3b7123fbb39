//! Rate limits and quotas, through the `Limiter` API: local buckets (exact
//! request counts, neighbours, reseller caps, token settlement, concurrency
//! slots, monthly quota across a restart, a month held by requests in flight
//! told apart from one used up) and shared limiting on a real
//! `redis-server` started on a free loopback port (two limiters standing for two
//! gateways; Redis killed and restarted under `fail_open` and `fail_closed`).
//!
//! The Redis tests need `redis-server` (`LIVERY_REDIS_SERVER`, else `PATH`);
//! without it they print why and pass, unless `LIVERY_REQUIRE_REDIS=1`
//! (tests/run.sh), which makes them fail.

use livery::config::{GatewayConfig, OnRedisError};
use livery::limits::{
    estimate_request_tokens, Backend, EffectiveLimits, Level, LimitKey, LimitRejection, Limiter,
    LimiterSettings, MemoryMonthlyUsage, Month, MonthlyUsageSource, NoMonthlyUsage, PlanLimits,
};
use livery::Snapshot;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn local() -> Limiter {
    Limiter::new(LimiterSettings::default(), Arc::new(NoMonthlyUsage)).unwrap()
}

fn tenant(limits: PlanLimits) -> EffectiveLimits {
    EffectiveLimits::new(&limits, &PlanLimits::default())
}

fn rpm(n: u64) -> PlanLimits {
    PlanLimits {
        requests_per_minute: Some(n),
        ..PlanLimits::default()
    }
}

fn header<'a>(h: &'a [(http::HeaderName, http::HeaderValue)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(n, _)| n.as_str() == name)
        .and_then(|(_, v)| v.to_str().ok())
}

// ------------------------------------------------------------------ local

#[tokio::test]
async fn tenant_at_60_rpm_gets_exactly_60_of_100_and_its_neighbour_is_unaffected() {
    let limiter = local();
    let dental = LimitKey::new("acme", "dental");
    let realty = LimitKey::new("acme", "realty");
    let limits = tenant(rpm(60));
    let mut admitted = 0;
    let mut held = Vec::new();
    for _ in 0..100 {
        match limiter.admit(&dental, &limits, 0).await {
            Ok(a) => {
                admitted += 1;
                held.push(a);
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        LimitRejection::Requests {
                            level: Level::Tenant,
                            limit: 60,
                            ..
                        }
                    ),
                    "{e:?}"
                );
                assert_eq!(e.status(), 429);
                assert_eq!(
                    (e.error_type(), e.code()),
                    ("requests", "rate_limit_exceeded")
                );
                let h = e.headers();
                assert_eq!(header(&h, "x-ratelimit-limit-requests"), Some("60"));
                assert_eq!(header(&h, "x-ratelimit-remaining-requests"), Some("0"));
                assert_eq!(header(&h, "retry-after"), Some("1"));
                assert!(header(&h, "retry-after-ms").is_some());
            }
        }
    }
    assert_eq!(admitted, 60, "exactly the limit gets through");
    let first = held[0].rate_headers().to_headers();
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), Some("60"));
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), Some("59"));
    assert!(header(&first, "x-ratelimit-reset-requests").is_some());

    // The neighbour has its own bucket, untouched by the burst.
    let mut neighbour = 0;
    for _ in 0..60 {
        if limiter.admit(&realty, &limits, 0).await.is_ok() {
            neighbour += 1;
        }
    }
    assert_eq!(neighbour, 60);
}

#[tokio::test]
async fn the_resellers_cap_binds_across_its_tenants() {
    let limiter = local();
    let limits = EffectiveLimits::new(&rpm(60), &rpm(100));
    let mut per_tenant = [0; 3];
    let mut reseller_refusals = 0;
    for round in 0..60 {
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            match limiter.admit(&LimitKey::new("acme", *t), &limits, 0).await {
                Ok(_) => per_tenant[i] += 1,
                Err(LimitRejection::Requests {
                    level: Level::Reseller,
                    ..
                }) => reseller_refusals += 1,
                Err(e) => panic!("round {round}: {e:?}"),
            }
        }
    }
    assert_eq!(per_tenant.iter().sum::<i32>(), 100, "{per_tenant:?}");
    assert_eq!(reseller_refusals, 80);
    // Another reseller's tenants are not affected.
    assert!(limiter
        .admit(&LimitKey::new("globex", "a"), &limits, 0)
        .await
        .is_ok());
}

#[tokio::test]
async fn a_refusal_at_one_level_charges_nothing_at_the_other() {
    let limiter = local();
    // The reseller allows 2 concurrent requests; tenant `a` fills them.
    let reseller = PlanLimits {
        max_concurrent: Some(2),
        ..PlanLimits::default()
    };
    let limits = EffectiveLimits::new(&rpm(5), &reseller);
    let a = LimitKey::new("acme", "a");
    let held = [
        limiter.admit(&a, &limits, 0).await.unwrap(),
        limiter.admit(&a, &limits, 0).await.unwrap(),
    ];
    for _ in 0..10 {
        let e = limiter.admit(&a, &limits, 0).await.unwrap_err();
        assert!(matches!(
            e,
            LimitRejection::Concurrency {
                level: Level::Reseller,
                limit: 2,
                ..
            }
        ));
    }
    drop(held);
    // The ten refusals did not spend `a`'s request bucket: 3 of 5 remain.
    for _ in 0..3 {
        drop(limiter.admit(&a, &limits, 0).await.unwrap());
    }
    assert!(matches!(
        limiter.admit(&a, &limits, 0).await,
        Err(LimitRejection::Requests { .. })
    ));
}

/// Tenant at 2 requests a minute, its reseller at 100 tokens a minute; after
/// two requests (100 tokens and 0) a third of 100 tokens waits 30 s for the
/// tenant's request bucket and 60 s for the reseller's token bucket. The
/// answer tells the 60 s (retried after 30 s, as told before, the SDK was
/// refused again by the token bucket) and names that bucket.
async fn refused_for_as_long_as_the_slowest_bucket_needs(limiter: &Limiter) {
    let key = LimitKey::new("acme", "dental");
    let reseller = PlanLimits {
        tokens_per_minute: Some(100),
        ..PlanLimits::default()
    };
    let limits = EffectiveLimits::new(&rpm(2), &reseller);
    let _held = [
        limiter.admit(&key, &limits, 100).await.unwrap(),
        limiter.admit(&key, &limits, 0).await.unwrap(),
    ];
    let e = limiter.admit(&key, &limits, 100).await.unwrap_err();
    assert!(
        matches!(
            e,
            LimitRejection::Tokens {
                level: Level::Reseller,
                limit: 100,
                ..
            }
        ),
        "{e:?}"
    );
    let wait = e.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(59) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    let ms: u64 = header(&e.headers(), "retry-after-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((59_000..=60_000).contains(&ms), "retry-after-ms {ms}");
    assert!(e.message().contains("try again in 59.") || e.message().contains("in 1m0s"));
}

#[tokio::test]
async fn a_refusal_waits_for_every_bucket_that_refuses() {
    refused_for_as_long_as_the_slowest_bucket_needs(&local()).await;
}

/// A tenant's tokens per minute raised from 100 to 1000 by a reload while a
/// request admitted under the old limit runs: once the bucket has refilled
/// past 100 under the new limit, that request's settle (a refund of 10) must
/// not cut the bucket down to the old limit.
async fn a_settle_from_before_a_raise_keeps_the_raised_bucket(limiter: &Limiter, window: Duration) {
    let key = LimitKey::new("acme", "dental");
    let tpm = |n| {
        tenant(PlanLimits {
            tokens_per_minute: Some(n),
            ..PlanLimits::default()
        })
    };
    let (old, raised) = (tpm(100), tpm(1000));
    let mut a = limiter.admit(&key, &old, 50).await.unwrap();
    tokio::time::sleep(window + window / 10).await;
    let remaining = |a: &livery::limits::Admission| a.rate_headers().tokens.unwrap().remaining;
    let full = limiter.admit(&key, &raised, 0).await.unwrap();
    assert!(remaining(&full) >= 999, "{:?}", full.rate_headers());
    a.settle(40);
    drop(a);
    // Redis gets the settle from a queue: give it time to run.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = limiter.admit(&key, &raised, 0).await.unwrap();
    assert!(remaining(&after) >= 999, "{:?}", after.rate_headers());
}

#[tokio::test]
async fn a_settle_from_before_a_raise_keeps_the_raised_bucket_locally() {
    let window = Duration::from_millis(600);
    let settings = LimiterSettings {
        window,
        ..LimiterSettings::default()
    };
    let limiter = Limiter::new(settings, Arc::new(NoMonthlyUsage)).unwrap();
    a_settle_from_before_a_raise_keeps_the_raised_bucket(&limiter, window).await;
}

#[tokio::test]
async fn the_token_bucket_converges_on_real_usage_after_settlement() {
    let limiter = local();
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(PlanLimits {
        tokens_per_minute: Some(1_000),
        ..PlanLimits::default()
    });
    // Each request reserves 200 and really uses 50: without the correction the
    // bucket would be empty after five; with it, ten fit and 500 remain.
    for i in 0..10 {
        let mut a = limiter
            .admit(&key, &limits, 200)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        a.settle(50);
        a.settle(50_000); // settling again changes nothing
    }
    let probe = limiter.admit(&key, &limits, 1).await.unwrap();
    let remaining = probe.rate_headers().tokens.unwrap().remaining;
    assert!((499..=501).contains(&remaining), "remaining {remaining}");

    // Usage above the estimate is charged too: a debt refused until refilled.
    let mut big = limiter.admit(&key, &limits, 10).await.unwrap();
    big.settle(2_000);
    let e = limiter.admit(&key, &limits, 10).await.unwrap_err();
    assert!(
        matches!(e, LimitRejection::Tokens { limit: 1_000, .. }),
        "{e:?}"
    );
    assert_eq!(e.error_type(), "tokens");
    assert!(e.retry_after().unwrap() > Duration::from_secs(20));
}

/// A request that reserves no tokens (a token count, admitted for 0) needs
/// nothing of the token bucket: a bucket in debt (a request used more than
/// its estimate) refused it with "Rate limit reached on tokens per min,
/// Requested 0" until refilled, though a count takes nothing of
/// `tokens_per_minute`. A request of one token is still refused.
async fn a_request_reserving_nothing_passes_a_bucket_in_debt(limiter: &Limiter) {
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(PlanLimits {
        tokens_per_minute: Some(1_000),
        ..PlanLimits::default()
    });
    let mut big = limiter.admit(&key, &limits, 10).await.unwrap();
    big.settle(2_000);
    drop(big);
    let mut refused = None;
    // Redis settles off the request path: the debt lands in a moment.
    for _ in 0..200 {
        match limiter.admit(&key, &limits, 1).await {
            Ok(mut a) => a.settle(0),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = refused.expect("the bucket never went into debt");
    assert!(matches!(e, LimitRejection::Tokens { .. }), "{e:?}");
    let count = limiter.admit(&key, &limits, 0).await;
    assert!(count.is_ok(), "{count:?}");
}

#[tokio::test]
async fn a_request_reserving_nothing_passes_a_bucket_in_debt_locally() {
    a_request_reserving_nothing_passes_a_bucket_in_debt(&local()).await;
}

#[tokio::test]
async fn a_request_reserving_nothing_passes_a_bucket_in_debt_in_redis() {
    let Some(redis) = RedisServer::start("nothing_reserved_bucket_in_debt") else {
        return;
    };
    let limiter = shared(&redis, OnRedisError::FailClosed, 1);
    a_request_reserving_nothing_passes_a_bucket_in_debt(&limiter).await;
}

/// A client's `max_tokens` is unbounded (`1e19` parses as a `u64`): its
/// reservation drives the buckets far below zero while it is in flight, and the
/// settlement must bring every level back, its month count included, rather
/// than leave the reseller refused for good (the refund once overflowed into a
/// charge).
#[tokio::test]
async fn a_huge_max_tokens_is_refunded_in_full_at_every_level() {
    let limiter = local();
    let plan = |tpm| PlanLimits {
        tokens_per_minute: Some(tpm),
        tokens_per_month: Some(1_000_000),
        ..PlanLimits::default()
    };
    let limits = EffectiveLimits::new(&plan(10_000), &plan(100_000));
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 10_000_000_000_000_000_000u64});
    let body =
        livery::proxy::RequestBody::parse(serde_json::to_vec(&body).unwrap().into()).unwrap();
    let estimate = estimate_request_tokens(&body, &limits);
    assert!(estimate > 1 << 60, "{estimate}");

    let key = LimitKey::new("acme", "dental");
    let mut huge = limiter.admit(&key, &limits, estimate).await.unwrap();
    huge.settle(30);
    drop(huge);
    let month = Month::current();
    assert_eq!(limiter.month_used(&key, Level::Tenant, month), 30);
    assert_eq!(limiter.month_used(&key, Level::Reseller, month), 30);
    // A neighbour with a larger plan than its reseller's: its headers show
    // the reseller's bucket.
    let office = EffectiveLimits::new(&plan(1_000_000), &plan(100_000));
    let neighbour = limiter
        .admit(&LimitKey::new("acme", "office"), &office, 10)
        .await
        .unwrap_or_else(|e| panic!("the reseller stayed refused: {e:?}"));
    let reseller = neighbour.rate_headers().tokens.unwrap().remaining;
    assert!((99_900..=100_000).contains(&reseller), "{reseller}");
    // The tenant itself is back too.
    assert!(limiter.admit(&key, &limits, 10).await.is_ok());
}

#[tokio::test]
async fn concurrency_slots_come_back_after_every_drop() {
    let limiter = local();
    let key = LimitKey::new("acme", "dental");
    let limits = EffectiveLimits::new(
        &PlanLimits {
            max_concurrent: Some(4),
            ..PlanLimits::default()
        },
        &PlanLimits {
            max_concurrent: Some(100),
            ..PlanLimits::default()
        },
    );
    for i in 0..1_000 {
        let held: Vec<_> =
            futures_util::future::join_all((0..4).map(|_| limiter.admit(&key, &limits, 0)))
                .await
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| panic!("iteration {i}: {e:?}")))
                .collect();
        let e = limiter.admit(&key, &limits, 0).await.unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.error_type()),
            (429, "concurrent_requests")
        );
        assert_eq!(limiter.local_in_flight(&key), [4, 4]);
        match i % 2 {
            // A finished request.
            0 if i % 250 != 0 => drop(held),
            // A client gone mid-stream: the task serving it is cancelled.
            1 => {
                let task = tokio::spawn(async move {
                    let _held = held;
                    std::future::pending::<()>().await;
                });
                tokio::task::yield_now().await;
                task.abort();
                let _ = task.await;
            }
            // A panic while serving (a few times: each one prints).
            _ => {
                let r = tokio::spawn(async move {
                    let _held = held;
                    panic!("deliberate panic while holding concurrency slots (tests/limits.rs)");
                })
                .await;
                assert!(r.is_err());
            }
        }
        assert_eq!(limiter.local_in_flight(&key), [0, 0], "iteration {i}");
    }
}

#[tokio::test]
async fn monthly_quota_blocks_at_the_limit_and_survives_a_restart() {
    let month = Month::current();
    let ledger = Arc::new(MemoryMonthlyUsage::default());
    ledger.set("acme", Some("dental"), month, 9_900);
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(PlanLimits {
        tokens_per_month: Some(10_000),
        ..PlanLimits::default()
    });

    let limiter = Limiter::new(LimiterSettings::default(), ledger.clone()).unwrap();
    let mut a = limiter.admit(&key, &limits, 50).await.unwrap();
    a.settle(150);
    ledger.add("acme", Some("dental"), month, 150); // what the usage ledger records
    drop(a);
    assert_eq!(limiter.month_used(&key, Level::Tenant, month), 10_050);
    let e = limiter.admit(&key, &limits, 1).await.unwrap_err();
    assert!(
        matches!(
            e,
            LimitRejection::MonthlyQuota {
                limit: 10_000,
                used: 10_050,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!((e.status().as_u16(), e.code()), (429, "insufficient_quota"));
    assert_eq!(header(&e.headers(), "x-should-retry"), Some("false"));
    // Another tenant's month is its own.
    assert!(limiter
        .admit(&LimitKey::new("acme", "realty"), &limits, 1)
        .await
        .is_ok());

    // A restart: a new limiter reads the month from the ledger.
    drop(limiter);
    let restarted = Limiter::new(LimiterSettings::default(), ledger.clone()).unwrap();
    let e = restarted.admit(&key, &limits, 1).await.unwrap_err();
    assert!(
        matches!(e, LimitRejection::MonthlyQuota { used: 10_050, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn unlimited_requests_carry_no_headers_and_hold_nothing() {
    let limiter = local();
    let a = limiter
        .admit(
            &LimitKey::new("acme", "x"),
            &EffectiveLimits::default(),
            100,
        )
        .await
        .unwrap();
    assert!(a.rate_headers().is_empty());
    assert_eq!(a.estimate(), 0);
}

#[test]
fn gateway_toml_plans_reseller_caps_and_tenant_overrides_resolve() {
    let toml = r#"
[limits]
backend = "redis"
redis_url = "redis://127.0.0.1:6379/0"
redis_timeout_ms = 30
on_redis_error = "fail_closed"
instances = 3

[[providers]]
name = "builtin"
kind = "mock"

[[models]]
name = "demo"
provider = "builtin"

[[plans]]
name = "free"
models = ["demo"]
requests_per_minute = 60
tokens_per_minute = 10000
tokens_per_month = 1000000
max_concurrent = 2
default_completion_tokens = 256

[[plans]]
name = "wholesale"
models = []
requests_per_minute = 1000

[[resellers]]
id = "acme"
plan = "wholesale"

[[resellers.tenants]]
id = "dental"
plan = "free"
key_hashes = []
limits = { requests_per_minute = 120, max_concurrent = 5 }

[[resellers]]
id = "globex"

[[resellers.tenants]]
id = "clinic"
plan = "free"
key_hashes = []
"#;
    let config = GatewayConfig::parse(toml).unwrap();
    assert_eq!(config.limits.on_redis_error, OnRedisError::FailClosed);
    let settings = LimiterSettings::from_config(&config.limits).unwrap();
    assert_eq!(
        settings.backend,
        Backend::Redis {
            url: "redis://127.0.0.1:6379/0".into()
        }
    );
    assert_eq!(
        (settings.redis_timeout, settings.instances),
        (Duration::from_millis(30), 3)
    );

    let snapshot = Snapshot::prepare(&config).unwrap();
    let acme = &snapshot.tenancy.resellers()[0];
    let limits = EffectiveLimits::of(acme, &acme.tenants[0]);
    assert_eq!(
        limits.tenant,
        PlanLimits {
            requests_per_minute: Some(120),
            tokens_per_minute: Some(10_000),
            tokens_per_month: Some(1_000_000),
            max_concurrent: Some(5),
            default_completion_tokens: Some(256),
        }
    );
    assert_eq!(limits.reseller, rpm(1_000));
    assert_eq!(limits.default_completion_tokens(), 256);
    let globex = &snapshot.tenancy.resellers()[1];
    assert!(EffectiveLimits::of(globex, &globex.tenants[0])
        .reseller
        .is_unlimited());

    // The estimate: prompt characters / 4 plus overhead, plus the plan's default
    // completion when the request sets no max_tokens.
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": "x".repeat(400)}]});
    let body =
        livery::proxy::RequestBody::parse(serde_json::to_vec(&body).unwrap().into()).unwrap();
    assert_eq!(estimate_request_tokens(&body, &limits), 100 + 7 + 256);

    for (from, to, why) in [
        ("plan = \"wholesale\"", "plan = \"nope\"", "unknown plan"),
        (
            "requests_per_minute = 120,",
            "requests_per_minute = 0,",
            "must be positive",
        ),
    ] {
        let t = toml.replace(from, to);
        let err = Snapshot::prepare(&GatewayConfig::parse(&t).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
    }
    assert!(GatewayConfig::parse(&toml.replace("instances = 3", "instance = 3")).is_err());
    let mut no_url = config.limits.clone();
    no_url.redis_url = None;
    assert!(LimiterSettings::from_config(&no_url).is_err());
}

// ------------------------------------------------------------------ Redis

pub(crate) use crate::support::redis_server::RedisServer;

fn shared(redis: &RedisServer, on_error: OnRedisError, instances: u32) -> Limiter {
    shared_with(redis, on_error, instances, Arc::new(NoMonthlyUsage))
}

fn shared_with(
    redis: &RedisServer,
    on_error: OnRedisError,
    instances: u32,
    months: Arc<dyn MonthlyUsageSource>,
) -> Limiter {
    let settings = LimiterSettings {
        backend: Backend::Redis { url: redis.url() },
        // Generous: the 2-core test machine runs other tests alongside.
        redis_timeout: Duration::from_millis(500),
        on_redis_error: on_error,
        instances,
        probe_interval: Duration::from_millis(100),
        concurrency_lease: Duration::from_secs(3),
        ..LimiterSettings::default()
    };
    Limiter::new(settings, months).unwrap()
}

/// Runs `n` admissions alternately on `limiters`, all at once; returns how many
/// were admitted (their admissions are kept until the end).
async fn burst(limiters: &[&Limiter], key: &LimitKey, limits: &EffectiveLimits, n: usize) -> usize {
    let results = futures_util::future::join_all(
        (0..n).map(|i| limiters[i % limiters.len()].admit(key, limits, 0)),
    )
    .await;
    results
        .iter()
        .filter(|r| match r {
            Ok(a) => {
                assert!(a.is_shared(), "counted in Redis");
                true
            }
            Err(LimitRejection::Requests { .. }) => false,
            Err(e) => panic!("unexpected refusal: {e:?}"),
        })
        .count()
}

#[tokio::test]
async fn two_gateways_on_one_redis_admit_the_limit_together_and_not_more() {
    let Some(redis) = RedisServer::start("two_gateways_on_one_redis") else {
        return;
    };
    let a = shared(&redis, OnRedisError::FailOpen, 2);
    let b = shared(&redis, OnRedisError::FailOpen, 2);

    let key = LimitKey::new("acme", "dental");
    let admitted = burst(&[&a, &b], &key, &tenant(rpm(50)), 120).await;
    eprintln!(
        "shared requests: limit 50, admitted {admitted}, excess {}",
        admitted as i64 - 50
    );
    assert_eq!(admitted, 50);

    // The reseller's cap, across tenants and gateways.
    let limits = EffectiveLimits::new(&rpm(50), &rpm(80));
    let mut total = 0;
    for t in ["x", "y", "z"] {
        total += burst(&[&a, &b], &LimitKey::new("acme", t), &limits, 40).await;
    }
    assert_eq!(total, 80);

    // Tokens: reserved by one gateway, settled through the other's view.
    let tkey = LimitKey::new("globex", "clinic");
    let tlimits = tenant(PlanLimits {
        tokens_per_minute: Some(1_000),
        ..PlanLimits::default()
    });
    for i in 0..10 {
        let l = if i % 2 == 0 { &a } else { &b };
        let mut adm = l
            .admit(&tkey, &tlimits, 200)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        adm.settle(50);
        // Settles are sent in the background: wait until this one landed.
        wait_for(|| async {
            let p = a.admit(&tkey, &tlimits, 0).await.unwrap();
            let r = p.rate_headers().tokens.unwrap().remaining;
            r >= 1_000 - 50 * (i + 1) - 1
        })
        .await;
    }

    // Concurrency slots are shared too, and come back when dropped.
    let ckey = LimitKey::new("globex", "office");
    let climits = tenant(PlanLimits {
        max_concurrent: Some(3),
        ..PlanLimits::default()
    });
    let held = vec![
        a.admit(&ckey, &climits, 0).await.unwrap(),
        b.admit(&ckey, &climits, 0).await.unwrap(),
        a.admit(&ckey, &climits, 0).await.unwrap(),
    ];
    let e = b.admit(&ckey, &climits, 0).await.unwrap_err();
    assert!(
        matches!(e, LimitRejection::Concurrency { limit: 3, .. }),
        "{e:?}"
    );
    drop(held);
    wait_for(|| async { b.admit(&ckey, &climits, 0).await.is_ok() }).await;
}

/// A level's month in Redis, as admit.lua keeps it (one hash field `q` of
/// packed doubles: settled, held in this generation, held in the one before,
/// the generation): (settled, held), or `None` if there is none.
fn redis_month(r: &mut redis::Connection, key: &str) -> Option<(u64, u64)> {
    use redis::Commands;
    let q: Option<Vec<u8>> = r.hget(key, "q").unwrap();
    let q = q?;
    assert_eq!(q.len(), 32, "month field {q:?}");
    let f = |i: usize| f64::from_le_bytes(q[i * 8..i * 8 + 8].try_into().unwrap());
    Some((f(0) as u64, (f(1) + f(2)) as u64))
}

/// The key of `tenant`'s month at reseller `acme` (`None`: the reseller's).
fn month_key(tenant: Option<&str>) -> String {
    let month = Month::current();
    match tenant {
        Some(t) => format!("livery:rl:{{acme}}:t:{t}:m:{month}:q"),
        None => format!("livery:rl:{{acme}}:r:m:{month}:q"),
    }
}

async fn wait_for<F, Fut>(mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // Generous: a loaded host can hold a probe or a queued settle for seconds.
    let start = Instant::now();
    while !ok().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn redis_down_fails_open_on_local_shares_and_resumes_shared_limiting() {
    let Some(mut redis) = RedisServer::start("redis_down_fails_open") else {
        return;
    };
    let a = shared(&redis, OnRedisError::FailOpen, 2);
    let b = shared(&redis, OnRedisError::FailOpen, 2);
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(rpm(10_000_000));
    assert!(a.admit(&key, &limits, 0).await.unwrap().is_shared());

    // Both gateways admit without pause while Redis is killed and restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (a, b, key, stop) = (a.clone(), b.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut admitted, mut local, mut failed) = (0u64, 0u64, Vec::new());
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let l = if i % 2 == 0 { &a } else { &b };
                match l.admit(&key, &limits, 0).await {
                    Ok(adm) => {
                        admitted += 1;
                        local += u64::from(!adm.is_shared());
                    }
                    Err(e) => failed.push(e),
                }
                tokio::task::yield_now().await;
            }
            (admitted, local, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.kill();
    wait_for(|| async { a.stats().redis_down && b.stats().redis_down }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = a.stats();
    assert_eq!(s.fallbacks_total, 1, "the switch is counted once");
    // The local share is the limit divided by the instances.
    let small = tenant(rpm(10));
    let other = LimitKey::new("acme", "realty");
    let mut n = 0;
    for _ in 0..20 {
        n += usize::from(a.admit(&other, &small, 0).await.is_ok());
    }
    assert_eq!(n, 5);

    redis.restart();
    wait_for(|| async { !a.stats().redis_down && !b.stats().redis_down }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let (admitted, local, failed) = load.await.unwrap();
    eprintln!(
        "fail_open: {admitted} admitted during the outage test, {local} of them locally, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(local > 0 && admitted > local);
    assert_eq!(a.stats().recoveries_total, 1);
    // Shared limiting again: together, exactly the limit.
    let fresh = LimitKey::new("acme", "fresh");
    assert_eq!(burst(&[&a, &b], &fresh, &tenant(rpm(30)), 80).await, 30);
}

/// How long [`pause_redis`] holds Redis's clients.
const REDIS_PAUSE: Duration = Duration::from_secs(2);

/// Holds every command of every Redis client for [`REDIS_PAUSE`] (`CLIENT
/// PAUSE ... ALL`): a Redis that answers nothing, as a slow or stalled one.
/// Returns once Redis has acknowledged the pause, which is then in effect (a
/// `DEBUG SLEEP` sent on another task, and a fixed 50 ms allowed for it to
/// reach Redis, left a loaded host's admission answered before the sleep
/// began); await the handle for Redis to answer again.
async fn pause_redis(redis: &RedisServer) -> tokio::task::JoinHandle<redis::RedisResult<()>> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(REDIS_PAUSE.as_millis() as u64)
        .arg("ALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // Held, as every client's command, until the pause ends.
    tokio::spawn(async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
}

#[tokio::test]
async fn a_slow_redis_times_out_into_the_fallback() {
    let Some(redis) = RedisServer::start("slow_redis") else {
        return;
    };
    let settings = LimiterSettings {
        backend: Backend::Redis { url: redis.url() },
        redis_timeout: Duration::from_millis(50),
        probe_interval: Duration::from_millis(100),
        ..LimiterSettings::default()
    };
    let l = Limiter::new(settings, Arc::new(NoMonthlyUsage)).unwrap();
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(rpm(1_000));
    // Connected and answering: the first admissions may go to the fallback
    // while the connection is made, which takes more than 50 ms on a loaded
    // host.
    wait_for(|| async { l.admit(&key, &limits, 0).await.unwrap().is_shared() }).await;
    assert!(!l.stats().redis_down);

    let paused = pause_redis(&redis).await;
    let started = Instant::now();
    let adm = l.admit(&key, &limits, 0).await.unwrap();
    assert!(!adm.is_shared());
    // Answered by the fallback while Redis still held the command: it did
    // not wait for Redis.
    assert!(started.elapsed() < REDIS_PAUSE, "{:?}", started.elapsed());
    assert!(l.stats().redis_down);
    paused.await.unwrap().unwrap();
    wait_for(|| async { l.admit(&key, &limits, 0).await.unwrap().is_shared() }).await;
}

/// A loopback door to `port` that lets each connection's bytes through only
/// after `delay`: a Redis whose connection takes that long to set up (TLS, a
/// far region, a loaded host), while each command on it is answered at once.
async fn slow_door(port: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let door = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut server = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    door
}

/// A Redis limiter whose connections to `redis` are each held `delay`
/// before their first byte goes through, with `timeout` per round trip.
async fn limiter_behind_slow_door(
    redis: &RedisServer,
    delay: Duration,
    timeout: Duration,
) -> Limiter {
    let door = slow_door(redis.port, delay).await;
    let settings = LimiterSettings {
        backend: Backend::Redis {
            url: format!("redis://127.0.0.1:{door}/0"),
        },
        redis_timeout: timeout,
        probe_interval: Duration::from_millis(100),
        ..LimiterSettings::default()
    };
    Limiter::new(settings, Arc::new(NoMonthlyUsage)).unwrap()
}

/// Setting up a connection can take longer than an admission may wait for
/// Redis. The admission that started it goes on to the fallback, but the
/// connection is still made, and later admissions use it. (Each admission's
/// timeout used to cancel its own connection attempt, so such a Redis was
/// never used, and a loaded host could keep the limiter on its fallback.)
#[tokio::test]
async fn a_connection_slower_than_the_admission_timeout_is_still_made() {
    let Some(redis) = RedisServer::start("slow_connection") else {
        return;
    };
    let l =
        limiter_behind_slow_door(&redis, Duration::from_secs(1), Duration::from_millis(50)).await;
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(rpm(1_000));
    assert!(!l.admit(&key, &limits, 0).await.unwrap().is_shared());
    assert!(l.stats().redis_down);
    wait_for(|| async { l.admit(&key, &limits, 0).await.unwrap().is_shared() }).await;
    assert!(!l.stats().redis_down);
}

/// Redis is dialled when the limiter is built, so the first request finds the
/// connection made instead of waiting for it and falling back (on a slow
/// connection, every request of the first few hundred milliseconds would).
#[tokio::test]
async fn redis_is_dialled_before_the_first_admission() {
    let Some(redis) = RedisServer::start("dialled_at_start") else {
        return;
    };
    // Dialled by the first admission, the connection would not be made within
    // its timeout.
    let l =
        limiter_behind_slow_door(&redis, Duration::from_secs(1), Duration::from_millis(200)).await;
    // Connected: a client other than this one is on the server (its
    // handshake, `CLIENT SETINFO`, follows at once).
    let mut watcher = redis.client();
    wait_for(|| {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut watcher)
            .unwrap();
        let others = clients
            .lines()
            .filter(|c| !c.contains("cmd=client|list"))
            .count();
        async move { others == 1 }
    })
    .await;
    let key = LimitKey::new("acme", "dental");
    assert!(l
        .admit(&key, &tenant(rpm(1_000)), 0)
        .await
        .unwrap()
        .is_shared());
    assert_eq!(l.stats().fallbacks_total, 0);
}

/// An admission whose answer came too late (the timeout, and the request went
/// on to the fallback) still ran in Redis once it woke: its estimate charged to
/// the month and its slot taken. Both are undone, by a compensating settle
/// queued when the answer was given up on and tried again until Redis takes it.
#[tokio::test]
async fn an_admission_answered_too_late_is_undone_in_redis() {
    use redis::Commands;
    let Some(redis) = RedisServer::start("late_admission") else {
        return;
    };
    let settings = LimiterSettings {
        backend: Backend::Redis { url: redis.url() },
        redis_timeout: Duration::from_millis(50),
        probe_interval: Duration::from_millis(100),
        concurrency_lease: Duration::from_millis(600),
        ..LimiterSettings::default()
    };
    let l = Limiter::new(settings, Arc::new(NoMonthlyUsage)).unwrap();
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(PlanLimits {
        tokens_per_month: Some(1_000_000),
        max_concurrent: Some(5),
        ..PlanLimits::default()
    });
    let mut r = redis.client();
    let month = month_key(Some("dental"));
    let slots = "livery:rl:{acme}:t:dental:c";
    // Connected (a connection being made would time out before sending; on
    // a loaded host the first admissions may go to the fallback meanwhile,
    // and any of them that reached Redis late is undone like the one below).
    wait_for(|| async { l.admit(&key, &limits, 0).await.unwrap().is_shared() }).await;
    let start = Instant::now();
    while r.zcard::<_, i64>(slots).unwrap() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the first slots stayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let paused = pause_redis(&redis).await;
    let adm = l.admit(&key, &limits, 500).await.unwrap();
    assert!(!adm.is_shared(), "answered by the fallback");
    drop(adm);
    paused.await.unwrap().unwrap();
    let start = Instant::now();
    loop {
        // Neither settled nor reserved.
        let used = redis_month(&mut r, &month);
        let held: i64 = r.zcard(slots).unwrap();
        if used == Some((0, 0)) && held == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still charged in Redis: month {used:?}, slots {held}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_down_fails_closed_with_503_and_recovers() {
    let Some(mut redis) = RedisServer::start("redis_down_fails_closed") else {
        return;
    };
    let l = shared(&redis, OnRedisError::FailClosed, 2);
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(rpm(1_000));
    assert!(l.admit(&key, &limits, 0).await.is_ok());

    redis.kill();
    let started = Instant::now();
    for _ in 0..50 {
        let e = l.admit(&key, &limits, 0).await.unwrap_err();
        assert_eq!(e, LimitRejection::BackendUnavailable);
        assert_eq!(
            (e.status().as_u16(), e.code()),
            (503, "rate_limiter_unavailable")
        );
        assert_eq!(header(&e.headers(), "retry-after"), Some("1"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refusals are quick"
    );
    assert_eq!(l.stats().fallbacks_total, 1);

    redis.restart();
    wait_for(|| async { l.admit(&key, &limits, 0).await.is_ok() }).await;
    assert!(!l.stats().redis_down);
}

/// The same huge reservation on Redis: the scripts take it (no error that
/// would switch every tenant to the fallback), and the settlement refunds it.
#[tokio::test]
async fn a_huge_max_tokens_is_counted_in_redis_and_refunded() {
    let Some(redis) = RedisServer::start("huge_max_tokens") else {
        return;
    };
    let a = shared(&redis, OnRedisError::FailClosed, 1);
    let plan = |tpm| PlanLimits {
        tokens_per_minute: Some(tpm),
        tokens_per_month: Some(1_000_000),
        ..PlanLimits::default()
    };
    // A tokens-per-minute cap of 1 makes the bucket's refill time (and so its
    // expiry) as long as it gets.
    let limits = EffectiveLimits::new(&plan(1), &plan(100_000));
    let key = LimitKey::new("acme", "dental");
    let mut huge = a.admit(&key, &limits, u64::MAX).await.unwrap();
    assert!(huge.is_shared(), "counted in Redis, not in the fallback");
    huge.settle(0);
    drop(huge);
    let neighbour = LimitKey::new("acme", "office");
    // A larger plan than its reseller's: its headers show the reseller's bucket.
    let office = EffectiveLimits::new(&plan(1_000_000), &plan(100_000));
    wait_for(|| async {
        match a.admit(&neighbour, &office, 10).await {
            Ok(adm) => {
                assert!(adm.is_shared());
                adm.rate_headers().tokens.unwrap().remaining > 99_000
            }
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test]
async fn the_monthly_quota_is_shared_and_seeded_from_the_ledger() {
    let Some(redis) = RedisServer::start("monthly_quota_shared") else {
        return;
    };
    let month = Month::current();
    let ledger = Arc::new(MemoryMonthlyUsage::default());
    ledger.set("acme", Some("dental"), month, 900);
    let a = shared_with(&redis, OnRedisError::FailOpen, 2, ledger.clone());
    let b = shared_with(&redis, OnRedisError::FailOpen, 2, Arc::new(NoMonthlyUsage));
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(PlanLimits {
        tokens_per_month: Some(1_000),
        ..PlanLimits::default()
    });
    let mut adm = a.admit(&key, &limits, 10).await.unwrap();
    adm.settle(200);
    drop(adm);
    // Gateway b knows nothing of the ledger, but Redis does: 900 + 200 (plus
    // b's own probes of 1 token each until the settle lands).
    wait_for(|| async {
        matches!(
            b.admit(&key, &limits, 1).await,
            Err(LimitRejection::MonthlyQuota { used, .. }) if (1_100..1_200).contains(&used)
        )
    })
    .await;
    // A restarted gateway gets the same answer.
    drop(a);
    let c = shared_with(&redis, OnRedisError::FailOpen, 2, ledger);
    assert!(matches!(
        c.admit(&key, &limits, 1).await,
        Err(LimitRejection::MonthlyQuota { .. })
    ));
}

/// A settle's correction is applied to this instance's view of the month at
/// once and sent to Redis by a queued job; an admission made before the job
/// runs offers that view as its seed. The seed must leave the correction out,
/// or Redis counts it twice (900 + 10 + 190 + 1 became 1,291).
#[tokio::test]
async fn a_settle_still_on_its_way_is_not_counted_twice_in_the_month() {
    let Some(redis) = RedisServer::start("settle_not_counted_twice") else {
        return;
    };
    let mut r = redis.client();
    let month = Month::current();
    let ledger = Arc::new(MemoryMonthlyUsage::default());
    ledger.set("acme", Some("dental"), month, 900);
    let a = shared_with(&redis, OnRedisError::FailOpen, 1, ledger);
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(PlanLimits {
        tokens_per_month: Some(1_000_000),
        ..PlanLimits::default()
    });
    let counter = month_key(Some("dental"));
    for round in 0..20u64 {
        let mut first = a.admit(&key, &limits, 10).await.unwrap();
        first.settle(200);
        drop(first);
        // At once, before the settle's job has run (on this test's single
        // thread the job's worker has not been polled yet).
        let second = a.admit(&key, &limits, 1).await.unwrap();
        drop(second);
        let expected = 900 + (round + 1) * 201;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // Settled: the first's 200 and the second's estimate (dropped
            // unsettled); nothing left reserved once both jobs ran.
            let month = redis_month(&mut r, &counter);
            if month == Some((expected, 0)) {
                break;
            }
            assert!(
                Instant::now() < deadline && month.is_some_and(|(u, _)| u <= expected),
                "round {round}: Redis counts {month:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What the admission script leaves in Redis: a dead gateway's slots stop
/// counting once their lease has expired (and are trimmed by a live gateway's
/// renewal), every month counter gets an expiry, whether admission created it
/// or a settle re-created it after it vanished, and a request that both settles
/// tokens and holds a slot gets both done at its end.
#[tokio::test]
async fn expired_slots_do_not_count_and_month_counters_always_expire() {
    use redis::Commands;
    let Some(redis) = RedisServer::start("expired_slots_and_month_expiry") else {
        return;
    };
    let mut r = redis.client();
    let a = shared(&redis, OnRedisError::FailOpen, 1);

    // A gateway that died holding three slots whose leases ran out a second
    // ago, and one whose lease still runs.
    let slots = "livery:rl:{acme}:t:dental:c";
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut r).unwrap();
    let now_ms = (secs * 1000 + micros / 1000) as f64;
    for dead in ["dead-1", "dead-2", "dead-3"] {
        let _: () = r.zadd(slots, dead, now_ms - 1000.0).unwrap();
    }
    let _: () = r.zadd(slots, "live-elsewhere", now_ms + 60_000.0).unwrap();
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(PlanLimits {
        max_concurrent: Some(3),
        ..PlanLimits::default()
    });
    let held = [
        a.admit(&key, &limits, 0).await.unwrap(),
        a.admit(&key, &limits, 0).await.unwrap(),
    ];
    let e = a.admit(&key, &limits, 0).await.unwrap_err();
    assert!(
        matches!(e, LimitRejection::Concurrency { limit: 3, .. }),
        "{e:?}"
    );
    // The renewal (every third of the 3 s lease) trims the expired slots.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members: Vec<String> = r.zrange(slots, 0, -1).unwrap();
        if !members.iter().any(|m| m.starts_with("dead-")) {
            assert_eq!(members.len(), 3, "{members:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still there: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);

    // Month counters: created by admission with an expiry.
    let mkey = LimitKey::new("acme", "realty");
    let quota = tenant(PlanLimits {
        tokens_per_month: Some(1_000_000),
        ..PlanLimits::default()
    });
    let month = month_key(Some("realty"));
    let mut adm = a.admit(&mkey, &quota, 100).await.unwrap();
    let ttl: i64 = r.ttl(&month).unwrap();
    assert!(ttl > 86_400, "ttl {ttl}");
    // The counter vanishes (evicted, or Redis restarted empty) before the
    // settle: the settle re-creates it with the real usage (the reservation
    // went with it), with an expiry too.
    let _: () = r.del(&month).unwrap();
    adm.settle(150);
    drop(adm);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let used = redis_month(&mut r, &month);
        if used == Some((150, 0)) {
            break;
        }
        assert!(Instant::now() < deadline, "month counter {used:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ttl: i64 = r.ttl(&month).unwrap();
    assert!(ttl > 86_400, "ttl {ttl}");

    // A request that settles tokens and holds a slot: the slot comes back at
    // once, not when its 3 s lease expires, and the settle lands too.
    let bkey = LimitKey::new("acme", "both");
    let both = tenant(PlanLimits {
        tokens_per_minute: Some(10_000),
        max_concurrent: Some(1),
        ..PlanLimits::default()
    });
    let bslots = "livery:rl:{acme}:t:both:c";
    let mut adm = a.admit(&bkey, &both, 100).await.unwrap();
    assert_eq!(r.zcard::<_, u64>(bslots).unwrap(), 1);
    adm.settle(40);
    drop(adm);
    let deadline = Instant::now() + Duration::from_secs(1);
    while r.zcard::<_, u64>(bslots).unwrap() != 0 {
        assert!(Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The settle ran too: 100 reserved, 40 used, 60 given back.
    loop {
        // The buckets are packed doubles: requests level and time, tokens level and time.
        let b: Vec<u8> = r.hget("livery:rl:{acme}:t:both", "b").unwrap();
        assert_eq!(b.len(), 32, "bucket field {b:?}");
        let level = f64::from_le_bytes(b[16..24].try_into().unwrap());
        assert!(level <= 10_000.0, "tokens level {level}");
        if level >= 9_960.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: tokens level {level}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_redis_admission_reports_its_buckets_in_the_rate_limit_headers() {
    let Some(redis) = RedisServer::start("redis_headers") else {
        return;
    };
    let limiter = shared(&redis, OnRedisError::FailClosed, 1);
    let key = LimitKey::new("acme", "dental");
    let limits = tenant(PlanLimits {
        requests_per_minute: Some(60),
        tokens_per_minute: Some(1_000),
        ..PlanLimits::default()
    });
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(limiter.admit(&key, &limits, 100).await.unwrap());
    }
    let h = held[2].rate_headers().to_headers();
    assert!(held[2].is_shared(), "counted in Redis");
    assert_eq!(header(&h, "x-ratelimit-limit-requests"), Some("60"));
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), Some("57"));
    assert_eq!(header(&h, "x-ratelimit-limit-tokens"), Some("1000"));
    // 300 charged; the bucket refills 1 token per 60 ms meanwhile.
    let tokens = |h: &[(http::HeaderName, http::HeaderValue)]| -> u64 {
        header(h, "x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!((700..=705).contains(&tokens(&h)), "{h:?}");
    // Full again after 3 requests at one a second, and 300 tokens at 1000 a minute.
    let secs = |name: &str| -> f64 {
        let v = header(&h, name).unwrap();
        v.strip_suffix('s')
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {v}"))
    };
    assert!(
        (2.5..=3.0).contains(&secs("x-ratelimit-reset-requests")),
        "{h:?}"
    );
    assert!(
        (17.5..=18.0).contains(&secs("x-ratelimit-reset-tokens")),
        "{h:?}"
    );

    // A refusal carries the binding bucket and how long to wait for it.
    let e = limiter.admit(&key, &limits, 800).await.unwrap_err();
    assert!(
        matches!(e, LimitRejection::Tokens { limit: 1_000, .. }),
        "{e:?}"
    );
    let h = e.headers();
    assert!((700..=710).contains(&tokens(&h)), "{h:?}");
    let wait: u64 = header(&h, "retry-after-ms").unwrap().parse().unwrap();
    // 100 more tokens at 1000 a minute: about 6 s.
    assert!((5_500..=6_000).contains(&wait), "retry-after-ms {wait}");
}

#[tokio::test]
async fn a_redis_refusal_waits_for_every_bucket_that_refuses() {
    let Some(redis) = RedisServer::start("redis_slowest_bucket") else {
        return;
    };
    let limiter = shared(&redis, OnRedisError::FailClosed, 1);
    refused_for_as_long_as_the_slowest_bucket_needs(&limiter).await;
}

#[tokio::test]
async fn a_settle_from_before_a_raise_keeps_the_raised_bucket_in_redis() {
    let Some(redis) = RedisServer::start("redis_settle_after_raise") else {
        return;
    };
    let window = Duration::from_secs(3);
    let settings = LimiterSettings {
        backend: Backend::Redis { url: redis.url() },
        redis_timeout: Duration::from_millis(500),
        on_redis_error: OnRedisError::FailClosed,
        window,
        ..LimiterSettings::default()
    };
    let limiter = Limiter::new(settings, Arc::new(NoMonthlyUsage)).unwrap();
    a_settle_from_before_a_raise_keeps_the_raised_bucket(&limiter, window).await;
}

fn quota(tokens_per_month: u64) -> PlanLimits {
    PlanLimits {
        tokens_per_month: Some(tokens_per_month),
        ..PlanLimits::default()
    }
}

/// Asserts `e` is the retryable answer of a month held by requests in flight
/// (read through the answer, so that it reads the same of the code before
/// it, which answered the final `insufficient_quota`).
fn assert_held(e: &LimitRejection) {
    assert_eq!(e.label(), "monthly_quota_held", "{e:?}");
    assert_eq!(
        (e.status().as_u16(), e.code()),
        (429, "rate_limit_exceeded")
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(header(&e.headers(), "x-should-retry"), None);
}

/// Two gateways on one Redis: a request of tenant `dental` in flight on one
/// reserves more than its reseller's month has left; tenant `realty`, on the
/// other, is told to retry in seconds (it was told the month was used up,
/// which SDKs do not retry), and is admitted once the request settled at its
/// real usage. The month used up for real is still final.
#[tokio::test]
async fn a_month_held_in_redis_by_a_request_in_flight_is_a_retryable_refusal() {
    let Some(redis) = RedisServer::start("month_held_in_redis") else {
        return;
    };
    let a = shared(&redis, OnRedisError::FailClosed, 2);
    let b = shared(&redis, OnRedisError::FailClosed, 2);
    let limits = EffectiveLimits::new(&quota(100_000), &quota(1000));
    let (dental, realty) = (
        LimitKey::new("acme", "dental"),
        LimitKey::new("acme", "realty"),
    );

    let mut huge = a.admit(&dental, &limits, 5000).await.unwrap();
    assert!(huge.is_shared());
    let e = b.admit(&realty, &limits, 26).await.unwrap_err();
    assert_held(&e);
    assert_eq!(e.level(), Some(Level::Reseller));
    // Refused at the reseller's level, it reserved nothing at its own.
    let mut r = redis.client();
    assert_eq!(redis_month(&mut r, &month_key(Some("realty"))), None);
    huge.settle(30);
    drop(huge);
    wait_for(|| async {
        match b.admit(&realty, &limits, 26).await {
            Ok(mut adm) => {
                adm.settle(0);
                true
            }
            Err(e) => {
                assert_held(&e);
                false
            }
        }
    })
    .await;

    let mut big = a.admit(&dental, &limits, 900).await.unwrap();
    big.settle(970);
    drop(big);
    wait_for(|| async {
        match b.admit(&realty, &limits, 1).await {
            Err(e @ LimitRejection::MonthlyQuota { .. }) => {
                assert_eq!(e.code(), "insufficient_quota");
                true
            }
            Err(e) => {
                assert_held(&e);
                false
            }
            // Before the settle lands, 900 are held and 70 free.
            Ok(mut adm) => {
                adm.settle(0);
                false
            }
        }
    })
    .await;
    assert_eq!(redis_month(&mut r, &month_key(None)), Some((1000, 0)));
}

/// A request that reserves nothing (a token count, admitted for 0) is not
/// held out of the month by other requests' reservations, in Redis as
/// locally: one admitted for more than the month had left refused it with
/// "reserved by requests in flight, Requested 0".
#[tokio::test]
async fn a_request_reserving_nothing_is_not_held_out_of_the_month_in_redis() {
    let Some(redis) = RedisServer::start("nothing_reserved_not_held") else {
        return;
    };
    let a = shared(&redis, OnRedisError::FailClosed, 1);
    let limits = EffectiveLimits::new(&quota(100_000), &quota(1000));
    let (dental, realty) = (
        LimitKey::new("acme", "dental"),
        LimitKey::new("acme", "realty"),
    );
    let _huge = a.admit(&dental, &limits, 5000).await.unwrap();
    assert_held(&a.admit(&realty, &limits, 1).await.unwrap_err());
    let count = a.admit(&realty, &limits, 0).await;
    assert!(count.as_ref().is_ok_and(|c| c.is_shared()), "{count:?}");
}

/// A gateway that dies with requests in flight never settles them: their
/// reservations stop holding the month after one to two generations of
/// `reservation_hold`, and are not counted as used (the usage of a crashed
/// gateway's requests is unknown, as the local backend's is after a crash).
/// They held it until the month's end, refused as used up.
#[tokio::test]
async fn a_dead_gateways_reservations_stop_holding_the_month() {
    let Some(redis) = RedisServer::start("dead_gateway_reservations") else {
        return;
    };
    let hold = Duration::from_millis(400);
    let gateway = || {
        let settings = LimiterSettings {
            backend: Backend::Redis { url: redis.url() },
            redis_timeout: Duration::from_millis(500),
            on_redis_error: OnRedisError::FailClosed,
            reservation_hold: hold,
            ..LimiterSettings::default()
        };
        Limiter::new(settings, Arc::new(NoMonthlyUsage)).unwrap()
    };
    let (dead, live) = (gateway(), gateway());
    let limits = EffectiveLimits::new(&quota(100_000), &quota(1000));
    let dental = LimitKey::new("acme", "dental");
    // Forgotten: neither settled nor dropped, as when its process is killed.
    std::mem::forget(dead.admit(&dental, &limits, 5000).await.unwrap());
    let realty = LimitKey::new("acme", "realty");
    let start = Instant::now();
    assert_held(&live.admit(&realty, &limits, 26).await.unwrap_err());
    let admitted = loop {
        match live.admit(&realty, &limits, 26).await {
            Ok(adm) => break adm,
            Err(e) => assert_held(&e),
        }
        assert!(start.elapsed() < 3 * hold, "still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(start.elapsed() >= hold / 2, "released too early");
    drop(admitted);
    let mut r = redis.client();
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_month(&mut r, &month_key(None)) != Some((26, 0)) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            redis_month(&mut r, &month_key(None))
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A rolling upgrade from the month counters before 2026-12-07 (a string per
/// level and month): the month hash, created at its first admission, starts
/// from the counter, rather than from this instance's ledger alone.
#[tokio::test]
async fn a_month_counted_before_the_upgrade_carries_on() {
    use redis::Commands;
    let Some(redis) = RedisServer::start("month_counter_upgrade") else {
        return;
    };
    let mut r = redis.client();
    let old = month_key(None);
    let old = old.strip_suffix(":q").unwrap();
    let _: () = r.set(old, 990).unwrap();
    let limiter = shared(&redis, OnRedisError::FailClosed, 1);
    let limits = EffectiveLimits::new(&PlanLimits::default(), &quota(1000));
    let key = LimitKey::new("acme", "dental");
    let mut adm = limiter.admit(&key, &limits, 5).await.unwrap();
    adm.settle(20);
    drop(adm);
    wait_for(|| async {
        match limiter.admit(&key, &limits, 1).await {
            Err(LimitRejection::MonthlyQuota { used, .. }) => {
                assert_eq!(used, 1010);
                true
            }
            // Before the settle lands: 990 settled, 5 held.
            Ok(mut adm) => {
                adm.settle(0);
                false
            }
            Err(e) => panic!("{e:?}"),
        }
    })
    .await;
}

// ------------------------------------------- one tenant id at two resellers

const GLOBEX_DENTAL_KEY: &str = "sk-globex-dental-key";

/// The standard tenancy (tests/support) plus a tenant `dental` at globex
/// too, on plan `pro` like acme's `dental`, whose limits are `pro_limits`;
/// `extra` is appended (e.g. `[usage]`).
fn same_tenant_id_at_two_resellers(
    mock: &crate::support::MockProvider,
    pro_limits: &str,
    extra: &str,
) -> String {
    let config = crate::support::standard_config(&mock.base_url(), "")
        .replace("name = \"pro\"\n", &format!("name = \"pro\"\n{pro_limits}\n"))
        + &format!(
            "\n[[resellers.tenants]]\nid = \"dental\"\nplan = \"pro\"\nkey_hashes = [\"{}\"]\n\n{extra}",
            crate::support::hash(GLOBEX_DENTAL_KEY)
        );
    assert!(config.contains(pro_limits));
    config
}

/// A chat for the built-in mock as `key` at `host`.
async fn chat_as(gw: &crate::support::TestGateway, host: &str, key: &str) -> reqwest::Response {
    let body = json!({"model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]});
    crate::support::post(gw, "/v1/chat/completions", Some(host), Some(key), &body).await
}

/// The usage record of `resp`'s request: (reseller, tenant, status).
async fn who_and_status(
    gw: &crate::support::TestGateway,
    resp: &reqwest::Response,
) -> (String, String, u64) {
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let r = gw.usage_for(&id).await;
    (
        r["reseller"].as_str().unwrap().to_owned(),
        r["tenant"].as_str().unwrap().to_owned(),
        r["status"].as_u64().unwrap(),
    )
}

/// Tenant ids are unique within a reseller only: acme's `dental` using up
/// its requests per minute leaves globex's `dental` its whole bucket, and
/// each one's usage records name its own reseller.
#[tokio::test]
async fn a_tenant_id_at_two_resellers_has_two_request_buckets() {
    use crate::support::{ACME_DENTAL, ACME_HOST, GLOBEX_HOST};
    let mock = crate::support::MockProvider::start().await;
    let gw = crate::support::TestGateway::start(&same_tenant_id_at_two_resellers(
        &mock,
        "requests_per_minute = 3",
        "",
    ))
    .await;
    for i in 0..3 {
        let resp = chat_as(&gw, ACME_HOST, ACME_DENTAL.2).await;
        assert_eq!(resp.status(), 200, "acme/dental request {i}");
        assert_eq!(
            who_and_status(&gw, &resp).await,
            ("acme".into(), "dental".into(), 200)
        );
    }
    let resp = chat_as(&gw, ACME_HOST, ACME_DENTAL.2).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        who_and_status(&gw, &resp).await,
        ("acme".into(), "dental".into(), 429)
    );
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "requests", "{err}");

    // Globex's dental: a full bucket of its own.
    for i in 0..3 {
        let resp = chat_as(&gw, GLOBEX_HOST, GLOBEX_DENTAL_KEY).await;
        assert_eq!(resp.status(), 200, "globex/dental request {i}");
        assert_eq!(
            resp.headers()["x-ratelimit-remaining-requests"],
            (2 - i).to_string().as_str(),
            "globex/dental request {i}"
        );
        assert_eq!(
            who_and_status(&gw, &resp).await,
            ("globex".into(), "dental".into(), 200)
        );
    }
    let resp = chat_as(&gw, GLOBEX_HOST, GLOBEX_DENTAL_KEY).await;
    assert_eq!(resp.status(), 429, "and it is limited too");
    assert_eq!(
        who_and_status(&gw, &resp).await,
        ("globex".into(), "dental".into(), 429)
    );
    gw.shutdown().await;
}

/// Acme's `dental` using up its month (tokens counted in the ledger) leaves
/// globex's `dental` its own, also after a restart, when each month is read
/// back from the ledger.
#[tokio::test]
async fn a_tenant_id_at_two_resellers_has_two_months() {
    use crate::support::{ACME_DENTAL, ACME_HOST, GLOBEX_HOST};
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!(
        "[usage]\nspool_dir = \"{}\"\nsqlite_path = \"{}\"\n",
        dir.path().join("spool").display(),
        dir.path().join("usage.db").display()
    );
    let mock = crate::support::MockProvider::start().await;
    let toml = same_tenant_id_at_two_resellers(&mock, "tokens_per_month = 200", &ledger);
    let gw = crate::support::TestGateway::start(&toml).await;
    let mut served = 0;
    loop {
        let resp = chat_as(&gw, ACME_HOST, ACME_DENTAL.2).await;
        if resp.status() == 429 {
            let err: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(err["error"]["code"], "insufficient_quota", "{err}");
            break;
        }
        assert_eq!(resp.status(), 200);
        served += 1;
        assert!(served < 100, "the quota never bound");
    }
    assert!(served >= 1);
    let resp = chat_as(&gw, GLOBEX_HOST, GLOBEX_DENTAL_KEY).await;
    assert_eq!(resp.status(), 200, "globex/dental's month is its own");
    assert_eq!(
        who_and_status(&gw, &resp).await,
        ("globex".into(), "dental".into(), 200)
    );
    let app = gw.gateway.as_ref().unwrap().app().clone();
    assert!(app.usage.flush(Duration::from_secs(5)));
    drop(app);
    gw.shutdown().await;

    // A new process reads each month back from the ledger by reseller and tenant.
    let gw = crate::support::TestGateway::start(&toml).await;
    let resp = chat_as(&gw, ACME_HOST, ACME_DENTAL.2).await;
    assert_eq!(
        resp.status(),
        429,
        "acme/dental's month survives the restart"
    );
    let resp = chat_as(&gw, GLOBEX_HOST, GLOBEX_DENTAL_KEY).await;
    assert_eq!(
        resp.status(),
        200,
        "globex/dental is not charged acme/dental's month"
    );
    gw.shutdown().await;
}

/// Acme's `dental` whose own provider key keeps failing opens the breaker of
/// that key; globex's `dental`, with its own key on the same provider, is
/// still served (a breaker keyed by tenant id alone would answer it 503).
#[tokio::test]
async fn a_tenant_id_at_two_resellers_has_two_breakers() {
    use crate::support::{ACME_DENTAL, ACME_HOST, GLOBEX_HOST};
    const KEK_ENV: &str = "LIVERY_TEST_LIMITS_KEK";
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(KEK_ENV, livery::vault::generate_kek().unwrap()));
    let mut ring = livery::vault::Keyring::default();
    ring.add(Arc::new(
        livery::vault::EnvKek::load("limits-kek", KEK_ENV).unwrap(),
    ));
    let seal = |owner: &str, key: &str| {
        ring.seal(
            &livery::vault::CredentialOwner::parse(owner).unwrap(),
            "upstream",
            key,
        )
        .unwrap()
        .to_sealed_string()
    };
    let mock = crate::support::MockProvider::start().await;
    let acme_line = format!("key_hashes = [\"{}\"]", crate::support::hash(ACME_DENTAL.2));
    let globex_line = format!(
        "key_hashes = [\"{}\"]",
        crate::support::hash(GLOBEX_DENTAL_KEY)
    );
    let toml = same_tenant_id_at_two_resellers(&mock, "", "")
        .replace(
            "retries_per_route = 0\n",
            "retries_per_route = 0\nbreaker_failures = 1\nbreaker_cooldown_ms = 60000\n",
        )
        .replace(
            &acme_line,
            &format!(
                "{acme_line}\ncredentials = {{ upstream = \"{}\" }}",
                seal("tenant:acme/dental", "sk-acme-dental-own-1")
            ),
        )
        .replace(
            &globex_line,
            &format!(
                "{globex_line}\ncredentials = {{ upstream = \"{}\" }}",
                seal("tenant:globex/dental", "sk-globex-dental-own-2")
            ),
        )
        + &format!("\n[vault]\n[[vault.keks]]\nid = \"limits-kek\"\nenv = \"{KEK_ENV}\"\n");
    assert_eq!(toml.matches("credentials = { upstream").count(), 2);
    let gw = crate::support::TestGateway::start(&toml).await;
    let chat = |host: &'static str, key: &'static str, fail: bool| {
        let mut body = crate::support::chat_body("gpt-4o-mini");
        if fail {
            body["mock"] = json!({"status": 500});
        }
        let gw = &gw;
        async move {
            crate::support::post(gw, "/v1/chat/completions", Some(host), Some(key), &body).await
        }
    };
    assert_eq!(chat(ACME_HOST, ACME_DENTAL.2, true).await.status(), 500);
    let resp = chat(ACME_HOST, ACME_DENTAL.2, false).await;
    assert_eq!(
        crate::support::error_code(resp, 503).await,
        "routes_unavailable",
        "acme/dental's key is behind its open breaker"
    );
    let before = mock.requests().len();
    let resp = chat(GLOBEX_HOST, GLOBEX_DENTAL_KEY, false).await;
    assert_eq!(resp.status(), 200, "globex/dental's breaker is its own");
    assert_eq!(
        who_and_status(&gw, &resp).await,
        ("globex".into(), "dental".into(), 200)
    );
    assert_eq!(
        mock.requests()[before].headers["authorization"],
        "Bearer sk-globex-dental-own-2"
    );
    gw.shutdown().await;
}
