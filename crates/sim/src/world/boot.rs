//! Starting a simulated node: what it learns from its seeds, its boot over its
//! engine (a new actor id per incarnation), the resumption of an unfinished ring
//! change, and its background rounds (gossip, handoff, anti-entropy, purge).

use std::sync::Arc;
use std::time::Duration;

use ringkv_cluster::antientropy::{AntiEntropy, AntiEntropySettings};
use ringkv_cluster::coordinator::{Coordinator, Settings};
use ringkv_cluster::handoff::{Handoff, HandoffSettings};
use ringkv_cluster::membership::{Liveness, Membership};
use ringkv_cluster::purge::Purge;
use ringkv_cluster::tombstone::Collector;
use ringkv_cluster::{BoxFuture, Node, Peer, Spawn, Transport};
use ringkv_core::wire::PeerRequest;
use ringkv_core::{ActorId, Member, MemberState, NodeId};

use super::{
    ANTI_ENTROPY_INTERVAL_MS, GOSSIP_INTERVAL_MS, NodeClock, PURGE, PURGE_INTERVAL_MS, World,
};
use crate::exec::{Owner, lock};
use crate::net::{SimNode, SimSpawn, SimTransport};
use crate::sim::{Canary, Event, Fault, Slot};
use ringkv_cluster::topology::{Topology, TopologySettings};

impl World {
    /// What a starting node learns from its seeds: the table of a live member if
    /// any is up, else the members as the world created them (never spares).
    pub(super) fn seed_view(&self, me: usize) -> Vec<Member> {
        let live = (0..self.config.nodes)
            .filter(|index| *index != me)
            .find_map(|index| self.sim.node(index));
        match live {
            Some(node) => node.membership.members(),
            // Everyone is down (a power cut): the members as the world knows them,
            // in the state they are in (as the nodes persisted it).
            None => {
                let slots = lock(&self.sim.core).slots.clone();
                self.members
                    .iter()
                    .zip(slots)
                    .zip(&self.engines)
                    .filter_map(|((member, slot), engine)| {
                        let saved = ringkv_cluster::node::saved_member_state(engine.as_ref());
                        let state = match (slot, saved) {
                            (Slot::Spare, _) => return None,
                            (Slot::Joining | Slot::Leaving, Ok(Some(state))) => state,
                            (Slot::Joining, _) => MemberState::Joining,
                            (Slot::Member, _) => MemberState::Normal,
                            (Slot::Leaving, _) => MemberState::Leaving,
                            (Slot::Gone, _) => MemberState::Left,
                        };
                        Some(Member {
                            state,
                            ..member.clone()
                        })
                    })
                    .collect()
            }
        }
    }

    /// Starts (or restarts) node `index` over its engine. Every incarnation gets a
    /// new actor id, as `server::identity` does after an unclean stop.
    pub(super) fn boot(&mut self, index: usize) {
        let (incarnation, canary, slot) = {
            let core = lock(&self.sim.core);
            (core.net.incarnation[index], core.canary, core.slots[index])
        };
        let actor = if canary == Canary::ReuseActorAfterCrash {
            ActorId((index as u64) << 32)
        } else {
            ActorId(((index as u64) << 32) | incarnation)
        };
        // Every start is a new generation, as `server::identity` makes it.
        // As `server` starts: a change whose data has moved resumes at its second
        // phase (as recorded), a join before that streams again, a decommission
        // before that ends.
        let saved = ringkv_cluster::node::saved_member_state(self.engines[index].as_ref());
        let state = match (slot, saved) {
            (Slot::Joining, Ok(Some(MemberState::Joined))) => MemberState::Joined,
            // Done, but stopped before it said so.
            (Slot::Joining, Ok(Some(MemberState::Normal))) => {
                lock(&self.sim.core).slots[index] = Slot::Member;
                MemberState::Normal
            }
            (Slot::Joining, _) => MemberState::Joining,
            (Slot::Leaving, Ok(Some(MemberState::Drained))) => MemberState::Drained,
            _ => MemberState::Normal,
        };
        let me = Member {
            generation: incarnation + 1,
            state,
            ..self.members[index].clone()
        };
        let clock = Arc::new(NodeClock {
            wall: self.clocks[index].clone(),
            sim: Arc::downgrade(&self.sim),
        });
        let membership = Arc::new(Membership::new(me, clock.clone(), self.config.detector));
        // As `server` starts: the departures it recorded, then what a peer knows.
        match ringkv_cluster::node::saved_left_members(self.engines[index].as_ref()) {
            Ok(departed) => {
                membership.merge(departed);
            }
            Err(error) => self.sim.log(&format!(
                "n{index}: cannot load the departed members: {error}"
            )),
        }
        membership.merge(self.seed_view(index));
        // As `server` starts: a node the cluster says has left (its disk lost
        // since, or the news of it unrecorded) joins again.
        if slot != Slot::Joining
            && membership
                .reported_me()
                .is_some_and(|old| old.state == MemberState::Left)
        {
            lock(&self.sim.core).slots[index] = Slot::Joining;
            membership.set_my_state(MemberState::Joining);
        }
        let hinting = lock(&self.sim.core).hinting;
        let node = Arc::new(
            Node::new(
                self.engines[index].clone(),
                clock.clone(),
                actor,
                self.config.policy,
            )
            .with_max_hints_bytes(if hinting { u64::MAX } else { 0 }),
        );
        // As `server` records a join before it starts (a `Normal` recorded by an
        // earlier run must not pass for this join's end).
        if membership.my_state() == MemberState::Joining
            && let Err(error) = node.save_member_state(MemberState::Joining)
        {
            self.sim
                .log(&format!("n{index}: cannot record that it joins: {error}"));
        }
        if let Err(error) = node.restore_dot_floor() {
            self.sim
                .log(&format!("n{index}: cannot load its dot floor: {error}"));
        }
        let transport: Arc<dyn Transport> = Arc::new(SimTransport {
            sim: self.sim.clone(),
            from: index,
        });
        let spawner = Arc::new(SimSpawn {
            sim: self.sim.clone(),
            node: index,
        });
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let coordinator = Arc::new(Coordinator::new(
            membership.clone(),
            transport.clone(),
            spawner.clone(),
            Settings {
                replication_factor: self.config.replication_factor,
                request_timeout: timeout,
            },
        ));

        let topology = Arc::new(Topology::new(
            node.clone(),
            membership.clone(),
            transport.clone(),
            spawner.clone(),
            TopologySettings {
                replication_factor: self.config.replication_factor,
                bytes_per_sec: u64::MAX,
                request_timeout: timeout,
            },
        ));
        lock(&self.sim.nodes)[index] = Some(Arc::new(SimNode {
            node,
            membership,
            coordinator,
            topology: topology.clone(),
            actor,
            disk: self.engines[index].clone(),
            sim: self.sim.clone(),
        }));
        self.start_background(index);
    }

    /// Runs node `index`'s join or decommission, if one is under way, like its
    /// other background work: until it is done or `Core::background_over` (it
    /// resumes with the background loops after heal).
    pub(super) fn resume_topology(&self, index: usize) {
        let Some(sim_node) = self.sim.node(index) else {
            return;
        };
        let slot = lock(&self.sim.core).slots[index];
        let sim = self.sim.clone();
        let change: BoxFuture<()> = match slot {
            Slot::Joining => Box::pin(async move {
                sim_node.topology.join().await;
                let mut core = lock(&sim.core);
                if core.slots[index] == Slot::Joining {
                    core.slots[index] = Slot::Member;
                }
                let now = core.now;
                core.trace.log(now, &format!("n{index} JOINED"));
                core.settle_after_change();
            }),
            Slot::Leaving => Box::pin(async move {
                sim_node.topology.decommission().await;
                let mut core = lock(&sim.core);
                core.slots[index] = Slot::Gone;
                let now = core.now;
                core.trace.log(now, &format!("n{index} LEFT"));
                core.settle_after_change();
                // It stops for good (its crash never restarts).
                core.schedule(now + 1, Event::Fault(Fault::Crash(index)));
            }),
            _ => return,
        };
        let watcher = self.sim.clone();
        let over: BoxFuture<()> = Box::pin(async move {
            loop {
                watcher.sleep(GOSSIP_INTERVAL_MS).await;
                if lock(&watcher.core).background_over() {
                    return;
                }
            }
        });
        self.sim
            .spawn(Owner::Node(index), Box::pin(first_of(change, over)));
    }

    /// Starts node `index`'s background loops (gossip, handoff, anti-entropy and
    /// purge rounds until `Core::background_over`), if it is up.
    pub fn start_background(&self, index: usize) {
        let Some(sim_node) = self.sim.node(index) else {
            return;
        };
        let (canary, tombstone_gc) = {
            let core = lock(&self.sim.core);
            (core.canary, core.tombstone_gc)
        };
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let transport = sim_node.coordinator.transport().clone();
        let spawn: Arc<dyn Spawn> = Arc::new(SimSpawn {
            sim: self.sim.clone(),
            node: index,
        });
        let handoff = Handoff::new(
            sim_node.node.clone(),
            sim_node.membership.clone(),
            transport.clone(),
            spawn.clone(),
            HandoffSettings {
                hint_ttl_ms: u64::MAX,
                bytes_per_round: u64::MAX,
                request_timeout: timeout,
                replication_factor: usize::from(self.config.replication_factor),
            },
        );
        let collector = tombstone_gc.map(|gc| Arc::new(Collector::new(sim_node.node.clone(), gc)));
        let mut anti_entropy = AntiEntropy::new(
            sim_node.node.clone(),
            sim_node.membership.clone(),
            transport.clone(),
            spawn.clone(),
            AntiEntropySettings {
                replication_factor: self.config.replication_factor,
                bytes_per_sec: u64::MAX,
                request_timeout: timeout,
            },
        );
        if let Some(collector) = &collector {
            anti_entropy = anti_entropy.with_collector(collector.clone());
        }
        let purge = Arc::new(Purge::new(
            sim_node.node.clone(),
            spawn.clone(),
            collector,
            PURGE,
        ));
        // Three loops, as the server runs them: a slow anti-entropy round must not
        // hold up the heartbeats.
        let membership = sim_node.membership.clone();
        let gossip_transport = transport.clone();
        let gossip_timeout = timeout.min(Duration::from_millis(GOSSIP_INTERVAL_MS));
        self.spawn_rounds(index, GOSSIP_INTERVAL_MS, move || {
            let (membership, transport) = (membership.clone(), gossip_transport.clone());
            Box::pin(async move {
                membership
                    .gossip_round(transport.as_ref(), gossip_timeout)
                    .await;
            })
        });
        let handoff = Arc::new(handoff);
        let (membership, node) = (sim_node.membership.clone(), sim_node.node.clone());
        self.spawn_rounds(index, GOSSIP_INTERVAL_MS, move || {
            let (handoff, membership, node, transport) = (
                handoff.clone(),
                membership.clone(),
                node.clone(),
                transport.clone(),
            );
            Box::pin(async move {
                if canary == Canary::ForgetHintsBeforeAck {
                    forget_then_send(&membership, transport.as_ref(), &node, timeout);
                } else {
                    handoff.round().await;
                }
            })
        });
        self.resume_topology(index);
        let topology = sim_node.topology.clone();
        self.spawn_rounds(index, GOSSIP_INTERVAL_MS, move || {
            let topology = topology.clone();
            Box::pin(async move {
                topology.upkeep().await;
            })
        });
        if lock(&self.sim.core).anti_entropy {
            let anti_entropy = Arc::new(anti_entropy);
            self.spawn_rounds(index, ANTI_ENTROPY_INTERVAL_MS, move || {
                let anti_entropy = anti_entropy.clone();
                Box::pin(async move {
                    anti_entropy.round().await;
                })
            });
        }
        self.spawn_rounds(index, PURGE_INTERVAL_MS, move || {
            let purge = purge.clone();
            Box::pin(async move {
                purge.round().await;
            })
        });
    }

    /// Runs `round` on node `index` every `interval_ms` until the run says stop
    /// (`Core::background_over`).
    fn spawn_rounds(
        &self,
        index: usize,
        interval_ms: u64,
        round: impl Fn() -> BoxFuture<()> + Send + 'static,
    ) {
        let sim = self.sim.clone();
        self.sim.spawn(
            Owner::Node(index),
            Box::pin(async move {
                loop {
                    sim.sleep(interval_ms).await;
                    if lock(&sim.core).background_over() {
                        return;
                    }
                    round().await;
                }
            }),
        );
    }
}

/// Resolves when either future does (the other is dropped).
async fn first_of(mut a: BoxFuture<()>, mut b: BoxFuture<()>) {
    std::future::poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// The planted handoff bug: forget each hint of a healthy target, then send it
/// without waiting for (or checking) the answer.
fn forget_then_send(
    membership: &Membership,
    transport: &dyn Transport,
    node: &Node,
    timeout: Duration,
) {
    let targets: Vec<NodeId> = node.hint_stats().by_target.into_keys().collect();
    for target in targets {
        if membership.liveness(target) != Liveness::Healthy {
            continue;
        }
        let Some(peer) = membership.peer(target) else {
            continue;
        };
        let Ok(hints) = node.hints(target, None, ringkv_cluster::handoff::PAGE) else {
            continue;
        };
        for hint in hints {
            if node.forget_hint(&hint).unwrap_or(false) {
                let request = PeerRequest::Replicate {
                    key: hint.key.to_bytes(),
                    record: bytes::Bytes::from(hint.record.encode()),
                };
                drop(transport.call(
                    &Peer {
                        id: peer.id,
                        addr: peer.addr.clone(),
                    },
                    request,
                    timeout,
                ));
            }
        }
    }
}
