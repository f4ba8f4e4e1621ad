//! The HTTP API of DESIGN.md §7: `/v1/kv/{key}`, `/health`, `/metrics`,
//! `/v1/cluster/status`. Handlers parse (see `request`), hand typed values to the
//! node off the async runtime, and wait for durability before acknowledging.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use ringkv_cluster::{Node, Quorum, Write, WriteBody};
use ringkv_core::{Body, Limits, ReadView, Sibling};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::request::{self, Query, VERSION_HEADER};

/// What every handler shares.
pub struct AppState {
    pub node: Arc<Node>,
    pub node_id: u64,
    pub limits: Limits,
    /// N as configured.
    pub replication_factor: u8,
    /// Replicas a key has today: min(N, members). One until replication lands.
    pub replicas: u8,
    pub read_quorum: u8,
    pub write_quorum: u8,
    pub http_addr: String,
    pub peer_addr: String,
    pub vnodes: u16,
    pub metrics: PrometheusHandle,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/kv/{*key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route("/v1/kv", any(empty_key))
        .route("/v1/kv/", any(empty_key))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .route("/v1/cluster/status", get(cluster_status))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
}

async fn empty_key() -> ApiError {
    ApiError::invalid("key is empty: use /v1/kv/{key}")
}

async fn not_found() -> Response {
    let body = json!({"error": {"code": "not_found", "message": "no such endpoint"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn render_metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn cluster_status(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "node_id": app.node_id,
        "replication_factor": app.replication_factor,
        "nodes": [{
            "id": app.node_id,
            "http_addr": app.http_addr,
            "peer_addr": app.peer_addr,
            "status": "healthy",
            "vnodes": app.vnodes,
            "hints_queued": 0,
        }],
    }))
}

impl AppState {
    /// How many replicas must answer: the request's `r`/`w`/`consistency`, or the
    /// configured default. An explicit count above N is a bad request; one above the
    /// replicas that exist is a quorum that cannot be met.
    fn required(&self, query: &Query, name: &'static str, write: bool) -> Result<u8, ApiError> {
        let default = if write {
            self.write_quorum
        } else {
            self.read_quorum
        };
        let required = match query.quorum(name)? {
            Some(Quorum::Exactly(count)) => Quorum::Exactly(count)
                .required(name, self.replication_factor)
                .map_err(|error| ApiError::invalid(error.to_string()))?,
            Some(quorum) => quorum
                .required(name, self.replicas)
                .map_err(|error| ApiError::invalid(error.to_string()))?,
            None => default.min(self.replicas),
        };
        if required > self.replicas {
            return Err(ApiError::QuorumUnavailable {
                acked: 0,
                required,
                write,
            });
        }
        Ok(required)
    }
}

/// Runs blocking node work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::Internal(format!("worker failed: {error}")))?
}

async fn get_kv(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query(), &["r", "w", "consistency"])?;
    let key = request::key_from_path(uri.path(), &app.limits)?;
    app.required(&query, "r", false)?;
    let node = app.node.clone();
    let record = blocking(move || node.read(&key).map_err(ApiError::from)).await?;
    let Some(record) = record else {
        return Err(ApiError::NotFound);
    };
    let version = record.context().to_token();
    let now_ms = app.node.now_ms();
    match record.view(app.node.policy(), now_ms) {
        ReadView::Absent => {
            // Say which version is absent, so a client can write over the delete.
            let mut response = ApiError::NotFound.into_response();
            if let Ok(value) = HeaderValue::from_str(&version) {
                response.headers_mut().insert(VERSION_HEADER, value);
            }
            Ok(response)
        }
        ReadView::Value(sibling) => {
            let bytes = sibling_bytes(sibling)?;
            if request::accepts_octet_stream(&headers) {
                let mut response = (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    bytes.clone(),
                )
                    .into_response();
                if let Ok(value) = HeaderValue::from_str(&version) {
                    response.headers_mut().insert(VERSION_HEADER, value);
                }
                return Ok(response);
            }
            let mut body = match std::str::from_utf8(bytes) {
                Ok(text) => json!({"value": text, "version": version}),
                Err(_) => json!({
                    "value_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
                    "version": version,
                }),
            };
            if let Some(expires_at_ms) = sibling.expires_at_ms {
                body["ttl"] = json!(expires_at_ms.saturating_sub(now_ms).div_ceil(1000));
            }
            Ok(Json(body).into_response())
        }
        ReadView::Siblings(siblings) => {
            let values = siblings
                .into_iter()
                .map(sibling_bytes)
                .collect::<Result<Vec<_>, _>>()?;
            let texts: Option<Vec<&str>> =
                values.iter().map(|b| std::str::from_utf8(b).ok()).collect();
            let body = match texts {
                Some(texts) => json!({"siblings": texts, "version": version}),
                None => json!({
                    "siblings_base64": values
                        .iter()
                        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                        .collect::<Vec<_>>(),
                    "version": version,
                }),
            };
            Ok((StatusCode::MULTIPLE_CHOICES, Json(body)).into_response())
        }
    }
}

fn sibling_bytes(sibling: &Sibling) -> Result<&Bytes, ApiError> {
    match &sibling.body {
        Body::Bytes(bytes) => Ok(bytes),
        Body::Tombstone => Err(ApiError::Internal(
            "a tombstone was shown as a value".into(),
        )),
        Body::Crdt(_) => Err(ApiError::invalid(
            "this key holds a CRDT; read it under /v1/crdt/{type}/{key}",
        )),
    }
}

/// The JSON body of a PUT.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutJson {
    value: Option<String>,
    value_base64: Option<String>,
    ttl: Option<u64>,
    version: Option<String>,
}

/// The optional JSON body of a DELETE.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteJson {
    version: Option<String>,
}

async fn put_kv(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    request: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query(), &["r", "w", "consistency", "ttl"])?;
    let key = request::key_from_path(uri.path(), &app.limits)?;
    app.required(&query, "w", true)?;
    let (parts, body) = request.into_parts();
    let max_value = app.limits.max_value_bytes;
    let (value, ttl, seen) = if request::is_octet_stream(&parts.headers) {
        let value = request::read_body(body, &parts.headers, max_value).await?;
        (
            value,
            query.ttl()?,
            request::version_header(&parts.headers)?,
        )
    } else {
        // JSON escapes can double a value's size; values heavier than that in
        // escapes belong in application/octet-stream.
        let limit = max_value.saturating_mul(2).saturating_add(64 * 1024);
        let raw = request::read_body(body, &parts.headers, limit).await?;
        let put: PutJson = serde_json::from_slice(&raw)
            .map_err(|error| ApiError::invalid(format!("invalid JSON body: {error}")))?;
        let value = match (put.value, put.value_base64) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map(Bytes::from)
                .map_err(|error| {
                    ApiError::invalid(format!("`value_base64` is not base64: {error}"))
                })?,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give either `value` or `value_base64`, not both",
                ));
            }
            (None, None) => return Err(ApiError::invalid("missing `value`")),
        };
        if value.len() > max_value {
            return Err(ApiError::TooLarge(format!(
                "value is {} bytes, more than max_value_bytes = {max_value}",
                value.len()
            )));
        }
        let ttl = match (put.ttl, query.ttl()?) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give `ttl` in the body or the query, not both",
                ));
            }
            (Some(secs), None) => Some(request::ttl_from_secs(secs)?),
            (None, from_query) => from_query,
        };
        let seen = match (put.version, request::version_header(&parts.headers)?) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give the version in the body or the header, not both",
                ));
            }
            (Some(token), None) => Some(request::version_from_token(&token)?),
            (None, from_header) => from_header,
        };
        (value, ttl, seen)
    };
    let write = Write {
        key,
        body: WriteBody::Value(value),
        seen: seen.unwrap_or_default(),
        ttl,
    };
    apply(&app, write).await
}

async fn delete_kv(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    request: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query(), &["r", "w", "consistency"])?;
    let key = request::key_from_path(uri.path(), &app.limits)?;
    app.required(&query, "w", true)?;
    let (parts, body) = request.into_parts();
    let raw = request::read_body(body, &parts.headers, 128 * 1024).await?;
    let from_body = if raw.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let delete: DeleteJson = serde_json::from_slice(&raw)
            .map_err(|error| ApiError::invalid(format!("invalid JSON body: {error}")))?;
        delete.version
    };
    let seen = match (from_body, request::version_header(&parts.headers)?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give the version in the body or the header, not both",
            ));
        }
        (Some(token), None) => Some(request::version_from_token(&token)?),
        (None, from_header) => from_header,
    };
    let write = Write {
        key,
        body: WriteBody::Delete,
        seen: seen.unwrap_or_default(),
        ttl: None,
    };
    apply(&app, write).await
}

/// Applies a write and answers once it is durable.
async fn apply(app: &AppState, write: Write) -> Result<Response, ApiError> {
    let node = app.node.clone();
    let written = blocking(move || node.write(write).map_err(ApiError::from)).await?;
    written.durable.await.map_err(|error| {
        ApiError::Internal(format!(
            "the write was applied but could not be made durable ({error}); it may or may not survive a crash"
        ))
    })?;
    let version = written.version.to_token();
    Ok(Json(json!({"version": version, "status": "ok"})).into_response())
}

/// How long a graceful shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
