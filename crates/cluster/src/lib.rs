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
//!
//! Today a node is a cluster of one (N = 1); the coordinator, replication and
//! failure handling arrive with their issues.

pub mod clock;
pub mod node;
pub mod quorum;
pub mod transport;

pub use clock::{Clock, ManualClock};
pub use node::{Node, NodeError, Write, WriteBody, Written};
pub use quorum::{Quorum, QuorumError};
pub use transport::{BoxFuture, Peer, Spawn, Transport, TransportError};
