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
//! Counters count from the process's start.

use super::ledger::{LedgerStats, SinkStats};
use std::fmt::Write;

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
