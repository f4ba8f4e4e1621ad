//! The HTTP API of DESIGN.md §7: `/v1/kv/{key}`, `/v1/crdt/{type}/{key}` (in
//! `crdt_api`), `/health`, `/metrics`,
//! `/v1/cluster/status`, `/v1/cluster/ring`, `/v1/debug/key/{key}`. Handlers parse
//! (see `request`) and hand typed values to the coordinator, which answers once the
//! quorum holds the write durably.

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
use ringkv_cluster::membership::RemoveError;
use ringkv_cluster::purge::Purge;
use ringkv_cluster::topology::Topology;
use ringkv_cluster::{Node, Quorum, Write, WriteBody};
use ringkv_core::{Body, Key, Limits, Member, MemberState, ReadView, Sibling};
use serde::Deserialize;
use serde_json::{Value, json};

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
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/kv/{*key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route(
            "/v1/crdt/{*rest}",
            get(crate::crdt_api::get_crdt).post(crate::crdt_api::update_crdt),
        )
        .route("/v1/kv", any(empty_key))
        .route("/v1/kv/", any(empty_key))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/cluster/ring", get(cluster_ring))
        .route("/v1/cluster/anti-entropy", get(anti_entropy_status))
        .route("/v1/debug/key/{*key}", get(debug_key))
        .route(
            "/v1/cluster/nodes/{id}/decommission",
            axum::routing::post(decommission_node),
        )
        .route(
            "/v1/cluster/nodes/{id}/remove",
            axum::routing::post(remove_node),
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

/// 200 once the node serves its ranges; 503 while it is still joining (it takes
/// requests, forwarding them, but holds none of its ranges yet), so whatever waits
/// for a node to be ready waits for its join.
async fn health(State(app): State<Arc<AppState>>) -> Response {
    match app.coordinator.membership().my_state() {
        MemberState::Joining => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "joining"})),
        )
            .into_response(),
        _ => Json(json!({"status": "ok"})).into_response(),
    }
}

async fn render_metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// One JSON object per known member, built by `describe` from the member and its
/// share of the ring.
fn members_json(app: &AppState, describe: impl Fn(&Member, f64) -> Value) -> Vec<Value> {
    let membership = app.coordinator.membership();
    let ownership = membership.ring().ownership();
    membership
        .members()
        .iter()
        .map(|member| describe(member, ownership.get(&member.id).copied().unwrap_or(0.0)))
        .collect()
}

/// Every known node as this node sees it: its failure detector's verdict, and the
/// hints this node holds for it (`hints_queued`, `hint_bytes`).
async fn cluster_status(State(app): State<Arc<AppState>>) -> Json<Value> {
    let membership = app.coordinator.membership();
    let hints = app.node.hint_stats();
    let nodes = members_json(&app, |member, ownership| {
        let queued = hints.by_target.get(&member.id).copied().unwrap_or_default();
        json!({
            "id": member.id.0,
            "http_addr": member.http_addr,
            "resp_addr": member.resp_addr,
            "peer_addr": member.peer_addr,
            "status": status_of(member.state, membership.liveness(member.id)),
            "state": member.state.as_str(),
            "generation": member.generation,
            "heartbeat": member.heartbeat,
            "vnodes": member.vnodes,
            "ownership": ownership,
            "hints_queued": queued.hints,
            "hint_bytes": queued.bytes,
        })
    });
    let held = hints.total();
    let (arcs, totals) = app.anti_entropy.status();
    let converged: Vec<u64> = arcs
        .iter()
        .filter_map(|(_, s)| s.last_converged_ms)
        .collect();
    let now_ms = app.node.now_ms();
    let streaming = app.topology.progress();
    let purge = app.purge.totals();
    Json(json!({
        "node_id": app.node_id,
        "streaming": {
            "phase": streaming.phase.as_str(),
            "ranges_total": streaming.ranges_total,
            "ranges_done": streaming.ranges_done,
            "keys": streaming.keys,
            "bytes": streaming.bytes,
            "took_ms": streaming.took_ms,
            "retrying": streaming.retrying,
            "copies_dropped": app.topology.dropped(),
        },
        "purge": {
            "rounds": purge.rounds,
            "sweeps": purge.sweeps,
            "keys_scanned": purge.keys_scanned,
            "ttl_purged": purge.ttl_purged,
            "tombstones_purged": {
                "ack": purge.tombstones_purged.ack,
                "grace": purge.tombstones_purged.grace,
            },
        },
        "anti_entropy": {
            "rounds": totals.rounds,
            "keys_repaired": totals.keys_repaired,
            "record_bytes": totals.record_bytes,
            "exchange_bytes": totals.exchange_bytes,
            "arcs": arcs.len(),
            "arcs_converged": converged.len(),
            "oldest_converged_ms_ago": converged.iter().min().map(|at| now_ms.saturating_sub(*at)),
        },
        "hints_held": held.hints,
        "hint_bytes_held": held.bytes,
        "replication_factor": app.replication_factor,
        "read_quorum": app.read_quorum,
        "write_quorum": app.write_quorum,
        "nodes": nodes,
    }))
}

/// A member's status as `/v1/cluster/status` shows it: a joining or leaving
/// member says so while it is up; otherwise what the failure detector says.
fn status_of(state: MemberState, liveness: ringkv_cluster::membership::Liveness) -> &'static str {
    match state {
        MemberState::Left => "left",
        MemberState::Joining | MemberState::Joined if liveness.is_up() => "joining",
        MemberState::Leaving | MemberState::Drained if liveness.is_up() => "leaving",
        _ => liveness.as_str(),
    }
}

fn node_id_param(raw: &str) -> Result<ringkv_core::NodeId, ApiError> {
    raw.parse::<u64>()
        .map(ringkv_core::NodeId)
        .map_err(|_| ApiError::invalid(format!("node id {raw:?} is not a number")))
}

/// `POST /v1/cluster/nodes/{id}/decommission`: starts streaming that node's
/// ranges away (on that node: forwarded when it is another one) and answers at
/// once (202); follow it in that node's `/v1/cluster/status` (`streaming`).
async fn decommission_node(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let id = node_id_param(&id)?;
    let membership = app.coordinator.membership();
    if id == membership.me() {
        crate::peer::start_decommission(&app.topology)
            .map_err(|error| ApiError::Conflict(error.to_string()))?;
    } else {
        let peer = membership
            .peer(id)
            .ok_or_else(|| ApiError::UnknownNode(format!("no member {id} is known")))?;
        let answer = app
            .coordinator
            .transport()
            .call(
                &peer,
                ringkv_core::wire::PeerRequest::Decommission,
                app.coordinator.settings().request_timeout,
            )
            .await
            .map_err(|error| ApiError::Conflict(format!("cannot reach node {id}: {error}")))?;
        match answer {
            ringkv_core::wire::PeerResponse::Ack => {}
            ringkv_core::wire::PeerResponse::Error(error) => {
                return Err(CoordinatorError::from(error).into());
            }
            other => return Err(ApiError::Internal(format!("node {id} answered {other:?}"))),
        }
    }
    let body = json!({"node": id.0, "status": "leaving"});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// `POST /v1/cluster/nodes/{id}/remove[?force=true]`: takes a dead node out of
/// the ring (refused, 409, while this node sees it up, unless forced); the next
/// owners of its ranges refill them from the other replicas (anti-entropy).
async fn remove_node(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<RemoveQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = node_id_param(&id)?;
    let coordinator = &app.coordinator;
    let membership = coordinator.membership();
    let removed = membership
        .remove(id, query.force)
        .map_err(|error| match error {
            RemoveError::Unknown(_) => ApiError::UnknownNode(error.to_string()),
            RemoveError::Myself(_) | RemoveError::Alive { .. } => {
                ApiError::Conflict(error.to_string())
            }
        })?;
    // Recorded before the answer: the removal outlives a restart of this node.
    app.topology.record_departures().await;
    let (answered, asked) = membership
        .announce(
            coordinator.transport(),
            coordinator.settings().request_timeout,
        )
        .await;
    Ok(Json(json!({
        "node": id.0,
        "status": "left",
        "changed": removed,
        "told": answered,
        "of": asked,
    })))
}

/// Every arc this node replicates: when anti-entropy last saw it match a peer's,
/// and how many keys it repaired there.
async fn anti_entropy_status(State(app): State<Arc<AppState>>) -> Json<Value> {
    let (arcs, totals) = app.anti_entropy.status();
    let now_ms = app.node.now_ms();
    let arcs: Vec<Value> = arcs
        .iter()
        .map(|(arc, status)| {
            json!({
                "start": arc.start.to_string(),
                "end": arc.end.to_string(),
                "last_converged_ms_ago": status.last_converged_ms.map(|at| now_ms.saturating_sub(at)),
                "keys_repaired": status.repaired,
            })
        })
        .collect();
    Json(json!({
        "node_id": app.node_id,
        "rounds": totals.rounds,
        "keys_repaired": totals.keys_repaired,
        "record_bytes": totals.record_bytes,
        "exchange_bytes": totals.exchange_bytes,
        "arcs": arcs,
    }))
}

async fn cluster_ring(State(app): State<Arc<AppState>>) -> Json<Value> {
    let nodes = members_json(&app, |member, ownership| {
        json!({
            "id": member.id.0,
            "state": member.state.as_str(),
            "http_addr": member.http_addr,
            "vnodes": member.vnodes,
            "ownership": ownership,
            "tokens": member.tokens.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    });
    Json(json!({"replication_factor": app.replication_factor, "nodes": nodes}))
}

/// What every replica of a key holds right now, read locally without repair.
async fn debug_key(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
) -> Result<Json<Value>, ApiError> {
    let path = uri.path().replacen("/v1/debug/key/", "/v1/kv/", 1);
    let key = request::key_from_path(&path, &app.limits)?;
    let ring = app.coordinator.membership().ring();
    let preference = ring.preference_list(key.token(), usize::from(app.replication_factor));
    let replicas = app.coordinator.read_each(&key).await;
    let now_ms = app.node.now_ms();
    let held: Vec<Value> = replicas
        .iter()
        .map(|(node, reply)| match reply {
            Ok(None) => json!({"node": node.0, "record": null}),
            Ok(Some(record)) => json!({
                "node": node.0,
                "digest": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&record.encode())),
                "version": record.context().to_token(),
                "versions": record.siblings().map(|(dot, sibling)| json!({
                    "dot": {"actor": dot.actor.0, "counter": dot.counter},
                    "hlc": sibling.hlc.0,
                    "expires_at_ms": sibling.expires_at_ms,
                    "expired": sibling.expires_at_ms.is_some_and(|at| at <= now_ms),
                    "tombstone": matches!(sibling.body, Body::Tombstone),
                    "bytes": match &sibling.body { Body::Bytes(b) | Body::Crdt(b) => b.len(), Body::Tombstone => 0 },
                })).collect::<Vec<_>>(),
            }),
            Err(error) => json!({"node": node.0, "error": error}),
        })
        .collect();
    Ok(Json(json!({
        "key": key.to_escaped(),
        "token": key.token().to_string(),
        "preference_list": preference.replicas().iter().map(|id| id.0).collect::<Vec<_>>(),
        "fallbacks": preference.fallbacks().iter().map(|id| id.0).collect::<Vec<_>>(),
        "replicas": held,
    })))
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
    apply(&app, write, required).await
}

/// Coordinates a write and answers once `required` replicas hold it durably.
async fn apply(app: &AppState, write: Write, required: u8) -> Result<Response, ApiError> {
    let version = app.coordinator.write(write, required, false).await?;
    Ok(Json(json!({"version": version.to_token(), "status": "ok"})).into_response())
}

/// How long a graceful shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
