//! Cluster members as every node describes them to the others.

use serde::{Deserialize, Serialize};

use crate::Token;

/// A node of the cluster (config key `node_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a member is in its life in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// Owns its vnodes and serves.
    Normal,
    /// Has left the ring for good (decommissioned or removed); kept so the news spreads.
    Left,
}

/// One member as announced by itself and spread by the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Bumped on every start of the node, so news about a restarted node wins over
    /// news about its previous run.
    pub generation: u64,
    /// Bumped by the node itself every gossip round: while it moves, the node lives.
    /// Failure detectors watch it (DESIGN.md §6).
    pub heartbeat: u64,
    pub state: MemberState,
    /// Internal RPC address (`peer_addr`).
    pub peer_addr: String,
    pub http_addr: String,
    pub resp_addr: String,
    /// The node's weight: how many tokens it holds on the ring, so its share of the
    /// data (more for bigger hardware).
    pub vnodes: u16,
    /// Its positions on the ring, chosen once when it first joined (see
    /// `ring::allocate_tokens`) and kept across restarts. `vnodes` of them.
    pub tokens: Vec<Token>,
}

impl Member {
    /// Whether `self` is newer news about the same node than `other`: a later run,
    /// a later heartbeat of the same run, or (same beat) a later state.
    pub fn supersedes(&self, other: &Member) -> bool {
        (self.generation, self.heartbeat, self.state)
            > (other.generation, other.heartbeat, other.state)
    }

    /// Whether `self` places the node on the ring differently from `other` (the
    /// ring must be recomputed), as opposed to a mere heartbeat or address change.
    pub fn moves_ring(&self, other: &Member) -> bool {
        self.state != other.state || self.vnodes != other.vnodes || self.tokens != other.tokens
    }
}
