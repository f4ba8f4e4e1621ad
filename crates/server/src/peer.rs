//! What this node answers to its peers (and to itself): replica work runs on a
//! blocking thread and is answered once durable; coordination and membership are
//! async. Also the tokio `Spawn` the cluster code uses for background work.

use std::sync::{Arc, OnceLock};

use ringkv_cluster::coordinator::Coordinator;
use ringkv_cluster::membership::Membership;
use ringkv_cluster::replica::decode_write;
use ringkv_cluster::topology::{Topology, TopologyError};
use ringkv_cluster::{BoxFuture, Node, Spawn};
use ringkv_core::NodeId;
use ringkv_core::wire::{PeerError, PeerRequest, PeerResponse};

use crate::rpc::PeerHandler;

/// Background work on the tokio runtime; blocking work on the storage pool.
pub struct TokioSpawn {
    pub storage: Arc<crate::blocking::BlockingPool>,
}

impl Spawn for TokioSpawn {
    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }

    fn sleep(&self, duration: std::time::Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn blocking(&self, job: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        let storage = self.storage.clone();
        Box::pin(async move {
            storage.run(job).await;
        })
    }
}

/// A transport that reaches nobody, for membership news that arrives while this node
/// is still joining (before its coordinator, and so its transport, is in place).
struct NoTransport;

impl ringkv_cluster::Transport for NoTransport {
    fn call(
        &self,
        to: &ringkv_cluster::Peer,
        _request: PeerRequest,
        _timeout: std::time::Duration,
    ) -> BoxFuture<Result<PeerResponse, ringkv_cluster::TransportError>> {
        let peer = to.id;
        Box::pin(async move {
            Err(ringkv_cluster::TransportError::Unreachable {
                peer,
                reason: "still joining".into(),
            })
        })
    }
}

/// Dispatches peer requests to the replica, the coordinator and the membership table.
pub struct PeerService {
    pub node: Arc<Node>,
    /// Where replica work (blocking storage calls) runs.
    pub storage: Arc<crate::blocking::BlockingPool>,
    pub membership: Arc<Membership>,
    /// Set once the coordinator exists (it needs the transport, which needs this).
    pub coordinator: OnceLock<Arc<Coordinator>>,
    /// Set with the coordinator.
    pub topology: OnceLock<Arc<Topology>>,
}

/// Starts decommissioning this node in the background (`ringkv node
/// decommission`), or says why it cannot.
///
/// # Errors
/// The reasons of `Topology::check_decommission`.
pub fn start_decommission(topology: &Arc<Topology>) -> Result<(), TopologyError> {
    topology.check_decommission()?;
    let topology = topology.clone();
    tokio::spawn(async move { topology.decommission().await });
    Ok(())
}

fn internal(message: impl Into<String>) -> PeerResponse {
    PeerResponse::Error(PeerError::Internal {
        message: message.into(),
    })
}

impl PeerHandler for PeerService {
    fn handle(&self, _from: NodeId, request: PeerRequest) -> BoxFuture<PeerResponse> {
        if let Some(refused) =
            ringkv_cluster::topology::refusal(self.membership.my_state(), &request)
        {
            return Box::pin(async move { PeerResponse::Error(refused) });
        }
        match request {
            PeerRequest::Members { members } => {
                let response = match self.coordinator.get() {
                    Some(coordinator) => self
                        .membership
                        .on_members(coordinator.transport().as_ref(), members),
                    // Still joining: nothing to forget yet.
                    None => self.membership.on_members(&NoTransport, members),
                };
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
            PeerRequest::Decommission => {
                let response = match self.topology.get() {
                    None => internal("node is starting"),
                    Some(topology) => match start_decommission(topology) {
                        Ok(()) => PeerResponse::Ack,
                        Err(error) => PeerResponse::Error(PeerError::Refused {
                            message: error.to_string(),
                        }),
                    },
                };
                Box::pin(async move { response })
            }
            // A barrier only: no storage call, so no blocking thread.
            PeerRequest::Sync => {
                let durable = self.node.sync();
                Box::pin(async move {
                    match durable.await {
                        Ok(()) => PeerResponse::Ack,
                        Err(error) => internal(format!("sync failed: {error}")),
                    }
                })
            }
            request @ (PeerRequest::Update { .. }
            | PeerRequest::Replicate { .. }
            | PeerRequest::Hint { .. }
            | PeerRequest::TreeRoots { .. }
            | PeerRequest::TreeHashes { .. }
            | PeerRequest::LeafDigests { .. }
            | PeerRequest::StreamRange { .. }
            | PeerRequest::Store { .. }
            | PeerRequest::Read { .. }) => {
                let (node, storage) = (self.node.clone(), self.storage.clone());
                Box::pin(async move {
                    let Some(reply) = storage.run(move || node.handle_replica(request)).await
                    else {
                        return internal("replica task failed");
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
