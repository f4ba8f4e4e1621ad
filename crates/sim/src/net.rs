//! The simulated network and what a node does with a message: `SimTransport` is
//! the `Transport` the coordinators get, `dispatch` is `server::peer::PeerService`
//! without threads. A call is a request message (maybe lost, delayed by the RNG), a
//! handler task on the receiving node, and a response message back; the caller
//! gives up at its timeout on virtual time, exactly like the TCP transport does.
//!
//! The network may also deliver a request twice (each copy on its own delay, the
//! first answer wins), but only requests a replica may legitimately see twice: the
//! RPC sends each frame once and never retries, so an `Update` or `Coordinate` is
//! never duplicated (a second copy would be a second write, as a client retry is).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ringkv_cluster::coordinator::Coordinator;
use ringkv_cluster::membership::Membership;
use ringkv_cluster::replica::decode_write;
use ringkv_cluster::{BoxFuture, Node, Peer, Spawn, Transport, TransportError};
use ringkv_core::wire::{PeerError, PeerRequest, PeerResponse, WireWrite};
use ringkv_core::{ActorId, Context as Version, Record};

use crate::disk::SimDisk;
use crate::exec::{Owner, Receiver, Sender, lock, oneshot};
use crate::sim::{Applied, Canary, Event, Fault, Sim, Sleep};

/// Where a call's answer goes: shared by the copies of a duplicated request, taken
/// by the first answer. Once every copy is gone the sender drops: silence.
type ReplySlot = Arc<Mutex<Option<Sender<PeerResponse>>>>;

/// One running incarnation of a node.
pub struct SimNode {
    pub node: Arc<Node>,
    pub membership: Arc<Membership>,
    pub coordinator: Arc<Coordinator>,
    pub topology: Arc<ringkv_cluster::topology::Topology>,
    pub actor: ActorId,
    /// The node's disk (outlives the incarnation).
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

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Box::pin(self.sim.sleep(ms))
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
            Some(target) => {
                let slot: ReplySlot = Arc::new(Mutex::new(Some(tx)));
                send_request(&self.sim, self.from, target, request, slot);
            }
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

/// Whether a replica may see this request twice without harm: merges, reads and
/// barriers are idempotent; a write is not (see the module doc).
pub fn may_duplicate(request: &PeerRequest) -> bool {
    match request {
        PeerRequest::Replicate { .. }
        | PeerRequest::Read { .. }
        | PeerRequest::Sync
        | PeerRequest::Hint { .. }
        | PeerRequest::TreeRoots { .. }
        | PeerRequest::TreeHashes { .. }
        | PeerRequest::LeafDigests { .. }
        | PeerRequest::StreamRange { .. }
        | PeerRequest::Store { .. }
        | PeerRequest::Members { .. } => true,
        PeerRequest::Update { .. } | PeerRequest::Coordinate { .. } | PeerRequest::Decommission => {
            false
        }
    }
}

fn send_request(sim: &Arc<Sim>, from: usize, to: usize, request: PeerRequest, reply: ReplySlot) {
    let mut core = lock(&sim.core);
    let line = format!("n{from}->n{to} {}", describe_request(&request));
    let duplicate_per_mille = core.net.duplicate_per_mille;
    let copies = if from != to && may_duplicate(&request) && core.rng.chance(duplicate_per_mille) {
        2
    } else {
        1
    };
    let incarnation = core.net.incarnation[to];
    for copy in 0..copies {
        let tag = if copy == 0 { "" } else { " DUP" };
        let Some(at) = core.route(from, to) else {
            let now = core.now;
            core.trace.log(now, &format!("{line}{tag} LOST"));
            continue;
        };
        let now = core.now;
        core.trace.log(now, &format!("{line}{tag} @{at}"));
        let (world, request, reply) = (sim.clone(), request.clone(), reply.clone());
        core.schedule(
            at,
            Event::Run(Box::new(move || {
                deliver(&world, from, to, incarnation, request, reply);
            })),
        );
    }
    drop(core);
    // The caller's slot closes here if no copy is on its way.
    drop(reply);
}

fn deliver(
    sim: &Arc<Sim>,
    from: usize,
    to: usize,
    incarnation: u64,
    request: PeerRequest,
    reply: ReplySlot,
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
            let update = match &request {
                PeerRequest::Update { write } => Some((write.key.clone(), write.seen.clone())),
                _ => None,
            };
            let response = dispatch(&target, request, canary).await;
            if let (Some((key, seen)), PeerResponse::Updated { record, version }) =
                (update, &response)
            {
                note_applied(&world, &target, to, key, &seen, record, version);
            }
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
                    core.schedule(
                        at,
                        Event::Run(Box::new(move || {
                            let sender = lock(&reply).take();
                            if let Some(sender) = sender {
                                sender.send(response);
                            }
                        })),
                    );
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

/// Adds an applied `Update` to the run's ground truth (`Core::applied`). The new dot
/// is the replica's highest sibling of its own actor: `DvvSet::update` numbers it
/// above every counter of that actor the record knew.
fn note_applied(
    sim: &Arc<Sim>,
    target: &SimNode,
    node: usize,
    key: Bytes,
    seen: &[u8],
    record: &[u8],
    version: &[u8],
) {
    let parts = (
        Version::from_bytes(seen),
        Record::decode(record),
        Version::from_bytes(version),
    );
    let (Ok(seen), Ok(record), Ok(version)) = parts else {
        sim.log(&format!(
            "n{node}: an Updated answer does not decode: {parts:?}"
        ));
        return;
    };
    let own = record
        .siblings()
        .filter(|(dot, _)| dot.actor == target.actor)
        .max_by_key(|(dot, _)| dot.counter);
    let Some((dot, sibling)) = own else {
        sim.log(&format!(
            "n{node}: an Updated record holds no version of its own"
        ));
        return;
    };
    let applied = Applied {
        key,
        node,
        at: sim.now(),
        dot,
        seen,
        version,
        sibling: sibling.clone(),
    };
    lock(&sim.core).applied.push(applied);
}

/// The `IgnoreWriteContext` canary: the write is applied blind, and the answer
/// claims it superseded what the client had seen.
fn update_ignoring_context(target: &SimNode, write: WireWrite) -> PeerResponse {
    let seen = Version::from_bytes(&write.seen).unwrap_or_default();
    let blind = WireWrite {
        seen: Bytes::from(Version::default().to_bytes()),
        ..write
    };
    match target
        .node
        .handle_replica(PeerRequest::Update { write: blind })
        .response
    {
        PeerResponse::Updated { record, version } => {
            let mut claimed = Version::from_bytes(&version).unwrap_or_default();
            claimed.join(&seen);
            PeerResponse::Updated {
                record,
                version: Bytes::from(claimed.to_bytes()),
            }
        }
        other => other,
    }
}

/// The `ForgetSentVersion` canary: applied right, answered with only the new dot.
fn update_forgetting_sent_version(target: &SimNode, write: WireWrite) -> PeerResponse {
    match target
        .node
        .handle_replica(PeerRequest::Update { write })
        .response
    {
        PeerResponse::Updated { record, version } => {
            let version = Version::from_bytes(&version).unwrap_or_default();
            let own = Version::from_parts(
                [],
                [ringkv_core::Dot {
                    actor: target.actor,
                    counter: version.max_counter(target.actor),
                }],
            );
            PeerResponse::Updated {
                record,
                version: Bytes::from(own.to_bytes()),
            }
        }
        other => other,
    }
}

/// The `CrdtOnEmptyState` canary: before a CRDT operation, the replica deletes
/// everything it holds of the key (so the operation starts from nothing and the
/// result supersedes all of it).
fn crdt_on_empty_state(target: &SimNode, write: WireWrite) -> PeerResponse {
    if write.crdt.is_some()
        && let Ok(key) = ringkv_core::Key::from_stored(write.key.clone())
        && let Ok(Some(held)) = target.node.read_own(&key)
    {
        let wipe = ringkv_cluster::Write {
            key,
            body: ringkv_cluster::WriteBody::Delete,
            seen: held.context().clone(),
            ttl: None,
        };
        if let Err(error) = target.node.write(wipe) {
            return internal(format!("canary wipe failed: {error}"));
        }
    }
    target
        .node
        .handle_replica(PeerRequest::Update { write })
        .response
}

fn internal(message: String) -> PeerResponse {
    PeerResponse::Error(PeerError::Internal { message })
}

/// What `server::peer::PeerService` does with a request, minus the thread pool
/// (and plus the planted bug of `canary`, if any).
pub async fn dispatch(target: &SimNode, request: PeerRequest, canary: Canary) -> PeerResponse {
    if let Some(refused) = ringkv_cluster::topology::refusal(target.membership.my_state(), &request)
    {
        return PeerResponse::Error(refused);
    }
    match request {
        PeerRequest::Replicate { .. } if canary == Canary::AckWithoutApplying => PeerResponse::Ack,
        PeerRequest::Update { write } if canary == Canary::IgnoreWriteContext => {
            update_ignoring_context(target, write)
        }
        PeerRequest::Update { write } if canary == Canary::ForgetSentVersion => {
            update_forgetting_sent_version(target, write)
        }
        PeerRequest::Update { write } if canary == Canary::CrdtOnEmptyState => {
            crdt_on_empty_state(target, write)
        }
        PeerRequest::TreeRoots { arcs } if canary == Canary::AntiEntropySkipsRange => {
            let mut roots = target.node.tree_roots(&arcs);
            for (arc, root) in arcs.iter().zip(&mut roots) {
                if arc.start.0 >= 1 << 127 {
                    *root = None;
                }
            }
            PeerResponse::Roots { roots }
        }
        PeerRequest::Decommission => PeerResponse::Error(PeerError::Refused {
            message: "the simulator starts decommissions itself".into(),
        }),
        PeerRequest::Members { members } => target
            .membership
            .on_members(target.coordinator.transport().as_ref(), members),
        PeerRequest::Coordinate { write, required } => match decode_write(write) {
            Ok(write) => target.coordinator.on_coordinate(write, required).await,
            Err(error) => PeerResponse::Error(error),
        },
        // The `AckBeforeDurable` canary answers without awaiting the barrier.
        PeerRequest::Sync => {
            let barrier = target.node.sync();
            if canary == Canary::AckBeforeDurable {
                return PeerResponse::Ack;
            }
            match barrier.await {
                Ok(()) => PeerResponse::Ack,
                Err(error) => internal(format!("sync failed: {error}")),
            }
        }
        // Every other request is replica work (`PeerRequest::is_replica_work`).
        request => {
            debug_assert!(request.is_replica_work());
            let hint = match &request {
                PeerRequest::Hint {
                    target,
                    key,
                    record,
                    ..
                } => Some((*target, key.clone(), record.clone())),
                _ => None,
            };
            let reply = target.node.handle_replica(request);
            if let Some(durable) = reply.durable
                && canary != Canary::AckBeforeDurable
                && let Err(error) = durable.await
            {
                return internal(format!("write applied but not durable: {error}"));
            }
            if let (Some((to, key, record)), PeerResponse::Ack) = (hint, &reply.response)
                && let (Ok(index), Ok(record)) =
                    (usize::try_from(to.0), ringkv_core::Record::decode(&record))
            {
                // The ledger the handoff checker walks: every hint stored durably.
                let holder = usize::try_from(target.membership.me().0).unwrap_or(usize::MAX);
                lock(&target.sim.core).hints.push(crate::sim::HintStored {
                    holder,
                    target: index,
                    key,
                    record,
                });
            }
            reply.response
        }
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
        PeerRequest::TreeRoots { arcs } => format!("TreeRoots ({} arcs)", arcs.len()),
        PeerRequest::TreeHashes { arc, child } => {
            format!("TreeHashes {:x}.. child {child:?}", arc.start.0)
        }
        PeerRequest::LeafDigests { range } => format!("LeafDigests {:x}..", range.start.0),
        PeerRequest::StreamRange { range, after, .. } => format!(
            "StreamRange {:x}.. after {:?}",
            range.start.0,
            after.as_ref().map(|key| key_name(key))
        ),
        PeerRequest::Store { records } => format!("Store ({} records)", records.len()),
        PeerRequest::Decommission => "Decommission".into(),
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
        PeerResponse::Roots { roots } => format!("Roots ({})", roots.len()),
        PeerResponse::Hashes { hashes } => format!("Hashes ({})", hashes.len()),
        PeerResponse::Digests { keys, complete } => {
            format!(
                "Digests ({}{})",
                keys.len(),
                if *complete { "" } else { "+" }
            )
        }
        PeerResponse::Records { records, complete } => format!(
            "Records ({}{})",
            records.len(),
            if *complete { "" } else { "+" }
        ),
        PeerResponse::Error(error) => format!("Error {error:?}"),
    }
}
