//! Deterministic simulation of whole ringkv clusters (DESIGN.md §8, issue 5).
//!
//! Why: distributed bugs hide in interleavings that process tests rarely hit. Here
//! whole clusters run in one thread on virtual time, driving the very `cluster` code
//! production runs through its `Transport`, `Spawn`, `Clock` and `Engine` seams, with
//! faults (lost, delayed and duplicated messages, crashes that lose unsynced writes,
//! restarts under a new actor, partitions both ways or one way that move during the
//! run, skewed clocks that jump) all decided by one seeded RNG, under either conflict
//! policy and with TTLs. Every node runs the purge sweep (expired values become
//! tombstones); one seed in four also runs tombstone GC with thresholds of a second
//! (`gc_for`). One `u64` seed is one run, byte for byte: `RINGKV_SIM_SEED=<seed>`
//! replays it.
//!
//! * `rng`: SplitMix64, the only randomness.
//! * `exec`: task owners, wakers, a one-shot channel (our executor's parts).
//! * `sim`: virtual time, the event queue, the network state, the trace, the
//!   ground truth of applied writes.
//! * `disk`: a memory engine whose fsync takes virtual time.
//! * `net`: the simulated `Transport`/`Spawn` and the peer-request dispatch.
//! * `world`: nodes over memory engines, the run loop, crash/restart/partition.
//! * `workload`: clients and the nemesis; the history.
//! * `crdt`: CRDT clients (counters, OR-sets) on their own keys, and their history.
//! * `check`: the invariants checked after heal and quiesce.

pub mod check;
pub mod crdt;
pub mod disk;
pub mod exec;
pub mod net;
pub mod rng;
pub mod sim;
pub mod workload;
pub mod world;

use std::sync::{Arc, Mutex};

use std::time::Duration;

use ringkv_cluster::tombstone::TombstoneGc;
use ringkv_core::{ConflictPolicy, Key, Limits, Record};
use ringkv_storage::Engine;

use crate::exec::{Owner, lock};
pub use crate::sim::Canary;
use crate::sim::{Event, Fault};
use crate::workload::{Entry, History, Outcome, Workload};
use crate::world::{World, WorldConfig};

/// Everything that shapes a run besides the seed's randomness.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    pub keys: usize,
    pub workload: Workload,
    pub conflict_policy: ConflictPolicy,
    /// Message loss between distinct nodes, in ‰.
    pub drop_per_mille: u32,
    /// Requests a replica may see twice that the network delivers twice, in ‰.
    pub duplicate_per_mille: u32,
    /// Messages that take 50–400 ms (past the request timeout), in ‰.
    pub slow_per_mille: u32,
    pub max_skew_ms: u64,
    pub request_timeout_ms: u64,
    /// Keep the trace as text (replays), not only its hash.
    pub keep_trace: bool,
    /// Chance (‰) that a node crashes right after it acks (when `crashes`).
    pub crash_after_ack_per_mille: u32,
    /// Chance (‰) that a coordinator crashes right after acking a client write.
    pub crash_coordinator_per_mille: u32,
    /// A planted bug (tests of the checkers); `Canary::None` in campaigns.
    pub canary: Canary,
    /// Whether nodes run anti-entropy. Off only to show a checker catching a bug
    /// that anti-entropy would otherwise repair (handoff, replication canaries).
    pub anti_entropy: bool,
    /// Tombstone GC (`None`: the purge sweep only turns expired values into
    /// tombstones, and keeps them).
    pub tombstone_gc: Option<TombstoneGc>,
    /// Whether nodes store hints (sloppy quorum). Off with tombstone GC: hints never
    /// expire here, and GC by acknowledgement counts on hints of an old value being
    /// gone once its floor (`hint_ttl_ms` + …) passed.
    pub hints: bool,
}

impl Config {
    /// A run with every fault the simulator knows, under the conflict policy
    /// `policy_for(seed)`; with tombstone GC when `gc_for(seed)` (then without clock
    /// jumps and hints, which its floors assume are far shorter than they are here).
    pub fn faulty(seed: u64, nodes: usize) -> Config {
        let gc = gc_for(seed);
        Config {
            seed,
            nodes,
            // With GC: more keys (each changes less often, so arcs go quiet long
            // enough to be confirmed) and a longer workload (so tombstones are
            // forgotten while faults still happen, not only after heal).
            keys: if gc { 64 } else { 5 },
            workload: Workload {
                clients: 4,
                crdt_clients: 2,
                ops_per_client: if gc { 100 } else { 40 },
                replication_factor: 3,
                crashes: true,
                partitions: true,
                clock_jumps: !gc,
                max_clock_jump_ms: 3_000,
                ttl_per_mille: 150,
                max_down: 2,
                disk_loss: disk_loss_for(seed),
                topology: topology_for(seed),
            },
            conflict_policy: policy_for(seed),
            drop_per_mille: 50,
            duplicate_per_mille: 30,
            slow_per_mille: 20,
            max_skew_ms: 200,
            request_timeout_ms: 100,
            keep_trace: false,
            crash_after_ack_per_mille: 5,
            crash_coordinator_per_mille: 20,
            canary: Canary::None,
            anti_entropy: true,
            tombstone_gc: gc.then_some(SHORT_GC),
            hints: !gc,
        }
    }

    /// The same run without faults: nothing may fail.
    pub fn calm(seed: u64, nodes: usize) -> Config {
        let mut config = Config::faulty(seed, nodes);
        config.workload.crashes = false;
        config.workload.partitions = false;
        config.workload.disk_loss = false;
        config.workload.topology = false;
        config.workload.clock_jumps = false;
        // The key-value workload alone: with W = N, a 7-node run's detector can
        // suspect a live replica for a moment (its gossip is late) and give it a
        // quarter of the timeout, and the CRDT clients' extra fsyncs made such a
        // replica miss it (seed 4). Faults are what the CRDT clients are here for.
        config.workload.crdt_clients = 0;
        config.drop_per_mille = 0;
        config.duplicate_per_mille = 0;
        config.slow_per_mille = 0;
        config
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub policy: ConflictPolicy,
    /// Hash of the trace and the final state of every engine: equal for replays.
    pub fingerprint: u64,
    pub violations: Vec<String>,
    /// The trace as text, when `keep_trace`.
    pub trace: Vec<String>,
    pub history: Vec<Entry>,
    /// Virtual time at the end, ms.
    pub virtual_ms: u64,
    pub steps: u64,
    /// Records the nodes forgot (tombstone GC), and how many of them before heal,
    /// while faults still happened.
    pub forgotten: usize,
    pub forgotten_under_faults: usize,
    /// CRDT operations acknowledged.
    pub crdt_acked: usize,
}

impl Report {
    pub fn acked_writes(&self) -> usize {
        self.history
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Written(_)))
            .count()
    }

    pub fn failed(&self) -> usize {
        self.history
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Failed(_)))
            .count()
    }
}

/// The cluster size a campaign uses for `seed` when none is given: 3..=7.
pub fn nodes_for(seed: u64) -> usize {
    3 + usize::try_from(seed % 5).unwrap_or(0)
}

/// Whether a node may lose its disk in seed `seed`'s run: one seed in four.
pub fn disk_loss_for(seed: u64) -> bool {
    seed % 4 == 1
}

/// Whether seed `seed`'s run changes the ring (joins, decommissions, removals):
/// every other seed (independent of `disk_loss_for`, `policy_for`, `gc_for` and the
/// size). Seeds 11006321 and 11008481 of the first runs that combined ring changes
/// with tombstone GC showed the view-lag window the two-phase changes close
/// (`MemberState::Joined`): a node cut off while a join ended read the old
/// replicas while the others wrote W of the new ones only.
pub fn topology_for(seed: u64) -> bool {
    (seed / 5).is_multiple_of(2)
}

/// Whether seed `seed`'s run has tombstone GC: one seed in four (residues 1 and 6
/// of 8, so half of them may also lose a disk; independent of `nodes_for` and
/// `policy_for`).
pub fn gc_for(seed: u64) -> bool {
    matches!(seed % 8, 1 | 6)
}

/// Tombstone GC of the runs that have it. A message here lives at most 500 ms from
/// the state it carries (a replica's answer within the 100 ms timeout, then the
/// replication or read repair built from it, up to 400 ms on the way), and those
/// runs have neither hints nor clock jumps (skew stays within ±200 ms): 600 ms of
/// settle time and floor cover them, tightly, so a flaw in the rule shows. The
/// grace must outlast the longest a replica can miss a delete (a partition until
/// heal, then anti-entropy): rule (b) is unsafe below that by design.
pub const SHORT_GC: TombstoneGc = TombstoneGc {
    grace: Duration::from_secs(10),
    floor: Duration::from_millis(600),
    settle: Duration::from_millis(600),
};

/// The `CollectTombstonesAtOnce` canary's GC: no grace, no floor, no settling.
const GC_AT_ONCE: TombstoneGc = TombstoneGc {
    grace: Duration::ZERO,
    floor: Duration::ZERO,
    settle: Duration::ZERO,
};

/// The conflict policy of seed `seed`: one seed in three runs `lww` (independent of
/// `nodes_for`, so every size meets both).
pub fn policy_for(seed: u64) -> ConflictPolicy {
    if seed % 3 == 2 {
        ConflictPolicy::Lww
    } else {
        ConflictPolicy::Siblings
    }
}

/// How long after heal the nodes keep gossiping and handing hints off, virtual ms.
const HEAL_BACKGROUND_MS: u64 = 3_000;

/// How long background work goes on around the final reads, virtual ms, at least;
/// `FINAL_READ_MS` more per key (the reads run one after the other). The reads
/// start half-way: after the idle gap before this phase, gossip among 7 nodes
/// needs more than 500 ms to refresh every detector (seed 12003534 read through a
/// node that still judged a replica down with 1,000 here).
const FINAL_READS_BACKGROUND_MS: u64 = 2_000;
const FINAL_READ_MS: u64 = 20;

/// Longest a run may go on, virtual ms, before it counts as stuck.
const MAX_VIRTUAL_MS: u64 = 600_000;

/// The merge of what each key's replicas hold.
fn merged_records(
    world: &World,
    keys: &[Key],
    replicas: &[Vec<ringkv_core::NodeId>],
) -> Vec<Option<Record>> {
    keys.iter()
        .zip(replicas)
        .map(|(key, owners)| {
            check::stored(world, key)
                .into_iter()
                .enumerate()
                .filter(|(node, _)| owners.contains(&ringkv_core::NodeId(*node as u64)))
                .filter_map(|(_, r)| r.ok().flatten())
                .fold(None, |acc: Option<Record>, record| {
                    let mut acc = acc.unwrap_or_default();
                    acc.sync(&record);
                    Some(acc)
                })
        })
        .collect()
}

/// Runs one seed: workload under faults, heal, quiesce, full read, checkers.
pub fn run(config: &Config) -> Report {
    let mut world = World::new(WorldConfig {
        detector: if config.workload.crashes || config.workload.partitions {
            world::DETECTOR
        } else {
            world::CALM_DETECTOR
        },
        seed: config.seed,
        nodes: config.nodes,
        replication_factor: config.workload.replication_factor,
        request_timeout_ms: config.request_timeout_ms,
        max_skew_ms: config.max_skew_ms,
        keep_trace: config.keep_trace,
        policy: config.conflict_policy,
        // One slot starts outside the ring (to join) when the ring may change
        // and the cluster is bigger than N.
        spares: usize::from(
            config.workload.topology
                && config.nodes > usize::from(config.workload.replication_factor),
        ),
        tombstone_gc: if config.canary == Canary::CollectTombstonesAtOnce {
            Some(GC_AT_ONCE)
        } else {
            config.tombstone_gc
        },
        hints: config.hints,
    });
    let sim = world.sim.clone();
    {
        let mut core = lock(&sim.core);
        core.net.drop_per_mille = config.drop_per_mille;
        core.net.duplicate_per_mille = config.duplicate_per_mille;
        core.net.slow_per_mille = config.slow_per_mille;
        core.canary = config.canary;
        core.anti_entropy = config.anti_entropy;
        if config.workload.crashes {
            core.crash_after_ack_per_mille = config.crash_after_ack_per_mille;
            core.crash_coordinator_per_mille = config.crash_coordinator_per_mille;
            core.max_down = config.workload.max_down;
        }
    }
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..config.keys)
            .map(|i| Key::parse(format!("k{i}"), &Limits::default()).expect("short keys are valid"))
            .collect(),
    );
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let crdt_keys = crdt::crdt_keys();
    let crdt_history: crdt::CrdtHistory = Arc::default();
    let mut violations = Vec::new();

    // Phase 1: clients under faults; the nodes gossip and hand hints off until the
    // last client is done.
    lock(&sim.core).clients_running = config.workload.clients + config.workload.crdt_clients;
    for id in 0..config.workload.crdt_clients {
        let task = crdt::crdt_client(
            sim.clone(),
            id,
            crdt_history.clone(),
            config.workload.clone(),
        );
        let done = sim.clone();
        sim.spawn(
            Owner::Client,
            Box::pin(async move {
                task.await;
                lock(&done.core).clients_running -= 1;
            }),
        );
    }
    for id in 0..config.workload.clients {
        let task = workload::client(
            sim.clone(),
            id,
            keys.clone(),
            history.clone(),
            config.workload.clone(),
        );
        let done = sim.clone();
        sim.spawn(
            Owner::Client,
            Box::pin(async move {
                task.await;
                lock(&done.core).clients_running -= 1;
            }),
        );
    }
    // The nemesis stops around when the clients would be done without faults.
    let until = 30 * config.workload.ops_per_client as u64;
    sim.spawn(
        Owner::World,
        Box::pin(workload::nemesis(
            sim.clone(),
            until,
            config.workload.clone(),
        )),
    );
    if !world.run_until(MAX_VIRTUAL_MS) {
        violations.push("the workload did not finish".to_string());
    }

    // Phase 2: heal, restart everyone, read every key with r = N, let repair finish.
    sim.log("HEAL");
    let forgotten_under_faults = lock(&sim.core).forgotten.len();
    {
        let mut core = lock(&sim.core);
        core.net.drop_per_mille = 0;
        core.net.duplicate_per_mille = 0;
        core.net.slow_per_mille = 0;
        core.crash_after_ack_per_mille = 0;
        core.crash_coordinator_per_mille = 0;
    }
    world.apply(Fault::Heal);
    // Background work runs a while longer: nodes see each other healthy again and
    // hand their hints off. Then the handoff checker, before any read repairs.
    {
        let mut core = lock(&sim.core);
        core.background_until = Some(core.now + HEAL_BACKGROUND_MS);
    }
    for index in 0..config.nodes {
        // Up nodes' loops ended with the clients; down nodes start theirs on boot.
        world.start_background(index);
    }
    for index in 0..config.nodes {
        world.apply(Fault::Restart(index));
    }
    if !world.run_until(MAX_VIRTUAL_MS) {
        violations.push("the cluster did not quiesce after heal".to_string());
    }
    let hints = std::mem::take(&mut lock(&sim.core).hints);
    let forgotten = lock(&sim.core).forgotten.clone();
    violations.extend(check::hints_handed_off(&world, &hints, &forgotten));
    let gc_on = lock(&sim.core).tombstone_gc.is_some();
    let horizon = || {
        lock(&sim.core)
            .wall_high
            .last()
            .map_or(0, |(_, wall)| *wall)
    };
    // Anti-entropy alone (with handoff) must have made the replicas agree: checked
    // before the final read, whose read repair would hide a range it skipped.
    let replicas: Vec<_> = match sim.node(0) {
        Some(node) => keys.iter().map(|k| node.coordinator.replicas(k)).collect(),
        None => vec![Vec::new(); keys.len()],
    };
    let crdt_plain: Vec<Key> = crdt_keys.iter().map(|(key, _)| key.clone()).collect();
    let crdt_replicas: Vec<_> = match sim.node(0) {
        Some(node) => crdt_plain
            .iter()
            .map(|k| node.coordinator.replicas(k))
            .collect(),
        None => vec![Vec::new(); crdt_plain.len()],
    };
    let strict_owners = !lock(&sim.core).topology_changed;
    violations.extend(check::convergence(
        &world,
        &keys,
        &replicas,
        strict_owners,
        horizon(),
        gc_on,
    ));
    violations.extend(check::convergence(
        &world,
        &crdt_plain,
        &crdt_replicas,
        strict_owners,
        horizon(),
        gc_on,
    ));
    // The nodes keep gossiping while the final reads run: a failure detector left
    // without heartbeats would call its peers down and the reads would skip them.
    {
        let mut core = lock(&sim.core);
        let reads_ms =
            FINAL_READS_BACKGROUND_MS / 2 + FINAL_READ_MS * (keys.len() + crdt_plain.len()) as u64;
        core.background_until = Some(core.now + FINAL_READS_BACKGROUND_MS.max(reads_ms));
    }
    for index in 0..config.nodes {
        world.start_background(index);
    }
    let reads: Arc<Mutex<Vec<String>>> = Arc::default();
    if let Some(reader) = sim.node(0) {
        let (keys, crdt_plain, reads, n) = (
            keys.clone(),
            crdt_plain.clone(),
            reads.clone(),
            config.workload.replication_factor,
        );
        let waiter = sim.clone();
        sim.spawn(
            Owner::World,
            Box::pin(async move {
                // A few gossip rounds first, so every detector has fresh heartbeats.
                waiter.sleep(FINAL_READS_BACKGROUND_MS / 2).await;
                for (index, key) in keys.iter().enumerate() {
                    if let Err(error) = reader.coordinator.read(key, n).await {
                        lock(&reads).push(format!("k{index}: final read failed: {error}"));
                    }
                }
                for key in crdt_plain.iter() {
                    if let Err(error) = reader.coordinator.read(key, n).await {
                        lock(&reads).push(format!("{key:?}: final read failed: {error}"));
                    }
                }
            }),
        );
    }
    let now = sim.now();
    sim.schedule(now, Event::Fault(Fault::Heal));
    if !world.run_until(MAX_VIRTUAL_MS) {
        violations.push("the cluster did not quiesce after heal".to_string());
    }
    violations.extend(lock(&reads).drain(..));

    // Phase 3: check (convergence again: the final reads must not break it).
    violations.extend(check::convergence(
        &world,
        &keys,
        &replicas,
        strict_owners,
        horizon(),
        gc_on,
    ));
    violations.extend(check::convergence(
        &world,
        &crdt_plain,
        &crdt_replicas,
        strict_owners,
        horizon(),
        gc_on,
    ));
    // What the replicas hold (only they count: after a ring change other nodes
    // may keep stale copies, which must not hide a write the replicas lost).
    let merged = merged_records(&world, &keys, &replicas);
    let crdt_merged = merged_records(&world, &crdt_plain, &crdt_replicas);
    let history = std::mem::take(&mut *lock(&history));
    let (applied, disk_lost_at, forgotten, wall_high) = {
        let mut core = lock(&sim.core);
        (
            std::mem::take(&mut core.applied),
            core.disk_lost_at,
            std::mem::take(&mut core.forgotten),
            std::mem::take(&mut core.wall_high),
        )
    };
    let mut facts = check::Facts::new(
        &history,
        &applied,
        &keys,
        config.conflict_policy,
        config.workload.replication_factor,
    );
    facts.disk_lost_at = disk_lost_at;
    facts.forgotten = &forgotten;
    facts.wall_high = &wall_high;
    violations.extend(check::only_tombstones_forgotten(&forgotten));
    let crdt_acked = lock(&crdt_history)
        .iter()
        .filter(|entry| matches!(entry.outcome, crdt::CrdtOutcome::Acked))
        .count();
    violations.extend(check::crdt_invariants(
        &lock(&crdt_history),
        &applied,
        &crdt_keys,
        &crdt_merged,
    ));
    violations.extend(check::no_acked_write_lost(&facts, &merged));
    violations.extend(check::dots_are_unique(&facts));
    violations.extend(check::nothing_superseded_returns(&facts, &merged));
    violations.extend(check::no_invented_values(&facts, &merged));
    violations.extend(check::writes_cover_their_versions(&facts));
    violations.extend(check::reads_cover_acked_versions(&facts));
    // Every read, and the merged record after heal as a read after every write.
    let final_now_ms = world.clock_ms(0);
    let observations: Vec<check::Observation> = facts
        .reads()
        .chain(
            merged
                .iter()
                .enumerate()
                .map(|(key, record)| check::Observation {
                    key,
                    record: record.as_ref(),
                    now_ms: final_now_ms,
                    start: u64::MAX,
                    quorum: config.workload.replication_factor,
                    entry: None,
                }),
        )
        .collect();
    violations.extend(check::no_false_siblings(&facts, &observations));
    violations.extend(check::reads_show_acked_values(&facts, &observations));
    drop(observations);
    drop(facts);

    let fingerprint = {
        let mut core = lock(&sim.core);
        for engine in &world.engines {
            for key in keys.iter().chain(&crdt_plain) {
                if let Ok(Some(record)) = engine.get(key) {
                    core.trace.absorb(&record.encode());
                }
            }
        }
        core.trace.fingerprint()
    };
    let (trace, virtual_ms) = {
        let mut core = lock(&sim.core);
        (core.trace.take_lines(), core.now)
    };
    Report {
        seed: config.seed,
        policy: config.conflict_policy,
        fingerprint,
        violations,
        trace,
        history,
        virtual_ms,
        steps: world.steps,
        forgotten: forgotten.len(),
        forgotten_under_faults,
        crdt_acked,
    }
}
