//! Prometheus metrics: one process-wide recorder, and a layer that counts HTTP
//! requests and their latency by operation and status.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, Request};
use axum::response::Response;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: fine below 10 ms, where the targets are.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of the histograms that count things rather than time them: powers of
/// two, up to group commit's `MAX_QUEUED_SYNCS` waiters per fdatasync. (With the
/// latency buckets, every batch of more than 10 writes fell into `+Inf`.)
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// Histograms that take `COUNT_BUCKETS`; every other histogram is a latency.
const COUNT_HISTOGRAMS: &[&str] = &["ringkv_storage_sync_batch_writes"];

/// The process's metrics handle, installing the recorder on first use. Several
/// servers in one process (tests) share it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = match with_buckets(PrometheusBuilder::new()) {
                Ok(builder) => builder.build_recorder(),
                // Only fails for an empty bucket list, which neither list is.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only ours"
                );
            }
            handle
        })
        .clone()
}

fn with_buckets(
    builder: PrometheusBuilder,
) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let mut builder = builder.set_buckets(LATENCY_BUCKETS)?;
    for name in COUNT_HISTOGRAMS {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).into()), COUNT_BUCKETS)?;
    }
    Ok(builder)
}

/// Names the operation of a request for the `op` label.
fn operation(method: &Method, path: Option<&str>) -> &'static str {
    match (path, method.as_str()) {
        (Some("/v1/kv/{*key}"), "GET") => "get",
        (Some("/v1/kv/{*key}"), "PUT") => "put",
        (Some("/v1/kv/{*key}"), "DELETE") => "delete",
        (Some("/v1/crdt/{*rest}"), "GET") => "crdt_get",
        (Some("/v1/crdt/{*rest}"), "POST") => "crdt_update",
        (Some("/health"), _) => "health",
        (Some("/metrics"), _) => "metrics",
        (Some("/v1/cluster/status"), _) => "cluster_status",
        (Some("/v1/cluster/ring"), _) => "cluster_ring",
        (Some("/v1/debug/key/{*key}"), _) => "debug_key",
        _ => "other",
    }
}

/// A layer that counts `ringkv_http_requests_total` and observes
/// `ringkv_http_request_duration_seconds`, both labelled by `op` and `status`.
///
/// A plain tower layer rather than `axum::middleware::from_fn`, which clones the
/// inner service and boxes two futures per request, and with the metric handles
/// kept per thread rather than looked up (label strings built, hashed, found in
/// the registry) on every request: together worth a few % of a node's CPU under
/// small writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> tower_layer::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

/// The service of [`TrackLayer`].
#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
}

impl<S, B> tower_service::Service<Request<B>> for Track<S>
where
    S: tower_service::Service<Request<B>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let op = operation(
            request.method(),
            request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str),
        );
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            record(op, response.status().as_u16(), started.elapsed());
            Ok(response)
        })
    }
}

/// A counter and a latency histogram per label set, kept by one thread.
pub(crate) type Handles<K> = RefCell<HashMap<K, (Counter, Histogram)>>;

/// Whether the recorder is installed: metric handles taken before are no-ops, and
/// must not be kept.
pub(crate) fn installed() -> bool {
    HANDLE.get().is_some()
}

thread_local! {
    /// Handles of the HTTP metrics by (op, status), per thread: no lock, no label
    /// strings after the first request of each kind on a thread.
    static HTTP_HANDLES: Handles<(&'static str, u16)> =
        RefCell::new(HashMap::new());
}

fn record(op: &'static str, status: u16, took: std::time::Duration) {
    let lookup = || {
        let labels = [("op", op.to_owned()), ("status", status.to_string())];
        (
            metrics::counter!("ringkv_http_requests_total", &labels),
            metrics::histogram!("ringkv_http_request_duration_seconds", &labels),
        )
    };
    if !installed() {
        let (count, latency) = lookup();
        count.increment(1);
        latency.record(took.as_secs_f64());
        return;
    }
    HTTP_HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let (count, latency) = handles.entry((op, status)).or_insert_with(lookup);
        count.increment(1);
        latency.record(took.as_secs_f64());
    });
}
