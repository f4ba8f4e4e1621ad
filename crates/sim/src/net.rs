//! The simulated network and what a node does with a message: `SimTransport` is
//! the `Transport` the coordinators get, `dispatch` is `server::peer::PeerService`
//! without threads. A call is a request message (maybe lost, delayed by the RNG), a
//! handler task on the receiving node, and a response message back; the caller
//! gives up at its timeout on virtual time, exactly like the TCP transport does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ringkv_cluster::coordinator::Coordinator;
use ringkv_cluster::membership::Membership;
use ringkv_cluster::replica::decode_write;
use ringkv_cluster::{BoxFuture, Node, Peer, Spawn, Transport, TransportError};
use ringkv_core::ActorId;

use crate::disk::SimDisk;
use ringkv_core::wire::{PeerError, PeerRequest, PeerResponse};

use crate::exec::{Owner, Receiver, Sender, lock, oneshot};
use crate::sim::{Canary, Event, Fault, Sim, Sleep};

/// One running incarnation of a node.
pub struct SimNode {
    pub node: Arc<Node>,
    pub membership: Arc<Membership>,
    pub coordinator: Arc<Coordinator>,
    pub actor: ActorId,
    /// The node's disk: answers wait until it has flushed.
    pub disk: Arc<SimDisk>,
    pub sim: Arc<Sim>,
}

/// Node `from`'s view of the network.
pub struct SimTransport {
    pub sim: Arc<Sim>,
    pub from: usize,
}

/// Background work of node `node`; it dies with the node.
pub struct SimSpawn {
    pub sim: Arc<Sim>,
    pub node: usize,
}

impl Spawn for SimSpawn {
    fn spawn(&self, task: BoxFuture<()>) {
        self.sim.spawn(Owner::Node(self.node), task);
    }
}

impl Transport for SimTransport {
    fn call(
        &self,
        to: &Peer,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<Result<PeerResponse, TransportError>> {
        let (tx, rx) = oneshot();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline = self.sim.now().saturating_add(timeout_ms);
        match usize::try_from(to.id.0)
            .ok()
            .filter(|index| *index < lock(&self.sim.nodes).len())
        {
            // A crashed process refuses the connection: the caller learns at once
            // (one round trip) that the request never got there.
            Some(target) if !lock(&self.sim.core).net.up[target] => {
                let (peer, sim) = (to.id, self.sim.clone());
                let rtt = self.sim.random(|rng| rng.range(1, 10));
                self.sim.log(&format!(
                    "n{}->n{target} {}: connection refused",
                    self.from,
                    describe_request(&request)
                ));
                return Box::pin(async move {
                    sim.sleep(rtt).await;
                    Err(TransportError::Unreachable {
                        peer,
                        reason: "connection refused".into(),
                    })
                });
            }
            Some(target) => send_request(&self.sim, self.from, target, request, tx),
            None => {
                let peer = to.id;
                return Box::pin(async move {
                    Err(TransportError::Unreachable {
                        peer,
                        reason: "no such node".into(),
                    })
                });
            }
        }
        Box::pin(Reply {
            rx,
            sleep: self.sim.sleep_until(deadline),
            timeout,
        })
    }
}

/// The caller's side of a call: the answer, or `Timeout` at the deadline (a lost
/// message or a crashed peer look the same: silence).
struct Reply {
    rx: Receiver<PeerResponse>,
    sleep: Sleep,
    timeout: Duration,
}

impl Future for Reply {
    type Output = Result<PeerResponse, TransportError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(Some(response)) = Pin::new(&mut self.rx).poll(cx) {
            return Poll::Ready(Ok(response));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TransportError::Timeout(self.timeout))),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn send_request(
    sim: &Arc<Sim>,
    from: usize,
    to: usize,
    request: PeerRequest,
    reply: Sender<PeerResponse>,
) {
    let mut core = lock(&sim.core);
    let line = format!("n{from}->n{to} {}", describe_request(&request));
    let Some(at) = core.route(from, to) else {
        let now = core.now;
        core.trace.log(now, &format!("{line} LOST"));
        drop(core);
        drop(reply);
        return;
    };
    let now = core.now;
    core.trace.log(now, &format!("{line} @{at}"));
    let incarnation = core.net.incarnation[to];
    let world = sim.clone();
    core.schedule(
        at,
        Event::Run(Box::new(move || {
            deliver(&world, from, to, incarnation, request, reply);
        })),
    );
}

fn deliver(
    sim: &Arc<Sim>,
    from: usize,
    to: usize,
    incarnation: u64,
    request: PeerRequest,
    reply: Sender<PeerResponse>,
) {
    let (alive, canary) = {
        let core = lock(&sim.core);
        (
            core.net.up[to] && core.net.incarnation[to] == incarnation,
            core.canary,
        )
    };
    let target = sim.node(to).filter(|_| alive);
    let Some(target) = target else {
        sim.log(&format!(
            "n{to} is down: drops {}",
            describe_request(&request)
        ));
        return;
    };
    let world = sim.clone();
    sim.spawn(
        Owner::Node(to),
        Box::pin(async move {
            let response = dispatch(&target, request, canary).await;
            let mut core = lock(&world.core);
            // The nemesis likes to cut the power right after a node promised
            // durability: the most damaging moment if the promise was false.
            if response == PeerResponse::Ack && core.crash_after_ack() {
                let now = core.now;
                // Half the time the whole cluster goes, a moment later.
                let fault = if core.rng.chance(500) {
                    let later = now + core.rng.range(1, 3);
                    (later, Fault::PowerCut)
                } else {
                    (now, Fault::Crash(to))
                };
                core.schedule(fault.0, Event::Fault(fault.1));
            }
            let line = format!("n{to}->n{from} {}", describe_response(&response));
            match core.route(to, from) {
                Some(at) => {
                    let now = core.now;
                    core.trace.log(now, &format!("{line} @{at}"));
                    core.schedule(at, Event::Run(Box::new(move || reply.send(response))));
                }
                None => {
                    let now = core.now;
                    core.trace.log(now, &format!("{line} LOST"));
                    drop(core);
                    drop(reply);
                }
            }
        }),
    );
}

fn internal(message: String) -> PeerResponse {
    PeerResponse::Error(PeerError::Internal { message })
}

/// What `server::peer::PeerService` does with a request, minus the thread pool
/// (and plus the planted bug of `canary`, if any).
pub async fn dispatch(target: &SimNode, request: PeerRequest, canary: Canary) -> PeerResponse {
    match request {
        PeerRequest::Replicate { .. } if canary == Canary::AckWithoutApplying => PeerResponse::Ack,
        PeerRequest::Members { members } => target
            .membership
            .on_members(target.coordinator.transport().as_ref(), members),
        PeerRequest::Coordinate { write, required } => match decode_write(write) {
            Ok(write) => target.coordinator.on_coordinate(write, required).await,
            Err(error) => PeerResponse::Error(error),
        },
        PeerRequest::Sync => match target.node.sync().await {
            Ok(()) => {
                wait_durable(target, canary).await;
                PeerResponse::Ack
            }
            Err(error) => internal(format!("sync failed: {error}")),
        },
        request @ (PeerRequest::Update { .. }
        | PeerRequest::Replicate { .. }
        | PeerRequest::Hint { .. }
        | PeerRequest::Read { .. }) => {
            let reply = target.node.handle_replica(request);
            let durable = reply.durable.is_some();
            if let Some(durable) = reply.durable
                && let Err(error) = durable.await
            {
                return internal(format!("write applied but not durable: {error}"));
            }
            if durable {
                wait_durable(target, canary).await;
            }
            reply.response
        }
    }
}

/// Waits for the disk flush that covers what the node applied so far; the
/// `AckBeforeDurable` canary skips it.
async fn wait_durable(target: &SimNode, canary: Canary) {
    if canary != Canary::AckBeforeDurable {
        let at = target.disk.durable_at();
        target.sim.sleep_until(at).await;
    }
}

fn show_version(bytes: &[u8]) -> String {
    match ringkv_core::Context::from_bytes(bytes) {
        Ok(version) => crate::workload::show(&version),
        Err(error) => format!("<bad version: {error}>"),
    }
}

fn key_name(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

fn describe_request(request: &PeerRequest) -> String {
    match request {
        PeerRequest::Coordinate { write, required } => {
            format!("Coordinate {} w={required}", key_name(&write.key))
        }
        PeerRequest::Update { write } => format!("Update {}", key_name(&write.key)),
        PeerRequest::Replicate { key, record } => {
            format!("Replicate {} ({} B)", key_name(key), record.len())
        }
        PeerRequest::Sync => "Sync".into(),
        PeerRequest::Read { key } => format!("Read {}", key_name(key)),
        PeerRequest::Members { members } => format!("Members ({})", members.len()),
        PeerRequest::Hint {
            target,
            key,
            record,
        } => {
            format!("Hint for {target} {} ({} B)", key_name(key), record.len())
        }
    }
}

fn describe_response(response: &PeerResponse) -> String {
    match response {
        PeerResponse::Record { record: Some(r) } => format!("Record ({} B)", r.len()),
        PeerResponse::Record { record: None } => "Record (none)".into(),
        PeerResponse::Members { members } => format!("Members ({})", members.len()),
        PeerResponse::Updated { record, version } => {
            format!("Updated ({} B) {}", record.len(), show_version(version))
        }
        PeerResponse::Written { version, hinted } => {
            format!("Written {} hinted={hinted}", show_version(version))
        }
        PeerResponse::Ack => "Ack".into(),
        PeerResponse::Error(error) => format!("Error {error:?}"),
    }
}
