//! Cost of the usage ledger (issue 6): the request path's append to the
//! write-ahead spool, and the SQLite shipper behind it.
//!
//! * `spool_append`: one event line appended (`write(2)` + wake-up), with the
//!   fsync thread and the SQLite shipper running, as in `livery serve`.
//! * `ship_sqlite_burst`: N events appended as fast as possible, then waited
//!   for until the SQLite sink has them (events/s end to end).
//! * Paced summary (printed, not a criterion figure): events appended at a
//!   fixed rate for a few seconds; the CPU time of the shipper thread
//!   (`livery-ship-sqlite`) and of the fsync thread, read from
//!   `/proc/self/task/*/stat`, as a share of one core and per event. This is the
//!   figure the load test flagged (the shipper at 41% of the gateway's CPU).
//!
//!   cargo bench --bench usage
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use livery::usage::ledger::Ledger;
use livery::usage::sinks::sqlite::SqliteSink;
use livery::usage::sinks::Sink;
use livery::usage::spool::{Spool, SpoolOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A realistic event line (about 700 bytes), unique `event_id`.
fn event_line() -> Vec<u8> {
    let i = SEQ.fetch_add(1, Ordering::Relaxed);
    let tenant = ["dental", "realty", "clinic", "office"][(i % 4) as usize];
    format!(
        concat!(
            r#"{{"v":1,"event_id":"0190a1b2-c3d4-7e5f-8a9b-{i:012x}","ts":"2025-03-04T10:00:00.123456Z","#,
            r#""ended_at":"2025-03-04T10:00:00.456789Z","request_id":"req-{i}","reseller":"acme","tenant":"{tenant}","#,
            r#""endpoint":"chat.completions","requested_model":"gpt-4o-mini","served_model":"gpt-4o-mini-2024-07-18","#,
            r#""provider":"upstream","key_owner":"platform","status":200,"outcome":"ok","error_code":null,"#,
            r#""prompt_tokens":123,"completion_tokens":45,"cached_tokens":null,"total_tokens":168,"estimated":false,"#,
            r#""stream":true,"client_disconnected":false,"latency_ms":333.3,"ttfb_ms":12.5,"#,
            r#""attempts":[{{"provider":"upstream","model":"gpt-4o-mini-2024-07-18","outcome":"ok","status":200,"latency_ms":330.1}}],"#,
            r#""cost_micros":45}}"#
        ),
        i = i,
        tenant = tenant
    )
    .into_bytes()
}

struct Setup {
    ledger: Ledger,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolOptions {
        dir: dir.path().join("spool"),
        segment_bytes: 8 << 20,
        max_bytes: 1 << 34,
        fsync_interval: Duration::from_millis(5),
    })
    .unwrap();
    let sink: Box<dyn Sink> = Box::new(SqliteSink::open(&dir.path().join("usage.db")).unwrap());
    let ledger = Ledger::start(spool, vec![sink]).unwrap();
    Setup { ledger, _dir: dir }
}

/// CPU seconds (user + system) of this process's threads whose name starts
/// with `prefix` (Linux; 0 elsewhere).
fn thread_cpu(prefix: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the `(comm)`: state is 3rd, utime 14th, stime 15th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            total += n(11) + n(12);
        }
    }
    total as f64 / tick
}

fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (n(11) + n(12)) as f64 / 100.0
}

/// Appends at `rate` events/s for `secs`, then waits for the sink; prints the
/// shipper's and fsync thread's CPU.
fn paced(rate: u64, secs: u64) {
    let s = setup();
    let n = rate * secs;
    // Warm up (tables created, first segment open).
    s.ledger.append(&event_line()).unwrap();
    assert!(s.ledger.flush(Duration::from_secs(10)));
    let ship0 = thread_cpu("livery-ship");
    let sync0 = thread_cpu("livery-spool");
    let proc0 = process_cpu();
    let start = Instant::now();
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let mut append_ns = 0u128;
    for i in 0..n {
        let line = event_line();
        let t = Instant::now();
        s.ledger.append(&line).unwrap();
        append_ns += t.elapsed().as_nanos();
        let due = start + gap * (i as u32 + 1);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
    assert!(s.ledger.flush(Duration::from_secs(30)));
    let wall = start.elapsed().as_secs_f64();
    let ship = thread_cpu("livery-ship") - ship0;
    let sync = thread_cpu("livery-spool") - sync0;
    let proc = process_cpu() - proc0;
    println!(
        "paced {rate} ev/s x {secs}s: shipper {:.1}% of a core ({:.1} us/event), fsync thread {:.1}% ({:.1} us/event), \
         process {:.1}% ; request-path append {:.2} us/event (mean)",
        100.0 * ship / wall,
        1e6 * ship / n as f64,
        100.0 * sync / wall,
        1e6 * sync / n as f64,
        100.0 * proc / wall,
        append_ns as f64 / n as f64 / 1000.0,
    );
    s.ledger.close(Duration::from_secs(5));
}

fn usage(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("usage");
    g.throughput(Throughput::Elements(1));
    g.bench_function("spool_append", |b| {
        b.iter_batched(
            event_line,
            |line| s.ledger.append(&line).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    assert!(s.ledger.flush(Duration::from_secs(60)));
    const BURST: u64 = 5000;
    g.throughput(Throughput::Elements(BURST));
    g.sample_size(10);
    g.bench_function("ship_sqlite_burst_5000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let lines: Vec<Vec<u8>> = (0..BURST).map(|_| event_line()).collect();
                let t = Instant::now();
                for l in &lines {
                    s.ledger.append(l).unwrap();
                }
                assert!(s.ledger.flush(Duration::from_secs(60)));
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    s.ledger.close(Duration::from_secs(5));
    drop(s);
    // `cargo test --all-targets` runs benches once with `--test`: skip the
    // paced runs there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for rate in [2_000, 10_000] {
        paced(rate, 3);
    }
}

criterion_group!(benches, usage);
criterion_main!(benches);
