//! Messages between nodes (internal RPC, DESIGN.md §7). Encoded with postcard inside
//! length-prefixed frames by the transport; records and versions travel in their own
//! validated byte formats (`codec`) and are decoded by the receiver.
//!
//! Every field is untrusted on receipt: keys go through `Key::from_stored`, records
//! through `Record::decode`, versions through `Context::from_bytes`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::TokenRange;
use crate::crdt::Operation;
use crate::member::{Member, NodeId};

/// Most arcs one `TreeRoots` may ask about.
pub const MAX_ARCS_PER_REQUEST: usize = 65_536;
/// Most keys one `Digests` answer lists.
pub const MAX_DIGESTS: usize = 16_384;
/// Most records one `Store` may carry (and one `Records` page holds).
pub const MAX_RECORDS_PER_PAGE: usize = 4_096;
/// Most bytes of keys and records one `StreamRange` page may ask for.
pub const MAX_PAGE_BYTES: u32 = 8 << 20;

/// Version of the peer protocol; a handshake with another version is refused.
/// 4: member states `Joined` and `Drained` (the second phase of a ring change);
/// CRDT operations and `overwrite` in `WireWrite`, `PeerError::WrongType`.
pub const PROTOCOL_VERSION: u32 = 4;

/// A client write as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireWrite {
    pub key: Bytes,
    /// `None` is a delete (or a CRDT operation, when `crdt` is set).
    pub value: Option<Bytes>,
    /// A CRDT operation (validated on receipt with `Operation::validate`).
    pub crdt: Option<Operation>,
    /// `Context::to_bytes` of the version the client sent (empty context: blind write).
    pub seen: Bytes,
    pub ttl_ms: Option<u64>,
    /// The value supersedes every version the coordinating replica holds (LWW).
    pub overwrite: bool,
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Coordinate this client write: the receiver is one of the key's replicas, the
    /// sender is not. Never forwarded again (one hop).
    Coordinate { write: WireWrite, required: u8 },
    /// Apply this client write as a new version on the receiver's own replica (sent by
    /// a coordinator to itself); answered with `Updated` once durable.
    Update { write: WireWrite },
    /// Merge this record into the receiver's replica; answered with `Ack` once durable.
    Replicate { key: Bytes, record: Bytes },
    /// Answered with `Ack` once everything the receiver applied before it is durable
    /// (the coordinator's own replica after an `Update`).
    Sync,
    /// The receiver's record of a key, read locally without repair.
    Read { key: Bytes },
    /// Membership: "here is what I know"; answered with what the receiver knows.
    Members { members: Vec<Member> },
    /// Hold this record for `target`, which could not take it (sloppy quorum);
    /// answered with `Ack` once the hint is durable, or `HintsFull`.
    Hint {
        target: NodeId,
        key: Bytes,
        record: Bytes,
    },
    /// Anti-entropy: the receiver's Merkle root of each of these arcs (`Roots`,
    /// `None` for an arc it has no tree of). At most `MAX_ARCS_PER_REQUEST`.
    TreeRoots { arcs: Vec<TokenRange> },
    /// Anti-entropy: the `FANOUT` children of an arc's tree (`child` = `None`) or the
    /// leaves under one child (`Hashes`).
    TreeHashes { arc: TokenRange, child: Option<u8> },
    /// Anti-entropy: every key the receiver holds in `range` with its digest
    /// (`Digests`), at most `MAX_DIGESTS` of them.
    LeafDigests { range: TokenRange },
    /// Range streaming (join): the receiver's records in `range`, in token order,
    /// starting after the key `after` (exclusive; `None` from the start of the
    /// range), about `max_bytes` of them (at most `MAX_PAGE_BYTES`, at least one
    /// record), answered with `Records`.
    StreamRange {
        range: TokenRange,
        after: Option<Bytes>,
        max_bytes: u32,
    },
    /// Range streaming (decommission): merge these records (key, `Record::encode`)
    /// into the receiver's replica; `Ack` once all are durable. At most
    /// `MAX_RECORDS_PER_PAGE`.
    Store { records: Vec<(Bytes, Bytes)> },
    /// Start decommissioning the receiver (`ringkv node decommission`): `Ack` once
    /// started, `Error(Refused)` when it cannot leave now.
    Decommission,
}

impl PeerRequest {
    /// Work a replica does on its own storage (`Node::handle_replica`): blocking,
    /// and answered once durable when it writes. The rest is coordination,
    /// membership or a bare durability barrier (`Sync`).
    pub fn is_replica_work(&self) -> bool {
        match self {
            PeerRequest::Update { .. }
            | PeerRequest::Replicate { .. }
            | PeerRequest::Hint { .. }
            | PeerRequest::TreeRoots { .. }
            | PeerRequest::TreeHashes { .. }
            | PeerRequest::LeafDigests { .. }
            | PeerRequest::StreamRange { .. }
            | PeerRequest::Store { .. }
            | PeerRequest::Read { .. } => true,
            PeerRequest::Coordinate { .. }
            | PeerRequest::Sync
            | PeerRequest::Members { .. }
            | PeerRequest::Decommission => false,
        }
    }
}

/// An answer to a `PeerRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// `Coordinate` succeeded: the version the client gets back (`Context::to_bytes`),
    /// and how many acks were hints for replicas detected down.
    Written {
        version: Bytes,
        hinted: u8,
    },
    /// `Update` applied and durable: the record now stored and the writer's version.
    Updated {
        record: Bytes,
        version: Bytes,
    },
    /// `Replicate` applied and durable.
    Ack,
    /// `Read`: the stored record (`Record::encode`), if any.
    Record {
        record: Option<Bytes>,
    },
    Members {
        members: Vec<Member>,
    },
    /// `TreeRoots`: one per arc asked, in order.
    Roots {
        roots: Vec<Option<u64>>,
    },
    /// `TreeHashes` (empty when the receiver has no tree of the arc).
    Hashes {
        hashes: Vec<u64>,
    },
    /// `LeafDigests`: keys and digests in token order; `complete` is false when the
    /// range held more than `MAX_DIGESTS` keys (the rest were left out).
    Digests {
        keys: Vec<(Bytes, u64)>,
        complete: bool,
    },
    /// `StreamRange`: (key, record) in token order; `complete` when the range holds
    /// nothing after the last one.
    Records {
        records: Vec<(Bytes, Bytes)>,
        complete: bool,
    },
    Error(PeerError),
}

/// Why a peer could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerError {
    /// A coordinated write got fewer acks than required in time.
    QuorumUnavailable { acked: u8, required: u8 },
    /// The stored record of the key does not decode.
    Corrupt { message: String },
    /// The request itself is invalid (bad key, record or version bytes).
    Invalid { message: String },
    /// Storage or anything else failed on the peer.
    Internal { message: String },
    /// The receiver already holds `max_bytes` of hints and takes no more.
    HintsFull { held_bytes: u64, max_bytes: u64 },
    /// The key holds another type than the request is about (bytes, or another
    /// CRDT type).
    WrongType { message: String },
    /// The request is valid but cannot be done in the cluster's state now (a
    /// decommission that would leave fewer than N nodes, one already under way).
    Refused { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_work_is_what_touches_a_replicas_storage() {
        let key = Bytes::from_static(b"k");
        let replica = [
            PeerRequest::Replicate {
                key: key.clone(),
                record: key.clone(),
            },
            PeerRequest::Read { key: key.clone() },
            PeerRequest::Store {
                records: Vec::new(),
            },
            PeerRequest::TreeRoots { arcs: Vec::new() },
        ];
        assert!(replica.iter().all(PeerRequest::is_replica_work));
        let other = [
            PeerRequest::Sync,
            PeerRequest::Members {
                members: Vec::new(),
            },
            PeerRequest::Decommission,
        ];
        assert!(!other.iter().any(PeerRequest::is_replica_work));
    }
}
