//! The world: N nodes over memory engines, their clocks, and the loop that runs
//! ready tasks and then jumps virtual time to the next event. Faults (crash,
//! restart, partition) are applied here, between polls, so they cut in at exact,
//! replayable points.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use ringkv_cluster::antientropy::{AntiEntropy, AntiEntropySettings};
use ringkv_cluster::coordinator::{Coordinator, Settings};
use ringkv_cluster::handoff::{Handoff, HandoffSettings};
use ringkv_cluster::membership::{Detector, Liveness, Membership};
use ringkv_cluster::purge::{Purge, PurgeSettings};
use ringkv_cluster::tombstone::{Collector, TombstoneGc};
use ringkv_cluster::{BoxFuture, Clock, ManualClock, Node, Peer, Transport};
use ringkv_core::ring::{Ring, allocate_tokens};
use ringkv_core::wire::PeerRequest;
use ringkv_core::{ActorId, ConflictPolicy, Member, MemberState, NodeId};

use crate::disk::SimDisk;
use crate::exec::{Owner, TaskWaker, lock};
use crate::net::{SimNode, SimSpawn, SimTransport};
use crate::sim::{Canary, Event, Fault, Sim, Slot};
use ringkv_cluster::topology::{Topology, TopologySettings};

/// Wall-clock ms at virtual time 0 (any fixed date will do).
const EPOCH_MS: u64 = 1_767_225_600_000;

/// Polls and events one run may take: a busy loop in the code under test ends the
/// run (reported as not quiescing) instead of hanging the campaign.
const MAX_STEPS: u64 = 20_000_000;

/// How the world is built.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub seed: u64,
    pub nodes: usize,
    pub replication_factor: u8,
    pub request_timeout_ms: u64,
    /// Largest clock skew per node, either way, at the start.
    pub max_skew_ms: u64,
    pub keep_trace: bool,
    pub policy: ConflictPolicy,
    /// The last `spares` node slots start outside the cluster (they may join).
    pub spares: usize,
    /// Tombstone GC of every node (`Core::tombstone_gc`), from the first boot on.
    pub tombstone_gc: Option<TombstoneGc>,
    /// Whether nodes store hints (`Core::hinting`), from the first boot on.
    pub hints: bool,
    /// Every node's failure detector (`DETECTOR`, or `CALM_DETECTOR` without faults).
    pub detector: Detector,
}

/// Gossip and handoff rounds, virtual ms.
pub const GOSSIP_INTERVAL_MS: u64 = 100;
/// Anti-entropy rounds, virtual ms.
pub const ANTI_ENTROPY_INTERVAL_MS: u64 = 200;
/// Purge rounds (expired values, collectable tombstones), virtual ms.
pub const PURGE_INTERVAL_MS: u64 = 250;
/// One purge round reads every record of a run (a few keys) in a few pages.
const PURGE: PurgeSettings = PurgeSettings {
    page_keys: 4,
    keys_per_round: 256,
};

/// The failure detector of every simulated node: short enough that crashes and
/// partitions make nodes suspicious and down, so sloppy quorum and handoff run.
pub const DETECTOR: Detector = Detector {
    suspicion_ms: 300,
    down_ms: 600,
    permanent_ms: u64::MAX,
};

/// The detector of runs without faults: nothing is ever silent there, but in a
/// 7-node cluster news of a heartbeat can take a few gossip rounds, and a live
/// replica falsely suspected gets a quarter of the request timeout, which an
/// fsync and two hops can exceed (calm seed 8). Calm runs check that nothing fails.
pub const CALM_DETECTOR: Detector = Detector {
    suspicion_ms: 1_500,
    down_ms: 3_000,
    permanent_ms: u64::MAX,
};

/// A node's clocks: its (skewed, jumping) wall clock, and virtual time as the
/// monotonic clock the failure detector measures silence with, and tombstone GC
/// the settling of its confirmations (as `Instant` in
/// production: immune to clock jumps).
struct NodeClock {
    wall: Arc<ManualClock>,
    sim: std::sync::Weak<Sim>,
}

impl Clock for NodeClock {
    fn now_ms(&self) -> u64 {
        self.wall.now_ms()
    }

    fn monotonic_ms(&self) -> u64 {
        self.sim.upgrade().map_or(0, |sim| sim.now())
    }
}

/// Largest skew clock jumps may build up, either way.
pub const MAX_JUMPED_SKEW_MS: i64 = 5_000;

pub struct World {
    pub sim: Arc<Sim>,
    pub config: WorldConfig,
    pub engines: Vec<Arc<SimDisk>>,
    clocks: Vec<Arc<ManualClock>>,
    skews: Vec<i64>,
    members: Vec<Member>,
    tasks: BTreeMap<u64, (Owner, BoxFuture<()>)>,
    /// Polls and events handled: a bound against livelock.
    pub steps: u64,
}

impl World {
    pub fn new(config: WorldConfig) -> World {
        let sim = Arc::new(Sim::new(config.seed, config.nodes, config.keep_trace));
        let first_spare = config.nodes.saturating_sub(config.spares).max(1);
        let mut members: Vec<Member> = Vec::new();
        for index in 0..config.nodes {
            let id = NodeId(index as u64);
            let ring = Ring::from_members(&members);
            let weights = members.iter().map(|m| (m.id, m.vnodes)).collect();
            let salt = sim.random(|rng| rng.next_u64());
            // Spares take their tokens when they join.
            let tokens = if index < first_spare {
                allocate_tokens(&ring, &weights, id, 16, salt)
            } else {
                Vec::new()
            };
            members.push(Member {
                id,
                generation: 1,
                heartbeat: 0,
                state: MemberState::Normal,
                peer_addr: format!("n{index}"),
                http_addr: String::new(),
                resp_addr: String::new(),
                vnodes: 16,
                tokens,
            });
        }
        let skews = (0..config.nodes)
            .map(|_| {
                let spread = config.max_skew_ms.saturating_mul(2);
                let offset = sim.random(|rng| rng.range(0, spread));
                i64::try_from(offset).unwrap_or(0) - i64::try_from(config.max_skew_ms).unwrap_or(0)
            })
            .collect();
        let engines = (0..config.nodes)
            .map(|index| Arc::new(SimDisk::new(&sim, index)))
            .collect();
        let mut world = World {
            sim,
            engines,
            clocks: (0..config.nodes)
                .map(|_| Arc::new(ManualClock::new(EPOCH_MS)))
                .collect(),
            skews,
            members,
            config,
            tasks: BTreeMap::new(),
            steps: 0,
        };
        world.set_clocks(0);
        {
            // Read by `boot`: set before the first one.
            let mut core = lock(&world.sim.core);
            core.tombstone_gc = world.config.tombstone_gc;
            core.hinting = world.config.hints;
            for index in first_spare..world.config.nodes {
                core.slots[index] = Slot::Spare;
                core.net.up[index] = false;
            }
        }
        for index in 0..first_spare {
            world.boot(index);
        }
        world
    }

    /// What a starting node learns from its seeds: the table of a live member if
    /// any is up, else the members as the world created them (never spares).
    fn seed_view(&self, me: usize) -> Vec<Member> {
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
    fn boot(&mut self, index: usize) {
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
    fn resume_topology(&self, index: usize) {
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
        let handoff = Handoff::new(
            sim_node.node.clone(),
            sim_node.membership.clone(),
            transport.clone(),
            Arc::new(SimSpawn {
                sim: self.sim.clone(),
                node: index,
            }),
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
            Arc::new(SimSpawn {
                sim: self.sim.clone(),
                node: index,
            }),
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
            Arc::new(SimSpawn {
                sim: self.sim.clone(),
                node: index,
            }),
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

    /// The simulated nodes' liveness as node `index` sees them.
    pub fn liveness(&self, index: usize) -> Vec<Liveness> {
        let Some(node) = self.sim.node(index) else {
            return Vec::new();
        };
        (0..self.config.nodes)
            .map(|other| node.membership.liveness(NodeId(other as u64)))
            .collect()
    }

    fn set_clocks(&self, now: u64) {
        let walls: Vec<u64> = self
            .skews
            .iter()
            .map(|skew| EPOCH_MS.saturating_add_signed(*skew) + now)
            .collect();
        for (clock, wall) in self.clocks.iter().zip(&walls) {
            clock.set(*wall);
        }
        lock(&self.sim.core).note_walls(now, walls);
    }

    pub fn apply(&mut self, fault: Fault) {
        self.sim.log(&format!("FAULT {fault:?}"));
        match fault {
            Fault::Crash(index) => {
                {
                    let mut core = lock(&self.sim.core);
                    if !core.net.up[index] {
                        return;
                    }
                    core.net.up[index] = false;
                }
                self.drain_inbox();
                self.engines[index].crash();
                lock(&self.sim.nodes)[index] = None;
                // Dropping the tasks drops their reply senders: callers time out.
                let dead: Vec<u64> = self
                    .tasks
                    .iter()
                    .filter(|(_, (owner, _))| *owner == Owner::Node(index))
                    .map(|(id, _)| *id)
                    .collect();
                for id in dead {
                    drop(self.tasks.remove(&id));
                }
                // Every crashed node comes back after a while (sooner if the
                // nemesis restarts it first).
                let mut core = lock(&self.sim.core);
                let at = core.now + core.rng.range(50, 500);
                core.schedule(at, Event::Fault(Fault::Restart(index)));
            }
            Fault::Restart(index) => {
                {
                    let mut core = lock(&self.sim.core);
                    if core.net.up[index] || matches!(core.slots[index], Slot::Spare | Slot::Gone) {
                        return;
                    }
                    // A crash ends a decommission: the node restarts as a member, or,
                    // if it had already left (its writes went elsewhere since),
                    // joins again, as `server` does from the state it recorded.
                    if core.slots[index] == Slot::Leaving {
                        let saved =
                            ringkv_cluster::node::saved_member_state(self.engines[index].as_ref());
                        core.slots[index] = match saved {
                            Ok(Some(MemberState::Left)) => Slot::Joining,
                            Ok(Some(MemberState::Drained)) => Slot::Leaving,
                            _ => Slot::Member,
                        };
                    }
                    core.net.up[index] = true;
                    core.net.incarnation[index] += 1;
                }
                self.boot(index);
            }
            Fault::Partition(side) => {
                let mut core = lock(&self.sim.core);
                core.net.blocked.clear();
                for a in 0..self.config.nodes {
                    for b in 0..self.config.nodes {
                        if side.contains(&a) != side.contains(&b) {
                            core.net.blocked.insert((a, b));
                        }
                    }
                }
            }
            Fault::OneWay(side) => {
                let mut core = lock(&self.sim.core);
                core.net.blocked.clear();
                for a in side.iter().copied() {
                    for b in (0..self.config.nodes).filter(|b| !side.contains(b)) {
                        core.net.blocked.insert((a, b));
                    }
                }
            }
            Fault::Heal => lock(&self.sim.core).net.blocked.clear(),
            Fault::ClockJump { node, by_ms } => {
                if let Some(skew) = self.skews.get_mut(node) {
                    *skew = skew
                        .saturating_add(by_ms)
                        .clamp(-MAX_JUMPED_SKEW_MS, MAX_JUMPED_SKEW_MS);
                }
                self.set_clocks(self.sim.now());
            }
            Fault::DiskLoss(index) => {
                self.apply(Fault::Crash(index));
                self.engines[index].lose_everything();
                let mut core = lock(&self.sim.core);
                let now = core.now;
                core.disk_lost_at.get_or_insert(now);
                // The hints it held are gone with the disk (their writes are on two
                // other disks; anti-entropy spreads them).
                core.hints.retain(|hint| hint.holder != index);
            }
            Fault::Join(index) => {
                if lock(&self.sim.core).slots[index] != Slot::Spare {
                    return;
                }
                let holders: Vec<Member> = self
                    .seed_view(index)
                    .into_iter()
                    .filter(|m| m.state != MemberState::Left)
                    .collect();
                let ring = Ring::new(holders.iter().map(|m| (m.id, m.tokens.clone())));
                let weights = holders.iter().map(|m| (m.id, m.vnodes)).collect();
                let salt = self.sim.random(|rng| rng.next_u64());
                self.members[index].tokens =
                    allocate_tokens(&ring, &weights, NodeId(index as u64), 16, salt);
                {
                    let mut core = lock(&self.sim.core);
                    core.slots[index] = if core.canary == Canary::JoinWithoutStreaming {
                        Slot::Member
                    } else {
                        Slot::Joining
                    };
                    core.topology_changed = true;
                    core.net.up[index] = true;
                }
                self.boot(index);
            }
            Fault::Decommission(index) => {
                let Some(node) = self.sim.node(index) else {
                    return;
                };
                if lock(&self.sim.core).slots[index] != Slot::Member {
                    return;
                }
                if let Err(reason) = node.topology.check_decommission() {
                    self.sim
                        .log(&format!("n{index} cannot decommission: {reason}"));
                    return;
                }
                {
                    let mut core = lock(&self.sim.core);
                    core.slots[index] = Slot::Leaving;
                    core.topology_changed = true;
                }
                self.resume_topology(index);
            }
            Fault::Remove(index) => {
                // Someone alive must do the removal.
                let remover = (0..self.config.nodes)
                    .find_map(|other| (other != index).then(|| self.sim.node(other)).flatten());
                let Some(remover) = remover else {
                    return;
                };
                {
                    let mut core = lock(&self.sim.core);
                    if core.slots[index] != Slot::Member {
                        return;
                    }
                    core.slots[index] = Slot::Gone;
                    core.topology_changed = true;
                    let now = core.now;
                    core.disk_lost_at.get_or_insert(now);
                    // The hints it held die with it.
                    core.hints.retain(|hint| hint.holder != index);
                }
                self.apply(Fault::Crash(index));
                // Every live node removes it, as each does once its detector says
                // permanently failed (and as an operator does who checks that
                // every node was told): a removal known to one node only is lost
                // if that node crashes (membership lives in memory).
                let id = NodeId(index as u64);
                for other in 0..self.config.nodes {
                    if let Some(node) = self.sim.node(other)
                        && other != index
                        && let Err(error) = node.membership.remove(id, true)
                    {
                        self.sim
                            .log(&format!("n{other} cannot remove n{index}: {error}"));
                    }
                }
                let owner = usize::try_from(remover.membership.me().0).unwrap_or(0);
                let timeout = Duration::from_millis(self.config.request_timeout_ms);
                self.sim.spawn(
                    Owner::Node(owner),
                    Box::pin(async move {
                        let transport = remover.coordinator.transport().clone();
                        remover.membership.announce(&transport, timeout).await;
                    }),
                );
            }
            Fault::PowerCut => {
                for index in 0..self.config.nodes {
                    self.apply(Fault::Crash(index));
                }
                let mut core = lock(&self.sim.core);
                for index in 0..self.config.nodes {
                    let at = core.now + core.rng.range(20, 200);
                    core.schedule(at, Event::Fault(Fault::Restart(index)));
                }
            }
        }
    }

    fn drain_inbox(&mut self) {
        let spawned = std::mem::take(&mut lock(&self.sim.core).inbox);
        for (id, owner, task) in spawned {
            // A node that crashed since the spawn takes its new tasks with it.
            let alive = match owner {
                Owner::Node(index) => lock(&self.sim.core).net.up[index],
                _ => true,
            };
            if alive {
                self.tasks.insert(id, (owner, task));
            }
        }
    }

    /// Runs until nothing is left to do, virtual time passes `until` or the step
    /// budget runs out. Returns whether it went idle.
    pub fn run_until(&mut self, until: u64) -> bool {
        loop {
            if self.steps > MAX_STEPS {
                self.sim
                    .log("STUCK: step budget exhausted (a task that never sleeps?)");
                return false;
            }
            self.drain_inbox();
            let next = lock(&self.sim.ready).pop_front();
            if let Some(id) = next {
                self.steps += 1;
                self.poll(id);
                continue;
            }
            let event = {
                let mut core = lock(&self.sim.core);
                match core.events.first_key_value() {
                    None => return true,
                    Some((&(at, _), _)) if at > until => return false,
                    Some(_) => {}
                }
                let Some(((at, _), event)) = core.events.pop_first() else {
                    return true;
                };
                core.now = core.now.max(at);
                event
            };
            self.steps += 1;
            self.set_clocks(self.sim.now());
            match event {
                Event::Wake(waker) => waker.wake(),
                Event::Run(job) => job(),
                Event::Fault(fault) => self.apply(fault),
            }
        }
    }

    fn poll(&mut self, id: u64) {
        let Some((owner, mut task)) = self.tasks.remove(&id) else {
            return;
        };
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            ready: self.sim.ready.clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        if task.as_mut().poll(&mut cx).is_pending() {
            self.tasks.insert(id, (owner, task));
        }
    }

    /// Node `index`'s wall clock now, ms.
    pub fn clock_ms(&self, index: usize) -> u64 {
        use ringkv_cluster::Clock as _;
        self.clocks.get(index).map_or(0, |clock| clock.now_ms())
    }

    pub fn pending_tasks(&self) -> usize {
        self.tasks.len()
    }
}

impl Drop for World {
    /// Breaks the reference cycles (events and nodes hold the `Sim`) so a campaign
    /// of many runs does not leak.
    fn drop(&mut self) {
        self.tasks.clear();
        let events = std::mem::take(&mut lock(&self.sim.core).events);
        let inbox = std::mem::take(&mut lock(&self.sim.core).inbox);
        drop(events);
        drop(inbox);
        let nodes = std::mem::take(&mut *lock(&self.sim.nodes));
        drop(nodes);
    }
}

/// The planted handoff bug: forget each hint of a healthy target, then send it
/// without waiting for (or checking) the answer.
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
