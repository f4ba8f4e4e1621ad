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

use crate::rpc::{Direct, PeerHandler, Reply};

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
    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<PeerResponse> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let reply = Reply::new(move |response| {
            let _ = answer.send(response);
        });
        match self.handle_direct(from, request, reply) {
            Direct::Taken => Box::pin(async move {
                answered
                    .await
                    .unwrap_or_else(|_| internal("replica task failed"))
            }),
            Direct::Declined(request, _reply) => self.handle_async(request),
        }
    }

    /// Replica work and sync barriers: no task. A storage thread applies the
    /// request and, for a write, hands the answer to the syncer (`SyncWait::then`),
    /// which sends it once durable: the syncer's wake-up reaches the connection's
    /// writer directly, instead of waking a task that then wakes the writer.
    fn handle_direct(&self, _from: NodeId, request: PeerRequest, reply: Reply) -> Direct {
        if let Some(refused) =
            ringkv_cluster::topology::refusal(self.membership.my_state(), &request)
        {
            reply.send(PeerResponse::Error(refused));
            return Direct::Taken;
        }
        match request {
            // A barrier only: no storage call, so no storage thread.
            PeerRequest::Sync => {
                self.node.sync().then(move |durable| {
                    reply.send(match durable {
                        Ok(()) => PeerResponse::Ack,
                        Err(error) => internal(format!("sync failed: {error}")),
                    });
                });
                Direct::Taken
            }
            request if request.is_replica_work() => {
                let node = self.node.clone();
                // A panic in the job drops `reply` unanswered: a remote caller times
                // out, as it would waiting for a node that died; a local one sees
                // its channel close.
                self.storage.submit(move || {
                    let done = node.handle_replica(request);
                    let response = done.response;
                    match done.durable {
                        None => reply.send(response),
                        Some(durable) => durable.then(move |durable| {
                            reply.send(match durable {
                                Ok(()) => response,
                                Err(error) => {
                                    internal(format!("write applied but not durable: {error}"))
                                }
                            });
                        }),
                    }
                });
                Direct::Taken
            }
            other => Direct::Declined(other, reply),
        }
    }
}

impl PeerService {
    /// Coordination and membership: async work, run in a task.
    fn handle_async(&self, request: PeerRequest) -> BoxFuture<PeerResponse> {
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
            // `handle_direct` takes every other request.
            _ => Box::pin(async move { internal("replica request on the async path") }),
        }
    }
}
