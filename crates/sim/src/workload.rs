//! What happens to the cluster during a run: clients doing puts (blind or with the
//! version they last saw, some with a TTL), deletes and gets with random quorums
//! through random nodes, and the nemesis injecting faults. Every client request goes
//! in the history with its times and outcome, for the checkers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringkv_cluster::coordinator::WriteAck;
use ringkv_cluster::{Write, WriteBody};
use ringkv_core::{Context, Key, Record};

use crate::exec::{Owner, lock, oneshot};
use crate::sim::{Event, Fault, Sim, Slot};

/// A client request.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: usize,
        value: String,
        seen: Context,
        /// Time to live, ms; expiry is on the clock of the node that applies it.
        ttl_ms: Option<u64>,
    },
    Delete {
        key: usize,
        seen: Context,
    },
    Get {
        key: usize,
    },
}

impl Op {
    pub fn key(&self) -> usize {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Get { key } => *key,
        }
    }

    /// The version a write was sent with (`None` for reads).
    pub fn seen(&self) -> Option<&Context> {
        match self {
            Op::Put { seen, .. } | Op::Delete { seen, .. } => Some(seen),
            Op::Get { .. } => None,
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A write acknowledged by its quorum, with the version it returned.
    Written(Context),
    /// A read's merged record, and the wall clock of the coordinating node when it
    /// answered: what a client is shown is `record.view(policy, now_ms)` (expired
    /// versions hide).
    Read { record: Option<Record>, now_ms: u64 },
    /// Failed or unknown: a failed write may still have been applied somewhere.
    Failed(String),
}

/// One request in the history.
#[derive(Debug, Clone)]
pub struct Entry {
    pub client: usize,
    pub node: usize,
    pub quorum: u8,
    /// For an acked write: how many of its `quorum` acks were hints standing in for
    /// replicas detected down (sloppy quorum). Only `quorum - hinted` true replicas
    /// are sure to hold it until handoff.
    pub hinted: u8,
    pub op: Op,
    pub start: u64,
    pub end: u64,
    pub outcome: Outcome,
}

pub type History = Arc<Mutex<Vec<Entry>>>;

/// Knobs of the workload and the nemesis.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    /// Clients doing CRDT operations on their own keys (`crdt::CRDT_KEYS`), each
    /// half of `ops_per_client`.
    pub crdt_clients: usize,
    pub ops_per_client: usize,
    pub replication_factor: u8,
    pub crashes: bool,
    pub partitions: bool,
    /// Wall clocks jump by up to `max_clock_jump_ms` either way.
    pub clock_jumps: bool,
    pub max_clock_jump_ms: u64,
    /// Puts that carry a TTL (20–2000 ms), ‰.
    pub ttl_per_mille: u32,
    /// Most nodes down at once.
    pub max_down: usize,
    /// One node may lose its disk (at most once a run); writes then use w ≥ 2, so
    /// every acked write outlives one lost disk.
    pub disk_loss: bool,
    /// The ring changes during the run: a spare joins, a member is decommissioned,
    /// or (when `disk_loss`, as the run's one lost disk) a member dies and is
    /// removed. One change at a time, node 0 always stays, never fewer than N.
    pub topology: bool,
}

impl Entry {
    /// The write quorum true replicas reached: what quorum intersection may rely on.
    pub fn strict_quorum(&self) -> u8 {
        self.quorum.saturating_sub(self.hinted)
    }
}

/// Compact text of a version: `{actor:n,..|cloud}`.
pub fn show(context: &Context) -> String {
    let mut text = String::from("{");
    for (actor, counter) in context.vector() {
        let _ = write!(text, "{:x}:{counter},", actor.0);
    }
    for dot in context.cloud() {
        let _ = write!(text, "|{:x}:{}", dot.actor.0, dot.counter);
    }
    text.push('}');
    text
}

/// Runs one client: `ops` requests one after the other.
pub async fn client(sim: Arc<Sim>, id: usize, keys: Arc<Vec<Key>>, history: History, w: Workload) {
    let nodes = lock(&sim.nodes).len();
    let mut known: BTreeMap<usize, Context> = BTreeMap::new();
    for n in 0..w.ops_per_client {
        let think = sim.random(|rng| rng.range(0, 40));
        sim.sleep(think).await;
        let (node, kind, key, quorum, versioned, ttl_ms) = sim.random(|rng| {
            (
                rng.index(nodes),
                rng.below(20),
                rng.index(keys.len()),
                u8::try_from(rng.range(1, u64::from(w.replication_factor))).unwrap_or(1),
                rng.chance(600),
                rng.chance(w.ttl_per_mille).then(|| rng.range(20, 2_000)),
            )
        });
        let seen = if versioned {
            known.get(&key).cloned().unwrap_or_default()
        } else {
            Context::default()
        };
        let op = match kind {
            0..=8 => Op::Put {
                key,
                value: format!("c{id}-{n}"),
                seen,
                ttl_ms,
            },
            9..=11 => Op::Delete { key, seen },
            _ => Op::Get { key },
        };
        // With a disk that may be lost, every acked write must be on two disks.
        let quorum = if w.disk_loss && !matches!(op, Op::Get { .. }) {
            quorum.max(2).min(w.replication_factor)
        } else {
            quorum
        };
        let start = sim.now();
        let (outcome, hinted) = request(&sim, node, &op, keys[key].clone(), quorum).await;
        match &outcome {
            Outcome::Written(version) => {
                known.insert(key, version.clone());
            }
            Outcome::Read {
                record: Some(record),
                ..
            } => {
                known.insert(key, record.context().clone());
            }
            Outcome::Read { record: None, .. } => {
                known.remove(&key);
            }
            Outcome::Failed(_) => {}
        }
        let result = match &outcome {
            Outcome::Written(version) => format!("ok {}", show(version)),
            Outcome::Read {
                record: Some(record),
                now_ms,
            } => format!(
                "ok {} versions {} at {now_ms}",
                record.len(),
                show(record.context())
            ),
            Outcome::Read { record: None, .. } => "ok absent".into(),
            Outcome::Failed(why) => format!("FAILED {why}"),
        };
        let what = match &op {
            Op::Put {
                value,
                seen,
                ttl_ms,
                ..
            } => format!("put k{key}={value} seen={} ttl={ttl_ms:?}", show(seen)),
            Op::Delete { seen, .. } => format!("delete k{key} seen={}", show(seen)),
            Op::Get { .. } => format!("get k{key}"),
        };
        let hint = if hinted > 0 {
            format!(" ({hinted} hinted)")
        } else {
            String::new()
        };
        sim.log(&format!(
            "c{id} via n{node} q={quorum} {what} -> {result}{hint}"
        ));
        lock(&history).push(Entry {
            client: id,
            node,
            quorum,
            hinted,
            op,
            start,
            end: sim.now(),
            outcome,
        });
    }
}

/// One request through node `node`'s coordinator. The request runs as that node's
/// task, so a crash kills it (the client sees the connection drop).
async fn request(sim: &Arc<Sim>, node: usize, op: &Op, key: Key, quorum: u8) -> (Outcome, u8) {
    let Some(target) = sim.node(node) else {
        return (Outcome::Failed("connection refused".into()), 0);
    };
    let (tx, rx) = oneshot();
    let coordinator = target.coordinator.clone();
    let op = op.clone();
    sim.spawn(
        Owner::Node(node),
        Box::pin(async move {
            let write = |body, seen: &Context, ttl_ms: Option<u64>| Write {
                key: key.clone(),
                body,
                seen: seen.clone(),
                ttl: ttl_ms.map(Duration::from_millis),
            };
            let outcome = match &op {
                Op::Put {
                    value,
                    seen,
                    ttl_ms,
                    ..
                } => {
                    let body = WriteBody::Value(Bytes::from(value.clone().into_bytes()));
                    let write = write(body, seen, *ttl_ms);
                    written(coordinator.write_acked(write, quorum, false).await)
                }
                Op::Delete { seen, .. } => written(
                    coordinator
                        .write_acked(write(WriteBody::Delete, seen, None), quorum, false)
                        .await,
                ),
                Op::Get { .. } => match coordinator.read(&key, quorum).await {
                    Ok(record) => (
                        Outcome::Read {
                            record,
                            now_ms: target.node.now_ms(),
                        },
                        0,
                    ),
                    Err(error) => (Outcome::Failed(error.to_string()), 0),
                },
            };
            tx.send(outcome);
        }),
    );
    let (outcome, hinted) = rx
        .await
        .unwrap_or_else(|| (Outcome::Failed("node crashed during the request".into()), 0));
    if matches!(outcome, Outcome::Written(_)) {
        // The coordinator dies the moment it has answered: whatever it had not
        // flushed yet is gone, and it restarts under a new actor.
        let mut core = lock(&sim.core);
        let per_mille = core.crash_coordinator_per_mille;
        if core.crash_now(per_mille) {
            let now = core.now;
            core.schedule(now, Event::Fault(Fault::Crash(node)));
        }
    }
    (outcome, hinted)
}

fn written<E: std::fmt::Display>(result: Result<WriteAck, E>) -> (Outcome, u8) {
    match result {
        Ok(ack) => (Outcome::Written(ack.version), ack.hinted),
        Err(error) => (Outcome::Failed(error.to_string()), 0),
    }
}

/// Injects faults until virtual time `until`: crashes and restarts, partitions
/// (both ways or one way, moved without healing) and heals, clock jumps, at random
/// moments.
pub async fn nemesis(sim: Arc<Sim>, until: u64, w: Workload) {
    let nodes = lock(&sim.nodes).len();
    loop {
        // About eight faults a run: enough for partitions to move and to meet
        // crashes, few enough that most requests still succeed.
        let wait = sim.random(|rng| rng.range(20, 250));
        sim.sleep(wait).await;
        if sim.now() >= until {
            // With tombstone GC a partition must not outlast the grace (a replica
            // that misses a delete that long may bring it back, by design): it
            // ends with the nemesis, not when the last client is done (a ring
            // change can keep them going for many seconds).
            let mut core = lock(&sim.core);
            if core.tombstone_gc.is_some() && !core.net.blocked.is_empty() {
                let now = core.now;
                core.schedule(now, Event::Fault(Fault::Heal));
            }
            return;
        }
        let (up, partitioned, disk_lost) = {
            let core = lock(&sim.core);
            (
                core.net.up.clone(),
                !core.net.blocked.is_empty(),
                core.disk_lost_at.is_some(),
            )
        };
        let (slots, busy) = {
            let core = lock(&sim.core);
            (core.slots.clone(), core.topology_busy())
        };
        let members = || (1..nodes).filter(|i| slots[*i] == Slot::Member);
        let running: Vec<usize> = (0..nodes)
            .filter(|i| up[*i] && !matches!(slots[*i], Slot::Spare | Slot::Gone))
            .collect();
        let down: Vec<usize> = (0..nodes)
            .filter(|i| !up[*i] && !matches!(slots[*i], Slot::Spare | Slot::Gone))
            .collect();
        let in_ring = slots.iter().filter(|slot| **slot == Slot::Member).count();
        let fault = sim.random(|rng| match rng.below(9) {
            // Ring changes, one at a time (a couple a run).
            7 | 8 if w.topology && !busy => {
                let spare = (0..nodes).find(|i| slots[*i] == Slot::Spare);
                let leavers: Vec<usize> = members().filter(|i| up[*i]).collect();
                let shrink = in_ring > usize::from(w.replication_factor);
                let dead: Vec<usize> = members().collect();
                let mut options = Vec::new();
                options.extend(spare.map(Fault::Join));
                if shrink && !leavers.is_empty() {
                    options.push(Fault::Decommission(leavers[rng.index(leavers.len())]));
                }
                if shrink && w.disk_loss && !disk_lost && !dead.is_empty() {
                    options.push(Fault::Remove(dead[rng.index(dead.len())]));
                }
                (!options.is_empty()).then(|| options.swap_remove(rng.index(options.len())))
            }
            0 if w.crashes && down.len() < w.max_down => {
                Some(Fault::Crash(running[rng.index(running.len())]))
            }
            1 if !down.is_empty() => Some(Fault::Restart(down[rng.index(down.len())])),
            // A partition may also move: a new one replaces the one in force.
            2 if w.partitions && (!partitioned || rng.chance(400)) => {
                let side: Vec<usize> = (0..nodes).filter(|_| rng.chance(500)).collect();
                let one_way = rng.chance(400);
                (!side.is_empty() && side.len() < nodes).then_some(if one_way {
                    Fault::OneWay(side)
                } else {
                    Fault::Partition(side)
                })
            }
            3 if partitioned => Some(Fault::Heal),
            4 if w.crashes && rng.chance(300) => Some(Fault::PowerCut),
            6 if w.disk_loss && down.is_empty() && !disk_lost => {
                Some(Fault::DiskLoss(running[rng.index(running.len())]))
            }
            5 if w.clock_jumps => {
                let node = rng.index(nodes);
                let size = i64::try_from(rng.range(1, w.max_clock_jump_ms)).unwrap_or(0);
                let by_ms = if rng.chance(500) { size } else { -size };
                Some(Fault::ClockJump { node, by_ms })
            }
            _ => None,
        });
        if let Some(fault) = fault {
            let now = sim.now();
            sim.schedule(now, Event::Fault(fault));
        }
    }
}
