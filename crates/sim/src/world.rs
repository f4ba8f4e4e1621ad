//! The world: N nodes over memory engines, their clocks, and the loop that runs
//! ready tasks and then jumps virtual time to the next event.
//!
//! * `boot`: starting a node (seed view, boot, resumed ring change, background rounds).
//! * `faults`: `World::apply`: crash, restart, partition... applied between polls, so
//!   they cut in at exact, replayable points.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Waker};

use ringkv_cluster::membership::{Detector, Liveness};
use ringkv_cluster::purge::PurgeSettings;
use ringkv_cluster::tombstone::TombstoneGc;
use ringkv_cluster::{BoxFuture, Clock, ManualClock};
use ringkv_core::ring::{Ring, allocate_tokens};
use ringkv_core::{ConflictPolicy, Member, MemberState, NodeId};

use crate::disk::SimDisk;
use crate::exec::{Owner, TaskWaker, lock};
use crate::sim::{Event, Sim, Slot};

mod boot;
mod faults;

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
