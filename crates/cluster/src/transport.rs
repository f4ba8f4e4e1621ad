//! How the node logic reaches other nodes: the `Transport` trait. The server plugs
//! in TCP (`ringkv-server`'s `rpc`), the simulator a simulated network.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::wire::{PeerRequest, PeerResponse};

/// A boxed future that owns what it needs.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A node to talk to: its id and internal RPC address (`peer_addr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

/// Node ids from here up name peers known only by address (seeds, before they
/// answer); real node ids are below it. A transport accepts any node behind such a
/// peer instead of checking the identity it expected.
pub const SEED_IDS_FROM: u64 = 1 << 63;

/// Whether `id` is a stand-in for a seed known only by its address.
pub fn is_seed_id(id: NodeId) -> bool {
    id.0 >= SEED_IDS_FROM
}

impl Peer {
    /// A seed known only by address, under a stand-in id (≥ `SEED_IDS_FROM`) unique
    /// to the address, so connections to it are pooled apart from real members.
    pub fn seed(addr: &str) -> Peer {
        let hash = ringkv_core::Token::of(addr.as_bytes()).0 as u64;
        Peer {
            id: NodeId(SEED_IDS_FROM | hash),
            addr: addr.to_string(),
        }
    }
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    #[error("too many calls queued for peer {0}")]
    Overloaded(NodeId),
    #[error("peer {peer} broke the protocol: {reason}")]
    Protocol { peer: NodeId, reason: String },
    #[error("transport is shut down")]
    Closed,
}

/// Request/response calls to other nodes, and to this node itself (the coordinator
/// reaches its own replica the same way, so blocking storage work stays off the
/// async runtime in production and is scheduled like any message in the simulator).
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to `to`. The request is on its way when `call` returns: the
    /// future only waits (at most `timeout`) for the answer, and dropping it abandons
    /// the answer, not the request. This is what lets a coordinator answer after W
    /// acks while the other replicas still get the write.
    fn call(
        &self,
        to: &Peer,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<Result<PeerResponse, TransportError>>;

    /// News that `peer` is back (it restarted: a new generation was heard of). A
    /// transport that fails calls fast after failed connects should try it again at
    /// the next call instead of waiting out its backoff.
    fn forget_failures(&self, _peer: NodeId) {}
}

/// Runs background work (read repair, hint placement) that outlives the request
/// that started it, and blocking work (storage) off the async runtime.
pub trait Spawn: Send + Sync + 'static {
    fn spawn(&self, task: BoxFuture<()>);

    /// Runs `job` where it may block (storage calls); resolves once it ran. The
    /// default runs it at once, inline: right for memory engines (tests, simulator).
    fn blocking(&self, job: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        job();
        Box::pin(std::future::ready(()))
    }

    /// Resolves after `duration` (throttles). The default does not wait: right for
    /// tests that never throttle.
    fn sleep(&self, _duration: Duration) -> BoxFuture<()> {
        Box::pin(std::future::ready(()))
    }
}

/// Runs `job` through `spawn.blocking` and returns its result (`None` if the job
/// was dropped without running: the runtime is shutting down).
pub async fn offload<T: Send + 'static>(
    spawn: &dyn Spawn,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let slot = Arc::new(Mutex::new(None));
    let filled = slot.clone();
    spawn
        .blocking(Box::new(move || {
            let result = job();
            *filled.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        }))
        .await;
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}
