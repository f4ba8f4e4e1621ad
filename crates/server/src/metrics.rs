//! Prometheus metrics: one process-wide recorder, and a middleware that counts HTTP
//! requests and their latency by operation and status.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: fine below 10 ms, where the targets are.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's metrics handle, installing the recorder on first use. Several
/// servers in one process (tests) share it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let recorder = match builder.set_buckets(LATENCY_BUCKETS) {
                Ok(with_buckets) => with_buckets.build_recorder(),
                // Only fails for an empty bucket list, which LATENCY_BUCKETS is not.
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

/// Counts `ringkv_http_requests_total` and observes
/// `ringkv_http_request_duration_seconds`, both labelled by `op` and `status`.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let op = operation(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("op", op.to_string()), ("status", status)];
    metrics::counter!("ringkv_http_requests_total", &labels).increment(1);
    metrics::histogram!("ringkv_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
