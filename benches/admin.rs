//! What one admin API change costs as the tenancy grows: the whole change
//! (`Admin::change` adding a tenant: merge, snapshot, store write with fsync,
//! swap), 1,000 tenants made in one change (the API's list form), and the
//! change's two big parts alone (`Snapshot::prepare` of the merged
//! configuration, `Store::save`), with 100, 10,000 and 100,000 tenants made
//! through the API (100 to a reseller). Run: `cargo bench --bench admin`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use livery::admin::{Admin, Store};
use livery::config::{GatewayConfig, ResellerConfig, TenantConfig};
use livery::tenancy::KeyDigest;
use livery::Snapshot;
use std::path::Path;
use std::time::Duration;

const TENANTS_PER_RESELLER: usize = 100;

fn base(store: &Path) -> GatewayConfig {
    GatewayConfig::parse(&format!(
        "[admin]\nstore_path = \"{}\"\n\
         [[providers]]\nname = \"mock\"\nkind = \"mock\"\n\
         [[models]]\nname = \"demo\"\nprovider = \"mock\"\n\
         [[plans]]\nname = \"basic\"\nmodels = [\"demo\"]\n",
        store.display()
    ))
    .unwrap()
}

fn tenant(i: usize) -> TenantConfig {
    serde_json::from_value(serde_json::json!({
        "id": format!("t{i}"),
        "plan": "basic",
        "key_hashes": [KeyDigest::of(&format!("sk-bench-{i:08}")).to_config_string()],
    }))
    .unwrap()
}

/// A store of `n` tenants, 100 to a reseller, written at `path`.
fn store(n: usize, path: &Path) -> Store {
    let mut store = Store::default();
    for r in 0..n.div_ceil(TENANTS_PER_RESELLER) {
        store.resellers.push(ResellerConfig {
            id: format!("r{r}"),
            name: None,
            domains: vec![format!("api.r{r}.example.com")],
            plan: None,
            tenants: (r * TENANTS_PER_RESELLER..((r + 1) * TENANTS_PER_RESELLER).min(n))
                .map(tenant)
                .collect(),
            credentials: Default::default(),
            admin_key_hashes: Vec::new(),
            branding: Default::default(),
        });
    }
    store.save(path).unwrap();
    store
}

fn admin_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("admin_change");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for n in [100usize, 10_000, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-store.json");
        let made = store(n, &path);
        let config = base(&path);
        let merged = made.merge(&config);
        g.bench_with_input(BenchmarkId::new("snapshot_prepare", n), &merged, |b, m| {
            b.iter(|| Snapshot::prepare(m).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("store_save", n), &made, |b, s| {
            b.iter(|| s.save(&path).unwrap())
        });
        let (admin, merged) = Admin::open(&config, None).unwrap().unwrap();
        let snapshot = ArcSwap::from_pointee(Snapshot::prepare(&merged).unwrap());
        let mut next = n;
        g.bench_function(BenchmarkId::new("create_tenant", n), |b| {
            b.iter(|| {
                next += 1;
                let t = tenant(next);
                admin
                    .change(&snapshot, |store, _, _| {
                        store.entry("r0").tenants.push(t);
                        Ok(())
                    })
                    .unwrap()
            })
        });
        // Each batch lands on the same store: the previous batch is removed
        // (by a change not timed) before the next is made.
        g.bench_function(BenchmarkId::new("create_1000_tenants", n), |b| {
            b.iter_batched(
                || {
                    admin
                        .change(&snapshot, |store, _, _| {
                            store.entry("r0").tenants.retain(|t| !t.id.starts_with('x'));
                            Ok(())
                        })
                        .unwrap();
                    (0..1000)
                        .map(|j| {
                            let mut t = tenant(n + 1_000_000 + j);
                            t.id = format!("x{j}");
                            t
                        })
                        .collect::<Vec<_>>()
                },
                |batch| {
                    admin
                        .change(&snapshot, |store, _, _| {
                            store.entry("r0").tenants.extend(batch);
                            Ok(())
                        })
                        .unwrap()
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, admin_change);
criterion_main!(benches);
