//! ringkv node logic: what a node does with a read or a write, independent of how
//! requests arrive and how bytes reach disk.
//!
//! It is not: sockets, threads, the wall clock or randomness. The world comes in
//! through traits (`Clock` here, `Engine` from `ringkv-storage`; `Transport` joins
//! with replication), so the simulator can drive this very code.
//!
//! * `clock`: the `Clock` trait (wall time in ms) and a manual clock for tests.
//! * `quorum`: per-request `r`/`w`/`consistency`, resolved against N.
//! * `node`: `Node`, the local replica: versioned writes (DVV update), reads, TTL.
//! * `transport`: the `Transport` trait (calls to peers and to itself), `Spawn`.
//! * `replica`: what a replica does with `Update` / `Replicate` / `Read`.
//! * `coordinator`: quorum writes (forwarding one hop), quorum reads, read repair.
//! * `membership`: the member table, its merge, the ring computed from it, gossip
//!   rounds and the failure detector (`Liveness`).
//! * `handoff`: hands hints back to their targets once they are healthy again.
//! * `antientropy`: Merkle-tree comparison of shared arcs with peers, and the repair
//!   of the keys that differ.
//! * `topology`: join and decommission, streaming ranges between nodes while both
//!   the current and the next ring take writes.
//! * `gather`: wait for the first k of several calls without spawning.
//! * `tombstone`: tombstone GC, by acknowledgement (anti-entropy confirmed every
//!   replica holds the record) or by grace; `Collector` decides and forgets.
//! * `purge`: the background sweep that purges expired versions and forgets
//!   collectable tombstone-only records, a page at a time.

pub mod antientropy;
pub mod clock;
pub mod coordinator;
mod gather;
pub mod handoff;
pub mod membership;
pub mod node;
pub mod purge;
pub mod quorum;
pub mod replica;
pub mod tombstone;
pub mod topology;
pub mod transport;

pub use clock::{Clock, ManualClock};
pub use node::{MAX_SIBLINGS, Node, NodeError, Write, WriteBody, Written};
pub use quorum::{Quorum, QuorumError};
pub use transport::{BoxFuture, Peer, Spawn, Transport, TransportError, offload};
