//! What a bench phase measured, and how it is shown: a human summary or one JSON
//! object whose field names scripts rely on (`bench/cluster.sh` reads `ops_per_sec`
//! and `p99_ms`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds with 3 significant figures: a value is off
/// by at most 0.1 %.
pub const SIGNIFICANT_FIGURES: u8 = 3;

/// Why an operation failed. Failures are counted, never latency samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The node answered with a status that is not a success for this operation.
    Status(u16),
    /// No answer: refused, reset or closed connection, unreadable body.
    Connection,
    /// No answer within `--timeout-ms`.
    Timeout,
    /// An error reply over RESP (`-ERR ...`).
    Resp,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Status(code) => write!(f, "http_{code}"),
            ErrorKind::Connection => f.write_str("connection"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Resp => f.write_str("resp_error"),
        }
    }
}

/// What one phase (load or measurement) did, merged over its clients.
#[derive(Debug)]
pub struct PhaseResult {
    /// Latency in µs of every successful op (hits and misses).
    pub latency_us: Histogram<u64>,
    /// Reads answered `404`: successful, but the key was not there.
    pub misses: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// The first error's detail (answer body or cause) of each kind.
    pub error_examples: BTreeMap<ErrorKind, String>,
    pub elapsed: Duration,
    /// Over time (the measured phase only): set by the phase, not merged.
    pub timeline: Option<super::timeline::Timeline>,
}

impl PhaseResult {
    /// An empty result whose histogram holds latencies up to `max_latency`.
    ///
    /// # Errors
    /// If `max_latency` is too short for a histogram (below 2 µs).
    pub fn new(max_latency: Duration) -> anyhow::Result<PhaseResult> {
        let high = u64::try_from(max_latency.as_micros()).unwrap_or(u64::MAX);
        let latency_us = Histogram::new_with_bounds(1, high.max(2), SIGNIFICANT_FIGURES)
            .map_err(|error| anyhow::anyhow!("cannot create a latency histogram: {error:?}"))?;
        Ok(PhaseResult {
            latency_us,
            misses: 0,
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            elapsed: Duration::ZERO,
            timeline: None,
        })
    }

    pub fn record_success(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros);
    }

    pub fn record_error(&mut self, kind: ErrorKind, detail: String) {
        *self.errors.entry(kind).or_insert(0) += 1;
        self.error_examples.entry(kind).or_insert(detail);
    }

    /// Adds another client's counts; the elapsed time is the phase's, set by the caller.
    ///
    /// # Errors
    /// If the histograms were built with different bounds (a bug).
    pub fn merge(&mut self, other: &PhaseResult) -> anyhow::Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .map_err(|error| anyhow::anyhow!("cannot merge latency histograms: {error:?}"))?;
        self.misses += other.misses;
        for (kind, count) in &other.errors {
            *self.errors.entry(*kind).or_insert(0) += count;
        }
        for (kind, detail) in &other.error_examples {
            self.error_examples
                .entry(*kind)
                .or_insert_with(|| detail.clone());
        }
        Ok(())
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The numbers of one phase; field names are part of `--json`'s contract.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Successful operations (read misses included).
    pub ops: u64,
    pub misses: u64,
    pub errors: u64,
    /// Error counts by kind: `http_503`, `connection`, `timeout`, ...
    pub errors_by_kind: BTreeMap<String, u64>,
    /// One example per error kind: the node's answer, or why there was none.
    pub error_examples: BTreeMap<String, String>,
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn micros_to_ms(micros: u64) -> f64 {
    // Latencies are far below 2^53 µs, so the conversion is exact.
    micros as f64 / 1000.0
}

impl Summary {
    pub fn of(result: &PhaseResult) -> Summary {
        let histogram = &result.latency_us;
        let seconds = result.elapsed.as_secs_f64();
        let ops = histogram.len();
        let ops_per_sec = if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        };
        let quantile = |q: f64| micros_to_ms(histogram.value_at_quantile(q));
        Summary {
            ops,
            misses: result.misses,
            errors: result.error_count(),
            errors_by_kind: result
                .errors
                .iter()
                .map(|(kind, count)| (kind.to_string(), *count))
                .collect(),
            error_examples: result
                .error_examples
                .iter()
                .map(|(kind, detail)| (kind.to_string(), detail.clone()))
                .collect(),
            seconds,
            ops_per_sec,
            mean_ms: if ops == 0 {
                0.0
            } else {
                histogram.mean() / 1000.0
            },
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: if ops == 0 {
                0.0
            } else {
                micros_to_ms(histogram.max())
            },
        }
    }

    /// `0 errors` or `3 errors (http_503: 2, timeout: 1)`.
    pub fn errors_line(&self) -> String {
        if self.errors_by_kind.is_empty() {
            return format!("{} errors", self.errors);
        }
        let kinds: Vec<String> = self
            .errors_by_kind
            .iter()
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect();
        format!("{} errors ({})", self.errors, kinds.join(", "))
    }

    /// The human summary, several lines, no trailing newline.
    pub fn render(&self) -> String {
        let mut text = format!(
            "ops:      {} in {:.2} s = {:.0} ops/s ({} misses)\n",
            self.ops, self.seconds, self.ops_per_sec, self.misses
        );
        text.push_str(&format!(
            "latency:  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3} (ms)\n",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.mean_ms
        ));
        text.push_str(&format!("errors:   {}", self.errors_line()));
        for (kind, detail) in &self.error_examples {
            text.push_str(&format!("\n  first {kind}: {detail}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_with(latencies_us: impl IntoIterator<Item = u64>, seconds: u64) -> PhaseResult {
        let mut result = PhaseResult::new(Duration::from_secs(60)).expect("valid bounds");
        for micros in latencies_us {
            result.record_success(Duration::from_micros(micros));
        }
        result.elapsed = Duration::from_secs(seconds);
        result
    }

    /// 1..=1000 µs once each: every quantile q is the value q·1000 (exact below 2048 µs
    /// at 3 significant figures), and the rate is ops over elapsed seconds.
    #[test]
    fn summary_reads_percentiles_from_the_histogram() {
        let summary = Summary::of(&result_with(1..=1000, 4));
        assert_eq!(summary.ops, 1000);
        assert!((summary.ops_per_sec - 250.0).abs() < 1e-9);
        assert!((summary.p50_ms - 0.500).abs() < 1e-9, "{}", summary.p50_ms);
        assert!((summary.p90_ms - 0.900).abs() < 1e-9, "{}", summary.p90_ms);
        assert!((summary.p99_ms - 0.990).abs() < 1e-9, "{}", summary.p99_ms);
        assert!(
            (summary.p999_ms - 0.999).abs() < 1e-9,
            "{}",
            summary.p999_ms
        );
        assert!((summary.max_ms - 1.000).abs() < 1e-9, "{}", summary.max_ms);
        assert!(
            (summary.mean_ms - 0.5005).abs() < 1e-6,
            "{}",
            summary.mean_ms
        );
    }

    /// Above 2048 µs values share buckets: a 3-significant-figure histogram must still
    /// land within 0.1 % of the true value.
    #[test]
    fn large_latencies_keep_three_significant_figures() {
        let summary = Summary::of(&result_with([1_234_567], 1));
        assert!(
            (summary.p50_ms - 1234.567).abs() <= 1.235,
            "{}",
            summary.p50_ms
        );
        assert!(
            (summary.max_ms - 1234.567).abs() <= 1.235,
            "{}",
            summary.max_ms
        );
    }

    #[test]
    fn an_empty_phase_reports_zeros_not_nan() {
        let summary = Summary::of(&result_with([], 0));
        assert_eq!(summary.ops, 0);
        for value in [
            summary.ops_per_sec,
            summary.mean_ms,
            summary.p50_ms,
            summary.p99_ms,
            summary.max_ms,
        ] {
            assert!(value == 0.0, "{summary:?}");
        }
    }

    /// Errors are counted by kind and never become latency samples; merging adds
    /// counts and histograms.
    #[test]
    fn merge_adds_samples_misses_and_errors_by_kind() {
        let mut total = result_with([100, 200], 0);
        let mut other = result_with([300], 0);
        other.misses = 1;
        other.record_error(ErrorKind::Status(503), "first 503".to_owned());
        other.record_error(ErrorKind::Status(503), "second 503".to_owned());
        other.record_error(ErrorKind::Timeout, "slow".to_owned());
        total.record_error(ErrorKind::Connection, "refused".to_owned());
        total.merge(&other).expect("same bounds");
        total.elapsed = Duration::from_secs(1);
        let summary = Summary::of(&total);
        assert_eq!(summary.ops, 3);
        assert_eq!(summary.misses, 1);
        assert_eq!(summary.errors, 4);
        assert_eq!(
            summary.errors_line(),
            "4 errors (connection: 1, http_503: 2, timeout: 1)"
        );
        assert!((summary.max_ms - 0.3).abs() < 1e-9);
        assert_eq!(summary.error_examples["http_503"], "first 503");
        assert!(summary.render().contains("first connection: refused"));
    }

    #[test]
    fn latencies_past_the_bound_saturate_instead_of_failing() {
        let mut result = PhaseResult::new(Duration::from_millis(10)).expect("valid bounds");
        result.record_success(Duration::from_secs(5));
        assert_eq!(result.latency_us.len(), 1);
        assert!(result.latency_us.max() <= 10_100);
    }

    #[test]
    fn json_carries_the_fields_scripts_read() {
        let summary = Summary::of(&result_with([1000], 1));
        let json = serde_json::to_value(&summary).expect("serializable");
        for field in [
            "ops",
            "errors",
            "seconds",
            "ops_per_sec",
            "p50_ms",
            "p99_ms",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["errors_by_kind"], serde_json::json!({}));
    }
}
