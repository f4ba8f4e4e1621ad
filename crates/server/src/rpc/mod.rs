//! Internal RPC over TCP (DESIGN.md §7): how nodes call each other in production.
//! `ringkv-cluster` sees only its `Transport` trait; this module is the TCP behind it
//! (the simulator plugs in a simulated network instead).
//!
//! * `frame`: `u32` big-endian length ‖ postcard payload, an [`Envelope`] per frame.
//! * `handshake`: protocol version and cluster-secret check (mutual HMAC
//!   challenge–response) before the first envelope.
//! * `client`: [`TcpTransport`], the `Transport`: a small pool of connections per
//!   peer, requests multiplexed by id, lazy connect, reconnect with backoff; calls to
//!   the node itself go straight to the local [`PeerHandler`].
//! * `link`: one peer's pool: per-connection queues and in-flight maps, peer health.
//! * `driver`: the task behind each connection of a pool: connect, write, read.
//! * `listener`: [`serve`], which accepts connections and runs a [`PeerHandler`] for
//!   each request, concurrently, answering in any order.
//!
//! Limits, all in [`RpcOptions`]: frame size, connections per peer, queued and
//! in-flight calls per peer and connection, peers, accepted connections, and every
//! wait (connect, handshake, backoff, shutdown grace). Hitting one is an error to the
//! caller (`Overloaded`, `Unreachable`) or a counted, logged refusal.
//!
//! Metrics: `ringkv_rpc_calls_total{peer, outcome}` (outcome `ok`, `timeout`,
//! `unreachable`, `overloaded`, `protocol`, `closed`), `ringkv_rpc_call_seconds`,
//! `ringkv_rpc_connections_refused_total{reason}` (both sides of a handshake, and
//! accepts over `max_connections`).

pub mod client;
mod driver;
pub mod frame;
pub mod handshake;
mod link;
pub mod listener;
#[cfg(test)]
mod tests;

use std::time::Duration;

use ringkv_cluster::{BoxFuture, TransportError};
use ringkv_core::NodeId;
use ringkv_core::wire::{PeerRequest, PeerResponse};

pub use client::TcpTransport;
pub use frame::{Body, DEFAULT_MAX_FRAME_BYTES, Envelope, FrameError};
pub use handshake::{HandshakeError, Refusal};
pub use listener::serve;

/// What a node does with a request from a peer (or from itself, through
/// [`TcpTransport`]). `from` is the caller's id as it said in the handshake; with a
/// `cluster_secret` it has proven it belongs to the cluster, without one it is a claim.
pub trait PeerHandler: Send + Sync + 'static {
    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<PeerResponse>;

    /// Takes `request` if it can be answered without a task of its own, through
    /// `reply`, from whichever thread finishes it (replica work: a storage thread
    /// applies it, the syncer answers once it is durable); gives both back
    /// otherwise, and the caller runs [`handle`](Self::handle) in a task. The
    /// default takes nothing.
    fn handle_direct(&self, from: NodeId, request: PeerRequest, reply: Reply) -> Direct {
        let _ = from;
        Direct::Declined(request, reply)
    }
}

/// What [`PeerHandler::handle_direct`] did with a request.
pub enum Direct {
    /// It will answer through the reply.
    Taken,
    /// Untouched: run `handle` for it in a task.
    Declined(PeerRequest, Reply),
}

/// Where the answer to one request goes: sent once, from any thread, without
/// blocking. Dropped unsent (a handler that panicked, a listener shutting down), it
/// answers nothing: the connection's writer or the local caller's channel sees its
/// sender go, as when a task ends without an answer.
pub struct Reply(Box<dyn FnOnce(PeerResponse) + Send + 'static>);

impl Reply {
    /// A reply that hands the answer to `deliver`, which must not block.
    pub fn new(deliver: impl FnOnce(PeerResponse) + Send + 'static) -> Reply {
        Reply(Box::new(deliver))
    }

    pub fn send(self, response: PeerResponse) {
        (self.0)(response);
    }
}

impl<F> PeerHandler for F
where
    F: Fn(NodeId, PeerRequest) -> BoxFuture<PeerResponse> + Send + Sync + 'static,
{
    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<PeerResponse> {
        self(from, request)
    }
}

/// Limits and timings of the internal RPC, for both sides. `Default` is production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcOptions {
    /// Largest frame payload sent or accepted, at most `u32::MAX` [64 MiB].
    pub max_frame_bytes: usize,
    /// Connections per peer, calls spread round-robin [2].
    pub connections_per_peer: usize,
    /// Calls waiting to be written, per peer, split evenly over its connections;
    /// beyond it `call` fails at once with `Overloaded` [4096].
    pub max_queued_per_peer: usize,
    /// Dialer: calls awaiting their answer per connection (beyond it: `Overloaded`).
    /// Listener: requests handled at once per connection (beyond it the listener
    /// stops reading that connection) [1024].
    pub max_in_flight_per_connection: usize,
    /// Calls to the node itself running at once (beyond it: `Overloaded`) [1024].
    pub max_local_in_flight: usize,
    /// Distinct peers a transport keeps connections to (beyond it: `Overloaded`) [1024].
    pub max_peers: usize,
    /// Listener: connections open at once; more are closed and counted [1024].
    pub max_connections: usize,
    /// Dialer: wait for TCP connect [2 s].
    pub connect_timeout: Duration,
    /// Both: wait for the whole handshake [5 s].
    pub handshake_timeout: Duration,
    /// Dialer: wait after a first failed connect; doubles per failure [50 ms] ...
    pub reconnect_backoff_min: Duration,
    /// ... up to this [1 s]. While it runs, calls to the peer fail at once.
    pub reconnect_backoff_max: Duration,
    /// Listener: on shutdown, how long in-flight requests may still finish and be
    /// answered before their connection is closed [2 s].
    pub shutdown_grace: Duration,
}

impl Default for RpcOptions {
    fn default() -> Self {
        RpcOptions {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            connections_per_peer: 2,
            max_queued_per_peer: 4096,
            max_in_flight_per_connection: 1024,
            max_local_in_flight: 1024,
            max_peers: 1024,
            max_connections: 1024,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

impl RpcOptions {
    /// Asserts what the code relies on; options come from code, so a violation is a
    /// bug of the caller.
    ///
    /// # Panics
    /// On a zero count, a `max_frame_bytes` over `u32::MAX`, or a minimum backoff
    /// above the maximum.
    pub fn check(&self) {
        assert!(u32::try_from(self.max_frame_bytes).is_ok());
        assert!(self.max_frame_bytes > 0);
        assert!(self.connections_per_peer > 0);
        assert!(self.max_queued_per_peer > 0);
        assert!(self.max_in_flight_per_connection > 0);
        assert!(self.max_local_in_flight > 0);
        assert!(self.max_peers > 0);
        assert!(self.max_connections > 0);
        assert!(self.reconnect_backoff_min <= self.reconnect_backoff_max);
    }
}

/// The `outcome` label of `ringkv_rpc_calls_total`.
fn outcome(result: &Result<PeerResponse, TransportError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(TransportError::Timeout(_)) => "timeout",
        Err(TransportError::Unreachable { .. }) => "unreachable",
        Err(TransportError::Overloaded(_)) => "overloaded",
        Err(TransportError::Protocol { .. }) => "protocol",
        Err(TransportError::Closed) => "closed",
    }
}

/// Counts a finished call and its latency.
fn record_call(
    peer: NodeId,
    started: tokio::time::Instant,
    result: &Result<PeerResponse, TransportError>,
) {
    let outcome = outcome(result);
    let took = started.elapsed().as_secs_f64();
    let lookup = || {
        (
            metrics::counter!("ringkv_rpc_calls_total", "peer" => peer.to_string(), "outcome" => outcome),
            metrics::histogram!("ringkv_rpc_call_seconds"),
        )
    };
    if !crate::metrics::installed() {
        let (calls, latency) = lookup();
        calls.increment(1);
        latency.record(took);
        return;
    }
    // Handles kept per thread: a call costs no label string or registry lookup.
    RPC_HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let (calls, latency) = handles.entry((peer, outcome)).or_insert_with(lookup);
        calls.increment(1);
        latency.record(took);
    });
}

thread_local! {
    static RPC_HANDLES: crate::metrics::Handles<(NodeId, &'static str)> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Counts a refused (or dropped) connection.
fn record_refusal(reason: &'static str) {
    metrics::counter!("ringkv_rpc_connections_refused_total", "reason" => reason).increment(1);
}
