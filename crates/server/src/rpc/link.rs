//! One peer's pool of connections, as the dialer sees it.
//!
//! Each of the `connections_per_peer` slots has a bounded queue of encoded requests,
//! a bounded map of calls awaiting their answer (id → oneshot), and one driver task
//! (`driver`) that owns the queue. `call` therefore only has to encode, register and
//! `try_send`: the request is on its way when `call` returns, and a full queue or map
//! is `Overloaded` at once, never a wait.
//!
//! The link's [`Health`] is shared by its slots: when any of them fails to connect,
//! the whole peer is down for a backoff that doubles per failure (capped), and calls
//! fail at once with that error meanwhile, instead of each slot finding out alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ringkv_cluster::{BoxFuture, Peer, TransportError};
use ringkv_core::NodeId;
use ringkv_core::wire::{PeerRequest, PeerResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::RpcOptions;
use super::driver;
use super::frame::{self, Body, Envelope};

/// What every link of one transport shares.
pub(super) struct LinkConfig {
    pub me: NodeId,
    pub secret: Option<Vec<u8>>,
    pub options: RpcOptions,
    /// Cancelled by `TcpTransport::shutdown`; every link's token is a child.
    pub shutdown: CancellationToken,
}

type Answer = oneshot::Sender<Result<PeerResponse, TransportError>>;

/// An encoded request waiting in a slot's queue.
pub(super) struct Outgoing {
    pub id: u64,
    pub frame: Vec<u8>,
}

/// The connections to one peer at one address.
pub(super) struct Link {
    peer: Peer,
    slots: Vec<Arc<Slot>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    health: Arc<Health>,
    max_frame_bytes: usize,
    /// Cancelled when the transport shuts down or the peer's address changes.
    closed: CancellationToken,
}

/// One connection's queue and calls.
pub(super) struct Slot {
    queue: mpsc::Sender<Outgoing>,
    /// Calls awaiting an answer; at most `max_in_flight_per_connection`.
    pending: Mutex<HashMap<u64, Answer>>,
    max_pending: usize,
}

/// Whether a peer is reachable, as its slots' connect attempts found.
pub(super) struct Health {
    state: Mutex<HealthState>,
    backoff_min: Duration,
    backoff_max: Duration,
}

struct HealthState {
    /// After a failed connect: calls fail with this error until this instant.
    down: Option<(Instant, TransportError)>,
    /// The backoff after the next failure.
    backoff: Duration,
    /// Failed attempts since the last connect.
    failures: u64,
}

/// A registered call: its answer arrives on `answer`. Dropping it abandons the
/// answer (the request stays queued or sent).
pub(super) struct Pending {
    slot: Arc<Slot>,
    id: u64,
    answer: oneshot::Receiver<Result<PeerResponse, TransportError>>,
}

enum Rejected {
    Full(Outgoing),
    Closed,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks; if one did, the map is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    /// A link to `peer` and the driver tasks the caller must spawn.
    pub fn new(peer: Peer, config: Arc<LinkConfig>) -> (Arc<Link>, Vec<BoxFuture<()>>) {
        let options = &config.options;
        let connections = options.connections_per_peer;
        let queue_len = options.max_queued_per_peer.div_ceil(connections);
        let closed = config.shutdown.child_token();
        let health = Arc::new(Health {
            state: Mutex::new(HealthState {
                down: None,
                backoff: options.reconnect_backoff_min,
                failures: 0,
            }),
            backoff_min: options.reconnect_backoff_min,
            backoff_max: options.reconnect_backoff_max,
        });
        let mut slots = Vec::with_capacity(connections);
        let mut drivers: Vec<BoxFuture<()>> = Vec::with_capacity(connections);
        for _ in 0..connections {
            let (queue, receiver) = mpsc::channel(queue_len);
            let slot = Arc::new(Slot {
                queue,
                pending: Mutex::new(HashMap::new()),
                max_pending: options.max_in_flight_per_connection,
            });
            let driver = driver::drive(
                driver::Driver {
                    peer: peer.clone(),
                    slot: slot.clone(),
                    health: health.clone(),
                    config: config.clone(),
                    closed: closed.clone(),
                },
                receiver,
            );
            drivers.push(Box::pin(driver));
            slots.push(slot);
        }
        let link = Link {
            peer,
            slots,
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            health,
            max_frame_bytes: options.max_frame_bytes,
            closed,
        };
        (Arc::new(link), drivers)
    }

    pub fn addr(&self) -> &str {
        &self.peer.addr
    }

    /// Closes every connection of the link; its calls fail.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Forgets earlier failed connects to this peer (it is back).
    pub fn forget_failures(&self) {
        self.health.forget();
    }

    /// Encodes `request` and queues it on the next slot (round-robin) with room.
    ///
    /// # Errors
    /// The connect error while the peer is down (backoff), `Overloaded` when every
    /// slot is full, `Protocol` for a request over `max_frame_bytes`, `Closed` once
    /// the link is closed.
    pub fn enqueue(&self, request: PeerRequest) -> Result<Pending, TransportError> {
        let peer = self.peer.id;
        if let Some(error) = self.health.down_error() {
            return Err(error);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            id,
            body: Body::Request(request),
        };
        let frame = frame::encode(&envelope, self.max_frame_bytes).map_err(|error| {
            let reason = format!("request not sent: {error}");
            TransportError::Protocol { peer, reason }
        })?;
        let mut outgoing = Outgoing { id, frame };
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.slots.len() {
            let slot = &self.slots[(start + offset) % self.slots.len()];
            let (answer, receiver) = oneshot::channel();
            match slot.try_enqueue(outgoing, answer) {
                Ok(()) => {
                    let slot = slot.clone();
                    let answer = receiver;
                    return Ok(Pending { slot, id, answer });
                }
                Err(Rejected::Full(back)) => outgoing = back,
                Err(Rejected::Closed) => return Err(TransportError::Closed),
            }
        }
        Err(TransportError::Overloaded(peer))
    }
}

impl Slot {
    fn try_enqueue(&self, outgoing: Outgoing, answer: Answer) -> Result<(), Rejected> {
        let id = outgoing.id;
        {
            let mut pending = lock(&self.pending);
            if pending.len() >= self.max_pending {
                return Err(Rejected::Full(outgoing));
            }
            pending.insert(id, answer);
        }
        match self.queue.try_send(outgoing) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(outgoing)) => {
                lock(&self.pending).remove(&id);
                Err(Rejected::Full(outgoing))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                lock(&self.pending).remove(&id);
                Err(Rejected::Closed)
            }
        }
    }

    /// Hands `result` to the call `id`, if it still waits.
    pub(super) fn answer(&self, id: u64, result: Result<PeerResponse, TransportError>) {
        let answer = lock(&self.pending).remove(&id);
        if let Some(answer) = answer {
            // The caller may have given up since; then nobody needs the answer.
            let _ = answer.send(result);
        }
    }

    pub(super) fn fail_all(&self, error: &TransportError) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (_, answer) in pending {
            let _ = answer.send(Err(error.clone()));
        }
    }
}

impl Health {
    /// The error to fail calls with while the peer is down.
    pub(super) fn down_error(&self) -> Option<TransportError> {
        let state = lock(&self.state);
        let (until, error) = state.down.as_ref()?;
        (Instant::now() < *until).then(|| error.clone())
    }

    /// Marks the peer down after a failed connect; returns the backoff and how many
    /// attempts had failed before this one.
    pub(super) fn failed(&self, error: &TransportError) -> (Duration, u64) {
        let mut state = lock(&self.state);
        let (backoff, failures) = (state.backoff, state.failures);
        state.down = Some((Instant::now() + backoff, error.clone()));
        state.backoff = (backoff * 2).min(self.backoff_max);
        state.failures += 1;
        (backoff, failures)
    }

    /// Forgets earlier failed connects: the next call tries to connect at once.
    pub(super) fn forget(&self) {
        let mut state = lock(&self.state);
        *state = HealthState {
            down: None,
            backoff: self.backoff_min,
            failures: 0,
        };
    }

    /// Marks the peer up; returns how many attempts had failed before.
    pub(super) fn connected(&self) -> u64 {
        let mut state = lock(&self.state);
        let failures = state.failures;
        *state = HealthState {
            down: None,
            backoff: self.backoff_min,
            failures: 0,
        };
        failures
    }
}

impl Pending {
    /// The answer, or `Timeout` after `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Result<PeerResponse, TransportError> {
        match tokio::time::timeout(timeout, &mut self.answer).await {
            Err(_) => Err(TransportError::Timeout(timeout)),
            Ok(Ok(result)) => result,
            // Every path that removes a pending call answers it first.
            Ok(Err(_)) => Err(TransportError::Closed),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.slot.pending).remove(&self.id);
    }
}
