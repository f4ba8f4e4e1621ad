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

/// Where a member is in its life in the ring (DESIGN.md §6, topology changes).
///
/// A change moves one node through two phases. While it streams (`Joining`,
/// `Leaving`) reads follow the ring as it was; once its data has moved
/// (`Joined`, `Drained`) reads follow the ring as it will be; in both phases
/// writes reach W replicas of each ring, so a coordinator whose view lags one phase
/// behind (or ahead) still meets every acknowledged write. The node ends the
/// change (`Normal`, `Left`) only once every member has seen the second phase.
///
/// The order matters: at equal (generation, heartbeat) the later state wins a
/// gossip merge, so a removal (another node marking a dead member `Left` at that
/// member's last heartbeat) spreads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// Has taken its tokens but is still streaming the ranges it takes over: writes
    /// reach it (beside the current owners), reads do not.
    Joining,
    /// Has streamed its ranges and serves reads; writes still reach the ranges'
    /// previous owners too, until every member knows.
    Joined,
    /// Owns its vnodes and serves.
    Normal,
    /// Streaming its ranges out to their next owners: still serves them, writes
    /// reach the next owners too.
    Leaving,
    /// Has handed its ranges over: reads go to the next owners, writes still reach
    /// this node too, until every member knows.
    Drained,
    /// Has left the ring for good (decommissioned or removed); kept so the news spreads.
    Left,
}

impl MemberState {
    /// Whether reads reach the node: the current ring (normal nodes, a leaving
    /// node until its ranges have moved, a joining one once they have).
    pub fn in_current_ring(self) -> bool {
        matches!(
            self,
            MemberState::Normal | MemberState::Leaving | MemberState::Joined
        )
    }

    /// Whether the node is on the other ring writes must also reach while a change
    /// is under way: where a changing node stands in the phase it is not in for
    /// reads (a joining node before its data moved, a drained one after).
    pub fn in_next_ring(self) -> bool {
        matches!(
            self,
            MemberState::Normal | MemberState::Joining | MemberState::Drained
        )
    }

    /// Whether the node is in the middle of a join or a decommission.
    pub fn is_changing(self) -> bool {
        matches!(
            self,
            MemberState::Joining
                | MemberState::Joined
                | MemberState::Leaving
                | MemberState::Drained
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Joined => "joined",
            MemberState::Normal => "normal",
            MemberState::Leaving => "leaving",
            MemberState::Drained => "drained",
            MemberState::Left => "left",
        }
    }
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
    /// Whether `self` is newer news about the same node than `other`: a later run;
    /// within one run, having left (final for that run: a node removed while it
    /// was only cut off must not undo the removal with its next heartbeat, it
    /// learns it was removed instead), then a later heartbeat, then (same beat) a
    /// later state.
    pub fn supersedes(&self, other: &Member) -> bool {
        let left = |member: &Member| member.state == MemberState::Left;
        (self.generation, left(self), self.heartbeat, self.state)
            > (other.generation, left(other), other.heartbeat, other.state)
    }

    /// Whether `self` places the node on the ring differently from `other` (the
    /// ring must be recomputed), as opposed to a mere heartbeat or address change.
    pub fn moves_ring(&self, other: &Member) -> bool {
        self.state != other.state || self.vnodes != other.vnodes || self.tokens != other.tokens
    }
}
