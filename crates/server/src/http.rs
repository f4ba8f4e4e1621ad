//! The HTTP API of DESIGN.md §7: the router, `/v1/kv/{key}` here,
//! `/v1/crdt/{type}/{key}` in `crdt_api`, and the operator endpoints (`/health`,
//! `/metrics`, `/v1/cluster/...`, `/v1/debug/key/{key}`) in `operator`. Handlers
//! parse (see `request`) and hand typed values to the coordinator, which answers
//! once the quorum holds the write durably.

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
use ringkv_cluster::antientropy::AntiEntropy;
use ringkv_cluster::coordinator::{Coordinator, CoordinatorError};
use ringkv_cluster::purge::Purge;
use ringkv_cluster::topology::Topology;
use ringkv_cluster::{Node, Quorum, Write, WriteBody};
use ringkv_core::{Body, Key, Limits, ReadView, Sibling};
use serde::Deserialize;
use serde_json::json;

pub mod listener;
mod operator;

use crate::error::ApiError;
use crate::request::{self, Query, VERSION_HEADER};

/// What every handler shares.
pub struct AppState {
    /// The local replica (conflict policy, clock).
    pub node: Arc<Node>,
    pub coordinator: Arc<Coordinator>,
    pub node_id: u64,
    pub limits: Limits,
    /// N as configured.
    pub replication_factor: u8,
    pub read_quorum: u8,
    pub write_quorum: u8,
    pub metrics: PrometheusHandle,
    pub anti_entropy: Arc<AntiEntropy>,
    pub topology: Arc<Topology>,
    pub purge: Arc<Purge>,
    /// Request body bytes buffered at once, across requests.
    pub body_budget: request::BodyBudget,
    /// Longest pause while a request body (or RESP command) arrives.
    pub stall_timeout: Duration,
}

/// Largest JSON body of a PUT: JSON escapes can double a value's size (values
/// heavier than that in escapes belong in application/octet-stream).
pub fn max_json_body(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_mul(2).saturating_add(64 * 1024)
}

/// Largest body of a DELETE (a version token).
const MAX_DELETE_BODY: usize = 128 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/kv/{*key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route(
            "/v1/crdt/{*rest}",
            get(crate::crdt_api::get_crdt).post(crate::crdt_api::update_crdt),
        )
        .route("/v1/kv", any(empty_key))
        .route("/v1/kv/", any(empty_key))
        .route("/health", get(operator::health))
        .route("/metrics", get(operator::render_metrics))
        .route("/v1/cluster/status", get(operator::cluster_status))
        .route("/v1/cluster/ring", get(operator::cluster_ring))
        .route(
            "/v1/cluster/anti-entropy",
            get(operator::anti_entropy_status),
        )
        .route("/v1/debug/key/{*key}", get(operator::debug_key))
        .route(
            "/v1/cluster/nodes/{id}/decommission",
            axum::routing::post(operator::decommission_node),
        )
        .route(
            "/v1/cluster/nodes/{id}/remove",
            axum::routing::post(operator::remove_node),
        )
        .fallback(not_found)
        .layer(crate::metrics::TrackLayer)
        .with_state(state)
}

async fn empty_key() -> ApiError {
    ApiError::invalid("key is empty: use /v1/kv/{key}")
}

async fn not_found() -> Response {
    let body = json!({"error": {"code": "not_found", "message": "no such endpoint"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

impl AppState {
    /// How many replicas must answer: the request's `r`/`w`/`consistency`, or the
    /// configured default. An explicit count above N is a bad request. A key has
    /// min(N, members) replicas; a quorum above that cannot be met (503), and the
    /// defaults shrink to it (a cluster smaller than N).
    pub(crate) fn required(
        &self,
        query: &Query,
        key: &Key,
        name: &'static str,
        write: bool,
    ) -> Result<u8, ApiError> {
        let replicas = u8::try_from(self.coordinator.replicas(key).len()).unwrap_or(u8::MAX);
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
                .required(name, replicas.min(self.replication_factor))
                .map_err(|error| ApiError::invalid(error.to_string()))?,
            None => default.min(replicas),
        };
        if required > replicas {
            return Err(ApiError::QuorumUnavailable {
                acked: 0,
                required,
                write,
            });
        }
        Ok(required)
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(error: CoordinatorError) -> ApiError {
        match error {
            CoordinatorError::QuorumUnavailable {
                acked,
                required,
                write,
            } => ApiError::QuorumUnavailable {
                acked,
                required,
                write,
            },
            CoordinatorError::Invalid(message) => ApiError::InvalidRequest(message),
            CoordinatorError::Corrupt(message) => ApiError::Corrupt(message),
            CoordinatorError::Internal(message) => ApiError::Internal(message),
            CoordinatorError::Refused(message) => ApiError::Conflict(message),
            CoordinatorError::WrongType(message) => ApiError::WrongType(message),
        }
    }
}

async fn get_kv(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query(), &["r", "w", "consistency"])?;
    let key = request::key_from_path(uri.path(), &app.limits)?;
    let required = app.required(&query, &key, "r", false)?;
    let record = app.coordinator.read(&key, required).await?;
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
        Body::Crdt(_) => Err(ApiError::WrongType(
            "key holds a CRDT, not a plain value; read it under /v1/crdt/{type}/{key}".into(),
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
    let query = Query::parse(uri.query(), &["r", "w", "consistency", "ttl", "overwrite"])?;
    let key = request::key_from_path(uri.path(), &app.limits)?;
    let required = app.required(&query, &key, "w", true)?;
    let overwrite = query.flag("overwrite")?;
    let (parts, body) = request.into_parts();
    let max_value = app.limits.max_value_bytes;
    let octet_stream = request::is_octet_stream(&parts.headers);
    let limit = if octet_stream {
        max_value
    } else {
        max_json_body(max_value)
    };
    // Held (with its share of the body budget) until the write is answered.
    let raw = request::read_body(
        body,
        &parts.headers,
        limit,
        &app.body_budget,
        app.stall_timeout,
    )
    .await?;
    let (value, ttl, seen) = if octet_stream {
        (
            raw.bytes(),
            query.ttl()?,
            request::version_header(&parts.headers)?,
        )
    } else {
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
    // `?overwrite=true`: supersede whatever the coordinating replica holds, as
    // RESP's SET does (one round trip, no version needed; writes through other
    // nodes at the same time still become siblings).
    let body = match (overwrite, &seen) {
        (true, Some(_)) => {
            return Err(ApiError::invalid(
                "give a version or `overwrite=true`, not both",
            ));
        }
        (true, None) => WriteBody::Overwrite(value),
        (false, _) => WriteBody::Value(value),
    };
    let write = Write {
        key,
        body,
        seen: seen.unwrap_or_default(),
        ttl,
    };
    apply(&app, write, required).await
}

async fn delete_kv(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    request: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query(), &["r", "w", "consistency"])?;
    let key = request::key_from_path(uri.path(), &app.limits)?;
    let required = app.required(&query, &key, "w", true)?;
    let (parts, body) = request.into_parts();
    let raw = request::read_body(
        body,
        &parts.headers,
        MAX_DELETE_BODY,
        &app.body_budget,
        app.stall_timeout,
    )
    .await?;
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
    apply(&app, write, required).await
}

/// Coordinates a write and answers once `required` replicas hold it durably.
async fn apply(app: &AppState, write: Write, required: u8) -> Result<Response, ApiError> {
    let version = app.coordinator.write(write, required, false).await?;
    Ok(Json(json!({"version": version.to_token(), "status": "ok"})).into_response())
}

/// How long a graceful shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
