//! One replica's share of a coordinated write (`Slot`): the replica itself, or a
//! hint for it on a fallback or on the coordinator (sloppy quorum), and how many
//! distinct nodes then hold the write (`holders`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::NodeId;
use ringkv_core::wire::{PeerRequest, PeerResponse};

use crate::membership::{Liveness, Membership};
use crate::transport::Transport;

/// `Coordinator::timeout_for`, for code that holds only the membership.
pub(super) fn timeout_for(
    membership: &Membership,
    request_timeout: Duration,
    node: NodeId,
) -> Option<Duration> {
    match membership.liveness(node) {
        Liveness::Healthy => Some(request_timeout),
        Liveness::Suspicious => Some(request_timeout / 4),
        Liveness::Down | Liveness::PermanentlyFailed => None,
    }
}

/// A node that holds a write durably and counts toward W.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) node: NodeId,
    /// As a hint for a replica detected down (not as a replica).
    pub(super) hint: bool,
}

/// How many distinct nodes hold a write durably, from the slots done so far.
pub(super) fn holders(done: &[(NodeId, Option<Holder>)]) -> usize {
    let mut nodes: Vec<NodeId> = done
        .iter()
        .filter_map(|(_, holder)| holder.map(|holder| holder.node))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes.len()
}

/// One replica's share of a write: the replica itself, or a hint for it.
pub(super) struct Slot {
    pub(super) membership: Arc<Membership>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) request_timeout: Duration,
    /// The key's replicas: a hint on one of them does not count toward W.
    pub(super) replicas: Vec<NodeId>,
    pub(super) me: NodeId,
    pub(super) key: Bytes,
    pub(super) record: Bytes,
}

impl Slot {
    /// Makes `replica`'s copy durable (a `Sync` when it is the `updated` one, else a
    /// `Replicate`); if it is down or fails, places a hint for it on `fallback`,
    /// then on this node. Returns the node that now counts toward W, if any: the
    /// replica, or the fallback holding its hint when the replica was detected down
    /// (sloppy quorum). A hint for a replica that merely failed is kept for handoff
    /// but does not count: the write may then still reach W true replicas, and a
    /// strict quorum read must see it.
    pub(super) async fn fill(
        self,
        replica: NodeId,
        updated: bool,
        fallback: Option<NodeId>,
    ) -> Option<Holder> {
        let timeout = timeout_for(&self.membership, self.request_timeout, replica);
        let detected_down = timeout.is_none();
        if let Some(timeout) = timeout {
            let request = if updated {
                PeerRequest::Sync
            } else {
                PeerRequest::Replicate {
                    key: self.key.clone(),
                    record: self.record.clone(),
                }
            };
            if let Some(peer) = self.membership.peer(replica)
                && matches!(
                    self.transport.call(&peer, request, timeout).await,
                    Ok(PeerResponse::Ack)
                )
            {
                return Some(Holder {
                    node: replica,
                    hint: false,
                });
            }
        }
        if updated {
            // Its record is the one being spread: nothing to hint.
            return None;
        }
        for holder in fallback.into_iter().chain([self.me]) {
            let Some(peer) = self.membership.peer(holder) else {
                continue;
            };
            let request = PeerRequest::Hint {
                target: replica,
                key: self.key.clone(),
                record: self.record.clone(),
            };
            match self
                .transport
                .call(&peer, request, self.request_timeout)
                .await
            {
                Ok(PeerResponse::Ack) => {
                    metrics::counter!("ringkv_coordinator_hints_total").increment(1);
                    let counts = detected_down && !self.replicas.contains(&holder);
                    return counts.then_some(Holder {
                        node: holder,
                        hint: true,
                    });
                }
                Ok(other) => {
                    tracing::debug!(%replica, %holder, "hint refused: {other:?}");
                }
                Err(error) => tracing::debug!(%replica, %holder, "hint failed: {error}"),
            }
        }
        tracing::warn!(%replica, "no node took a hint for an unreachable replica; anti-entropy will repair it");
        None
    }
}
