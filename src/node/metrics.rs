//! Self-monitoring counters of a node, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::graphite::LineError;

#[derive(Default)]
pub struct Metrics {
    ingested_samples: AtomicU64,
    write_errors: AtomicU64,
    fenced_writes: AtomicU64,
    replicated_batches: AtomicU64,
    applied_records: AtomicU64,
    graphite_lines: AtomicU64,
    graphite_empty: AtomicU64,
    graphite_unterminated: AtomicU64,
    graphite_bad: [AtomicU64; LineError::ALL.len()],
    queries: AtomicU64,
    query_errors: AtomicU64,
    query_micros: AtomicU64,
    folds: AtomicU64,
    folds_declined: AtomicU64,
}

impl Metrics {
    pub fn add_ingested(&self, n: u64) {
        self.ingested_samples.fetch_add(n, Relaxed);
    }
    pub fn add_write_error(&self) {
        self.write_errors.fetch_add(1, Relaxed);
    }
    pub fn add_fenced_write(&self) {
        self.fenced_writes.fetch_add(1, Relaxed);
    }
    pub fn add_replicated_batch(&self) {
        self.replicated_batches.fetch_add(1, Relaxed);
    }
    pub fn add_applied(&self) {
        self.applied_records.fetch_add(1, Relaxed);
    }
    pub fn add_graphite_lines(&self, n: u64) {
        self.graphite_lines.fetch_add(n, Relaxed);
    }
    pub fn add_empty_line(&self) {
        self.graphite_empty.fetch_add(1, Relaxed);
    }
    pub fn add_unterminated_line(&self) {
        self.graphite_unterminated.fetch_add(1, Relaxed);
    }
    pub fn add_bad_line(&self, e: LineError, line: &[u8]) {
        let i = LineError::ALL
            .iter()
            .position(|x| *x == e)
            .expect("every error is listed");
        let n = self.graphite_bad[i].fetch_add(1, Relaxed);
        // Log a sample, not every line: a flood of garbage must not flood the log.
        if n < 10 || n.is_power_of_two() {
            let shown: String = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
            tracing::warn!(
                reason = e.name(),
                count = n + 1,
                "bad graphite line: {shown:?}"
            );
        }
    }
    pub fn bad_lines(&self, e: LineError) -> u64 {
        let i = LineError::ALL
            .iter()
            .position(|x| *x == e)
            .expect("every error is listed");
        self.graphite_bad[i].load(Relaxed)
    }
    pub fn add_query(&self, micros: u64, ok: bool) {
        self.queries.fetch_add(1, Relaxed);
        self.query_micros.fetch_add(micros, Relaxed);
        if !ok {
            self.query_errors.fetch_add(1, Relaxed);
        }
    }

    /// An aggregation of a query folded where its data lives, or declined
    /// (then evaluated from gathered raw samples).
    pub fn add_fold(&self, folded: bool) {
        if folded {
            self.folds.fetch_add(1, Relaxed);
        } else {
            self.folds_declined.fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition of these counters plus `extra` lines.
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "tandem_ingested_samples_total",
            "Samples acknowledged by this node as gateway.",
            self.ingested_samples.load(Relaxed),
        );
        counter(
            "tandem_write_errors_total",
            "Writes this gateway could not get acknowledged.",
            self.write_errors.load(Relaxed),
        );
        counter(
            "tandem_fenced_writes_total",
            "Writes this node refused as a primary whose term was over (a newer primary exists).",
            self.fenced_writes.load(Relaxed),
        );
        counter(
            "tandem_replicated_batches_total",
            "Batches this node appended as primary and replicated.",
            self.replicated_batches.load(Relaxed),
        );
        counter(
            "tandem_applied_records_total",
            "Records this node applied as a replica.",
            self.applied_records.load(Relaxed),
        );
        counter(
            "tandem_graphite_lines_total",
            "Graphite lines received (good and bad).",
            self.graphite_lines.load(Relaxed),
        );
        counter(
            "tandem_graphite_empty_lines_total",
            "Blank Graphite lines (skipped, not errors).",
            self.graphite_empty.load(Relaxed),
        );
        counter(
            "tandem_graphite_unterminated_lines_total",
            "Graphite lines cut off by the connection closing (parsed if whole).",
            self.graphite_unterminated.load(Relaxed),
        );
        counter(
            "tandem_queries_total",
            "PromQL queries answered.",
            self.queries.load(Relaxed),
        );
        counter(
            "tandem_query_errors_total",
            "PromQL queries that failed.",
            self.query_errors.load(Relaxed),
        );
        counter(
            "tandem_query_folds_total",
            "Aggregations of queries folded on the nodes holding their data.",
            self.folds.load(Relaxed),
        );
        counter(
            "tandem_query_folds_declined_total",
            "Aggregations that did not fold (labels collide, too many groups) and were evaluated from raw samples.",
            self.folds_declined.load(Relaxed),
        );
        counter(
            "tandem_query_seconds_total",
            "Time spent answering queries.",
            self.query_micros.load(Relaxed) / 1_000_000,
        );
        let _ = writeln!(out, "# HELP tandem_graphite_bad_lines_total Graphite lines rejected, by reason.\n# TYPE tandem_graphite_bad_lines_total counter");
        for e in LineError::ALL {
            let _ = writeln!(
                out,
                "tandem_graphite_bad_lines_total{{reason=\"{}\"}} {}",
                e.name(),
                self.bad_lines(e)
            );
        }
        out.push_str(extra);
        out
    }
}
