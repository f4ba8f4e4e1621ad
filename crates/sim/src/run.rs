//! One run: build the world, run the workload under faults, heal, let the
//! background work settle, read every key, and hand everything to the checkers.

use std::sync::{Arc, Mutex};

use ringkv_cluster::BoxFuture;
use ringkv_core::{Key, Limits, Record};
use ringkv_storage::Engine;

use crate::exec::{Owner, lock};
use crate::sim::{Canary, Event, Fault};
use crate::workload::History;
use crate::world::{World, WorldConfig};
use crate::{Config, GC_AT_ONCE, Report, check, crdt, workload, world};

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
    // Each client counts itself out when done.
    let spawn_client = |task: BoxFuture<()>| {
        let done = sim.clone();
        sim.spawn(
            Owner::Client,
            Box::pin(async move {
                task.await;
                lock(&done.core).clients_running -= 1;
            }),
        );
    };
    for id in 0..config.workload.crdt_clients {
        spawn_client(Box::pin(crdt::crdt_client(
            sim.clone(),
            id,
            crdt_history.clone(),
            config.workload.clone(),
        )));
    }
    for id in 0..config.workload.clients {
        spawn_client(Box::pin(workload::client(
            sim.clone(),
            id,
            keys.clone(),
            history.clone(),
            config.workload.clone(),
        )));
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
    // Every key's replicas agree, the workload's and the CRDT clients' alike.
    let convergence = |world: &World| {
        let mut found =
            check::convergence(world, &keys, &replicas, strict_owners, horizon(), gc_on);
        found.extend(check::convergence(
            world,
            &crdt_plain,
            &crdt_replicas,
            strict_owners,
            horizon(),
            gc_on,
        ));
        found
    };
    violations.extend(convergence(&world));
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
    violations.extend(convergence(&world));
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
