//! Cost of unsealing one provider key per request (issue 3): unwrap the data key
//! under the KEK, then open the credential; both AES-256-GCM via `ring`.

use criterion::{criterion_group, criterion_main, Criterion};
use livery::vault::{CredentialOwner, EnvKek, Keyring};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn unseal(c: &mut Criterion) {
    std::env::set_var(
        "LIVERY_BENCH_KEK",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    );
    let mut ring = Keyring::default();
    match EnvKek::load("bench", "LIVERY_BENCH_KEK") {
        Ok(k) => ring.add(Arc::new(k)),
        Err(e) => {
            eprintln!("cannot load the bench KEK: {e}");
            return;
        }
    }
    let owner = CredentialOwner::Tenant {
        reseller: "acme".into(),
        tenant: "dental".into(),
    };
    let Ok(sealed) = ring.seal(
        &owner,
        "openai",
        "sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH",
    ) else {
        eprintln!("cannot seal");
        return;
    };
    let mut g = c.benchmark_group("vault");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("unseal", |b| {
        b.iter(|| black_box(ring.unseal(black_box(&sealed), &owner, "openai").is_ok()))
    });
    g.bench_function("seal", |b| {
        b.iter(|| {
            black_box(
                ring.seal(&owner, "openai", black_box("sk-proj-0123456789abcdef"))
                    .is_ok(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, unseal);
criterion_main!(benches);
