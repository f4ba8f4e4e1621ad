//! Throughput and latency over time, for the measured phase: a `Timeline` of
//! equal-width buckets (an HDR histogram each) and its SVG plot (`--plot`).
//!
//! Memory is bounded whatever the run's length: the timeline starts with 100 ms
//! buckets and, once it holds `MAX_BUCKETS`, merges neighbours pairwise and doubles
//! the width (a 24-hour run ends with 512 buckets of about 3 minutes).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Most buckets a timeline holds (each at most ~18 KB for a 10 s timeout).
pub const MAX_BUCKETS: usize = 512;
/// Width of a bucket until the run outgrows `MAX_BUCKETS` of them.
const FIRST_WIDTH: Duration = Duration::from_millis(100);
/// Enough for a p99 line on a plot (within 1 %); the summary keeps 3 figures.
const SIGNIFICANT_FIGURES: u8 = 2;

/// Latencies and errors of one phase, bucketed by when each operation finished.
#[derive(Debug)]
pub struct Timeline {
    width: Duration,
    /// Successful operations' latencies (µs) per bucket.
    buckets: Vec<Histogram<u64>>,
    errors: Vec<u64>,
    /// The histograms' highest trackable latency, µs.
    high: u64,
}

/// One bucket as `--json` and the plot show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Seconds from the phase's start to the bucket's start.
    pub t: f64,
    /// Successful operations per second within the bucket.
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

impl Timeline {
    /// An empty timeline whose histograms hold latencies up to `max_latency`.
    ///
    /// # Errors
    /// If `max_latency` is too short for a histogram.
    pub fn new(max_latency: Duration) -> anyhow::Result<Timeline> {
        let high = u64::try_from(max_latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(2);
        // Fails here, once, rather than on the hot path.
        histogram(high)?;
        Ok(Timeline {
            width: FIRST_WIDTH,
            buckets: Vec::new(),
            errors: Vec::new(),
            high,
        })
    }

    pub fn width(&self) -> Duration {
        self.width
    }

    /// Records one operation that finished `at` after the phase started: its latency
    /// if it succeeded, `None` if it failed.
    pub fn record(&mut self, at: Duration, latency: Option<Duration>) {
        let mut index = self.index(at);
        while index >= MAX_BUCKETS {
            self.coarsen();
            index = self.index(at);
        }
        while self.buckets.len() <= index {
            // `new` checked these bounds: creation cannot fail now.
            let Ok(empty) = histogram(self.high) else {
                return;
            };
            self.buckets.push(empty);
            self.errors.push(0);
        }
        match latency {
            Some(latency) => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.buckets[index].saturating_record(micros);
            }
            None => self.errors[index] += 1,
        }
    }

    fn index(&self, at: Duration) -> usize {
        usize::try_from(at.as_nanos() / self.width.as_nanos()).unwrap_or(usize::MAX)
    }

    /// Halves the resolution: bucket i of the result is buckets 2i and 2i+1.
    fn coarsen(&mut self) {
        let buckets = std::mem::take(&mut self.buckets);
        let errors = std::mem::take(&mut self.errors);
        for (pair, error_pair) in buckets.chunks(2).zip(errors.chunks(2)) {
            let mut merged = pair[0].clone();
            if let Some(second) = pair.get(1) {
                // Same bounds by construction: adding cannot fail.
                let _ = merged.add(second);
            }
            self.buckets.push(merged);
            self.errors.push(error_pair.iter().sum());
        }
        self.width *= 2;
    }

    /// The buckets as points; the last one's rate counts only the part of it the
    /// phase lasted (`elapsed`), and it is left out if that is under half of it (a
    /// rate over a sliver of time is noise).
    pub fn points(&self, elapsed: Duration) -> Vec<Point> {
        let width = self.width.as_secs_f64();
        let elapsed = elapsed.as_secs_f64();
        let last_start = self.buckets.len().saturating_sub(1) as f64 * width;
        let keep = if self.buckets.len() > 1 && elapsed - last_start < width / 2.0 {
            self.buckets.len() - 1
        } else {
            self.buckets.len()
        };
        self.buckets[..keep]
            .iter()
            .zip(&self.errors)
            .enumerate()
            .map(|(index, (bucket, errors))| {
                let start = index as f64 * width;
                let covered = (elapsed - start).clamp(0.0, width);
                let covered = if covered > 0.0 { covered } else { width };
                let ms = |q: f64| {
                    if bucket.is_empty() {
                        0.0
                    } else {
                        bucket.value_at_quantile(q) as f64 / 1000.0
                    }
                };
                Point {
                    t: start,
                    ops_per_sec: bucket.len() as f64 / covered,
                    p50_ms: ms(0.50),
                    p99_ms: ms(0.99),
                    errors: *errors,
                }
            })
            .collect()
    }
}

fn histogram(high: u64) -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, high, SIGNIFICANT_FIGURES)
        .map_err(|error| anyhow::anyhow!("cannot create a timeline histogram: {error:?}"))
}

// --- the plot ----------------------------------------------------------------------

const WIDTH: f64 = 960.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
/// Top and bottom of the throughput panel, then of the latency panel.
const PANELS: [(f64, f64); 2] = [(60.0, 260.0), (320.0, 520.0)];
const HEIGHT: f64 = 570.0;
const TICKS: u32 = 5;

/// An axis from 0: its top (a whole number of steps at or above `value`) and its
/// step (1, 2 or 5 × 10^k, about a fifth of the range).
fn axis(value: f64) -> (f64, f64) {
    let step = nice_ceiling(value / f64::from(TICKS));
    let top = (value / step).ceil().max(1.0) * step;
    (top, step)
}

/// The smallest of 1, 2, 5 × 10^k at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|top| *top >= value)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number for an axis label: no trailing zeros, thousands as `k`.
fn label(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{}k", (value / 1000.0).round())
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// One panel: frame, grid, y labels, and one polyline per series (`(name, colour,
/// values)`), x from the points' times.
fn panel(
    svg: &mut String,
    (top, bottom): (f64, f64),
    title: &str,
    times: &[f64],
    t_max: f64,
    series: &[(&str, &str, Vec<f64>)],
) {
    let (y_max, y_step) = axis(
        series
            .iter()
            .flat_map(|(_, _, values)| values.iter().copied())
            .fold(0.0, f64::max),
    );
    let x = |t: f64| LEFT + (WIDTH - LEFT - RIGHT) * (t / t_max);
    let y = |v: f64| bottom - (bottom - top) * (v / y_max);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top - 8.0,
        escape(title)
    );
    for value in ticks(y_max, y_step) {
        let (level, text_y) = (y(value), y(value) + 4.0);
        let (right, label_x, text) = (WIDTH - RIGHT, LEFT - 6.0, label(value));
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{right}" y1="{level:.1}" y2="{level:.1}" stroke="#ddd"/><text x="{label_x}" y="{text_y:.1}" font-size="11" text-anchor="end">{text}</text>"##
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        WIDTH - LEFT - RIGHT,
        bottom - top
    );
    for (index, (name, colour, values)) in series.iter().enumerate() {
        let points: Vec<String> = times
            .iter()
            .zip(values)
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let legend_x = WIDTH - RIGHT - 120.0 * (series.len() - index) as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{legend_x}" y="{}" font-size="12" fill="{colour}">{}</text>"#,
            top - 8.0,
            escape(name)
        );
    }
}

/// 0, step, 2·step, ... up to `top` (at most a few dozen).
fn ticks(top: f64, step: f64) -> impl Iterator<Item = f64> {
    (0..=40u32)
        .map(move |index| step * f64::from(index))
        .take_while(move |value| *value <= top * (1.0 + 1e-9))
}

/// An SVG document: throughput above, p50 and p99 latency below, against time.
pub fn svg(title: &str, points: &[Point], width: Duration) -> String {
    let half = width.as_secs_f64() / 2.0;
    // Each point is drawn at its bucket's middle.
    let times: Vec<f64> = points.iter().map(|point| point.t + half).collect();
    let (t_max, t_step) = axis(points.last().map_or(1.0, |point| point.t + 2.0 * half));
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16">{}</text>
"#,
        escape(title)
    );
    panel(
        &mut svg,
        PANELS[0],
        "throughput (ops/s)",
        &times,
        t_max,
        &[(
            "ops/s",
            "#1f77b4",
            points.iter().map(|point| point.ops_per_sec).collect(),
        )],
    );
    panel(
        &mut svg,
        PANELS[1],
        "latency (ms)",
        &times,
        t_max,
        &[
            ("p50", "#2ca02c", points.iter().map(|p| p.p50_ms).collect()),
            ("p99", "#d62728", points.iter().map(|p| p.p99_ms).collect()),
        ],
    );
    let bottom = PANELS[1].1;
    for t in ticks(t_max, t_step) {
        let x = LEFT + (WIDTH - LEFT - RIGHT) * (t / t_max);
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            label(t)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">seconds ({} ms buckets)</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        bottom + 36.0,
        width.as_millis()
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Every op lands in the bucket of its finishing time; errors are counted apart.
    #[test]
    fn operations_land_in_their_bucket() {
        let mut timeline = Timeline::new(Duration::from_secs(10)).expect("bounds");
        timeline.record(ms(10), Some(ms(1)));
        timeline.record(ms(99), Some(ms(3)));
        timeline.record(ms(250), Some(ms(2)));
        timeline.record(ms(260), None);
        let points = timeline.points(ms(300));
        assert_eq!(points.len(), 3);
        assert!((points[0].ops_per_sec - 20.0).abs() < 1e-9, "{points:?}");
        assert!((points[0].p99_ms - 3.0).abs() < 0.05, "{points:?}");
        assert_eq!(points[1].ops_per_sec, 0.0);
        assert_eq!(points[1].p99_ms, 0.0);
        // The last bucket lasted 100 ms of its 100: one op = 10 ops/s.
        assert!((points[2].ops_per_sec - 10.0).abs() < 1e-9, "{points:?}");
        assert_eq!(points[2].errors, 1);
    }

    /// A partial last bucket is a rate over the time it covered, not its width.
    #[test]
    fn the_last_bucket_counts_only_the_time_it_covered() {
        let mut timeline = Timeline::new(Duration::from_secs(10)).expect("bounds");
        for _ in 0..5 {
            timeline.record(ms(120), Some(ms(1)));
        }
        // 60 ms of the bucket: 5 ops = 83.3 ops/s.
        let points = timeline.points(ms(160));
        assert!(
            (points[1].ops_per_sec - 5.0 / 0.06).abs() < 1e-6,
            "{points:?}"
        );
        // Under half of it: left out.
        assert_eq!(timeline.points(ms(140)).len(), 1);
    }

    /// A long run keeps at most MAX_BUCKETS buckets and loses no operation.
    #[test]
    fn a_long_run_coarsens_without_losing_operations() {
        let mut timeline = Timeline::new(Duration::from_secs(10)).expect("bounds");
        let seconds = 600u64;
        for second in 0..seconds {
            timeline.record(Duration::from_secs(second), Some(ms(1)));
            timeline.record(Duration::from_secs(second) + ms(500), None);
        }
        assert!(timeline.buckets.len() <= MAX_BUCKETS);
        assert!(timeline.width() >= Duration::from_secs(1));
        let total: u64 = timeline.buckets.iter().map(Histogram::len).sum();
        assert_eq!(total, seconds);
        assert_eq!(timeline.errors.iter().sum::<u64>(), seconds);
        let width = timeline.width().as_secs_f64();
        let points = timeline.points(Duration::from_secs(seconds));
        let counted: f64 = points
            .iter()
            .map(|point| {
                let covered = (seconds as f64 - point.t).min(width);
                point.ops_per_sec * covered
            })
            .sum();
        assert!((counted - seconds as f64).abs() < 1e-6, "{counted}");
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(12_345.0), 20_000.0);
        assert_eq!(nice_ceiling(0.42), 0.5);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(axis(13_200.0), (15_000.0, 5_000.0));
        assert_eq!(axis(5.05), (6.0, 2.0));
        assert_eq!(ticks(6.0, 2.0).collect::<Vec<_>>(), [0.0, 2.0, 4.0, 6.0]);
        assert_eq!(label(20_000.0), "20k");
        assert_eq!(label(2.5), "2.5");
    }

    /// The plot is one SVG document with three lines of one vertex per bucket, and
    /// text from outside is escaped.
    #[test]
    fn the_plot_has_a_line_per_series_and_escapes_the_title() {
        let mut timeline = Timeline::new(Duration::from_secs(10)).expect("bounds");
        for index in 0..30u64 {
            timeline.record(ms(index * 100 + 50), Some(ms(1 + index % 4)));
        }
        let points = timeline.points(ms(3000));
        let svg = svg("write <http> & co", &points, timeline.width());
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("write &lt;http&gt; &amp; co"));
        let lines: Vec<&str> = svg.lines().filter(|l| l.contains("<polyline")).collect();
        assert_eq!(lines.len(), 3);
        for line in lines {
            assert_eq!(line.matches(',').count(), 30, "{line}");
        }
    }
}
