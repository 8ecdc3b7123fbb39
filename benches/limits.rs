//! Cost of one admission (issue 4): check and charge a tenant's and its
//! reseller's request bucket, token bucket, concurrency slot and month, then
//! settle and release. Local (in process) and Redis on loopback (one Lua script
//! round trip; settle and release go through the background worker). The Redis
//! cases start `redis-server` on a free port (`LIVERY_REDIS_SERVER`, else
//! `PATH`) and are skipped without it.
//!
//!   cargo bench --bench limits

use criterion::{criterion_group, criterion_main, Criterion};
use livery::limits::{
    Backend, EffectiveLimits, LimitKey, Limiter, LimiterSettings, NoMonthlyUsage, PlanLimits,
};
use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn all_limits(n: u64) -> PlanLimits {
    PlanLimits {
        requests_per_minute: Some(n),
        tokens_per_minute: Some(n),
        tokens_per_month: Some(n),
        max_concurrent: Some(n),
        default_completion_tokens: None,
    }
}

/// One admission of `key`, settled and dropped; `n` of them, `parallel` at a time.
async fn run(limiter: &Limiter, key: &LimitKey, limits: &EffectiveLimits, n: u64, parallel: u64) {
    let one = || async {
        match limiter.admit(key, limits, 300).await {
            Ok(mut a) => {
                a.settle(120);
                black_box(a.rate_headers().to_headers().len());
            }
            Err(e) => {
                black_box(e);
            }
        }
    };
    if parallel <= 1 {
        for _ in 0..n {
            one().await;
        }
    } else {
        for _ in 0..n.div_ceil(parallel) {
            futures_util::future::join_all((0..parallel).map(|_| one())).await;
        }
    }
}

fn bench(
    c: &mut Criterion,
    name: &str,
    limiter: &Limiter,
    rt: &tokio::runtime::Runtime,
    parallel: u64,
) {
    let key = LimitKey::new("acme", "dental");
    let big = all_limits(1_000_000_000_000);
    let cases = [
        ("tenant+reseller", EffectiveLimits::new(&big, &big)),
        (
            "tenant_rpm_only",
            EffectiveLimits::new(
                &PlanLimits {
                    requests_per_minute: Some(1_000_000_000_000),
                    ..PlanLimits::default()
                },
                &PlanLimits::default(),
            ),
        ),
    ];
    let mut g = c.benchmark_group(format!("limits/{name}"));
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (case, limits) in cases {
        g.bench_function(case, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(run(limiter, &key, &limits, iters, parallel));
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn local(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(limiter) = Limiter::new(LimiterSettings::default(), Arc::new(NoMonthlyUsage)) else {
        return;
    };
    bench(c, "local", &limiter, &rt, 1);
}

/// Admission cost against the number of tenants (issue 7: flat from 10 to
/// 100,000): every tenant (spread over 100 resellers) admitted once first so
/// that its buckets exist, then admissions of tenants in a scattered order.
fn local_tenants(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let big = all_limits(1_000_000_000_000);
    let limits = EffectiveLimits::new(&big, &big);
    let mut g = c.benchmark_group("limits/local_tenants");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for n in [10usize, 1_000, 10_000, 100_000] {
        let Ok(limiter) = Limiter::new(LimiterSettings::default(), Arc::new(NoMonthlyUsage)) else {
            return;
        };
        let keys: Vec<LimitKey> = (0..n)
            .map(|i| LimitKey::new(format!("reseller-{}", i % 100), format!("tenant-{i}")))
            .collect();
        rt.block_on(async {
            for key in &keys {
                if let Ok(mut a) = limiter.admit(key, &limits, 300).await {
                    a.settle(120);
                }
            }
        });
        let mut i = 0usize;
        g.bench_function(format!("{n}_tenants"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(async {
                    for _ in 0..iters {
                        // A multiplicative step scatters consecutive admissions
                        // over the whole table (no cache-friendly walk).
                        i = (i.wrapping_mul(2_654_435_761).wrapping_add(1)) % n;
                        if let Ok(mut a) = limiter.admit(&keys[i], &limits, 300).await {
                            a.settle(120);
                            black_box(a.rate_headers().to_headers().len());
                        }
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<(Server, u16)> {
    let bin = std::env::var("LIVERY_REDIS_SERVER").ok().or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
    })?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((server, port))
}

fn redis(c: &mut Criterion) {
    let Some((_server, port)) = redis_server() else {
        eprintln!("limits/redis: skipped, redis-server not found");
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let settings = LimiterSettings {
        backend: Backend::Redis {
            url: format!("redis://127.0.0.1:{port}/0"),
        },
        redis_timeout: Duration::from_secs(1),
        ..LimiterSettings::default()
    };
    let limiter = {
        let _guard = rt.enter();
        match Limiter::new(settings, Arc::new(NoMonthlyUsage)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("limits/redis: {e}");
                return;
            }
        }
    };
    // Sequential: one round trip per admission (latency).
    bench(c, "redis_sequential", &limiter, &rt, 1);
    // 32 in flight on the multiplexed connection (throughput per admission).
    bench(c, "redis_32_in_flight", &limiter, &rt, 32);
    if limiter.stats().redis_down {
        eprintln!(
            "limits/redis: redis was unreachable during the run; the numbers are the fallback's"
        );
    }
}

criterion_group!(benches, local, local_tenants, redis);
criterion_main!(benches);
