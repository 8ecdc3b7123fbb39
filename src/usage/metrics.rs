//! The ledger's state as Prometheus text, for the operator's `/metrics`:
//! how far each sink lags behind the spool and how deliveries go.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `livery_usage_spool_bytes` | gauge | |
//! | `livery_usage_spool_max_bytes` | gauge | |
//! | `livery_usage_spool_segments` | gauge | |
//! | `livery_usage_spool_appended_events_total` | counter | |
//! | `livery_usage_spool_writes_total` | counter | |
//! | `livery_usage_spool_refused_events_total` | counter | |
//! | `livery_usage_spool_write_errors_total` | counter | |
//! | `livery_usage_spool_fsync_errors_total` | counter | |
//! | `livery_usage_spool_skipped_lines_total` | counter | |
//! | `livery_usage_sink_lag_bytes` | gauge | `sink` |
//! | `livery_usage_sink_lag_events` | gauge | `sink` |
//! | `livery_usage_sink_delivered_events_total` | counter | `sink` |
//! | `livery_usage_sink_failed_deliveries_total` | counter | `sink` |
//! | `livery_usage_sink_up` | gauge | `sink` (0 while failing) |
//! | `livery_usage_sink_failing_seconds` | gauge | `sink` |
//!
//! And, from every usage record as it is written (whatever the ledger):
//!
//! | series | type | labels |
//! |---|---|---|
//! | `livery_requests_in_flight` | gauge | (requests whose record is not written yet) |
//! | `livery_requests_total` | counter | `endpoint`, `outcome` |
//! | `livery_request_duration_seconds` | histogram | `endpoint` (request start to record: a stream's whole length) |
//! | `livery_time_to_first_byte_seconds` | histogram | `endpoint` (request start to the upstream's first byte) |
//! | `livery_tokens_total` | counter | `endpoint`, `kind` (`prompt`, `completion`) |
//!
//! Counters count from the process's start.

use super::event::{Outcome, UsageRecord};
use super::ledger::{LedgerStats, SinkStats};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The endpoints a record names (`UsageRecord::endpoint`), in index order.
const ENDPOINTS: [&str; 6] = [
    "chat.completions",
    "completions",
    "embeddings",
    "messages",
    "messages.count_tokens",
    "responses",
];

/// Upper bounds of the latency buckets, in milliseconds: from a cached plain
/// answer (5 ms) to a long reasoning stream (5 min).
const BUCKETS_MS: [f64; 15] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 30_000.0,
    60_000.0, 120_000.0, 300_000.0,
];

/// A Prometheus histogram over [`BUCKETS_MS`]: each bucket counts its own
/// observations (made cumulative when rendered).
#[derive(Debug, Default)]
struct Histogram {
    /// One per bound, and `+Inf`.
    buckets: [AtomicU64; 16],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, ms: f64) {
        let i = BUCKETS_MS.partition_point(|&bound| bound < ms);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        // `as` saturates: a NaN or negative time adds 0.
        self.sum_us
            .fetch_add((ms * 1000.0) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, endpoint: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let _ = match BUCKETS_MS.get(i) {
                Some(ms) => writeln!(
                    out,
                    "{name}_bucket{{endpoint=\"{endpoint}\",le=\"{}\"}} {cumulative}",
                    ms / 1000.0
                ),
                None => writeln!(
                    out,
                    "{name}_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {cumulative}"
                ),
            };
        }
        let _ = writeln!(
            out,
            "{name}_sum{{endpoint=\"{endpoint}\"}} {}\n{name}_count{{endpoint=\"{endpoint}\"}} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed)
        );
    }
}

/// What the usage records say, counted as each is written. Endpoints and
/// outcomes are closed sets, so the series are fixed arrays: a record costs
/// a few relaxed atomic adds and no lookup (and no tenant is a label).
#[derive(Debug, Default)]
pub struct RecordStats {
    requests: [[AtomicU64; Outcome::ALL.len()]; ENDPOINTS.len()],
    duration: [Histogram; ENDPOINTS.len()],
    ttfb: [Histogram; ENDPOINTS.len()],
    /// Prompt and completion tokens.
    tokens: [[AtomicU64; 2]; ENDPOINTS.len()],
}

impl RecordStats {
    pub fn observe(&self, r: &UsageRecord) {
        let Some(e) = ENDPOINTS.iter().position(|&name| name == r.endpoint) else {
            return;
        };
        self.requests[e][r.outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.duration[e].observe(r.latency_ms);
        if let Some(ttfb) = r.ttfb_ms {
            self.ttfb[e].observe(ttfb);
        }
        for (i, n) in [r.prompt_tokens, r.completion_tokens]
            .into_iter()
            .enumerate()
        {
            if let Some(n) = n.filter(|&n| n > 0) {
                self.tokens[e][i].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Appends the record series of the module's table, with `in_flight`.
    pub fn render(&self, in_flight: usize, out: &mut String) {
        one(
            out,
            "livery_requests_in_flight",
            "gauge",
            "Requests of known tenants whose usage record is not written yet.",
            in_flight as u64,
        );
        let _ = writeln!(out, "# HELP livery_requests_total Requests of known tenants, by endpoint and outcome (as recorded).\n# TYPE livery_requests_total counter");
        for (e, endpoint) in ENDPOINTS.iter().enumerate() {
            for outcome in Outcome::ALL {
                let n = self.requests[e][outcome as usize].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "livery_requests_total{{endpoint=\"{endpoint}\",outcome=\"{}\"}} {n}",
                    outcome.as_str()
                );
            }
        }
        for (name, help, histograms) in [
            (
                "livery_request_duration_seconds",
                "Request start to usage record (a stream's whole length), by endpoint.",
                &self.duration,
            ),
            (
                "livery_time_to_first_byte_seconds",
                "Request start to the upstream's first byte, by endpoint.",
                &self.ttfb,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (h, endpoint) in histograms.iter().zip(ENDPOINTS) {
                h.render(out, name, endpoint);
            }
        }
        let _ = writeln!(out, "# HELP livery_tokens_total Tokens as recorded (reported or estimated), by endpoint and kind.\n# TYPE livery_tokens_total counter");
        for (e, endpoint) in ENDPOINTS.iter().enumerate() {
            for (i, kind) in ["prompt", "completion"].into_iter().enumerate() {
                let n = self.tokens[e][i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "livery_tokens_total{{endpoint=\"{endpoint}\",kind=\"{kind}\"}} {n}"
                );
            }
        }
    }
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn per_sink<T: std::fmt::Display>(
    out: &mut String,
    stats: &LedgerStats,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&SinkStats) -> T,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for s in &stats.sinks {
        let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", s.name, value(s));
    }
}

/// Appends every series of the table above to `out`.
pub fn render(stats: &LedgerStats, out: &mut String) {
    let sp = &stats.spool;
    one(
        out,
        "livery_usage_spool_bytes",
        "gauge",
        "Bytes of usage events in the write-ahead spool.",
        sp.bytes_on_disk,
    );
    one(
        out,
        "livery_usage_spool_max_bytes",
        "gauge",
        "Cap on the spool; events beyond it are refused.",
        sp.max_bytes,
    );
    one(
        out,
        "livery_usage_spool_segments",
        "gauge",
        "Segment files in the spool.",
        sp.segments,
    );
    one(
        out,
        "livery_usage_spool_appended_events_total",
        "counter",
        "Usage events appended to the spool.",
        sp.appended_events,
    );
    one(
        out,
        "livery_usage_spool_writes_total",
        "counter",
        "write(2) calls that carried usage events (events finishing together share one).",
        sp.writes,
    );
    one(
        out,
        "livery_usage_spool_refused_events_total",
        "counter",
        "Usage events refused because the spool was full.",
        sp.refused_events,
    );
    one(
        out,
        "livery_usage_spool_write_errors_total",
        "counter",
        "Failed spool writes.",
        sp.write_errors,
    );
    one(
        out,
        "livery_usage_spool_fsync_errors_total",
        "counter",
        "Failed spool fsyncs.",
        sp.fsync_errors,
    );
    one(
        out,
        "livery_usage_spool_skipped_lines_total",
        "counter",
        "Spool lines skipped as torn or not an event.",
        sp.skipped_lines,
    );
    if stats.sinks.is_empty() {
        return;
    }
    per_sink(
        out,
        stats,
        "livery_usage_sink_lag_bytes",
        "gauge",
        "Spooled bytes the sink has not acknowledged.",
        |s| s.lag_bytes,
    );
    per_sink(
        out,
        stats,
        "livery_usage_sink_lag_events",
        "gauge",
        "Spooled events the sink has not acknowledged.",
        |s| s.lag_events,
    );
    per_sink(
        out,
        stats,
        "livery_usage_sink_delivered_events_total",
        "counter",
        "Events the sink acknowledged.",
        |s| s.delivered_events,
    );
    per_sink(
        out,
        stats,
        "livery_usage_sink_failed_deliveries_total",
        "counter",
        "Deliveries to the sink that failed (and were retried).",
        |s| s.failed_deliveries,
    );
    per_sink(
        out,
        stats,
        "livery_usage_sink_up",
        "gauge",
        "0 while deliveries to the sink fail, else 1.",
        |s| u8::from(s.last_error.is_none()),
    );
    per_sink(
        out,
        stats,
        "livery_usage_sink_failing_seconds",
        "gauge",
        "Seconds since the sink started failing (0 when up).",
        |s| format!("{:.3}", s.failing_for_secs),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::spool::{Position, SpoolStats};

    /// Every endpoint a record can name has its series: one missing from
    /// the list is silently not counted.
    #[test]
    fn every_endpoint_has_its_series() {
        use crate::providers::Endpoint;
        let stats = RecordStats::default();
        for e in [
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Embeddings,
            Endpoint::Messages,
            Endpoint::CountTokens,
            Endpoint::Responses,
        ] {
            let mut r = crate::usage::event::tests::record();
            r.endpoint = e.name();
            r.outcome = Outcome::Ok;
            stats.observe(&r);
        }
        let mut out = String::new();
        stats.render(0, &mut out);
        for name in ENDPOINTS {
            let series = format!("livery_requests_total{{endpoint=\"{name}\",outcome=\"ok\"}} 1\n");
            assert!(out.contains(&series), "{series}");
        }
        assert!(ENDPOINTS.contains(&"messages.count_tokens"));
    }

    #[test]
    fn histograms_are_cumulative_with_prometheus_bounds() {
        let h = Histogram::default();
        for ms in [3.0, 5.0, 7.0, 400.0, 1e9] {
            h.observe(ms);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "chat.completions");
        let line = |le: &str| {
            let prefix = format!("x_bucket{{endpoint=\"chat.completions\",le=\"{le}\"}} ");
            out.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in {out}"))
                .to_owned()
        };
        // A bound holds what equals it (Prometheus's `le`).
        assert_eq!(line("0.005"), "2");
        assert_eq!(line("0.01"), "3");
        assert_eq!(line("0.25"), "3");
        assert_eq!(line("0.5"), "4");
        assert_eq!(line("300"), "4");
        assert_eq!(line("+Inf"), "5");
        assert!(
            out.contains("x_count{endpoint=\"chat.completions\"} 5"),
            "{out}"
        );
        assert!(
            out.contains("x_sum{endpoint=\"chat.completions\"} 1000000.415"),
            "{out}"
        );
    }

    #[test]
    fn renders_spool_and_per_sink_series() {
        let stats = LedgerStats {
            spool: SpoolStats {
                bytes_on_disk: 1234,
                appended_events: 7,
                writes: 2,
                ..SpoolStats::default()
            },
            sinks: vec![SinkStats {
                name: "redis".into(),
                cursor: Position::default(),
                lag_bytes: 99,
                lag_events: 3,
                delivered_events: 4,
                failed_deliveries: 2,
                last_error: Some("down".into()),
                failing_for_secs: 1.5,
            }],
        };
        let mut out = String::new();
        render(&stats, &mut out);
        for want in [
            "livery_usage_spool_bytes 1234\n",
            "livery_usage_spool_appended_events_total 7\n",
            "livery_usage_spool_writes_total 2\n",
            "# TYPE livery_usage_sink_lag_bytes gauge\nlivery_usage_sink_lag_bytes{sink=\"redis\"} 99\n",
            "livery_usage_sink_lag_events{sink=\"redis\"} 3\n",
            "livery_usage_sink_failed_deliveries_total{sink=\"redis\"} 2\n",
            "livery_usage_sink_up{sink=\"redis\"} 0\n",
            "livery_usage_sink_failing_seconds{sink=\"redis\"} 1.500\n",
        ] {
            assert!(out.contains(want), "{want:?} not in\n{out}");
        }
    }
}
