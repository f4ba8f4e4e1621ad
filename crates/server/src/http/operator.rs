//! The operator endpoints of DESIGN.md §7: `/health`, `/metrics`,
//! `/v1/cluster/status`, `/v1/cluster/ring`, `/v1/cluster/anti-entropy`,
//! `/v1/debug/key/{key}`, and decommission / remove of a node.

use std::sync::Arc;

use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ringkv_cluster::coordinator::CoordinatorError;
use ringkv_cluster::membership::RemoveError;
use ringkv_core::{Body, Member, MemberState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;
use crate::request;

/// 200 once the node serves its ranges; 503 while it is still joining (it takes
/// requests, forwarding them, but holds none of its ranges yet), so whatever waits
/// for a node to be ready waits for its join.
pub(super) async fn health(State(app): State<Arc<AppState>>) -> Response {
    match app.coordinator.membership().my_state() {
        MemberState::Joining => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "joining"})),
        )
            .into_response(),
        _ => Json(json!({"status": "ok"})).into_response(),
    }
}

pub(super) async fn render_metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
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
pub(super) async fn cluster_status(State(app): State<Arc<AppState>>) -> Json<Value> {
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
pub(super) async fn decommission_node(
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
pub(super) struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// `POST /v1/cluster/nodes/{id}/remove[?force=true]`: takes a dead node out of
/// the ring (refused, 409, while this node sees it up, unless forced); the next
/// owners of its ranges refill them from the other replicas (anti-entropy).
pub(super) async fn remove_node(
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
pub(super) async fn anti_entropy_status(State(app): State<Arc<AppState>>) -> Json<Value> {
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

pub(super) async fn cluster_ring(State(app): State<Arc<AppState>>) -> Json<Value> {
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
pub(super) async fn debug_key(
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
