//! What this node answers to its peers (and to itself): replica work runs on a
//! blocking thread and is answered once durable; coordination and membership are
//! async. Also the tokio `Spawn` the cluster code uses for background work.

use std::sync::{Arc, OnceLock};

use ringkv_cluster::coordinator::Coordinator;
use ringkv_cluster::membership::Membership;
use ringkv_cluster::replica::decode_write;
use ringkv_cluster::{BoxFuture, Node, Spawn};
use ringkv_core::NodeId;
use ringkv_core::wire::{PeerError, PeerRequest, PeerResponse};

use crate::rpc::PeerHandler;

/// Background work on the tokio runtime.
pub struct TokioSpawn;

impl Spawn for TokioSpawn {
    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }
}

/// Dispatches peer requests to the replica, the coordinator and the membership table.
pub struct PeerService {
    pub node: Arc<Node>,
    pub membership: Arc<Membership>,
    /// Set once the coordinator exists (it needs the transport, which needs this).
    pub coordinator: OnceLock<Arc<Coordinator>>,
}

fn internal(message: impl Into<String>) -> PeerResponse {
    PeerResponse::Error(PeerError::Internal {
        message: message.into(),
    })
}

impl PeerHandler for PeerService {
    fn handle(&self, _from: NodeId, request: PeerRequest) -> BoxFuture<PeerResponse> {
        match request {
            PeerRequest::Members { members } => {
                let response = self.membership.on_members(members);
                Box::pin(async move { response })
            }
            PeerRequest::Coordinate { write, required } => {
                let coordinator = self.coordinator.get().cloned();
                Box::pin(async move {
                    let Some(coordinator) = coordinator else {
                        return internal("node is starting");
                    };
                    match decode_write(write) {
                        Ok(write) => coordinator.on_coordinate(write, required).await,
                        Err(error) => PeerResponse::Error(error),
                    }
                })
            }
            request @ (PeerRequest::Update { .. }
            | PeerRequest::Replicate { .. }
            | PeerRequest::Read { .. }) => {
                let node = self.node.clone();
                Box::pin(async move {
                    let reply =
                        match tokio::task::spawn_blocking(move || node.handle_replica(request))
                            .await
                        {
                            Ok(reply) => reply,
                            Err(error) => return internal(format!("replica task failed: {error}")),
                        };
                    if let Some(durable) = reply.durable
                        && let Err(error) = durable.await
                    {
                        return internal(format!("write applied but not durable: {error}"));
                    }
                    reply.response
                })
            }
        }
    }
}
